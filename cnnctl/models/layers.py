"""``arch: custom``: a network from the config's typed layers (:mod:`cnnctl.models.specs`, validated when the config
loads), shapes inferred and checked, and its size checked, without running or allocating anything.

Shapes are tracked as
(C, H, W) for a feature map and (F,) for a vector, so ``in_channels`` and ``in_features`` are inferred, and a
layer that cannot take what reaches it is reported before torch runs anything, as ``model.layers[3] (conv)``
(``model.layers[5].residual[0] (conv)`` inside a residual block), with the arithmetic. Before any weight is allocated
the parameter count and the activations per image are checked against :data:`cnnctl.models.limits.MAX_ELEMENTS` and
the memory available, so that a layer too large to build is named with its figure instead of ending in the
allocator's traceback.

Kinds and their arguments (kernels are square; the types are checked by :class:`cnnctl.models.specs.Layer`):

- ``conv: {out, kernel, stride: 1, padding: 0, bias: true}``; ``conv: 16`` is ``{out: 16, kernel: 3, padding: 1}``
  (a 3x3 convolution that keeps the size)
- ``batchnorm``: BatchNorm2d on a map, BatchNorm1d on a vector
- ``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``identity``; ``leaky_relu: 0.1`` (the negative slope, default 0.01)
- ``maxpool``, ``avgpool``, ``sumpool``: ``{kernel, stride: kernel, padding: 0}`` or ``maxpool: 2``; sumpool adds
  up each window (average pooling times the window's area)
- ``adaptive_avgpool: 1`` (the output side, default 1)
- ``dropout: 0.3`` (p, default 0.5)
- ``flatten``
- ``linear: {out, in, bias: true}`` or ``linear: 120``; ``in`` is inferred (and checked when given); a ``linear``
  without ``out`` is the classifier: one output per class
- ``residual: [layers...]``: ``branch(x) + shortcut(x)``; the shortcut is the identity when the branch keeps the
  shape, else a 1x1 convolution (strided when the branch shrinks the map) + BatchNorm, ResNet's projection
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnctl.errors import ConfigError, ShapeError
from cnnctl.models.limits import LayerSize, check_size, shape_text
from cnnctl.models.specs import Layer, as_layers

Shape = tuple[int, ...]  # (C, H, W) for a feature map, (F,) for a vector


class Residual(nn.Module):
    """``branch(x) + shortcut(x)``; the shortcut is the identity, or a 1x1 convolution + BN projection."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class SumPool2d(nn.AvgPool2d):
    """The sum over each window: average pooling without the division (``divisor_override=1``)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__(kernel_size, stride, padding, divisor_override=1)


class Custom(nn.Module):
    """The config's layers as ``self.layers`` (so ``model.layers[3]`` in an error is ``layers.3`` here)."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ---------------------------------------------------------------- shape arithmetic


def _out_side(size: int, kernel: int, stride: int, padding: int, where: str, shape: Shape) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{where}: a {kernel}x{kernel} kernel does not fit the {shape_text(shape)} that reaches it: "
            f"out = floor(({size} + 2*{padding} - {kernel}) / {stride}) + 1 = {out}; use a smaller kernel, more "
            "padding, fewer pooling layers before it, or a larger data.image_size"
        )
    return out


