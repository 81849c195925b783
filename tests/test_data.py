"""Datasets, splits, normalization, image decoding, augmentation and the batch loaders.

Every dataset is made here in its real on-disk format (tests/datafiles.py) and loaded through the real code,
torchvision's included, with ``download: true`` and no network.
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnnctl.config import Augment, DataConfig
from cnnctl.data import transforms
from cnnctl.data.base import (
    FileSplit,
    TensorSplit,
    channel_stats,
    derive_seed,
    load_data,
    make_loader,
    stratified_indices,
    to_model_input,
)
from cnnctl.data.transforms import augment_batch, crop_at, load_image, random_crop, random_hflip
from cnnctl.errors import ConfigError, DataError
from tests.datafiles import MNIST_FOLDERS, class_images, write_cifar, write_image_folder, write_mnist, write_png

CPU = torch.device("cpu")
NO_NETWORK = "file:///nonexistent-cnnctl-test/"


def data_cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def reference_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    x = images.double() / 255
    return x.mean((0, 2, 3)).tolist(), x.transpose(0, 1).reshape(x.shape[1], -1).std(1, unbiased=False).tolist()


def tensor_split(n: int = 103, channels: int = 3, size: int = 8, classes: int = 5) -> TensorSplit:
    labels = torch.arange(n) % classes
    images = torch.from_numpy(class_images(labels.numpy(), channels, size, size)).permute(0, 3, 1, 2).contiguous()
    return TensorSplit(images, labels)


def collect(loader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.batches(epoch, start))


# ---------------------------------------------------------------- splits


def test_stratified_indices_are_seeded_disjoint_and_proportional():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held = stratified_indices(labels, 0.2, seed=7)
    assert len(held) == 20 and len(kept) == 80
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))
    assert torch.bincount(labels[held]).tolist() == [10, 6, 4]
    again_kept, again_held = stratified_indices(labels, 0.2, seed=7)
    assert torch.equal(held, again_held) and torch.equal(kept, again_kept)
    assert not torch.equal(held, stratified_indices(labels, 0.2, seed=8)[1])
    # a class with a single sample stays in the kept part; a tiny fraction still holds one sample out
    kept, held = stratified_indices(torch.tensor([0] * 9 + [1]), 0.5, seed=0)
    assert 9 in kept.tolist() and len(held) == 5
    assert len(stratified_indices(torch.arange(10) % 2, 0.01, seed=0)[1]) == 1
    assert len(stratified_indices(torch.arange(10) % 2, 0.0, seed=0)[1]) == 0


def test_derive_seed_is_stable():
    assert derive_seed(0, "perm", 3) == derive_seed(0, "perm", 3)
    assert derive_seed(0, "perm", 3) != derive_seed(0, "perm", 4)
    assert 0 <= derive_seed(2**62, "x") < 2**63


# ---------------------------------------------------------------- digits and fake


def test_digits_split_is_seeded_and_stratified():
    bundle = load_data(data_cfg(dataset="digits", val_split=0.1, test_split=0.2), seed=0)
    assert bundle.classes == [str(i) for i in range(10)] and bundle.channels == 1 and bundle.size == (8, 8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1294, 144, 359)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.labels.dtype == torch.int64
    assert int(bundle.train.images.max()) == 255  # 16 -> 255
    all_counts = torch.bincount(torch.cat([bundle.train.labels, bundle.val.labels, bundle.test.labels]))
    for part, fraction in ((bundle.test, 0.2), (bundle.val, 0.08)):
        counts = torch.bincount(part.labels, minlength=10)
        assert ((counts - all_counts * fraction).abs() <= 1.5).all(), counts
    same = load_data(data_cfg(dataset="digits"), seed=0)
    other = load_data(data_cfg(dataset="digits"), seed=1)
    assert torch.equal(same.test.images, bundle.test.images) and torch.equal(same.val.labels, bundle.val.labels)
    assert not torch.equal(other.test.images, bundle.test.images)
    # the test split does not move when val_split changes
    no_val = load_data(data_cfg(dataset="digits", val_split=0.0), seed=0)
    assert no_val.val is None and torch.equal(no_val.test.images, bundle.test.images)


def test_fake_dataset_is_seeded_and_sized():
    cfg = data_cfg(dataset="fake", num_samples=200, channels=1, image_size=12, num_classes=4, test_split=0.25)
    bundle = load_data(cfg, seed=3)
    assert bundle.channels == 1 and bundle.size == (12, 12) and bundle.classes == ["0", "1", "2", "3"]
    assert bundle.train.images.shape[1:] == (1, 12, 12)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 200 and len(bundle.test) == 50
    assert torch.equal(load_data(cfg, seed=3).train.images, bundle.train.images)
    assert not torch.equal(load_data(cfg, seed=4).train.images[:5], bundle.train.images[:5])


# ---------------------------------------------------------------- torchvision datasets, offline


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "kmnist"])
def test_mnist_family_loads_extracted_files_without_network(tmp_path, dataset, monkeypatch):
    from torchvision import datasets

    cls = getattr(datasets, MNIST_FOLDERS[dataset])
    monkeypatch.setattr(cls, "mirrors", [NO_NETWORK])  # a download attempt would fail at once, not hang
    write_mnist(tmp_path, dataset, n_train=60, n_test=20, archives=False)
    bundle = load_data(data_cfg(dataset=dataset, root=str(tmp_path), download=True, val_split=0.1), seed=0)
    assert bundle.classes == list(cls.classes) and bundle.channels == 1 and bundle.size == (28, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54, 6, 20)
    assert bundle.train.images.shape == (54, 1, 28, 28) and bundle.train.images.dtype == torch.uint8
    raw = cls(root=str(tmp_path), train=False)
    assert torch.equal(bundle.test.images[:, 0], raw.data) and torch.equal(bundle.test.labels, raw.targets)


def test_mnist_archives_are_extracted_by_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    md5s = write_mnist(tmp_path, "mnist", extracted=False, archives=True)
    # The tiny archives are not the real ones: point torchvision's checksum list at them so that its download
    # finds them "already downloaded" and only extracts them.
    monkeypatch.setattr(MNIST, "resources", [(name, md5s[name]) for name, _ in MNIST.resources])
    monkeypatch.setattr(MNIST, "mirrors", [NO_NETWORK])
    bundle = load_data(data_cfg(dataset="mnist", root=str(tmp_path), download=True, val_split=0.0), seed=0)
    assert len(bundle.train) == 60 and len(bundle.test) == 20
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_mnist_missing_names_root_files_and_fix(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [NO_NETWORK])
    with pytest.raises(DataError) as info:
        load_data(data_cfg(dataset="mnist", root=str(tmp_path), download=False), seed=0)
    message = str(info.value)
    assert message.startswith("data.root:") and str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "download: true" in message
    # download: true, archives of the wrong md5 and no network: the download fails and the message says why
    write_mnist(tmp_path, "mnist", extracted=False, archives=True)
    with pytest.raises(DataError) as info:
        load_data(data_cfg(dataset="mnist", root=str(tmp_path), download=True), seed=0)
    message = str(info.value)
    assert "differ from the ones torchvision knows" in message and "train-images-idx3-ubyte.gz" in message


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_loads_pickled_batches(tmp_path, dataset, monkeypatch):
    from torchvision import datasets

    cls = datasets.CIFAR100 if dataset == "cifar100" else datasets.CIFAR10
    md5s = write_cifar(tmp_path, dataset, n_train=50, n_test=20)
    # torchvision checks each batch file against the real release's md5; these tiny files cannot match, so the
    # test points its lists at them (the only patch: the loading itself is torchvision's own).
    monkeypatch.setattr(cls, "train_list", [[name, md5s[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5s[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})
    monkeypatch.setattr(cls, "url", NO_NETWORK + cls.filename)
    bundle = load_data(data_cfg(dataset=dataset, root=str(tmp_path), download=True, val_split=0.2), seed=0)
    assert bundle.channels == 3 and bundle.size == (32, 32)
    assert len(bundle.classes) == (100 if dataset == "cifar100" else 10)
    assert bundle.classes[0] == ("fine00" if dataset == "cifar100" else "airplane")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 20)
    raw = cls(root=str(tmp_path), train=False)
    assert torch.equal(bundle.test.images, torch.from_numpy(raw.data).permute(0, 3, 1, 2))
    assert bundle.test.labels.tolist() == list(raw.targets)


def test_cifar_archive_is_extracted_and_missing_is_explained(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", NO_NETWORK + CIFAR10.filename)
    with pytest.raises(DataError) as info:
        load_data(data_cfg(dataset="cifar10", root=str(tmp_path), download=True), seed=0)
    message = str(info.value)
    assert "data.root:" in message and "cifar-10-python.tar.gz" in message and "data_batch_1" in message
    md5s = write_cifar(tmp_path, "cifar10", n_train=30, n_test=10, tar=True)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5s["cifar-10-python.tar.gz"])
    monkeypatch.setattr(CIFAR10, "train_list", [[name, md5s[name]] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, md5s[name]] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})
    bundle = load_data(data_cfg(dataset="cifar10", root=str(tmp_path), download=True, val_split=0.0), seed=0)
    assert len(bundle.train) == 30 and len(bundle.test) == 10


# ---------------------------------------------------------------- resize and normalization


def test_resize_and_normalization(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [NO_NETWORK])
    write_mnist(tmp_path, "mnist", archives=False)
    native = load_data(data_cfg(dataset="mnist", root=str(tmp_path)), seed=0)
    mean, std = reference_stats(native.train.images)
    assert native.mean == pytest.approx(mean, abs=1e-12) and native.std == pytest.approx(std, abs=1e-12)
    resized = load_data(data_cfg(dataset="mnist", root=str(tmp_path), image_size=16), seed=0)
    assert resized.size == (16, 16) and resized.test.images.shape == (20, 1, 16, 16)
    assert torch.equal(resized.test.images, TF.resize(native.test.images, [16, 16], antialias=True))
    assert resized.mean == pytest.approx(reference_stats(resized.train.images)[0], abs=1e-12)

    none = load_data(data_cfg(dataset="digits", normalize="none"), seed=0)
    assert (none.mean, none.std) == ([0.0], [1.0])
    given = load_data(data_cfg(dataset="digits", normalize={"mean": [0.5], "std": [0.25]}), seed=0)
    assert (given.mean, given.std) == ([0.5], [0.25])
    with pytest.raises(ConfigError, match=r"data.normalize: 3 mean/std value\(s\).*1 channel"):
        load_data(data_cfg(dataset="digits", normalize={"mean": [0.5] * 3, "std": [0.2] * 3}), seed=0)


def test_channel_stats_of_a_constant_channel_do_not_divide_by_zero():
    histogram = torch.zeros(2, 256, dtype=torch.int64)
    histogram[0, 0], histogram[0, 255], histogram[1, 51] = 10, 10, 20
    mean, std = channel_stats(histogram)
    assert mean == pytest.approx([0.5, 0.2]) and std == pytest.approx([0.5, 1.0])


def test_to_model_input_matches_the_formula():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    expected = (images.double() / 255 - torch.tensor(mean).double()[:, None, None]) / torch.tensor(std).double()[:, None, None]
    x = to_model_input(images, mean, std, CPU)
    assert x.dtype == torch.float32 and torch.allclose(x.double(), expected, atol=1e-5)
    assert to_model_input(images, mean, std, CPU, channels_last=True).is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- augmentation


def test_random_crop_shifts_content_with_zero_padding():
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 200
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    offsets = torch.randint(0, 5, (64, 2), generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(64):
        dy, dx = offsets[i].tolist()
        assert out[i, 0, 4 + 2 - dy, 4 + 2 - dx] == 200 and int(out[i].sum()) == 200
    assert len({tuple(o) for o in offsets.tolist()}) > 10  # offsets differ per image
    # zero padding: a white image shifted by (2, 2) has two black rows and columns
    white = torch.full((1, 3, 6, 6), 255, dtype=torch.uint8)
    shifted = crop_at(white, 2, torch.tensor([[0, 0]]))
    assert (shifted[0, :, :2, :] == 0).all() and (shifted[0, :, :, :2] == 0).all() and (shifted[0, :, 2:, 2:] == 255).all()
    assert torch.equal(crop_at(white, 2, torch.tensor([[2, 2]])), white)


@pytest.mark.parametrize("channels, height, width, padding", [(1, 28, 28, 2), (3, 32, 32, 4), (3, 7, 12, 1)])
def test_crop_at_matches_per_image_slicing(channels, height, width, padding):
    """The flat index_select gather against the plain definition: pad, then slice each image at its offsets."""
    g = torch.Generator().manual_seed(channels * height + width)
    x = torch.randint(0, 256, (16, channels, height, width), dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 2 * padding + 1, (16, 2), generator=g)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    expected = torch.stack([padded[i, :, dy: dy + height, dx: dx + width]
                            for i, (dy, dx) in enumerate(offsets.tolist())])
    assert torch.equal(crop_at(x, padding, offsets), expected)


def test_random_hflip_flips_per_image():
    x = torch.arange(32 * 2 * 3 * 4, dtype=torch.int64).reshape(32, 2, 3, 4).to(torch.uint8)
    out = random_hflip(x, torch.Generator().manual_seed(1))
    coins = torch.rand(32, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(coins.sum()) < 32
    for i in range(32):
        assert torch.equal(out[i], x[i].flip(-1) if coins[i] else x[i])


def test_augmenting_a_shard_equals_the_shard_of_the_augmented_batch():
    x = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=3, hflip=True)
    whole = augment_batch(x, aug, torch.Generator().manual_seed(5))
    part = augment_batch(x[6:], aug, torch.Generator().manual_seed(5), total=12, offset=6)
    assert torch.equal(whole[6:], part)


# ---------------------------------------------------------------- TensorLoader


def test_tensor_loader_resume_is_exact_with_augmentation():
    split = tensor_split(n=103)
    args = {"batch_size": 16, "train": True, "device": CPU, "mean": [0.5] * 3, "std": [0.25] * 3,
            "augment": Augment(crop_padding=2, hflip=True), "seed": 11}
    loader = make_loader(split, **args)
    # 103 = 6 x 16 + 7: the partial batch is kept
    assert len(loader) == 7 and loader.num_samples == 103
    full = collect(loader, epoch=2)
    assert [len(y) for _, y in full] == [16] * 6 + [7]
    for start in (1, 4, 6):
        tail = collect(make_loader(split, **args), epoch=2, start=start)  # a fresh loader, as after a restart
        assert len(tail) == len(full) - start
        for (x1, y1), (x2, y2) in zip(full[start:], tail, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(split.labels.tolist())
    other = collect(loader, epoch=3)
    assert not torch.equal(full[0][1], other[0][1])  # a new order each epoch
    assert torch.equal(collect(loader, epoch=2)[3][0], full[3][0])  # and the same one for the same epoch
    plain = collect(make_loader(split, **{**args, "augment": None}), epoch=2)
    assert torch.equal(plain[0][1], full[0][1]) and not torch.equal(plain[0][0], full[0][0])
    x = plain[0][0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8)


def test_final_batch_of_one_is_dropped_and_eval_sees_everything():
    split = tensor_split(n=33)
    train = make_loader(split, batch_size=16, train=True, device=CPU, mean=[0] * 3, std=[1] * 3, augment=None, seed=0)
    assert len(train) == 2 and train.num_samples == 32
    evaluation = make_loader(split, batch_size=16, train=False, device=CPU, mean=[0] * 3, std=[1] * 3,
                             augment=Augment(crop_padding=4, hflip=True), seed=0)
    batches = collect(evaluation, 0)
    assert [len(y) for _, y in batches] == [16, 16, 1] and evaluation.num_samples == 33
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)  # stored order, no augmentation
    assert torch.equal(torch.cat([x for x, _ in batches]), to_model_input(split.images, [0] * 3, [1] * 3, CPU))


def test_distributed_shards_cover_the_global_batch():
    split = tensor_split(n=77)
    args = {"device": CPU, "mean": [0.5] * 3, "std": [0.25] * 3, "augment": Augment(crop_padding=1, hflip=True),
            "seed": 5}
    single = collect(make_loader(split, batch_size=16, train=True, **args), 1)
    ranks = [make_loader(split, batch_size=16, train=True, rank=r, world_size=2, **args) for r in range(2)]
    # 77 = 4 x 16 + 13 -> the last global batch is trimmed to 12, 6 a rank
    assert [len(r) for r in ranks] == [5, 5] and [r.num_samples for r in ranks] == [38, 38]
    shards = [collect(r, 1) for r in ranks]
    for b, (x, y) in enumerate(single):
        (x0, y0), (x1, y1) = shards[0][b], shards[1][b]
        assert len(y0) == len(y1) == (8 if b < 4 else 6)
        assert torch.equal(torch.cat([y0, y1]), y[: len(y0) * 2])
        if b < 4:  # full batches: the same images, augmented the same, as the one-process global batch
            assert torch.equal(torch.cat([x0, x1]), x)
    resumed = collect(make_loader(split, batch_size=16, train=True, rank=1, world_size=2, **args), 1, start=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shards[1][3:], resumed, strict=True))
    with pytest.raises(ConfigError, match="data.batch_size"):
        make_loader(split, batch_size=15, train=True, rank=0, world_size=2, **args)
    seen = [make_loader(split, batch_size=16, train=False, rank=r, world_size=3, **args) for r in range(3)]
    labels_seen = torch.cat([y for loader in seen for _, y in collect(loader, 0)])
    assert torch.equal(labels_seen, split.labels) and sum(loader.num_samples for loader in seen) == 77


# ---------------------------------------------------------------- imagefolder and FileLoader


def test_imagefolder_one_pool_rgb_and_file_loader(tmp_path):
    write_image_folder(tmp_path, {"cat": 20, "dog": 30, "eel": 10}, channels=3, size=(12, 10))
    (tmp_path / "cat" / "notes.txt").write_text("not an image, ignored")
    cfg = data_cfg(dataset="imagefolder", root=str(tmp_path), val_split=0.2, test_split=0.25, cache="none",
                   augment={"crop_padding": 2, "hflip": True})
    bundle = load_data(cfg, seed=0)
    assert bundle.classes == ["cat", "dog", "eel"] and bundle.channels == 3 and bundle.size == (12, 10)
    assert isinstance(bundle.train, FileSplit)
    assert len(bundle.test) == 15 and len(bundle.train) + len(bundle.val) == 45
    assert torch.bincount(torch.tensor(bundle.test.labels)).tolist() == [5, 8, 2]  # stratified: 20/30/10 x 0.25
    images = torch.stack([load_image(f, 3, (12, 10)) for f in bundle.train.files])
    mean, std = reference_stats(images)
    assert bundle.mean == pytest.approx(mean, abs=1e-12) and bundle.std == pytest.approx(std, abs=1e-12)

    args = {"batch_size": 8, "train": True, "device": CPU, "mean": bundle.mean, "std": bundle.std,
            "augment": cfg.augment, "seed": 4}
    files = make_loader(bundle.train, **args)
    tensors = make_loader(TensorSplit(images, torch.tensor(bundle.train.labels)), **args)
    assert len(files) == len(tensors) and files.num_samples == tensors.num_samples
    full = collect(files, 1)
    # the same plan, decoding and augmentation as the in-memory path
    for (x1, y1), (x2, y2) in zip(full, collect(tensors, 1), strict=True):
        assert torch.equal(y1, y2) and torch.allclose(x1, x2)
    assert full[0][0].shape == (8, 3, 12, 10) and full[0][0].dtype == torch.float32
    tail = collect(make_loader(bundle.train, **args), 1, start=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], tail, strict=True))


def test_imagefolder_split_layout_grayscale(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 6, "b": 6}, channels=1, size=(9, 9))
    write_image_folder(tmp_path / "val", {"a": 2, "b": 3}, channels=1, size=(9, 9))
    write_image_folder(tmp_path / "test", {"b": 4}, channels=1, size=(14, 14))
    cfg = data_cfg(dataset="imagefolder", root=str(tmp_path), channels=1, image_size=8, val_split=0.5, cache="none")
    bundle = load_data(cfg, seed=0)
    assert bundle.classes == ["a", "b"] and bundle.channels == 1 and bundle.size == (8, 8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 5, 4)  # val/ is used, not split off
    assert bundle.test.labels == [1] * 4
    loader = make_loader(bundle.test, batch_size=3, train=False, device=CPU, mean=bundle.mean, std=bundle.std,
                         augment=None, seed=0, workers=0)
    batches = collect(loader, 0)
    assert [x.shape for x, _ in batches] == [(3, 1, 8, 8), (1, 1, 8, 8)]
    expected = to_model_input(torch.stack([load_image(f, 1, (8, 8)) for f in bundle.test.files]), bundle.mean,
                              bundle.std, CPU)
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
    # no val/: it is split off train/
    shutil.rmtree(tmp_path / "val")
    rgb = load_data(data_cfg(dataset="imagefolder", root=str(tmp_path), val_split=0.5, cache="none"), seed=0)
    assert rgb.channels == 3 and rgb.size == (9, 9) and len(rgb.train) == 6  # default channels: 3


def test_file_loader_with_workers_reports_a_bad_file(tmp_path):
    write_image_folder(tmp_path, {"x": 12, "y": 12}, size=(6, 6))
    bad = tmp_path / "y" / "y_3.png"
    bad.write_bytes(b"")
    split = FileSplit(sorted(tmp_path.rglob("*.png")), [0] * 12 + [1] * 12, 3, (6, 6))
    loader = make_loader(split, batch_size=8, train=False, device=CPU, mean=[0.5] * 3, std=[0.5] * 3, augment=None,
                         seed=0, workers=2)
    with pytest.raises(DataError, match=r"y_3\.png: empty file"):
        collect(loader, 0)
    with pytest.raises(DataError, match=r"y_3\.png"):
        load_data(data_cfg(dataset="imagefolder", root=str(tmp_path)), seed=0)


@pytest.mark.parametrize(("layout", "match"), [
    ({}, "no class folders"),
    ({"a": 3}, "at least two"),
    ({"a": 3, "b": 0}, r"b has no images"),
])
def test_imagefolder_bad_layouts(tmp_path, layout, match):
    for name, n in layout.items():
        (tmp_path / name).mkdir()
        write_image_folder(tmp_path, {name: n}) if n else None
    with pytest.raises(DataError, match=match):
        load_data(data_cfg(dataset="imagefolder", root=str(tmp_path)), seed=0)


def test_imagefolder_unknown_class_in_val_and_missing_root(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    write_image_folder(tmp_path / "val", {"c": 2})
    with pytest.raises(DataError, match=r"val/c is a class that train/ does not have"):
        load_data(data_cfg(dataset="imagefolder", root=str(tmp_path)), seed=0)
    with pytest.raises(DataError, match="data.root: .*is not a folder"):
        load_data(data_cfg(dataset="imagefolder", root=str(tmp_path / "nope")), seed=0)


# ---------------------------------------------------------------- load_image


def _save(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def test_load_image_modes(tmp_path):
    gradient = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (10, 1))
    rgb = Image.fromarray(np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 40)], -1))
    sixteen = Image.fromarray(gradient.astype(np.uint16) * 257)  # I;16: 0..65535
    assert sixteen.mode == "I;16"
    palette = Image.new("P", (16, 10), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(0, (0, 0, 8, 10))
    palette.info["transparency"] = 0
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(gradient > 127, 255, 0).astype(np.uint8)))
    la = Image.fromarray(gradient).convert("LA")
    files = {
        "cmyk.jpg": rgb.convert("CMYK"), "i16.png": sixteen, "p.png": palette, "rgba.png": rgba, "la.png": la,
        "one.png": Image.fromarray(gradient > 127), "i.tif": Image.fromarray(gradient.astype(np.int32) * 257),
        "f.tif": Image.fromarray(gradient.astype(np.float32) / 255), "ycbcr.jpg": rgb.convert("YCbCr"),
        "l.bmp": Image.fromarray(gradient), "rgb.webp": rgb, "rgb.gif": rgb,
    }
    for name, image in files.items():
        path = _save(tmp_path / name, image)
        for channels in (1, 3):
            out = load_image(path, channels, (10, 16))
            assert out.shape == (channels, 10, 16) and out.dtype == torch.uint8, name
    # 16-bit and float images are scaled to 8 bit, not clipped
    for name in ("i16.png", "i.tif", "f.tif"):
        assert torch.equal(load_image(tmp_path / name, 1)[0], torch.from_numpy(gradient)), name
    # transparency is composited over white
    p = load_image(tmp_path / "p.png", 3)
    assert (p[:, :, :8] == 255).all() and p[:, 0, 8:].tolist() == [[255] * 8, [0] * 8, [0] * 8]
    assert (load_image(tmp_path / "rgba.png", 3)[:, :, 0] == 255).all()
    assert (load_image(tmp_path / "la.png", 1)[0] == torch.from_numpy(gradient)).all()  # opaque LA: its gray
    # resizing is the same resize as load_data's
    assert torch.equal(load_image(tmp_path / "l.bmp", 1, (5, 8)), TF.resize(load_image(tmp_path / "l.bmp", 1),
                                                                          [5, 8], antialias=True))


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png", "photo.webp", "photo.tif"])
def test_load_image_applies_the_orientation_wherever_the_format_keeps_it(tmp_path, name):
    # JPEG/WebP keep EXIF in the header, PNG in an eXIf chunk after the pixels, TIFF in its own tags: the fast
    # path must still see each one.
    pixels = np.zeros((6, 10, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # one white corner, to tell the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / name
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), **({"quality": 100} if name.endswith("jpg") else {}))
    out = load_image(path, 3)
    assert out.shape == (3, 10, 6)
    assert out[:, 0, -1].min() > 200 and out[:, 0, 0].max() < 50  # the corner went top-right
    plain = tmp_path / ("plain" + Path(name).suffix)
    Image.fromarray(pixels).save(plain)
    assert load_image(plain, 3).shape == (3, 6, 10)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_load_image_refuses_bad_files(tmp_path, monkeypatch):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("hello, not a picture")
    good = write_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))
    cases = [(empty, "empty file"), (text, "not an image"), (truncated, "truncated or corrupt"),
             (bomb, "decompression bomb"), (tmp_path / "missing.png", "cannot read")]
    for path, reason in cases:
        with pytest.raises(DataError) as info:
            load_image(path, 3, (8, 8))
        assert str(path) in str(info.value) and reason in str(info.value), str(info.value)
    monkeypatch.setattr(transforms, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"good\.png: 64x64 pixels is more than cnnctl's limit"):
        load_image(good, 3, (8, 8))


def test_data_package_imports_without_torch():
    code = "import sys, cnnctl.data, cnnctl.data.registry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- a failed download leaves nothing behind


def mnist_checkpoint(path: Path) -> Path:
    """A cnnctl checkpoint of an untrained lenet5 for MNIST, with what eval reads of one (no training needed)."""
    from torchvision.datasets import MNIST

    from cnnctl.config import Config
    from cnnctl.models.registry import create_model
    from cnnctl.training.checkpoint import FORMAT, save_checkpoint

    cfg = Config.model_validate({"data": {"dataset": "mnist"}})
    model = create_model(cfg.model, in_channels=1, image_size=(28, 28), num_classes=10)
    save_checkpoint(path, {"format": FORMAT, "config": cfg.dump(), "classes": list(MNIST.classes),
                           "input": {"channels": 1, "size": [28, 28], "mean": [0.13], "std": [0.31]},
                           "model": model.state_dict()})
    return path


def test_eval_on_a_missing_data_root_removes_the_folders_its_failed_download_made(cli, tmp_path, monkeypatch):
    """Issue 23, item 17: ``eval --data-root MISSING`` left MISSING/MNIST/raw (and a half download) behind."""
    from urllib.error import URLError

    import torchvision.datasets.mnist

    def broken_download(url, download_root, filename=None, md5=None, **kwargs):
        (Path(download_root) / filename).write_bytes(b"\x1f\x8b the first bytes")
        raise URLError("connection reset by peer")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", broken_download)
    checkpoint = mnist_checkpoint(tmp_path / "mnist.pt")
    missing = tmp_path / "missing" / "deeper"
    result = cli("eval", checkpoint, "--data-root", missing)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error[0].startswith(f"error: data.root: dataset mnist cannot be loaded from {missing}: Error downloading "
                               "train-images-idx3-ubyte.gz"), result.stderr
    assert "connection reset by peer" in error[0]
    assert not (tmp_path / "missing").exists(), "the folders the download made are removed, with its partial file"

    kept = tmp_path / "kept"  # a root that was there stays, with what it held; only the MNIST/ it made goes
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    result = cli("eval", checkpoint, "--data-root", kept)
    assert result.exit_code == 2, result.output
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine\n"


# ---------------------------------------------------------------- the stratified split's leftover places


def largest_remainder(counts: list[int], n_held: int) -> list[int]:
    """Hamilton's apportionment of ``n_held`` over classes of ``counts`` (distinct remainders assumed)."""
    n = sum(counts)
    exact = [Fraction(c * n_held, n) for c in counts]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: exact[i] - quota[i], reverse=True)
    for i in order[: n_held - sum(quota)]:
        quota[i] += 1
    return quota


