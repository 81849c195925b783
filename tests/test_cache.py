"""``data.cache``: image folders decoded once into memory and onto disk, and the same training as streaming."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnctl.config import DataConfig
from cnnctl.data import cache
from cnnctl.data.base import FileSplit, TensorSplit, load_data
from cnnctl.data.transforms import load_image
from tests.conftest import write_config
from tests.datafiles import write_image_folder, write_png

FOLDER_CONFIG = """\
seed: 3
data:
  dataset: imagefolder
  root: {root}
  batch_size: 16
  cache: {cache}
  workers: 0
  val_split: 0.2
  test_split: 0.2
  augment: {{crop_padding: 2, hflip: true}}
model: {{arch: lenet5}}
optimizer: {{name: sgd, lr: 0.05}}
train: {{epochs: 1, device: cpu}}
"""


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), **kw)


def stacked(files: list[Path], channels: int, size: tuple[int, int]) -> torch.Tensor:
    return torch.stack([load_image(f, channels, size) for f in files])


def cache_files(root: Path) -> list[Path]:
    return sorted((root / cache.CACHE_FOLDER).iterdir())


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image_folder(root, {"a": 12, "b": 14, "c": 10}, channels=3, size=(10, 12))
    return root


def test_cached_and_streamed_runs_give_bit_identical_weights(cli, tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, {"a": 30, "b": 34, "c": 26}, channels=1, size=(28, 28))
    weights = {}
    for mode in ("none", "memory", "disk"):
        cfg = write_config(tmp_path / f"{mode}.yaml", FOLDER_CONFIG.format(root=root, cache=mode))
        result = cli("train", cfg, "--out", tmp_path / "runs")
        assert result.exit_code == 0, result.output
        ckpt = torch.load(Path(result.stdout.strip().splitlines()[-1]) / "last.pt", weights_only=True)
        weights[mode] = ckpt["model"]
        assert ckpt["input"]["channels"] == 3 and ckpt["input"]["size"] == [28, 28]
    assert cache_files(root)  # disk wrote its cache
    for mode in ("memory", "disk"):
        assert weights[mode].keys() == weights["none"].keys()
        for name, tensor in weights["none"].items():
            assert torch.equal(weights[mode][name], tensor), (mode, name)


def test_memory_cache_holds_exactly_the_streamed_pixels(folder):
    streamed = load_data(folder_cfg(folder, cache="none", image_size=8), seed=1)
    cached = load_data(folder_cfg(folder, cache="memory", image_size=8), seed=1)
    for name in ("train", "val", "test"):
        files, tensors = getattr(streamed, name), getattr(cached, name)
        assert isinstance(files, FileSplit) and isinstance(tensors, TensorSplit)
        assert torch.equal(tensors.images, stacked(files.files, 3, (8, 8)))
        assert tensors.labels.tolist() == files.labels
    assert cached.mean == streamed.mean and cached.std == streamed.std
    assert not (folder / cache.CACHE_FOLDER).exists()  # memory writes nothing


def test_disk_cache_is_reused_and_a_touched_file_invalidates_it(folder, caplog):
    caplog.set_level(logging.INFO, logger="cnnctl")
    cfg = folder_cfg(folder, cache="disk", val_split=0.25)
    first = load_data(cfg, seed=0)
    (path,) = cache_files(folder)
    assert path.name.startswith("imagefolder-10x12x3-") and "wrote 36 decoded images" in caplog.text
    caplog.clear()
    second = load_data(cfg.model_copy(update={"val_split": 0.5}), seed=5)  # another split and order: same cache
    assert "36 decoded images read from" in caplog.text and "decoding" not in caplog.text
    for bundle in (first, second):
        for part in (bundle.train, bundle.val, bundle.test):
            assert isinstance(part, TensorSplit)
    reference = load_data(folder_cfg(folder, cache="none", val_split=0.5), seed=5)
    assert torch.equal(second.train.images, stacked(reference.train.files, 3, (10, 12)))
    assert torch.equal(second.test.images, stacked(reference.test.files, 3, (10, 12)))

    # Rewrite one image with new pixels and a newer modification time: the cache must not serve the old ones.
    changed = folder / "b" / "b_3.png"
    write_png(changed, np.full((10, 12, 3), 200, dtype=np.uint8))
    later = changed.stat().st_mtime_ns + 5 * 10**9
    os.utime(changed, ns=(later, later))
    caplog.clear()
    third = load_data(cfg, seed=0)
    assert "out of date" in caplog.text and "wrote 36 decoded images" in caplog.text
    row = [p.name for p in load_data(folder_cfg(folder, cache="none", val_split=0.25), seed=0).train.files]
    assert (third.train.images[row.index("b_3.png")] == 200).all()
    assert cache_files(folder) == [path]  # rewritten in place, no temporary files left


@pytest.mark.parametrize("damage", ["truncate", "flip_pixel", "garbage"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(folder, caplog, damage):
    cfg = folder_cfg(folder, cache="disk")
    good = load_data(cfg, seed=0)
    (path,) = cache_files(folder)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip_pixel":  # the zip still reads; only the digest can tell
        pixels = torch.load(path, weights_only=True)["images"].numpy().tobytes()
        at = bytes(data).index(pixels) + len(pixels) // 2
        data[at] ^= 0xFF
    else:
        data = bytearray(b"not a cache at all")
    path.write_bytes(bytes(data))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="cnnctl")
    rebuilt = load_data(cfg, seed=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt or truncated" in warnings[0].getMessage(), caplog.text
    assert str(path) in warnings[0].getMessage()
    assert torch.equal(rebuilt.train.images, good.train.images)
    caplog.clear()
    load_data(cfg, seed=0)  # the rebuilt file is whole again
    assert "read from" in caplog.text and not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_unwritable_cache_dir_warns_and_trains_from_memory(folder, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bundle = load_data(folder_cfg(folder, cache="disk", cache_dir=str(blocker / "cache")), seed=0)
    assert isinstance(bundle.train, TensorSplit)
    assert "could not write the cache" in caplog.text and "data.cache_dir" in caplog.text


def test_cache_dir_holds_caches_of_several_roots(tmp_path):
    shared = tmp_path / "shared-cache"
    for name in ("one", "two"):
        write_image_folder(tmp_path / name, {"x": 4, "y": 4}, size=(6, 6), seed=len(name))
        load_data(folder_cfg(tmp_path / name, cache="disk", cache_dir=str(shared)), seed=0)
    assert len(list(shared.iterdir())) == 2


def test_auto_decodes_when_it_fits_and_streams_when_not(folder, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="cnnctl")
    decoded = 36 * 3 * 10 * 12
    monkeypatch.setattr(cache, "available_ram", lambda: 2 * decoded + 2)  # half of it: just fits
    assert isinstance(load_data(folder_cfg(folder), seed=0).train, TensorSplit)
    assert "data.cache auto: decoding 36 images once into memory" in caplog.text
    caplog.clear()
    monkeypatch.setattr(cache, "available_ram", lambda: 2 * decoded - 2)
    assert isinstance(load_data(folder_cfg(folder), seed=0).train, FileSplit)
    assert "data.cache auto: streaming 36 images" in caplog.text and "set data.cache: memory" in caplog.text
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on this machine: each gets half
    monkeypatch.setattr(cache, "available_ram", lambda: 2 * decoded + 2)
    assert isinstance(load_data(folder_cfg(folder), seed=0).train, FileSplit)


def test_memory_cache_reports_a_bad_file_by_name(folder):
    (folder / "a" / "a_2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(Exception, match=r"a_2\.png: truncated or corrupt"):
        load_data(folder_cfg(folder, cache="memory"), seed=0)


@pytest.mark.parametrize(("override", "message"), [
    ("data.cache=ram", "data.cache"),
    ("data.cache=disk", "cache: disk is for 'imagefolder' only"),
    ("data.cache_dir=/tmp/x", "cache_dir is where cache: disk keeps"),
])
def test_bad_cache_settings_are_config_errors(cli, tmp_path, override, message):
    cfg = write_config(tmp_path / "c.yaml", "data: {dataset: digits}\ntrain: {epochs: 1}\n")
    result = cli("train", cfg, "--set", override, "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
