"""``arch: custom``: a network from the config's list of layers, shapes inferred and checked without running it.

Each item is a name (``relu``) or a one-key mapping (``conv: {out: 16, kernel: 3}``). Shapes are tracked as
(C, H, W) for a feature map and (F,) for a vector, so ``in_channels`` and ``in_features`` are inferred, and a
layer that cannot take what reaches it is reported before torch runs anything, as ``model.layers[3] (conv)``
(``model.layers[5].residual[0] (conv)`` inside a residual block), with the arithmetic.

Kinds and their arguments (kernels are square):

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnctl.errors import ConfigError, ShapeError
from cnnctl.registry import closest

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


def _show(shape: Shape) -> str:
    return "x".join(map(str, shape)) + (" map" if len(shape) == 3 else " features")


def _out_side(size: int, kernel: int, stride: int, padding: int, where: str, shape: Shape) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{where}: a {kernel}x{kernel} kernel does not fit the {_show(shape)} that reaches it: "
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


# ---------------------------------------------------------------- one builder per kind

Built = tuple[nn.Module, Shape]


def _conv(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
    c, h, w = _need_map(shape, where)
    k, s, p = a["kernel"], a["stride"], a["padding"]
    out = (a["out"], _out_side(h, k, s, p, where, shape), _out_side(w, k, s, p, where, shape))
    return nn.Conv2d(c, a["out"], k, stride=s, padding=p, bias=a["bias"]), out


def _pool(cls: type[nn.Module]) -> Callable[[dict[str, Any], Shape, str, int], Built]:
    def build(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
        c, h, w = _need_map(shape, where)
        k, p = a["kernel"], a["padding"]
        s = a["stride"] or k
        if p > k // 2:  # torch's rule: a window must hold at least one real pixel
            raise ConfigError(f"{where}: padding {p} must be at most half the kernel ({k // 2})")
        return cls(k, s, p), (c, _out_side(h, k, s, p, where, shape), _out_side(w, k, s, p, where, shape))

    return build


def _adaptive_avgpool(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
    c, _, _ = _need_map(shape, where)
    return nn.AdaptiveAvgPool2d(a["size"]), (c, a["size"], a["size"])


def _batchnorm(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
    return (nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])), shape


def _flatten(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
    return nn.Flatten(), (math.prod(shape),)


def _linear(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
    if len(shape) != 1:
        raise ShapeError(
            f"{where}: gets a {_show(shape)}; add `flatten` before it (or `adaptive_avgpool: 1` then `flatten`)"
        )
    if a["in"] is not None and a["in"] != shape[0]:
        raise ShapeError(
            f"{where}: in = {a['in']} but {shape[0]} features reach it ({_show(shape)}); remove `in` (it is "
            f"inferred) or set it to {shape[0]}"
        )
    out = a["out"] if a["out"] is not None else num_classes
    return nn.Linear(shape[0], out, bias=a["bias"]), (out,)


def _simple(make: Callable[[dict[str, Any]], nn.Module]) -> Callable[[dict[str, Any], Shape, str, int], Built]:
    def build(a: dict[str, Any], shape: Shape, where: str, num_classes: int) -> Built:
        return make(a), shape

    return build


def _residual(raw: Any, shape: Shape, where: str, num_classes: int) -> Built:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            f"{where}: residual takes a non-empty list of layers (its branch), e.g. residual: [{{conv: 16}}, relu]"
        )
    modules, out = build_layers(raw, shape, num_classes, f"{where.removesuffix(' (residual)')}.residual")
    if out == shape:
        return Residual(nn.Sequential(*modules)), out
    if len(shape) != 3 or len(out) != 3:
        raise ShapeError(
            f"{where}: its branch turns the {_show(shape)} into {_show(out)}; a shortcut can only add maps to maps: "
            "keep flatten and linear outside the residual block"
        )
    # A 1x1 conv of stride s (no padding) gives floor((side - 1) / s) + 1: try the stride the sizes suggest.
    stride = shape[1] // out[1]
    if stride < 1 or any((side - 1) // stride + 1 != o for side, o in zip(shape[1:], out[1:], strict=True)):
        raise ShapeError(
            f"{where}: its branch turns the {_show(shape)} into {_show(out)}, which no 1x1 projection shortcut can "
            "match (it can change the channels and shrink the map by a whole stride); keep the spatial size "
            "(padding = kernel // 2) or halve it with stride 2"
        )
    shortcut = nn.Sequential(nn.Conv2d(shape[0], out[0], 1, stride=stride, bias=False), nn.BatchNorm2d(out[0]))
    return Residual(nn.Sequential(*modules), shortcut), out


@dataclass(frozen=True)
class Kind:
    """A layer kind: its builder, the names of its arguments, the one a bare number sets, and the defaults."""

    build: Callable[[Any, Shape, str, int], Built]
    args: tuple[str, ...] = ()
    shorthand: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


_POOL_ARGS = {
    "args": ("kernel", "stride", "padding"),
    "shorthand": "kernel",
    "defaults": {"stride": None, "padding": 0},
}
KINDS: dict[str, Kind] = {
    "conv": Kind(
        _conv,
        ("out", "kernel", "stride", "padding", "bias"),
        "out",
        {"stride": 1, "padding": 0, "bias": True},
        required=("out", "kernel"),
    ),
    "batchnorm": Kind(_batchnorm),
    "relu": Kind(_simple(lambda a: nn.ReLU())),
    "leaky_relu": Kind(_simple(lambda a: nn.LeakyReLU(a["slope"])), ("slope",), "slope", {"slope": 0.01}),
    "tanh": Kind(_simple(lambda a: nn.Tanh())),
    "sigmoid": Kind(_simple(lambda a: nn.Sigmoid())),
    "gelu": Kind(_simple(lambda a: nn.GELU())),
    "identity": Kind(_simple(lambda a: nn.Identity())),
    "maxpool": Kind(_pool(nn.MaxPool2d), **_POOL_ARGS, required=("kernel",)),
    "avgpool": Kind(_pool(nn.AvgPool2d), **_POOL_ARGS, required=("kernel",)),
    "sumpool": Kind(_pool(SumPool2d), **_POOL_ARGS, required=("kernel",)),
    "adaptive_avgpool": Kind(_adaptive_avgpool, ("size",), "size", {"size": 1}),
    "dropout": Kind(_simple(lambda a: nn.Dropout(a["p"])), ("p",), "p", {"p": 0.5}),
    "flatten": Kind(_flatten),
    "linear": Kind(_linear, ("out", "in", "bias"), "out", {"out": None, "in": None, "bias": True}),
    "residual": Kind(_residual),
}

# Argument types: integers with their minimum, booleans, numbers with their range.
_INTS = {"out": 1, "kernel": 1, "stride": 1, "padding": 0, "in": 1, "size": 1}
_BOOLS = ("bias",)


# ---------------------------------------------------------------- parsing


def _parse(item: Any, where: str) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and len(item) == 1:
        [(kind, raw)] = item.items()
        return str(kind), raw
    raise ConfigError(
        f"{where}: a layer is a name (e.g. relu) or a one-key mapping (e.g. conv: {{out: 8, kernel: 3}}), not {item!r}"
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _args(kind: str, spec: Kind, raw: Any, where: str) -> dict[str, Any]:
    """The layer's arguments with defaults filled in, each checked for its type and range."""
    if raw is None:
        given: dict[str, Any] = {}
    elif isinstance(raw, dict):
        given = dict(raw)
        for key in given:
            if key not in spec.args:
                hint = closest(str(key), spec.args)
                raise ConfigError(
                    f"{where}: {kind} has no argument {key!r}"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + f" Valid: {', '.join(spec.args) or 'none, it takes no arguments'}"
                )
    elif spec.shorthand is not None and _is_number(raw):
        given = {spec.shorthand: raw}
        if kind == "conv":  # `conv: 16`: the common 3x3 convolution that keeps the size
            given.update(kernel=3, padding=1)
    else:
        takes = f"a number ({spec.shorthand}) or a mapping of {', '.join(spec.args)}" if spec.args else "no arguments"
        raise ConfigError(f"{where}: {kind} takes {takes}, not {raw!r}")
    args = {**spec.defaults, **given}
    for key in spec.required:
        if args.get(key) is None:
            example = "conv: {out: 16, kernel: 3}" if kind == "conv" else f"{kind}: {{kernel: 2}}"
            raise ConfigError(f"{where}: {kind} needs {key}, e.g. {example}")
    for key, value in args.items():
        if value is None:
            continue
        if key in _INTS and (not isinstance(value, int) or isinstance(value, bool) or value < _INTS[key]):
            raise ConfigError(f"{where}: {kind} {key} must be an integer >= {_INTS[key]}, not {value!r}")
        if key in _BOOLS and not isinstance(value, bool):
            raise ConfigError(f"{where}: {kind} {key} must be true or false, not {value!r}")
    if kind == "dropout" and not (_is_number(args["p"]) and 0 <= args["p"] < 1):
        raise ConfigError(f"{where}: dropout p must be a number in [0, 1), not {args['p']!r}")
    if kind == "leaky_relu" and not _is_number(args["slope"]):
        raise ConfigError(f"{where}: leaky_relu slope must be a number, not {args['slope']!r}")
    return args


