"""Datasets as plain tensors or file lists, their splits and statistics, and the batch loaders over them.

Every dataset but ``imagefolder`` fits in memory, so it is one uint8 tensor and batches are cut from it by
indexing, on the device when it is a GPU (as in airbench and nanoGPT: uint8 moves and indexes four times cheaper
than float32, and a DataLoader's per-image work is the bottleneck on these small images). ``imagefolder`` is
decoded once into such a tensor when ``data.cache`` says so (cnnctl/data/cache.py), else streams its files through
a DataLoader. Both loaders share the batch plan, the normalization and the augmentation, so an
epoch of either is a pure function of ``(seed, epoch)``: ``batches(epoch, start=k)`` yields exactly the batches
``k..`` of a full pass, which is what a mid-epoch resume needs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from cnnctl.config import Augment, DataConfig
from cnnctl.data.splits import (  # noqa: F401  (the splits are part of this module's interface)
    DataBundle,
    FileSplit,
    Split,
    TensorSplit,
    _collate,
    _FileDataset,
    resolve_workers,
)
from cnnctl.errors import ConfigError, DataError

log = logging.getLogger("cnnctl")



# ---------------------------------------------------------------- splits and bundles


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (e.g. ``(seed, "perm", epoch)``), the same in every process and Python."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def labels_of(split: Split) -> torch.Tensor:
    return split.labels if isinstance(split, TensorSplit) else torch.tensor(split.labels, dtype=torch.int64)


def take(split: Split, index: torch.Tensor) -> Split:
    """The samples of ``split`` at ``index``, in that order."""
    if isinstance(split, TensorSplit):
        return TensorSplit(split.images[index], split.labels[index])
    rows = index.tolist()
    return FileSplit([split.files[i] for i in rows], [split.labels[i] for i in rows], split.channels, split.size)


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified ``(kept, held)`` indices, ``held`` being ``fraction`` of the samples, each ascending.

    Each class gives its share of ``round(fraction * N)`` (largest remainders get the leftover places, ties in a
    seeded order) and keeps at least one sample where the others can make up the number, so no class vanishes
    from the kept part unless it must.
    """
    n = len(labels)
    n_held = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n > 1 else 0
    if n_held == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    exact = counts.double() * n_held / n
    room = (counts - 1).clamp_min(0)
    quota = torch.minimum(exact.floor().long(), room)
    order = torch.randperm(len(classes), generator=generator)
    by_remainder = order[torch.argsort((exact - quota)[order], descending=True, stable=True)]
    for limit in (room, counts):  # classes' last samples are held out only when nothing else is left
        while (short := n_held - int(quota.sum())) > 0:
            open_classes = by_remainder[quota[by_remainder] < limit[by_remainder]]
            if len(open_classes) == 0:
                break
            quota[open_classes[:short]] += 1
    # Group a seeded shuffle by class (stable sort) and hold out the first quota[c] of each class.
    perm = torch.randperm(n, generator=generator)
    grouped = perm[torch.argsort(inverse[perm], stable=True)]
    group = inverse[grouped]
    rank_in_class = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[group]
    held = grouped[rank_in_class < quota[group]].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten(), held


def split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """``split`` without a seeded, stratified ``fraction`` of it, and that fraction (None when 0)."""
    kept, held = stratified_indices(labels_of(split), fraction, seed)
    if len(held) == 0:
        return split, None
    return take(split, kept), take(split, held)


# ---------------------------------------------------------------- load_data


