"""torchvision's published ImageNet weights for the zoo (``model.pretrained``): which architectures have them, where
torchvision keeps them, and what they bring with them (mean, std, input size).

The zoo's networks have torchvision's module names and shapes (``resnet.py``, ``vgg.py``, ``alexnet.py``), so
torchvision's files load into them as they are, found through torchvision's own weights API
(``get_model_weights``) and loaded through torch.hub's loader and cache (``$TORCH_HOME/hub/checkpoints/`` under the
file name of the URL): a machine with internet downloads a file once, and one without is told where to put it.

Names are listed without importing torch, so the config can check them at load; torchvision loads on use.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cnnctl.errors import CheckpointError, ConfigError, first_line

if TYPE_CHECKING:
    import torch

    from cnnctl.config import Config

log = logging.getLogger("cnnctl")

# The zoo's architectures that torchvision publishes ImageNet weights for, under the same name. Not: lenet5, custom,
# resnet200 (torchvision has none) and the CIFAR ResNets (resnet20..1202, a 16-32-64 layout of their own).
WITH_WEIGHTS = (
    "alexnet",
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
)
TORCHVISION_PREFIX = "torchvision."


def has_weights(arch: str) -> bool:
    """Whether torchvision may have weights for ``arch``: a zoo name of ``WITH_WEIGHTS``, or ``torchvision.NAME``
    (whose weights are looked up when the run starts)."""
    return arch in WITH_WEIGHTS or arch.startswith(TORCHVISION_PREFIX)


def no_weights_message(arch: str) -> str:
    """Why ``arch`` cannot be pretrained, and which architectures can."""
    return (f"arch {arch!r} has no published pretrained weights; torchvision publishes ImageNet weights for "
            f"{', '.join(WITH_WEIGHTS)} and torchvision.NAME (e.g. torchvision.mobilenet_v3_small). Use one of "
            "those, or remove model.pretrained to train from random weights")


@dataclass(frozen=True)
class PretrainedWeights:
    """One entry of torchvision's weights API, and what cnnctl takes from it.

    ``size`` is the side of the images the weights were evaluated on (the centre crop of their ``transforms()``);
    ``mean``/``std`` the normalisation they were trained with, in [0, 1] units as cnnctl's ``data.normalize``.
    """

    arch: str  # the config's model.arch
    name: str  # torchvision's name, e.g. ResNet18_Weights.IMAGENET1K_V1
    url: str
    path: Path  # where torch.hub keeps the file: $TORCH_HOME/hub/checkpoints/<the URL's file name>
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    classes: int


def find_weights(arch: str, pretrained: bool | str) -> PretrainedWeights:
    """The weights ``model.pretrained`` names for ``arch``: ``true`` is torchvision's DEFAULT (its best), a string
    one of its names (``IMAGENET1K_V1``, or ``ResNet18_Weights.IMAGENET1K_V1``). ConfigError, naming what exists,
    for an architecture or a name torchvision has no weights for."""
    if not has_weights(arch):
        raise ConfigError(no_weights_message(arch), key="model.pretrained")
    import torch.hub
    import torchvision

    tv_name = arch.removeprefix(TORCHVISION_PREFIX)
    try:
        enum = torchvision.models.get_model_weights(tv_name)
    except (ValueError, KeyError):  # not a torchvision builder: model.arch's own check says which exist
        raise ConfigError(f"torchvision has no weights for {tv_name!r}; "
                          f"{no_weights_message(arch).split('; ', 1)[1]}", key="model.pretrained") from None
    weights = _entry(enum, arch, pretrained)
    transforms = weights.transforms()
    return PretrainedWeights(
        arch=arch, name=f"{enum.__name__}.{weights.name}", url=weights.url,
        path=Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path),
        mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
        size=int(transforms.crop_size[0]), classes=len(weights.meta["categories"]))


def _entry(enum: Any, arch: str, pretrained: bool | str) -> Any:
    names = [w.name for w in enum]
    if pretrained is True:
        return enum.DEFAULT
    key = str(pretrained).removeprefix(f"{enum.__name__}.")
    if key == "DEFAULT":
        return enum.DEFAULT
    if key not in names:
        raise ConfigError(f"torchvision has no weights {pretrained!r} for {arch}; it has {', '.join(names)} "
                          f"(true picks DEFAULT, {enum.DEFAULT.name})", key="model.pretrained")
    return enum[key]


def load_weights(weights: PretrainedWeights, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The weights' state_dict, through torch.hub's loader: from its cache, or downloaded into it once.

    Offline with nothing in the cache, CheckpointError naming the URL and the exact path to put the file at; a
    cached file that torch cannot read, CheckpointError naming it (delete it and it is downloaded again).
    """
    import torch.hub

    cached = weights.path.exists()
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=progress, check_hash=True,
                                                   weights_only=True, map_location="cpu")
    except OSError as e:  # URLError, a refused connection, a cache folder that cannot be made
        if cached:
            raise CheckpointError(f"cannot read {weights.name}: {first_line(e)}", file=str(weights.path)) from None
        raise CheckpointError(_offline_message(weights, e), key="model.pretrained") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        # torch.load's ways to fail on a bad file; RuntimeError also for a download whose hash is not the URL's
        what = "the cached file is unreadable" if cached else "the downloaded file failed its check"
        raise CheckpointError(f"{what} ({first_line(e)[:160]}); delete it and run again to download "
                              f"{weights.url} afresh", file=str(weights.path)) from None
    return _torchvision_keys(weights.arch, state)


