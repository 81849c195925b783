"""A dataset's splits as data: in-memory tensors or image files, the bundle that holds them, and the reading of one
file split's images (the DataLoader's dataset). The loaders (``data.base``) and the decode-once cache
(``data.cache``) both build on these, so neither imports the other's module for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnctl.errors import DataError

# Below this many files a DataLoader's worker start-up costs more than decoding in the main process.
MIN_FILES_FOR_WORKERS = 1000
MAX_AUTO_WORKERS = 4


@dataclass
class TensorSplit:
    """An in-memory split: uint8 images [N, C, H, W] on the CPU and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FileSplit:
    """A streamed split: image files and their labels, decoded to ``channels`` x ``size`` by ``load_image``.

    ``size`` is None only while a dataset is being put together (the files' own size).
    """

    files: list[Path]
    labels: list[int]
    channels: int = 3
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)


Split = TensorSplit | FileSplit


@dataclass
class DataBundle:
    """A dataset ready for the loop: its splits, class names, and the input the model sees."""

    dataset: str
    classes: list[str]
    channels: int
    size: tuple[int, int]  # (H, W) of the images the model sees
    mean: list[float]  # per channel, in [0, 1] pixel units: (x / 255 - mean) / std
    std: list[float]
    train: TensorSplit | FileSplit
    val: TensorSplit | FileSplit | None
    test: TensorSplit | FileSplit | None


def resolve_workers(workers: int | str, num_files: int, world_size: int = 1) -> int:
    """``auto``: none for fewer than MIN_FILES_FOR_WORKERS files, else up to 4 per process, sharing the CPUs."""
    if workers != "auto":
        return int(workers)
    if num_files < MIN_FILES_FOR_WORKERS:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(local_world, 1)))


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file with ``load_image``; a file that fails comes back as (None, message) for the loader to raise
    as DataError in the main process (a worker's exception would arrive wrapped in a traceback)."""

    def __init__(self, split: FileSplit) -> None:
        if split.size is None:
            raise ValueError("FileSplit.size must be set before loading batches")
        self.files, self.labels, self.channels, self.size = split.files, split.labels, split.channels, split.size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int | str]:
        from cnnctl.data.transforms import load_image

        try:
            return load_image(self.files[i], self.channels, self.size), self.labels[i]
        except DataError as e:
            return None, str(e)


def _collate(items: list[tuple[torch.Tensor | None, int | str]]) -> tuple[torch.Tensor | None, Any]:
    errors = [message for image, message in items if image is None]
    if errors:
        return None, errors[0]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)
