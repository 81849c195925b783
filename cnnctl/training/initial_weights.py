"""Where a network's first weights come from: torchvision's pretrained ones (``model.pretrained``) or another
run's or file's (``model.init_from``), matched to the network by name and shape.

A tensor of the source goes into the network's tensor of the same name and shape; the network's other tensors keep
their fresh initialisation ("new": typically the classifier, whose shape follows the class count) and the source's
other tensors are left out ("skipped"). The report of the three is logged and written to the run directory as
``init.json``, so what a fine-tuned run started from can be read afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import CheckpointError, ConfigError
from cnnctl.models.pretrained import find_weights, load_weights
from cnnctl.training.checkpoint import read_torch_file, run_checkpoint, weights_problem, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnctl.config import ModelConfig

log = logging.getLogger("cnnctl")

INIT_FILE = "init.json"
_SHOWN = 6  # names a log line lists before "and N more"; init.json lists them all


@dataclass(frozen=True)
class WeightsSource:
    """A state_dict to start from. ``classes`` is set for torchvision's weights: their files hold every tensor of
    the network they were made for, so only the classifier (its outputs: ``classes`` categories) may differ; any other
    tensor that does not fit means the network is laid out otherwise (a stem of its own), not that it is new."""

    key: str  # the config key that named it
    description: str
    state: dict[str, Any] = field(repr=False)
    classes: int | None = None


@dataclass
class InitReport:
    """What a network took from a source: ``loaded`` names, ``new`` and ``skipped`` as ``{"name", "why"}``."""

    source: str
    loaded: list[str]
    new: list[dict[str, str]]
    skipped: list[dict[str, str]]

    def lines(self) -> list[str]:
        total = len(self.loaded) + len(self.new)
        lines = [f"init: {len(self.loaded)} of the network's {total} tensors loaded from {self.source}"]
        if self.new:
            lines.append(f"init: left new (freshly initialised): {_names(self.new)}")
        unknown = [i for i in self.skipped if i["why"] == "not in the network"]  # the reshaped ones are "new"
        if unknown:
            lines.append(f"init: skipped from the source: {_names(unknown)}")
        return lines

    def write(self, run_dir: Path) -> None:
        write_json(run_dir / INIT_FILE, asdict(self))


def _names(items: list[dict[str, str]]) -> str:
    shown = ", ".join(f"{i['name']} ({i['why']})" for i in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more (see {INIT_FILE})" if len(items) > _SHOWN else "")


def weights_source(cfg: ModelConfig, *, in_channels: int) -> WeightsSource | None:
    """The state ``model.pretrained`` or ``model.init_from`` names, read (or downloaded) now: before the data is
    loaded, so a missing file is reported without reading a dataset first. None when the config names neither."""
    if cfg.pretrained:
        if in_channels != 3:
            raise ConfigError(f"torchvision's pretrained weights take 3-channel (RGB) images, but the data has "
                              f"{in_channels} channel(s); use 3-channel data (data.channels: 3 for imagefolder or "
                              "fake), or remove model.pretrained", key="model.pretrained")
        weights = find_weights(cfg.arch, cfg.pretrained)
        return WeightsSource("model.pretrained", f"torchvision {weights.name} ({weights.path})", load_weights(weights),
                             classes=weights.classes)
    if cfg.init_from:
        path = run_checkpoint(cfg.init_from, "best.pt")
        return WeightsSource("model.init_from", str(path), read_state_dict(path))
    return None


def read_state_dict(path: Path) -> dict[str, Any]:
    """The weights in ``path``: a cnnctl checkpoint's ``model``, a plain state_dict, or a ``{"state_dict": ...}``
    (timm's and Lightning's checkpoints), loaded with ``weights_only=True``; CheckpointError for anything else and for
    non-finite weights."""
    data = read_torch_file(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "format" in data:
        data = data["model"]
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise CheckpointError("holds no weights by name: give a cnnctl checkpoint (best.pt, last.pt) or a file of "
                              "torch.save(model.state_dict())", file=str(path), key="model.init_from")
    problem = weights_problem(data)
    if problem:
        raise CheckpointError(problem, file=str(path), key="model.init_from")
    return data


def load_matching(model: nn.Module, source: WeightsSource) -> InitReport:
    """Copy each tensor of ``source`` into ``model``'s tensor of the same name and shape; report the rest.

    Refused (CheckpointError): a source that fits no parameter of the network (another architecture), integer values
    where the network has floating point ones, and for torchvision's weights any network tensor but the classifier
    that they do not fit.
    """
    import torch

    own, state = model.state_dict(), source.state
    loaded, new = [], []
    for name, tensor in own.items():
        theirs = state.get(name)
        if theirs is None:
            new.append({"name": name, "why": "not in the source"})
        elif tuple(theirs.shape) != tuple(tensor.shape):
            new.append({"name": name, "why": _why_reshaped(tensor, theirs, source.classes)})
        else:
            if tensor.is_floating_point() and not theirs.is_floating_point():
                raise CheckpointError(f"weight {name!r} holds {str(theirs.dtype).removeprefix('torch.')} values where "
                                      "the network has floating-point ones; the file was edited or damaged",
                                      file=source.description, key=source.key)
            loaded.append(name)
    skipped = [{"name": n, "why": "not in the network" if n not in own else "another shape"}
               for n in state if n not in loaded]
    _check_fit(model, source, loaded, new)
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(source.state[name])
    return InitReport(source.description, loaded, new, skipped)


def _check_fit(model: nn.Module, source: WeightsSource, loaded: list[str], new: list[dict[str, str]]) -> None:
    params = {n for n, _ in model.named_parameters()}
    if not params & set(loaded):
        reshaped = [i for i in new if i["why"] != "not in the source"]  # the most telling first
        mismatches = "; ".join(f"{i['name']}: {i['why']}" for i in (reshaped + [i for i in new if i not in reshaped])[:3])
        raise CheckpointError(f"none of its {len(source.state)} tensors fits this network by name and shape (first "
                              f"mismatches: {mismatches}); it was trained with another model.arch or data shape. Give "
                              f"a source of the same architecture, or remove {source.key}",
                              file=source.description, key=source.key)
    unfit = [i for i in new if not i["why"].startswith("the classifier")]
    if source.classes is not None and unfit:
        raise CheckpointError(f"{len(unfit)} of the network's tensors do not fit the weights file (first: "
                              f"{unfit[0]['name']}: {unfit[0]['why']}): the network is not laid out as torchvision's; "
                              "with model.pretrained leave model.stem at auto (or imagenet)", key=source.key)


def _why_reshaped(tensor: torch.Tensor, theirs: torch.Tensor, classes: int | None) -> str:
    """Why a tensor of the same name could not be loaded: the classifier of another class count, or another shape."""
    if classes is not None and theirs.ndim and theirs.shape[0] == classes and theirs.shape[1:] == tensor.shape[1:]:
        return f"the classifier: {tensor.shape[0]} classes here, {classes} in the weights"
    return f"{list(tensor.shape)} here, {list(theirs.shape)} in the source"


def initialise(model: nn.Module, source: WeightsSource | None) -> InitReport | None:
    """Load ``source`` into ``model`` (see ``load_matching``) and log the report; None without a source."""
    if source is None:
        return None
    report = load_matching(model, source)
    for line in report.lines():
        log.info("%s", line)
    return report