def _need_map(shape: Shape, where: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(
            f"{where}: needs a feature map (channels x height x width) but gets a vector of {shape[0]} features "
            "(after flatten or linear); move it before flatten"
        )
    c, h, w = shape
    return c, h, w


# ---------------------------------------------------------------- one plan per kind


@dataclass(frozen=True)
class Planned:
    """A layer whose shapes are known and whose module is not built yet: ``make()`` allocates it."""

    where: str  # model.layers[3] (conv)
    make: Callable[[], nn.Module]
    shape: Shape  # what it gives
    params: int  # its weights, a residual block's branch and projection included
    formula: str  # how params is counted, for messages
    activations: int  # numbers it outputs per image, a residual block's branch included


def _planned(where: str, make: Callable[[], nn.Module], shape: Shape, params: int = 0, formula: str = "") -> Planned:
    return Planned(where, make, shape, params, formula or f"{params:,}", math.prod(shape))


def _conv(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
    c, h, w = _need_map(shape, where)
    k, s, p = a.kernel, a.stride, a.padding
    out = (a.out, _out_side(h, k, s, p, where, shape), _out_side(w, k, s, p, where, shape))
    params = k * k * c * a.out + (a.out if a.bias else 0)
    formula = f"{k}*{k}*{c}*{a.out:,}" + (f" + {a.out:,}" if a.bias else "")
    return _planned(where, lambda: nn.Conv2d(c, a.out, k, stride=s, padding=p, bias=a.bias), out, params, formula)


def _pool(cls: type[nn.Module]) -> Callable[[Any, Shape, str, int], Planned]:
    def plan(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
        c, h, w = _need_map(shape, where)
        k, s, p = a.kernel, a.stride or a.kernel, a.padding
        out = (c, _out_side(h, k, s, p, where, shape), _out_side(w, k, s, p, where, shape))
        return _planned(where, lambda: cls(k, s, p), out)

    return plan


def _adaptive_avgpool(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
    c, _, _ = _need_map(shape, where)
    return _planned(where, lambda: nn.AdaptiveAvgPool2d(a.size), (c, a.size, a.size))


def _batchnorm(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
    norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    return _planned(where, lambda: norm(shape[0]), shape, 2 * shape[0], f"2*{shape[0]:,}")


def _flatten(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
    return _planned(where, nn.Flatten, (math.prod(shape),))


def _linear(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
    if len(shape) != 1:
        raise ShapeError(
            f"{where}: gets a {shape_text(shape)}; add `flatten` before it (or `adaptive_avgpool: 1` then `flatten`)"
        )
    given = getattr(a, "in")
    if given is not None and given != shape[0]:
        raise ShapeError(
            f"{where}: in = {given} but {shape[0]} features reach it ({shape_text(shape)}); remove `in` (it is "
            f"inferred) or set it to {shape[0]}"
        )
    n_in, out = shape[0], a.out if a.out is not None else num_classes
    params = n_in * out + (out if a.bias else 0)
    formula = f"{n_in:,}*{out:,}" + (f" + {out:,}" if a.bias else "")
    return _planned(where, lambda: nn.Linear(n_in, out, bias=a.bias), (out,), params, formula)


def _same(make: Callable[[Any], nn.Module]) -> Callable[[Any, Shape, str, int], Planned]:
    def plan(a: Any, shape: Shape, where: str, num_classes: int) -> Planned:
        return _planned(where, lambda: make(a), shape)

    return plan


def _residual(branch: list[Layer], shape: Shape, where: str, num_classes: int) -> Planned:
    steps, out = plan_layers(branch, shape, num_classes, f"{where.removesuffix(' (residual)')}.residual")
    params = sum(step.params for step in steps)
    activations = sum(step.activations for step in steps) + math.prod(out)

    def make_branch() -> nn.Sequential:
        return nn.Sequential(*(step.make() for step in steps))

    if out == shape:
        return Planned(where, lambda: Residual(make_branch()), out, params, f"{params:,}", activations)
    if len(shape) != 3 or len(out) != 3:
        raise ShapeError(
            f"{where}: its branch turns the {shape_text(shape)} into {shape_text(out)}; a shortcut can only add maps to maps: "
            "keep flatten and linear outside the residual block"
        )
    # A 1x1 conv of stride s (no padding) gives floor((side - 1) / s) + 1: try the stride the sizes suggest.
    stride = shape[1] // out[1]
    if stride < 1 or any((side - 1) // stride + 1 != o for side, o in zip(shape[1:], out[1:], strict=True)):
        raise ShapeError(
            f"{where}: its branch turns the {shape_text(shape)} into {shape_text(out)}, which no 1x1 projection shortcut can "
            "match (it can change the channels and shrink the map by a whole stride); keep the spatial size "
            "(padding = kernel // 2) or halve it with stride 2"
        )

    def make() -> Residual:
        projection = nn.Sequential(nn.Conv2d(shape[0], out[0], 1, stride=stride, bias=False), nn.BatchNorm2d(out[0]))
        return Residual(make_branch(), projection)

    params += shape[0] * out[0] + 2 * out[0]
    return Planned(where, make, out, params, f"{params:,}", activations + 2 * math.prod(out))


PLANS: dict[str, Callable[[Any, Shape, str, int], Planned]] = {
    "conv": _conv,
    "batchnorm": _batchnorm,
    "relu": _same(lambda a: nn.ReLU()),
    "leaky_relu": _same(lambda a: nn.LeakyReLU(a.slope)),
    "tanh": _same(lambda a: nn.Tanh()),
    "sigmoid": _same(lambda a: nn.Sigmoid()),
    "gelu": _same(lambda a: nn.GELU()),
    "identity": _same(lambda a: nn.Identity()),
    "maxpool": _pool(nn.MaxPool2d),
    "avgpool": _pool(nn.AvgPool2d),
    "sumpool": _pool(SumPool2d),
    "adaptive_avgpool": _adaptive_avgpool,
    "dropout": _same(lambda a: nn.Dropout(a.p)),
    "flatten": _flatten,
    "linear": _linear,
    "residual": _residual,
}


def plan_layers(
    layers: Sequence[Layer | Any], shape: Shape, num_classes: int, prefix: str
) -> tuple[list[Planned], Shape]:
    """The layers planned from ``shape`` (nothing allocated), and the shape they give; errors name ``prefix[i] (kind)``."""
    steps: list[Planned] = []
    for i, layer in enumerate(as_layers(list(layers))):
        step = PLANS[layer.kind](layer.args, shape, f"{prefix}[{i}] ({layer.kind})", num_classes)
        steps.append(step)
        shape = step.shape
    return steps, shape


def _size(step: Planned) -> LayerSize:
    counted = f"{step.params:,}"
    formula = counted if step.formula == counted else f"{step.formula} = {counted}"
    return LayerSize(step.where, step.params, formula, step.activations, shape_text(step.shape))


def _check_size(steps: list[Planned]) -> None:
    """Refuse a network too large to allocate, naming its largest layer, before a single weight exists."""
    check_size([_size(step) for step in steps], key="model.layers",
               mend_params="Use fewer channels (conv out) or smaller linear layers (pool or stride before flatten)",
               mend_activations="Use fewer channels, a smaller data.image_size, or pool or stride earlier")


def check_layers(layers: Sequence[Layer | Any], *, in_channels: int, image_size: tuple[int, int], num_classes: int) -> Shape:
    """Validate a layer list statically; returns the output shape (raises ConfigError or ShapeError)."""
    _, shape = plan_layers(layers, (in_channels, *image_size), num_classes, "model.layers")
    return shape


def custom(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    layers: Sequence[Layer | Any],
    dropout: float = 0.0,
) -> Custom:
    """A network from the config's ``layers`` for ``in_channels`` x ``image_size`` inputs and ``num_classes``
    outputs. The model-level ``dropout`` is refused: dropout goes where the list puts a ``dropout`` layer."""
    if dropout:
        raise ConfigError("model.dropout: arch custom places dropout as layers; add `- dropout: 0.3` where you want it")
    if not layers:
        raise ConfigError("model.layers: arch custom needs a non-empty list of layers")
    steps, shape = plan_layers(layers, (in_channels, *image_size), num_classes, "model.layers")
    if shape != (num_classes,):
        raise ShapeError(
            f"model.layers: the last layer gives {'a ' if len(shape) == 3 else ''}{shape_text(shape)}, but the network "
            f"must end with {num_classes} class scores; end with `flatten` and `linear` (a linear without out gives "
            "one output per class)"
        )
    _check_size(steps)
    return Custom(nn.Sequential(*(step.make() for step in steps)))