def _offline_message(weights: PretrainedWeights, error: OSError) -> str:
    reason = getattr(error, "reason", None) or error.strerror or first_line(error)
    return (f"{weights.arch} {weights.name} is not in torch.hub's cache and could not be downloaded ({reason}). "
            f"On a machine with internet, download {weights.url} and put it at {weights.path} (torch.hub's cache, "
            "$TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch), then run again; or remove "
            "model.pretrained to train from random weights")


def _torchvision_keys(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """The file's keys as torchvision's modules name them today. Only DenseNet's files predate its names
    (``norm.1`` for ``norm1``); torchvision renames them on load the same way (``densenet._load_state_dict``)."""
    if not arch.startswith(f"{TORCHVISION_PREFIX}densenet"):
        return state
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    return {(f"{m.group(1)}{m.group(2)}" if (m := pattern.match(k)) else k): v for k, v in state.items()}


def apply_weight_defaults(config: Config, source: str | None = None) -> Config:
    """``config`` with what ``model.pretrained``'s weights bring filled in where the config leaves it open, logged
    with the reason: ``data.normalize: auto`` becomes the weights' mean and std (the network's features expect
    inputs normalised as in its training), an unset ``data.image_size`` their size (the scale those features were
    learned at). A config that sets either keeps its own. Returns ``config`` itself without ``model.pretrained``.

    Done once where a run's config is resolved, so config.yaml and the checkpoints say what the run used.
    ``source`` (the config file) is named in errors.
    """
    if not config.model.pretrained:
        return config
    try:
        weights = find_weights(config.model.arch, config.model.pretrained)
    except ConfigError as e:
        raise ConfigError(str(e), file=source) from None
    data = config.dump()["data"]
    taken = []
    if data["normalize"] == "auto":
        data["normalize"] = {"mean": list(weights.mean), "std": list(weights.std)}
        taken.append(f"data.normalize mean {list(weights.mean)} std {list(weights.std)} (the inputs the network "
                     "learned its features on; normalize: auto would use this dataset's own statistics)")
    if data["image_size"] is None:
        data["image_size"] = weights.size
        taken.append(f"data.image_size {weights.size} (the size the weights were trained at; set data.image_size "
                     "for another: smaller is faster, farther from the scale the features were learned at)")
    if not taken:
        return config
    log.info("model.pretrained %s: from the weights: %s", weights.name, "; ".join(taken))
    return type(config).model_validate({**config.dump(), "data": data})
