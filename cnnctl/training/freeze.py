"""``train.freeze``: which parameters stay fixed while the rest trains, and keeping their layers a fixed function.

A frozen layer is what Keras calls a base model run with ``training=False``: its parameters get no gradient
(``requires_grad=False``, so the optimizer skips them: no update, no weight decay, no optimizer state), and its
layers stay in eval mode even while the network trains, so BatchNorm normalises with its running statistics and
leaves them unchanged, and Dropout is off. Without the second half a "frozen" BatchNorm would still move its
running statistics every step, and the pretrained network would drift although no weight changed.

``freeze: body`` freezes every parameter but the classifier head's (``head_names``); a list names layers or
parameters by name or prefix (``[conv1, bn1, layer1]``, ``features.0``). ``train.freeze_epochs`` ends the freeze
after that many epochs (the ``Unfreeze`` hook), the fastai ``fine_tune`` schedule.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from cnnctl.errors import ConfigError
from cnnctl.registry import did_you_mean

if TYPE_CHECKING:
    from cnnctl.config import TrainConfig


@dataclass(frozen=True)
class Frozen:
    """What ``train.freeze`` resolved to on one network: parameter names, and the leaf layers kept in eval mode."""

    params: frozenset[str]
    layers: tuple[str, ...]
    head: tuple[str, ...]  # the classifier head (``head_names``), whether or not the freeze spares it

    def is_body(self, model: nn.Module) -> bool:
        """Whether everything before the head is frozen and held in eval mode (a dropout between named layers
        too): the body is then a fixed function, whose features may be cached."""
        body = {n for n, _ in model.named_parameters() if not _under(n, self.head)}
        return body <= self.params and {n for n in _leaves(model) if not _under(n, self.head)} <= set(self.layers)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier head: the last ``nn.Linear`` (resnet's ``fc``, vgg's, alexnet's and lenet's ``classifier.6``, a
    custom network's last ``linear``), with the ``nn.Dropout`` registered just before it (resnet's ``dropout``,
    vgg's ``classifier.5``): a new head's regulariser trains with it. Empty when the network has no Linear layer."""
    modules = [(name, m) for name, m in model.named_modules() if name]
    last = max((i for i, (_, m) in enumerate(modules) if isinstance(m, nn.Linear)), default=None)
    if last is None:
        return ()
    if last > 0 and isinstance(modules[last - 1][1], nn.Dropout):
        return modules[last - 1][0], modules[last][0]
    return (modules[last][0],)


def resolve_freeze(model: nn.Module, spec: str | Sequence[str], arch: str) -> Frozen:
    """``spec`` (``"body"`` or layer names/prefixes) on ``model``; ConfigError naming the layers that exist when a
    name matches nothing, when the network has no head to spare, or when nothing would be left to train."""
    head = head_names(model)
    params = [n for n, _ in model.named_parameters()]
    leaves = _leaves(model)
    if spec == "body":
        if not head:
            raise ConfigError(f"freeze: body keeps the classifier head (the last Linear layer) trainable, but {arch} "
                              "has no Linear layer; name the layers to freeze instead (freeze: [NAME, ...])",
                              key="train.freeze")
        names: Sequence[str] = [n for n in leaves if not _under(n, head)]
        frozen = {p for p in params if not _under(p, head)}
    else:
        names = list(spec)
        _check_names(model, names, params, arch)
        frozen = {p for p in params if _under(p, names)}
    if len(frozen) == len(params):
        raise ConfigError(f"train.freeze freezes every parameter of {arch}: nothing would train; leave the head "
                          f"({', '.join(head) or 'its last layer'}) out of it", key="train.freeze")
    return Frozen(frozenset(frozen), tuple(n for n in leaves if _under(n, names)), head)


def freeze_for_training(model: nn.Module, train: TrainConfig, arch: str, *, world_size: int = 1) -> Frozen | None:
    """``train.freeze`` resolved on ``model`` and put in force for the first epoch (None: nothing frozen).

    Under torchrun a schedule that releases the layers is refused: DistributedDataParallel registers its gradient
    hooks once, for the parameters that train when it wraps the model, and would never average the released ones."""
    if train.freeze is None:
        return None
    if train.freeze_epochs is not None and world_size > 1:
        raise ConfigError("releasing frozen layers is not supported under torchrun (DistributedDataParallel would "
                          "not average their gradients); train on one process, or remove freeze_epochs to keep "
                          "them frozen", key="train.freeze_epochs")
    frozen = resolve_freeze(model, train.freeze, arch)
    set_frozen(model, frozen, True)
    return frozen


def _leaves(model: nn.Module) -> list[str]:
    """The modules without children: the layers a forward pass runs (a container's mode is its children's)."""
    return [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or inside one (``layer1.0.conv1.weight`` is under ``layer1``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_names(model: nn.Module, names: Sequence[str], params: list[str], arch: str) -> None:
    """A name must be a layer (or a parameter) of ``model``, or a prefix of some: a parameter-less layer (a dropout)
    is a fine name too, it is then held in eval mode."""
    modules = [n for n, _ in model.named_modules() if n]
    for name in names:
        if not any(_under(n, [name]) for n in modules + params):
            raise ConfigError(f"{name!r} names no layer of {arch}{did_you_mean(name, modules + params)} Its layers: "
                              f"{', '.join(_outline(model))}; give their names or prefixes of them (a block such as "
                              f"{_example(params)}), or body (all but the head)", key="train.freeze")


def _outline(model: nn.Module) -> list[str]:
    """The names of the network's first level of layers with parameters, below a lone container (a custom
    network's ``layers``)."""
    prefix, children = "", list(model.named_children())
    while len(children) == 1 and any(True for _ in children[0][1].children()):
        prefix += children[0][0] + "."
        children = list(children[0][1].named_children())
    return [prefix + n for n, m in children if any(True for _ in m.parameters())]


def _example(params: list[str]) -> str:
    """A nested layer's name from the network's own parameters (``layer1.0``, ``features.0``)."""
    nested = [".".join(p.split(".")[:2]) for p in params if p.count(".") >= 2]
    return nested[0] if nested else params[0].rsplit(".", 1)[0]


def set_frozen(model: nn.Module, frozen: Frozen, on: bool) -> None:
    """Freeze (``on``) or release ``frozen``'s parameters and layers. A frozen layer's ``train()`` keeps it in eval
    mode, so ``model.train()`` (the loop calls it every epoch) leaves it there; released, it follows the model."""
    for name, p in model.named_parameters():
        if name in frozen.params:
            p.requires_grad_(not on)
    for name in frozen.layers:
        layer = model.get_submodule(name)
        if on:
            layer.train = types.MethodType(_stay_in_eval, layer)  # an instance attribute: nn.Module.train recurses to it
            layer.training = False
        else:
            layer.__dict__.pop("train", None)
            layer.training = model.training


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen layer: eval mode whatever is asked (running statistics unchanged, no dropout)."""
    return nn.Module.train(self, False)


def is_frozen(model: nn.Module, frozen: Frozen) -> bool:
    """Whether ``frozen`` is in force on ``model`` now."""
    return any(not p.requires_grad for n, p in model.named_parameters() if n in frozen.params)
