"""Tiny datasets in the real on-disk formats, for tests that load them through the real code.

- MNIST family: IDX files (big-endian; magic 2051 for images, 2049 for labels), gzipped and/or extracted, in
  ``ROOT/<MNIST|FashionMNIST|KMNIST>/raw/``.
- CIFAR-10/100: the pickled batches of ``cifar-10-batches-py/`` / ``cifar-100-python/``, optionally as the
  ``.tar.gz`` torchvision extracts.
- imagefolder: PNG files in class folders.

The images carry their class (a bright square whose place depends on the label, over noise), so a network can
learn them. Every writer returns the md5 of each file it wrote, for tests that point torchvision's checksum lists
at these files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def class_images(labels: np.ndarray, channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 images [N, H, W, C]: dim noise plus a bright square placed by the label (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), height, width, channels), dtype=np.uint8)
    side = max(1, min(height, width) // 4)
    for i, label in enumerate(labels):
        row = (int(label) * 3) % max(1, height - side)
        col = (int(label) * 5) % max(1, width - side)
        images[i, row: row + side, col: col + side, :] = 255 - (int(label) * 7) % 50
    return images


def balanced_labels(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """``n`` labels, as even over the classes as ``n`` allows, shuffled."""
    labels = np.arange(n) % num_classes
    np.random.default_rng(seed).shuffle(labels)
    return labels.astype(np.uint8 if num_classes <= 256 else np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: the magic number, the sizes (big-endian int32) and the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {1: IDX_LABELS_MAGIC, 3: IDX_IMAGES_MAGIC}[array.ndim]
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()


def write_mnist(root: Path, dataset: str = "mnist", *, n_train: int = 60, n_test: int = 20, size: int = 28,
                extracted: bool = True, archives: bool = True, seed: int = 0) -> dict[str, str]:
    """Write ``ROOT/<Folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    ``extracted``: the plain IDX files, which are all torchvision's MNIST checks for. ``archives``: the .gz files
    (their md5 differ from torchvision's list, so a test that wants them extracted must patch ``resources``).
    Returns {file name: md5}.
    """
    raw = Path(root) / MNIST_FOLDERS[dataset] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 1)):
        labels = balanced_labels(n, 10, seed + offset)
        images = class_images(labels, 1, size, size, seed + offset)[..., 0]
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if extracted:
                (raw / name).write_bytes(data)
                written[name] = md5(raw / name)
            if archives:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
                written[f"{name}.gz"] = md5(raw / f"{name}.gz")
    return written


def _pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return md5(path)


def write_cifar(root: Path, dataset: str = "cifar10", *, n_train: int = 50, n_test: int = 20, tar: bool = False,
                seed: int = 0) -> dict[str, str]:
    """Write CIFAR's pickled batches (``cifar-10-batches-py/`` or ``cifar-100-python/``) under ``root``.

    CIFAR-10: ``data_batch_1..5`` (n_train split over them), ``test_batch``, ``batches.meta``. CIFAR-100:
    ``train``, ``test``, ``meta``. ``tar``: pack the folder into the ``.tar.gz`` torchvision extracts, and remove it.
    Returns {file name: md5}, the archive's included when ``tar``.
    """
    root = Path(root)
    hundred = dataset == "cifar100"
    num_classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, offset: int, name: str) -> dict:
        labels = balanced_labels(n, num_classes, seed + offset).astype(int).tolist()
        data = class_images(np.array(labels), 3, 32, 32, seed + offset).transpose(0, 3, 1, 2).reshape(n, 3072)
        entry = {"batch_label": name, "data": data, "filenames": [f"{name}_{i}.png" for i in range(n)]}
        if hundred:
            entry.update(fine_labels=labels, coarse_labels=[label // 5 for label in labels])
        else:
            entry["labels"] = labels
        return entry

    written: dict[str, str] = {}
    if hundred:
        written["train"] = _pickle(folder / "train", batch(n_train, 0, "train"))
        written["test"] = _pickle(folder / "test", batch(n_test, 100, "test"))
        meta = {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]}
        written["meta"] = _pickle(folder / "meta", meta)
    else:
        sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)]
        for i, n in enumerate(sizes, 1):
            written[f"data_batch_{i}"] = _pickle(folder / f"data_batch_{i}", batch(n, i, f"training batch {i} of 5"))
        written["test_batch"] = _pickle(folder / "test_batch", batch(n_test, 100, "testing batch 1 of 1"))
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        written["batches.meta"] = _pickle(folder / "batches.meta",
                                          {"label_names": names, "num_cases_per_batch": max(sizes), "num_vis": 3072})
    if tar:
        archive = root / ("cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
            tf.add(folder, arcname=folder.name)
        archive.write_bytes(buffer.getvalue())
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
        written[archive.name] = md5(archive)
    return written


def write_png(path: Path, image: np.ndarray) -> Path:
    """Save an HxW or HxWxC uint8 array as a PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    Image.fromarray(array).save(path)
    return path


def write_image_folder(root: Path, per_class: dict[str, int], *, channels: int = 3, size: tuple[int, int] = (12, 12),
                       seed: int = 0) -> list[Path]:
    """``root/CLASS/CLASS_i.png`` for each class and count; RGB for ``channels`` 3, grayscale ("L") for 1."""
    files = []
    for k, (name, n) in enumerate(sorted(per_class.items())):
        images = class_images(np.full(n, k), channels, size[0], size[1], seed + k)
        files += [write_png(Path(root) / name / f"{name}_{i}.png", image) for i, image in enumerate(images)]
    return files
