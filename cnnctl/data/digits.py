"""``digits``: the 1,797 8x8 handwritten digits that ship inside scikit-learn, the offline default dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cnnctl.config import DataConfig
from cnnctl.data.base import DataBundle, TensorSplit, derive_seed, split_off
from cnnctl.errors import DataError


def _bundled_csv() -> Path | None:
    # Finding the package does not import it: importing sklearn costs about a second.
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def read_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 images [N, 1, 8, 8] (0..16 scaled to 0..255) and int64 labels."""
    path = _bundled_csv()
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        try:
            from sklearn.datasets import load_digits as sklearn_digits
        except ImportError as e:
            raise DataError(f"dataset digits comes with scikit-learn, which cannot be imported ({e}); "
                            "pip install scikit-learn", key="data.dataset") from None
        found = sklearn_digits()
        pixels, labels = found.data, found.target
    images = np.rint(pixels * 255 / 16).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_digits(cfg: DataConfig, seed: int) -> DataBundle:
    """Digits with a seeded, stratified test split of ``cfg.test_split`` (it has no official one)."""
    images, labels = read_digits()
    train, test = split_off(TensorSplit(images, labels), cfg.test_split, derive_seed(seed, "test"))
    return DataBundle("digits", [str(i) for i in range(10)], 1, (8, 8), [], [], train, None, test)
