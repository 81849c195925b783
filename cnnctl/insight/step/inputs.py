"""What one step needs: the network, the image, its label and the config, from a config or a checkpoint.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.config import Config
from cnnctl.errors import CheckpointError, DataError, UsageError, first_line
from cnnctl.inference.predict import label_index


@dataclass
class Setup:
    """The network, optimizer and image of one step, built by the code training uses."""

    config: Config
    source: dict[str, str]  # kind (config or checkpoint), spec (as given) and path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    classes: list[str]
    spec: dict[str, Any]  # the input: channels, size, mean, std
    channels_last: bool
    images: torch.Tensor | None = None  # uint8 [1, C, H, W]
    label: int | None = None
    sample: str = ""
    notes: list[str] = field(default_factory=list)


def _from_config(spec: str, overrides: Sequence[str]) -> Setup:
    """``run.assemble``'s seeded model and optimizer (the lr the schedule gives step 0) and the first training
    sample of the config's dataset, as training loads it."""
    from cnnctl.config import load_config
    from cnnctl.data.base import labels_of
    from cnnctl.inference.evaluate import split_images
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.run import assemble

    config, path = load_config(spec, list(overrides))
    parts = assemble(config, dist=DistContext(), device="cpu")
    data = parts.data
    images = split_images(data.train, [0], data.channels, data.size)
    inputs = {"channels": data.channels, "size": list(data.size), "mean": list(data.mean), "std": list(data.std)}
    setup = Setup(config, {"kind": "config", "spec": spec, "path": str(path)}, parts.model, parts.optimizer,
                  list(data.classes), inputs, parts.channels_last, images, int(labels_of(data.train)[0]),
                  f"{data.dataset} train[0]")
    if config.data.augment.crop_padding or config.data.augment.hflip:
        setup.notes.append("data.augment is not applied: the step shows the image as the dataset holds it")
    return setup


def _from_checkpoint(spec: str, overrides: Sequence[str], *, need_sample: bool) -> Setup:
    """The checkpoint's network and, unless ``--set`` changed optimizer.*, its optimizer state: the step training
    would take next. A run directory means its last.pt."""
    from cnnctl.inference.evaluate import checkpoint_config, model_from_checkpoint, sample_images
    from cnnctl.training.checkpoint import load_checkpoint, run_checkpoint
    from cnnctl.training.optim import create_optimizer

    path = run_checkpoint(spec, "last.pt")
    ckpt = load_checkpoint(path)
    saved = checkpoint_config(ckpt, str(path))
    config = _override_checkpoint(saved, overrides, str(path))
    model = model_from_checkpoint(ckpt, str(path), torch.device("cpu"))
    optimizer = create_optimizer(model, config.optimizer)
    setup = Setup(config, {"kind": "checkpoint", "spec": spec, "path": str(path)}, model, optimizer,
                  [str(c) for c in ckpt["classes"]], dict(ckpt["input"]), False)
    if "optimizer" not in ckpt:
        setup.notes.append("optimizer: a fresh one (the checkpoint holds no optimizer state)")
    elif config.optimizer == saved.optimizer:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"its optimizer state does not fit its network ({first_line(e)}); use a "
                                  "checkpoint written by cnnctl train", file=str(path)) from None
        setup.notes.append("optimizer state and lr: the checkpoint's, as training left them")
    else:
        setup.notes.append("optimizer: a fresh one (--set changed optimizer.*, so the checkpoint's state does not "
                           "apply)")
    if need_sample:
        images, labels, where = sample_images(ckpt, str(path), 1, splits=("train",))
        setup.images, setup.label, setup.sample = images, int(labels[0]), f"{where}[0]"
    return setup


def _override_checkpoint(saved: Config, overrides: Sequence[str], source: str) -> Config:
    """The checkpoint's config with ``--set`` applied; only optimizer.* and train.* may change (the network and
    its data are what the checkpoint holds)."""
    if not overrides:
        return saved
    from cnnctl.config import apply_overrides, flatten_keys, validate_config

    config = validate_config(apply_overrides(saved.dump(), list(overrides)), f"{source} (its config)", list(overrides))
    before, after = flatten_keys(saved.dump()), flatten_keys(config.dump())
    fixed = sorted(k for k in set(before) | set(after)
                   if before.get(k) != after.get(k) and not k.startswith(("optimizer.", "train.")))
    if fixed:
        raise UsageError(f"--set {', '.join(fixed)}: a checkpoint's network and data are fixed; with a checkpoint "
                         "--set may change only optimizer.* and train.* keys (give a config to try other layers or "
                         "data)")
    return config


def _read_image(setup: Setup, image: str) -> None:
    """``--image``: read and resized exactly as ``cnnctl predict`` reads it (normalised later, the same way)."""
    from cnnctl.data.transforms import load_image

    if not Path(image).is_file():
        raise DataError("no such image file (--image takes one image file)", file=image)
    size = (int(setup.spec["size"][0]), int(setup.spec["size"][1]))
    setup.images = load_image(image, int(setup.spec["channels"]), size)[None]
    setup.sample = image


def make_setup(source: str, overrides: Sequence[str], image: str | None, label: str | None) -> Setup:
    if image is not None and label is None:
        raise UsageError("--image needs --label CLASS: the loss, and so every gradient, depends on the true class")
    path = Path(source)
    if path.suffix == ".pt" or path.is_dir():
        setup = _from_checkpoint(source, overrides, need_sample=image is None)
    else:
        setup = _from_config(source, overrides)
    if image is not None:
        _read_image(setup, image)
    if label is not None:
        setup.label = label_index(label, setup.classes, of="the classes")
    return setup