def load_data(cfg: DataConfig, seed: int, device: torch.device | str | None = None) -> DataBundle:
    """Load ``cfg.dataset``, decode image files once (``cfg.cache``), hold out the validation split, resize, and fix
    the normalization.

    The validation split is ``cfg.val_split`` of train, seeded and stratified, unless the dataset brings its own
    (an imagefolder ``val/``). ``normalize: auto`` computes the per-channel mean and std of the train split.
    ``device``: where the data will be used, for ``cache: auto``'s budget (None: the CPU).
    """
    from cnnctl.data.cache import decode_once
    from cnnctl.data.registry import DATASETS

    bundle: DataBundle = DATASETS.get(cfg.dataset)(cfg, seed)
    # Before the validation split: the cache is keyed by every file of the folder, whatever val_split and seed.
    decode_once(bundle, cfg, device)
    if bundle.val is None and cfg.val_split > 0:
        bundle.train, bundle.val = split_off(bundle.train, cfg.val_split, derive_seed(seed, "val"))
    if len(bundle.train) == 0:
        raise DataError(f"dataset {cfg.dataset} has no training images", key="data.root")
    if cfg.image_size is not None:
        bundle.size = (cfg.image_size, cfg.image_size)
    for name in ("train", "val", "test"):
        part = getattr(bundle, name)
        if isinstance(part, TensorSplit):
            part.images = _resize_all(part.images, bundle.size)
    bundle.mean, bundle.std = _normalization(cfg, bundle)
    return bundle


