"""The frozen-body feature cache: the head trained on cached features ends with the weights of the uncached path."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from cnnctl.training.checkpoint import load_checkpoint
from tests.conftest import train_run, write_config
from tests.datafiles import write_image_folder

# BatchNorm and Dropout inside the body (off: eval mode), Dropout in the head (on: it must draw what it drew uncached).
# 1,280 training images: 20 whole batches (see cnnctl/training/features.py on a last, smaller batch).
NET = """\
seed: 2
data: {dataset: digits, batch_size: 64, val_split: 0.11}
model:
  arch: custom
  layers: [{conv: {out: 4, kernel: 3}}, batchnorm, relu, {dropout: 0.3}, flatten, {linear: 16}, relu,
           {dropout: 0.3}, linear]
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.001}
train: {epochs: 2, early_stopping: null, freeze: body}
"""


def tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{pid}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def metrics(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader((run_dir / "metrics.csv").open())]


def assert_same_run(a: Path, b: Path) -> None:
    ta, tb = tensors(load_checkpoint(a / "last.pt")), tensors(load_checkpoint(b / "last.pt"))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different
    assert metrics(a) == metrics(b)
    assert load_checkpoint(a / "last.pt")["rng"]["torch"].equal(load_checkpoint(b / "last.pt")["rng"]["torch"])


def cached_and_uncached(cfg: Path, out: Path, caplog: pytest.LogCaptureFixture, *sets: str) -> tuple[Path, Path, str]:
    """The run with the cache and without, and the log of the first."""
    args = [a for s in sets for a in ("--set", s)]
    with caplog.at_level(logging.INFO, logger="cnnctl"):
        cached = train_run(cfg, out, "--name", "cached", *args)
    log = caplog.text
    uncached = train_run(cfg, out, "--name", "uncached", "--set", "train.cache_features=false", *args)
    return cached, uncached, log


def test_cached_features_train_the_head_to_the_uncached_weights(tmp_path, caplog):
    cached, uncached, log = cached_and_uncached(write_config(tmp_path / "net.yaml", NET), tmp_path / "runs", caplog)
    assert "feature cache: the frozen body runs once: 1280 training and 158 validation images" in log
    assert_same_run(cached, uncached)


def test_the_cache_is_dropped_at_the_unfreeze_and_the_run_goes_on_unchanged(tmp_path, caplog):
    cached, uncached, log = cached_and_uncached(write_config(tmp_path / "net.yaml", NET), tmp_path / "runs", caplog,
                                                "train.freeze_epochs=1")
    assert "feature cache: the frozen body runs once" in log and "the frozen layers train from here on" in log
    assert_same_run(cached, uncached)


def test_a_streamed_image_folder_keeps_the_random_generator_where_the_images_leave_it(tmp_path, caplog):
    """``data.cache: none`` streams through a DataLoader, which draws from torch's generator each pass: the head's
    dropout draws the same numbers with the cache as without."""
    write_image_folder(tmp_path / "pets", {"cat": 20, "dog": 20}, channels=3, size=(12, 12))
    cfg = write_config(tmp_path / "net.yaml", NET.replace(
        "data: {dataset: digits, batch_size: 64, val_split: 0.11}",
        f"data: {{dataset: imagefolder, root: {tmp_path / 'pets'}, cache: none, workers: 0, batch_size: 8, "
        "val_split: 0.2, test_split: 0}"))
    cached, uncached, log = cached_and_uncached(cfg, tmp_path / "runs", caplog)
    assert "feature cache: the frozen body runs once: 32 training and 8 validation images" in log
    assert_same_run(cached, uncached)


def test_a_last_smaller_batch_trains_to_the_same_weights_within_float_rounding(tmp_path, caplog):
    """30 training images in batches of 8: the uncached body sees 6 of them in a batch of 6, the cache in one of 8,
    and a BLAS kernel may round those sums otherwise in the last bit."""
    write_image_folder(tmp_path / "pets", {"cat": 20, "dog": 20}, channels=3, size=(12, 12))
    cfg = write_config(tmp_path / "net.yaml", NET.replace(
        "data: {dataset: digits, batch_size: 64, val_split: 0.11}",
        f"data: {{dataset: imagefolder, root: {tmp_path / 'pets'}, batch_size: 8, val_split: 0.25, test_split: 0}}"))
    cached, uncached, _ = cached_and_uncached(cfg, tmp_path / "runs", caplog)
    ta, tb = tensors(load_checkpoint(cached / "last.pt")), tensors(load_checkpoint(uncached / "last.pt"))
    assert ta.keys() == tb.keys()
    assert max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta) < 1e-5


@pytest.mark.parametrize(("sets", "reason"), [
    (["data.augment.hflip=true"], "data.augment changes the images every epoch"),
    (["train.freeze=[layers.0]"], "not every layer before the head is frozen"),
    # every weight before the head, but the dropout between them trains: the body is not a fixed function
    (["train.freeze=[layers.0, layers.1, layers.5]"], "not every layer before the head is frozen"),
    (["train.cache_features=false"], "train.cache_features is off"),
])
def test_the_cache_is_off_where_features_would_not_stand_for_the_images(tmp_path, caplog, sets, reason):
    cfg = write_config(tmp_path / "net.yaml", NET.replace("epochs: 2", "epochs: 1"))
    with caplog.at_level(logging.INFO, logger="cnnctl"):
        train_run(cfg, tmp_path / "runs", *[a for s in sets for a in ("--set", s)])
    assert f"feature cache: off ({reason})" in caplog.messages


@pytest.mark.slow
def test_resnet18_body_cached_equals_uncached(tmp_path, caplog):
    write_image_folder(tmp_path / "photos", {"a": 10, "b": 10, "c": 10, "d": 10}, channels=3, size=(32, 32))
    cfg = write_config(tmp_path / "resnet.yaml", f"""\
data: {{dataset: imagefolder, root: {tmp_path / 'photos'}, batch_size: 8, val_split: 0.2, test_split: 0}}
model: {{arch: resnet18, dropout: 0.2}}
optimizer: {{name: adam, lr: 0.001}}
train: {{epochs: 2, early_stopping: null, freeze: body}}
""")
    cached, uncached, log = cached_and_uncached(cfg, tmp_path / "runs", caplog)
    assert "-> 512 features each" in log
    assert_same_run(cached, uncached)
