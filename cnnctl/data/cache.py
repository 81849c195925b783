"""Decode once: image files turned into one uint8 tensor, kept in memory and optionally on disk.

``data.cache`` (file datasets, i.e. ``imagefolder``):

- ``none``: stream, decoding every image every epoch (FileLoader).
- ``memory``: decode every image once, in parallel over the DataLoader workers, resized to the bundle's size; the
  splits become TensorSplits and train exactly like the built-in datasets (TensorLoader: the same batch plan,
  augmentation and resume guarantees, so a cached run and a streamed run with one seed give the same weights).
- ``disk``: as ``memory``, and the decoded tensor is also written to ``CACHE_DIR/imagefolder-HxWxC-ROOTID.pt``
  (``data.cache_dir``, by default ``ROOT/.cnnctl-cache/``, which imagefolder skips as a hidden folder), so the
  next run starts without decoding. The file holds the list of files it was made from, a key over their sizes and
  modification times (with ``data.cache_verify: true``, their contents), the image size and channels, and a digest
  of the pixels: a changed, added or removed file or a different size makes it out of date (rebuilt); a file that
  cannot be read back intact (truncated, corrupt) is rebuilt with a warning, never trusted. It is written
  atomically, and a cache folder that cannot be written (read-only, a full disk) costs a warning, not the run.
- ``auto``: ``memory`` when the decoded images fit in ``MEMORY_FRACTION`` of the memory available (the RAM
  available now, shared by the processes of this machine, and the free memory of the GPU when training on CUDA),
  otherwise ``none``; the log says which it chose and why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from cnnctl.config import DataConfig
from cnnctl.data.splits import DataBundle, FileSplit, TensorSplit
from cnnctl.errors import DataError, WriteError
from cnnctl.io import writing

log = logging.getLogger("cnnctl")

CACHE_FORMAT = 1
CACHE_FOLDER = ".cnnctl-cache"
# auto: the decoded set may take this share of the memory available. The rest is left for the model, the
# optimizer, activations and whatever else runs on the machine; a set that does not fit is streamed.
MEMORY_FRACTION = 0.5
DECODE_BATCH = 256
SPLITS = ("train", "val", "test")


def decode_once(bundle: DataBundle, cfg: DataConfig, device: torch.device | str | None = None) -> DataBundle:
    """Replace ``bundle``'s FileSplits by TensorSplits as ``cfg.cache`` asks (in place; also returned).

    ``device`` is where training will run: with ``auto`` on CUDA the decoded set must also fit in the GPU's free
    memory, because TensorLoader moves it there. None means the CPU.
    """
    parts = [(name, getattr(bundle, name)) for name in SPLITS if isinstance(getattr(bundle, name), FileSplit)]
    if not parts or cfg.cache == "none":
        return bundle
    files = [f for _, part in parts for f in part.files]
    channels, size = parts[0][1].channels, parts[0][1].size
    assert size is not None and all(p.channels == channels and p.size == size for _, p in parts)
    nbytes = len(files) * channels * size[0] * size[1]
    mode = cfg.cache
    if mode == "auto":
        budget, where = memory_budget(device)
        if nbytes > budget:
            log.info("data.cache auto: streaming %d images from disk each epoch: decoded they would take %s, more "
                     "than %s (%d%% of %s); set data.cache: memory to decode them once anyway",
                     len(files), _size(nbytes), _size(budget), round(MEMORY_FRACTION * 100), where)
            return bundle
        log.info("data.cache auto: decoding %d images once into memory (%s, within %s: %d%% of %s)", len(files),
                 _size(nbytes), _size(budget), round(MEMORY_FRACTION * 100), where)
        mode = "memory"
    cached = None
    if mode == "disk":
        path = cache_path(cfg, channels, size)
        entries = file_entries(files, Path(cfg.root), verify=cfg.cache_verify)
        key = cache_key(entries, channels, size)
        cached = read_cache(path, key, (channels, *size))
    if cached is not None:
        stored, row = cached
        rows = torch.tensor([row[name] for name, _, _ in entries], dtype=torch.int64)
        log.info("data.cache disk: %d decoded images read from %s", len(files), path)
        # index_select copies each split out of the mapped file in this run's order, so no second full copy is made.
        tensors = [stored.index_select(0, part_rows) for part_rows in rows.split([len(p) for _, p in parts])]
        del stored, cached
    else:
        images = decode_files(files, channels, size, workers=cfg.workers)
        if mode == "disk":
            write_cache(path, key, entries, images)
        # Separate tensors, not views of one: a view would keep the whole set alive after the val split copies
        # train apart.
        tensors = [images] if len(parts) == 1 else [t.clone() for t in images.split([len(p) for _, p in parts])]
        del images
    for (name, part), images in zip(parts, tensors, strict=True):
        setattr(bundle, name, TensorSplit(images, torch.tensor(part.labels, dtype=torch.int64)))
    return bundle


# ---------------------------------------------------------------- budget


def memory_budget(device: torch.device | str | None) -> tuple[int, str]:
    """(bytes the decoded set may take, a phrase saying of what) for ``auto``."""
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # each process holds its own copy
    ram = available_ram()
    budget, where = int(MEMORY_FRACTION * ram / local_world), f"the {_size(ram)} of RAM available"
    if local_world > 1:
        where += f" shared by {local_world} processes"
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if MEMORY_FRACTION * free < budget:
            budget, where = int(MEMORY_FRACTION * free), f"the {_size(free)} free on {device}"
    return budget, where


def available_ram() -> int:
    """Bytes of RAM new allocations can get (``runtime.available_memory``); 0 where unknown: streaming works."""
    from cnnctl.runtime import available_memory

    return available_memory() or 0


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- decoding


def decode_files(files: list[Path], channels: int, size: tuple[int, int], *, workers: int | str = "auto",
                 progress: bool | None = None) -> torch.Tensor:
    """Decode ``files`` with ``load_image`` into one uint8 tensor [N, channels, H, W], in order.

    The files are read by a DataLoader over the same workers as streaming would use, with a progress bar on stderr
    (``progress`` None: only when stderr is a terminal). A file that cannot be read raises its DataError.
    """
    from tqdm.auto import tqdm  # a widget in Jupyter

    from cnnctl.data.splits import _collate, _FileDataset, resolve_workers

    images = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    dataset = _FileDataset(FileSplit(files, [0] * len(files), channels, size))
    num_workers = resolve_workers(workers, len(files))
    loader = torch.utils.data.DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=num_workers,
                                         collate_fn=_collate)
    log.info("decoding %d images once (%d worker%s)", len(files), num_workers, "" if num_workers == 1 else "s")
    start = 0
    # tqdm: None hides the bar when stderr is not a terminal; a notebook's bar is shown
    hide = None if progress is None else not progress
    with tqdm(total=len(files), desc="decoding images", unit="img", file=sys.stderr, disable=hide, leave=False) as bar:
        for x, message in loader:
            if x is None:
                raise DataError(message)
            images[start: start + len(x)] = x
            start += len(x)
            bar.update(len(x))
    return images


# ---------------------------------------------------------------- the cache file


def cache_path(cfg: DataConfig, channels: int, size: tuple[int, int]) -> Path:
    """Where the cache of ``cfg.root`` at this size lives; one file per root and size, rewritten when stale."""
    root = Path(cfg.root).resolve()
    folder = Path(cfg.cache_dir) if cfg.cache_dir else root / CACHE_FOLDER
    root_id = hashlib.blake2b(str(root).encode(), digest_size=6).hexdigest()  # several roots may share a cache_dir
    return folder / f"imagefolder-{size[0]}x{size[1]}x{channels}-{root_id}.pt"


def file_entries(files: list[Path], root: Path, *, verify: bool = False) -> list[list[Any]]:
    """``[path relative to root, size, mtime in ns]`` of each file, in order; what the cache is keyed by.

    ``verify`` (``data.cache_verify``): a digest of the file's bytes in place of its mtime. An image edited in place
    whose size and mtime were kept (restored by a sync tool, or within the file system's mtime resolution) then
    still makes the cache out of date, at the cost of reading every file each run.
    """
    entries = []
    for f in files:
        try:
            st = os.stat(f)
            stamp = _file_digest(f) if verify else st.st_mtime_ns
        except OSError as e:
            raise DataError(f"cannot read: {e.strerror or e}", file=str(f)) from None
        entries.append([os.path.relpath(f, root), st.st_size, stamp])
    return entries


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(entries: list[list[Any]], channels: int, size: tuple[int, int]) -> str:
    """A digest of the sorted file entries, the decoded shape and what decodes them (PIL's version)."""
    import PIL

    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((CACHE_FORMAT, PIL.__version__, channels, tuple(size))).encode())
    for entry in sorted(entries):
        digest.update(repr(entry).encode())
    return digest.hexdigest()


def _pixels_digest(images: torch.Tensor) -> str:
    return hashlib.blake2b(memoryview(images.contiguous().numpy()).cast("B"), digest_size=16).hexdigest()


def read_cache(path: Path, key: str, shape: tuple[int, int, int]) -> tuple[torch.Tensor, dict[str, int]] | None:
    """The cache at ``path`` (its images, memory-mapped, and each file's row) if it is there, intact and made for
    ``key``, else None.

    A file that exists but cannot be read back whole and consistent is reported as a warning and ignored.
    """
    if not path.is_file():
        log.info("data.cache disk: no cache at %s yet; it will be written after decoding", path)
        return None
    try:
        # mmap: the pixels are paged in from the file instead of being read into a buffer first.
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if saved.get("format") != CACHE_FORMAT:
            log.info("data.cache disk: %s has format %s, not %s; rebuilding it", path, saved.get("format"),
                     CACHE_FORMAT)
            return None
        if saved["key"] != key:
            log.info("data.cache disk: %s is out of date (files added, removed or changed since); rebuilding it",
                     path)
            return None
        stored, files = saved["images"], saved["files"]
        if stored.dtype != torch.uint8 or tuple(stored.shape) != (len(files), *shape):
            raise ValueError(f"it holds {stored.dtype} {tuple(stored.shape)} for {len(files)} files")
        if saved["digest"] != _pixels_digest(stored):
            raise ValueError("its pixels do not match their digest")
        return stored, {name: i for i, name in enumerate(files)}
    except Exception as e:  # a truncated zip, a missing key, a wrong type: whatever it is, the file is not trusted
        reason = str(e).splitlines()[0] if str(e) else ""
        log.warning("data.cache disk: %s is corrupt or truncated (%s: %s); ignoring it and rebuilding it from the "
                    "images", path, type(e).__name__, reason)
        return None


def write_cache(path: Path, key: str, entries: list[list[Any]], images: torch.Tensor) -> None:
    """Write the cache atomically; a folder that cannot be written (read-only, a full disk) is a warning: the run
    trains from memory without it."""
    from cnnctl.training.checkpoint import atomic_write

    payload = {"format": CACHE_FORMAT, "key": key, "files": [name for name, _, _ in entries], "images": images,
               "digest": _pixels_digest(images)}
    try:
        with writing(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(payload, f))
    except WriteError as e:
        log.warning("data.cache disk: could not write the cache %s: %s; this run trains without it, from the %s "
                    "decoded in memory, and the next run decodes again. Set data.cache_dir to a writable folder "
                    "with room for it", path, e.reason, _size(images.numel()))
        return
    log.info("data.cache disk: wrote %d decoded images (%s) to %s", len(images), _size(images.numel()), path)
