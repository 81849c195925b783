"""``data.cache``: image folders decoded once into memory and onto disk, and the same training as streaming."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def rewrite_keeping_size_and_mtime(path: Path, image: np.ndarray) -> None:
    """New pixels in ``path``, its size and modification time as they were: an uncompressed PNG's size depends
    only on its shape, and ``os.utime`` puts the times back (as a sync tool or a restore can)."""
    before = path.stat()
    Image.fromarray(image).save(path, compress_level=0)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_cache_verify_catches_pixels_changed_with_size_and_mtime_kept(folder, caplog):
    """Issue 23, item 17: the cache key covers each file's path, size and mtime, so an image rewritten in place with
    both kept trains on its old pixels; ``data.cache_verify: true`` keys the cache by the files' contents."""
    caplog.set_level(logging.INFO, logger="cnnctl")
    edited = folder / "b" / "b_3.png"
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(edited, compress_level=0)
    order = [p.name for p in load_data(folder_cfg(folder, cache="none"), seed=0).train.files]
    row = order.index("b_3.png")
    plain, verified = folder_cfg(folder, cache="disk"), folder_cfg(folder, cache="disk", cache_verify=True)
    assert (load_data(plain, seed=0).train.images[row] == 0).all()

    rewrite_keeping_size_and_mtime(edited, np.full((10, 12, 3), 200, dtype=np.uint8))
    caplog.clear()
    assert (load_data(plain, seed=0).train.images[row] == 0).all(), "size and mtime alone cannot see the change"
    assert "36 decoded images read from" in caplog.text
    caplog.clear()
    assert (load_data(verified, seed=0).train.images[row] == 200).all()
    assert "out of date" in caplog.text, "a verified key is another key: the cache is rebuilt from the files"

    rewrite_keeping_size_and_mtime(edited, np.full((10, 12, 3), 90, dtype=np.uint8))
    caplog.clear()
    assert (load_data(verified, seed=0).train.images[row] == 90).all()
    assert "out of date" in caplog.text and "wrote 36 decoded images" in caplog.text
    assert len(cache_files(folder)) == 1, "rewritten in place"
    caplog.clear()
    assert (load_data(verified, seed=0).train.images[row] == 90).all()
    assert "36 decoded images read from" in caplog.text, "unchanged contents: the verified cache is reused"


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
    ("data.cache_verify=true", "cache_verify checks the files of a cache: disk against their contents"),
])
def test_bad_cache_settings_are_config_errors(cli, tmp_path, override, message):
    cfg = write_config(tmp_path / "c.yaml", "data: {dataset: digits}\ntrain: {epochs: 1}\n")
    result = cli("train", cfg, "--set", override, "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def point_writes_under_at_dev_full(folder: Path, monkeypatch) -> None:
    """Files opened for writing under ``folder`` fail as on a full disk: the descriptor ``atomic_write`` opens there
    is swapped for /dev/full's, whose every write the kernel refuses with ENOSPC (the real error, through the real
    ``torch.save`` and ``atomic_write``)."""
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(folder):
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.skipif(not (Path("/dev/full").exists() and Path("/proc/self/fd").is_dir()), reason="needs Linux's /dev/full")
def test_a_full_disk_under_cache_dir_costs_a_warning_not_the_run(cli, tmp_path, monkeypatch, caplog):
    """Issue 23, item 9: the cache's write failing with ENOSPC ended the run (exit 1)."""
    root = tmp_path / "images"
    write_image_folder(root, {"a": 12, "b": 12}, channels=1, size=(28, 28))
    cache_dir = tmp_path.resolve() / "cache"
    cfg = write_config(tmp_path / "c.yaml", FOLDER_CONFIG.format(root=root, cache=f"disk\n  cache_dir: {cache_dir}"))
    point_writes_under_at_dev_full(cache_dir, monkeypatch)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "data.cache disk: could not write the cache " in warnings[0], caplog.text
    assert f"{cache_dir}/imagefolder-28x28x3-" in warnings[0] and ": No space left on device;" in warnings[0]
    assert "this run trains without it" in warnings[0]
    assert list(cache_dir.iterdir()) == [], "the partial file is removed"
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (run_dir / "last.pt").is_file() and (run_dir / "summary.json").is_file()
