"""MNIST, Fashion-MNIST, KMNIST, CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

torchvision keeps its real download code: with ``download: true`` it extracts archives already in ``data.root``
that carry its md5, and fetches them only when they are missing. Images are read from the datasets' ``data``
arrays in one piece (no per-image PIL); the official test set is the test split.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnctl.config import DataConfig, clip
from cnnctl.data.base import DataBundle, TensorSplit
from cnnctl.errors import DataError
from cnnctl.io import removing_new_folders


def _open(cls: type, cfg: DataConfig, train: bool) -> Any:
    """``cls(root, train, download)``; any failure becomes a DataError that says what is missing and how to mend,
    and the folders a failed download made (``ROOT/MNIST/raw``, or ``ROOT`` itself) are removed again."""
    try:
        # torchvision prints "Downloading ..." on stdout, which `--json` keeps for its one document.
        with contextlib.redirect_stdout(sys.stderr), removing_new_folders(_dataset_folder(cls, Path(cfg.root))):
            return cls(root=cfg.root, train=train, download=cfg.download)
    except Exception as e:  # RuntimeError (not found, download failed), URLError, OSError, corrupt pickles or IDX
        reason = " ".join(str(e).split()) or type(e).__name__
        if not cfg.download and isinstance(e, RuntimeError) and "not found" in reason:
            reason = "not found (and data.download is false)"
        reason = clip(reason, 300)
        raise DataError(_missing_help(cls, cfg, reason), key="data.root") from None


def _dataset_folder(cls: type, root: Path) -> Path:
    """Where torchvision keeps ``cls``'s files under ``root``."""
    return root / cls.__name__ / "raw" if hasattr(cls, "resources") else root / cls.base_folder


def _missing_help(cls: type, cfg: DataConfig, reason: str) -> str:
    root = Path(cfg.root)
    folder = _dataset_folder(cls, root)
    if hasattr(cls, "resources"):  # the MNIST family
        archives = [name for name, _ in cls.resources]
        needs = (f"{folder}/ with {', '.join(os.path.splitext(a)[0] for a in archives)} "
                 f"(or the archives {', '.join(archives)}, which download: true extracts)")
        checks = [(folder / name, md5) for name, md5 in cls.resources]
        copy = f"copy the four .gz archives into {folder}/"
        holder = f"{cls.__name__}/raw/"
    else:  # CIFAR
        files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        needs = f"{folder}/ with {', '.join(files)} (or {root / cls.filename}, which download: true extracts)"
        checks = [(folder / name, md5) for name, md5 in cls.train_list + cls.test_list]
        checks += [(folder / cls.meta["filename"], cls.meta["md5"]), (root / cls.filename, cls.tgz_md5)]
        copy = f"copy {cls.filename} into {root}/"
        holder = f"{cls.filename} or {cls.base_folder}/"
    from torchvision.datasets.utils import check_md5

    wrong = [path.name for path, md5 in checks if path.is_file() and not check_md5(path, md5)]
    mismatch = (f" These files are there but differ from the ones torchvision knows (md5): {', '.join(wrong)}; "
                "copy them again from the official release." if wrong else "")
    how = (f"To mend: {copy} and keep data.download: true, or point data.root at the folder that holds {holder}"
           if cfg.download else f"To mend: set data.download: true (it fetches the dataset, or extracts archives "
           f"already there), or {copy}")
    return f"dataset {cfg.dataset} cannot be loaded from {root}: {reason}. It needs {needs}.{mismatch} {how}."


def _mnist_family(cfg: DataConfig, cls_name: str) -> DataBundle:
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    train, test = _open(cls, cfg, train=True), _open(cls, cfg, train=False)
    splits = [TensorSplit(d.data.unsqueeze(1).contiguous(), d.targets.to(torch.int64)) for d in (train, test)]
    height, width = splits[0].images.shape[-2:]
    return DataBundle(cfg.dataset, list(train.classes), 1, (height, width), [], [], splits[0], None, splits[1])


def _cifar(cfg: DataConfig, cls_name: str) -> DataBundle:
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    train, test = _open(cls, cfg, train=True), _open(cls, cfg, train=False)
    splits = [TensorSplit(torch.from_numpy(np.ascontiguousarray(d.data)).permute(0, 3, 1, 2).contiguous(),
                          torch.as_tensor(d.targets, dtype=torch.int64)) for d in (train, test)]
    height, width = splits[0].images.shape[-2:]
    return DataBundle(cfg.dataset, list(train.classes), 3, (height, width), [], [], splits[0], None, splits[1])


def load_mnist(cfg: DataConfig, seed: int) -> DataBundle:
    """MNIST: 60,000 train and 10,000 test 28x28 grayscale digits."""
    return _mnist_family(cfg, "MNIST")


def load_fashion_mnist(cfg: DataConfig, seed: int) -> DataBundle:
    """Fashion-MNIST: 28x28 grayscale clothes, 10 classes, 60,000 train and 10,000 test."""
    return _mnist_family(cfg, "FashionMNIST")


def load_kmnist(cfg: DataConfig, seed: int) -> DataBundle:
    """Kuzushiji-MNIST: 28x28 grayscale cursive Japanese characters, 10 classes."""
    return _mnist_family(cfg, "KMNIST")


def load_cifar10(cfg: DataConfig, seed: int) -> DataBundle:
    """CIFAR-10: 50,000 train and 10,000 test 32x32 colour images, 10 classes."""
    return _cifar(cfg, "CIFAR10")


def load_cifar100(cfg: DataConfig, seed: int) -> DataBundle:
    """CIFAR-100: 50,000 train and 10,000 test 32x32 colour images, 100 fine classes."""
    return _cifar(cfg, "CIFAR100")
