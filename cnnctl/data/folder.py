"""``imagefolder``: your own images, one folder per class, streamed from disk.

Two layouts are understood::

    ROOT/train/CLASS/*.png  [ROOT/val/CLASS/...]  [ROOT/test/CLASS/...]   splits given by folder
    ROOT/CLASS/*.png                                                      one pool: val and test split off it

Class names are the folder names of ``train/`` (or of ROOT), sorted. Images are read by ``load_image``, the same
function ``cnnctl predict`` uses. ``channels`` defaults to 3: every image is read as RGB (grayscale images are
replicated), as torchvision's ImageFolder does; set ``data.channels: 1`` for grayscale data. ``image_size``
defaults to the size of the first training image, and every image is resized to it.
"""

from __future__ import annotations

from pathlib import Path

from cnnctl.config import DataConfig
from cnnctl.data.base import DataBundle, FileSplit, derive_seed, split_off
from cnnctl.data.transforms import IMAGE_SUFFIXES, load_image
from cnnctl.errors import DataError

SPLIT_FOLDERS = {"val": ("val", "valid", "validation"), "test": ("test",)}


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _class_names(folder: Path) -> list[str]:
    classes = [p.name for p in _visible_dirs(folder)]
    if not classes:
        loose = _images_in(folder)
        hint = f" (it holds {len(loose)} images directly; move them into one folder per class)" if loose else ""
        raise DataError(f"no class folders in {folder}{hint}. imagefolder expects ROOT/CLASS/image.png, or "
                        "ROOT/train/CLASS/image.png with optional val/ and test/", key="data.root")
    if len(classes) < 2:
        raise DataError(f"{folder} has one class folder ({classes[0]}); a classifier needs at least two",
                        key="data.root")
    return classes


def _scan(folder: Path, classes: list[str], *, every_class: bool) -> FileSplit:
    """The images under ``folder``/CLASS/ for each class; ``every_class``: a class folder with none is an error."""
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in _visible_dirs(folder):
        if class_dir.name not in index:
            raise DataError(f"{class_dir} is a class that train/ does not have; the classes are train/'s folders "
                            f"({', '.join(classes)}). Rename or remove it", key="data.root")
        found = _images_in(class_dir)
        if not found and every_class:
            raise DataError(f"{class_dir} has no images ({', '.join(IMAGE_SUFFIXES)}); add some or remove the folder",
                            key="data.root")
        files += found
        labels += [index[class_dir.name]] * len(found)
    if not files:
        raise DataError(f"{folder} has no images in its class folders ({', '.join(IMAGE_SUFFIXES)})", key="data.root")
    return FileSplit(files, labels)


def load_imagefolder(cfg: DataConfig, seed: int) -> DataBundle:
    """Scan ``cfg.root`` in either layout; in the one-pool layout hold out a seeded, stratified ``test_split``."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; point data.root at a folder of class folders", key="data.root")
    train_dir = root / "train"
    val = test = None
    if train_dir.is_dir():
        classes = _class_names(train_dir)
        train = _scan(train_dir, classes, every_class=True)
        found = {split: next((root / n for n in names if (root / n).is_dir()), None)
                 for split, names in SPLIT_FOLDERS.items()}
        val = _scan(found["val"], classes, every_class=False) if found["val"] else None
        test = _scan(found["test"], classes, every_class=False) if found["test"] else None
    else:
        classes = _class_names(root)
        train, test = split_off(_scan(root, classes, every_class=True), cfg.test_split, derive_seed(seed, "test"))
    channels = cfg.channels or 3
    if cfg.image_size is not None:
        size = (cfg.image_size, cfg.image_size)
    else:
        height, width = load_image(train.files[0], channels).shape[-2:]
        size = (int(height), int(width))
    for part in (train, val, test):
        if part is not None:
            part.channels, part.size = channels, size
    return DataBundle("imagefolder", classes, channels, size, [], [], train, val, test)