@pytest.mark.parametrize(("counts", "fraction"), [([7, 5, 3], 0.4), ([10, 7, 4], 0.3), ([9, 6, 2, 14], 0.35),
                                                  ([11, 3, 8], 0.45)])
def test_stratified_split_gives_leftover_places_to_the_largest_remainders(counts, fraction):
    from cnnctl.data.base import TensorSplit, split_off, stratified_indices

    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    n_held = round(len(labels) * fraction)
    expected = largest_remainder(counts, n_held)
    remainders = sorted((Fraction(c * n_held, sum(counts)) % 1 for c in counts), reverse=True)
    short = n_held - sum(math.floor(Fraction(c * n_held, sum(counts))) for c in counts)
    assert 0 < short < len(counts) and remainders[short - 1] > remainders[short]  # which classes round up is unique
    for seed in (0, 1, 2):
        kept, held = stratified_indices(labels, fraction, seed)
        assert torch.bincount(labels[held], minlength=len(counts)).tolist() == expected
        assert sorted(torch.cat([kept, held]).tolist()) == list(range(len(labels)))
    images = torch.arange(len(labels), dtype=torch.uint8)[:, None, None, None]
    rest, part = split_off(TensorSplit(images, labels), fraction, 0)
    assert torch.bincount(part.labels, minlength=len(counts)).tolist() == expected
    assert torch.equal(labels[part.images.flatten().long()], part.labels)  # images and labels moved together
    assert len(rest) + len(part) == len(labels)