def build_layers(specs: list[Any], shape: Shape, num_classes: int, prefix: str) -> tuple[list[nn.Module], Shape]:
    """Modules for ``specs`` starting from ``shape``, and the shape they produce; errors name ``prefix[i] (kind)``."""
    modules: list[nn.Module] = []
    for i, item in enumerate(specs):
        kind, raw = _parse(item, f"{prefix}[{i}]")
        spec = KINDS.get(kind)
        if spec is None:
            hint = closest(kind, KINDS)
            raise ConfigError(
                f"{prefix}[{i}]: unknown layer kind {kind!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" Known: {', '.join(KINDS)}"
            )
        where = f"{prefix}[{i}] ({kind})"
        args = raw if kind == "residual" else _args(kind, spec, raw, where)
        module, shape = spec.build(args, shape, where, num_classes)
        modules.append(module)
    return modules, shape


def check_layers(layers: list[Any], *, in_channels: int, image_size: tuple[int, int], num_classes: int) -> Shape:
    """Validate a layer list statically; returns the output shape (raises ConfigError or ShapeError)."""
    _, shape = build_layers(layers, (in_channels, *image_size), num_classes, "model.layers")
    return shape


def custom(
    *, num_classes: int, in_channels: int, image_size: tuple[int, int], layers: list[Any], dropout: float = 0.0
) -> Custom:
    """A network from the config's ``layers`` for ``in_channels`` x ``image_size`` inputs and ``num_classes``
    outputs. The model-level ``dropout`` is refused: dropout goes where the list puts a ``dropout`` layer."""
    if dropout:
        raise ConfigError("model.dropout: arch custom places dropout as layers; add `- dropout: 0.3` where you want it")
    if not isinstance(layers, list) or not layers:
        raise ConfigError("model.layers: arch custom needs a non-empty list of layers")
    modules, shape = build_layers(layers, (in_channels, *image_size), num_classes, "model.layers")
    if shape != (num_classes,):
        raise ShapeError(
            f"model.layers: the last layer gives {'a ' if len(shape) == 3 else ''}{_show(shape)}, but the network "
            f"must end with {num_classes} class scores; end with `flatten` and `linear` (a linear without out gives "
            "one output per class)"
        )
    return Custom(nn.Sequential(*modules))