def _resize_all(images: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    from cnnctl.data.transforms import resize

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.cat([resize(part, size) for part in images.split(chunk)])


def _normalization(cfg: DataConfig, bundle: DataBundle) -> tuple[list[float], list[float]]:
    channels = bundle.channels
    if cfg.normalize == "none":
        return [0.0] * channels, [1.0] * channels
    if cfg.normalize != "auto":
        mean, std = list(cfg.normalize.mean), list(cfg.normalize.std)
        if len(mean) != channels:
            raise ConfigError(f"{len(mean)} mean/std value(s) given, but {bundle.dataset} images have {channels} "
                              f"channel(s); give {channels} of each, or use normalize: auto", key="data.normalize")
        return mean, std
    histogram = torch.zeros(channels, 256, dtype=torch.int64)
    if isinstance(bundle.train, TensorSplit):
        for part in bundle.train.images.split(4096):
            for c in range(channels):
                histogram[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    else:
        log.info("normalize: auto: computing the mean and std of %d training images", len(bundle.train))
        loader = FileLoader(bundle.train, BatchPlan(len(bundle.train), 256, False, 0), torch.device("cpu"),
                            [0.0] * channels, [1.0] * channels, None, 0, workers=cfg.workers)
        for x, _ in loader.uint8_batches(0):
            for c in range(channels):
                histogram[c] += torch.bincount(x[:, c].reshape(-1), minlength=256)
    return channel_stats(histogram)


def channel_stats(histogram: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and (population) std per channel in [0, 1] units, from per-channel counts of each uint8 value.

    Counting values and summing in float64 is exact where a float32 running sum over 50M pixels is not. A
    constant channel (std 0) gets std 1, so normalizing it does not divide by zero.
    """
    counts = histogram.double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1).clamp_min(1)
    mean = (counts * values).sum(1) / n
    std = ((counts * (values - mean[:, None]) ** 2).sum(1) / n).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.tolist(), std.tolist()


# ---------------------------------------------------------------- normalization


def _affine(mean: Any, std: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each [1, C, 1, 1] float32 on ``device``, with x * scale + shift == (x / 255 - mean) / std."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    return (1 / (255 * std)).float().to(device), (-mean / std).float().to(device)


def _normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if images.is_cuda:
        x = torch.addcmul(shift, images, scale)  # one fused kernel from uint8 (addcmul promotes) instead of three
    else:
        # On CPU a broadcast addcmul from uint8 runs unvectorized: 3x slower than the three in-place passes
        # (59 us against 18 us for 128 MNIST images, torch.utils.benchmark).
        x = images.float().mul_(scale).add_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_model_input(images_uint8: torch.Tensor, mean: Any, std: Any, device: torch.device, *,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 images [N, C, H, W] to the normalized float32 batch a model takes, on ``device``.

    The one normalization of cnnctl: the loaders, ``cnnctl eval`` and ``cnnctl predict`` all go through it.
    """
    scale, shift = _affine(mean, std, device)
    return _normalize(images_uint8.to(device, non_blocking=True), scale, shift, channels_last)


# ---------------------------------------------------------------- batch plan


@dataclass
class BatchPlan:
    """Which samples each batch of an epoch holds, for one rank.

    Train: the epoch's permutation comes from ``(seed, epoch)`` alone; ``batch_size`` is the global batch, cut
    into ``world_size`` equal contiguous shards of which rank r takes shard r. The last partial batch is kept,
    trimmed to a multiple of ``world_size``, unless a shard would hold a single image (BatchNorm cannot train on
    one). Eval: no shuffle; rank r takes the r-th contiguous part of the samples, every sample exactly once.
    """

    n: int
    batch_size: int
    train: bool
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.train:
            self.full, rest = divmod(self.n, self.batch_size)
            rest -= rest % self.world_size
            self.last = rest if rest // self.world_size >= 2 else 0
            self.num_batches = self.full + (self.last > 0)
            self.num_samples = (self.full * self.batch_size + self.last) // self.world_size
        else:
            self.lo = self.n * self.rank // self.world_size
            self.num_samples = self.n * (self.rank + 1) // self.world_size - self.lo
            self.local_batch = -(-self.batch_size // self.world_size)
            self.num_batches = -(-self.num_samples // self.local_batch)

    def permutation(self, epoch: int) -> torch.Tensor | None:
        """The epoch's order of the samples (train), or None (eval: the stored order)."""
        if not self.train:
            return None
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "perm", epoch))
        return torch.randperm(self.n, generator=generator)

    def batch(self, b: int, perm: torch.Tensor | None) -> tuple[torch.Tensor | slice, int, int]:
        """Batch ``b`` for this rank: (its indices into the split, the global batch size, this shard's offset)."""
        if not self.train:
            start = self.lo + b * self.local_batch
            stop = min(start + self.local_batch, self.lo + self.num_samples)
            return slice(start, stop), stop - start, 0
        assert perm is not None
        size, offset = self.shard(b)
        start = b * self.batch_size + offset
        return perm[start: start + size // self.world_size], size, offset

    def shard(self, b: int) -> tuple[int, int]:
        """Train batch ``b``: the global batch size and where this rank's shard starts in it."""
        size = self.batch_size if b < self.full else self.last
        return size, self.rank * (size // self.world_size)

    def augment_generator(self, epoch: int, b: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, "augment", epoch, b))


# ---------------------------------------------------------------- loaders


class BatchLoader(Protocol):
    num_samples: int  # samples this rank sees per epoch

    def __len__(self) -> int: ...  # batches per epoch for this rank

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def make_loader(split: Split, *, batch_size: int, train: bool, device: torch.device, mean: Any, std: Any,
                augment: Augment | None, seed: int, rank: int = 0, world_size: int = 1, workers: int | str = "auto",
                channels_last: bool = False) -> BatchLoader:
    """A loader over ``split`` yielding normalized float32 batches and int64 labels on ``device``.

    ``batch_size`` is the global batch across ``world_size`` processes; ``augment`` applies to train only.
    """
    if train and world_size > 1 and batch_size % world_size:
        raise ConfigError(f"{batch_size} is the global batch over {world_size} processes, so it must be a multiple "
                          f"of {world_size}; e.g. batch_size: {batch_size - batch_size % world_size or world_size}",
                          key="data.batch_size")
    plan = BatchPlan(len(split), batch_size, train, seed, rank, world_size)
    augment = augment if train and augment is not None and (augment.crop_padding or augment.hflip) else None
    if isinstance(split, TensorSplit):
        return TensorLoader(split, plan, device, mean, std, augment, channels_last=channels_last)
    return FileLoader(split, plan, device, mean, std, augment, world_size, workers=workers,
                      channels_last=channels_last)


class TensorLoader:
    """Batches cut by indexing one uint8 tensor; with a GPU the tensor moves there once, on the first epoch."""

    def __init__(self, split: TensorSplit, plan: BatchPlan, device: torch.device, mean: Any, std: Any,
                 augment: Augment | None, *, channels_last: bool = False) -> None:
        self.split, self.plan, self.device, self.augment = split, plan, torch.device(device), augment
        self.mean, self.std, self.channels_last = mean, std, channels_last
        self.num_samples = plan.num_samples
        self._on_device: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.plan.num_batches

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._on_device is None:
            scale, shift = _affine(self.mean, self.std, self.device)
            self._on_device = (self.split.images.to(self.device), self.split.labels.to(self.device), scale, shift)
        return self._on_device

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels, scale, shift = self._tensors()
        perm = self.plan.permutation(epoch)
        if perm is not None:
            perm = perm.to(self.device)
        for b in range(start, len(self)):
            index, total, offset = self.plan.batch(b, perm)
            if isinstance(index, slice):
                x, y = images[index], labels[index]
            else:  # index_select, not images[index]: advanced indexing of uint8 rows is ~20x slower on CPU
                x, y = images.index_select(0, index), labels.index_select(0, index)
            if self.augment is not None:
                x = _augment(x, self.augment, self.plan.augment_generator(epoch, b), total, offset)
            yield _normalize(x, scale, shift, self.channels_last), y


def _augment(x: torch.Tensor, augment: Augment, generator: torch.Generator, total: int, offset: int) -> torch.Tensor:
    from cnnctl.data.transforms import augment_batch

    return augment_batch(x, augment, generator, total=total, offset=offset)


class _PlanSampler(torch.utils.data.Sampler):
    """Yields one rank's index batches of an epoch from batch ``start`` on; ``epoch`` and ``start`` are set before
    each pass, so one DataLoader (and its persistent workers) serves every epoch."""

    def __init__(self, plan: BatchPlan) -> None:
        self.plan, self.epoch, self.start = plan, 0, 0

    def __len__(self) -> int:
        return max(self.plan.num_batches - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.plan.permutation(self.epoch)
        for b in range(self.start, self.plan.num_batches):
            index, _, _ = self.plan.batch(b, perm)
            yield list(range(index.start, index.stop)) if isinstance(index, slice) else index.tolist()


class FileLoader:
    """Batches of image files decoded by a DataLoader (workers, pinned memory), then augmented and normalized on the
    device with the same functions as TensorLoader.

    The batches follow the same plan as TensorLoader's (a sampler over ``BatchPlan``, in place of a
    DistributedSampler), so resuming at batch k decodes nothing before it and each rank sees its shard.
    """

    def __init__(self, split: FileSplit, plan: BatchPlan, device: torch.device, mean: Any, std: Any,
                 augment: Augment | None, world_size: int = 1, *, workers: int | str = "auto",
                 channels_last: bool = False) -> None:
        self.plan, self.device, self.augment, self.channels_last = plan, torch.device(device), augment, channels_last
        self.num_samples = plan.num_samples
        self.scale, self.shift = _affine(mean, std, self.device)
        self.sampler = _PlanSampler(plan)
        num_workers = resolve_workers(workers, len(split), world_size)
        self.loader = torch.utils.data.DataLoader(
            _FileDataset(split), batch_sampler=self.sampler, num_workers=num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return self.plan.num_batches

    def uint8_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The decoded uint8 batches and labels, on the CPU, before augmentation."""
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.loader:
            if x is None:
                raise DataError(y)
            yield x, y

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b, (x, y) in enumerate(self.uint8_batches(epoch, start), start):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.augment is not None:
                total, offset = self.plan.shard(b)
                x = _augment(x, self.augment, self.plan.augment_generator(epoch, b), total, offset)
            yield _normalize(x, self.scale, self.shift, self.channels_last), y
