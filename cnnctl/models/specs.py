"""The layers of ``arch: custom`` as typed models, one per kind, validated when the config loads (torch-free).

A layer is a bare name (``relu``) or a one-key mapping from its kind to its arguments (``conv: {out: 16,
kernel: 3}``); kinds with one main argument also take it as a number (``maxpool: 2``, ``leaky_relu: 0.01``,
``dropout: 0.3``, ``linear: 120``, and ``conv: 16``, which is ``{out: 16, kernel: 3, padding: 1}``: the 3x3
convolution that keeps the size). Every argument model forbids unknown keys, so a typo is reported by the config
loader like any other key: ``my.yaml: model.layers[0].conv.kernal: unknown key; did you mean 'kernel'?``.

What depends on the data (in_channels, in_features, whether a kernel fits the map) is checked when the network is
built, by :mod:`cnnctl.models.layers`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails

from cnnctl.errors import ConfigError
from cnnctl.registry import did_you_mean

# Strict: YAML's "3" or yes must not pass as an integer or a boolean.
Count = Annotated[int, Field(strict=True, ge=1)]
NonNegCount = Annotated[int, Field(strict=True, ge=0)]
Flag = Annotated[bool, Field(strict=True)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Args(BaseModel):
    """A layer kind's arguments. ``shorthand`` names the one a bare number sets (None: a number is refused)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    shorthand: ClassVar[str | None] = None

    @classmethod
    def from_number(cls, value: float) -> dict[str, Any]:
        assert cls.shorthand is not None
        return {cls.shorthand: value}

    @model_validator(mode="before")
    @classmethod
    def _number_or_mapping(cls, raw: Any) -> Any:
        if raw is None:
            return {}
        if isinstance(raw, dict):
            unknown = [key for key in raw if key not in cls.model_fields]
            if unknown:
                # Reported alone: a misspelt `kernal` would otherwise come second, after "kernel is missing".
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type="extra_forbidden", loc=(key,), input=raw[key]) for key in unknown]
                )
            return raw
        if isinstance(raw, cls):
            return raw
        if cls.shorthand is not None and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return cls.from_number(raw)
        if not cls.model_fields:
            raise ValueError(f"takes no arguments; write the kind's name alone, not {raw!r}")
        raise ValueError(
            f"takes a number ({cls.shorthand}) or a mapping of {', '.join(cls.model_fields)}, not {raw!r}"
            if cls.shorthand
            else f"takes a mapping of {', '.join(cls.model_fields)}, not {raw!r}"
        )


class NoArgs(Args):
    """batchnorm, relu, tanh, sigmoid, gelu, identity, flatten."""


class ConvArgs(Args):
    shorthand: ClassVar[str | None] = "out"
    out: Count
    kernel: Count
    stride: Count = 1
    padding: NonNegCount = 0
    bias: Flag = True

    @classmethod
    def from_number(cls, value: float) -> dict[str, Any]:
        return {"out": value, "kernel": 3, "padding": 1}  # the common 3x3 convolution that keeps the size


class PoolArgs(Args):
    """maxpool, avgpool, sumpool; ``stride`` None is the kernel (windows side by side)."""

    shorthand: ClassVar[str | None] = "kernel"
    kernel: Count
    stride: Count | None = None
    padding: NonNegCount = 0

    @model_validator(mode="after")
    def _window_holds_a_pixel(self) -> PoolArgs:
        if self.padding > self.kernel // 2:  # torch's rule: every window must hold at least one real pixel
            raise ValueError(f"padding {self.padding} must be at most half the kernel ({self.kernel // 2})")
        return self


class AdaptivePoolArgs(Args):
    shorthand: ClassVar[str | None] = "size"
    size: Count = 1


class DropoutArgs(Args):
    shorthand: ClassVar[str | None] = "p"
    p: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.5


class LeakyReluArgs(Args):
    shorthand: ClassVar[str | None] = "slope"
    slope: Number = 0.01


# `in` is a Python keyword, and the key users write: the field keeps that name so that error messages and
# "did you mean" name it as written.
LinearArgs = create_model(
    "LinearArgs",
    __base__=Args,
    __doc__="``out`` None is the classifier (one output per class); ``in`` is inferred, and checked when given.",
    out=(Count | None, None),
    bias=(Flag, True),
    **{"in": (Count | None, None)},
)
LinearArgs.shorthand = "out"


class Layer(BaseModel):
    """One layer: exactly one of the fields below is set (the kind), holding its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conv: ConvArgs | None = None
    batchnorm: NoArgs | None = None
    relu: NoArgs | None = None
    leaky_relu: LeakyReluArgs | None = None
    tanh: NoArgs | None = None
    sigmoid: NoArgs | None = None
    gelu: NoArgs | None = None
    identity: NoArgs | None = None
    maxpool: PoolArgs | None = None
    avgpool: PoolArgs | None = None
    sumpool: PoolArgs | None = None
    adaptive_avgpool: AdaptivePoolArgs | None = None
    dropout: DropoutArgs | None = None
    flatten: NoArgs | None = None
    linear: LinearArgs | None = None  # type: ignore[valid-type]
    residual: list[Layer] = Field(default_factory=list)  # the branch; a list (not Optional) so errors inside it
    # resolve to `residual[i].kind.key` for the config formatter's "did you mean"

    _kind: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _name_or_one_key_mapping(cls, item: Any) -> Any:
        if isinstance(item, Layer):
            return item
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(
                "a layer is a name (e.g. relu) or a one-key mapping of its kind to its arguments (e.g. conv: {out: 8, "
                f"kernel: 3}}), not {item!r}"
                + ("; put each layer in its own list item (- conv: ...)" if isinstance(item, dict) and item else "")
            )
        [(kind, args)] = item.items()
        if kind == "residual" and args is None:
            raise ValueError("residual takes a non-empty list of layers (its branch), e.g. residual: [{conv: 16}, relu]")
        return {kind: args if args is not None else {}}

    @model_validator(mode="after")
    def _one_kind(self) -> Layer:
        [kind] = self.model_fields_set
        if kind == "residual" and not self.residual:
            raise ValueError("residual takes a non-empty list of layers (its branch), e.g. residual: [{conv: 16}, relu]")
        self._kind = kind
        return self

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def args(self) -> Any:
        """The kind's arguments (an :class:`Args`), or the branch's layers for ``residual``."""
        return getattr(self, self._kind)

    @model_serializer(mode="plain")
    def _as_written(self) -> str | dict[str, Any]:
        """A bare name for kinds without arguments, else ``{kind: {every argument}}``: what a config may say."""
        if self.kind == "residual":
            return {"residual": [layer.model_dump() for layer in self.residual]}
        if isinstance(self.args, NoArgs):
            return self.kind
        return {self.kind: self.args.model_dump()}


KINDS: tuple[str, ...] = tuple(Layer.model_fields)


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` inside a layer (kinds at the top, a kind's arguments below it)."""
    # inside the function: the config package imports this module for Layer
    from cnnctl.config.fields import annotation_at, fields_of

    return list(fields_of(annotation_at(Layer, loc)))


def as_layers(items: list[Any]) -> list[Layer]:
    """Typed layers from plain items (for callers that bypass the config; a config's are typed when it loads)."""
    layers = []
    for i, item in enumerate(items):
        try:
            layers.append(item if isinstance(item, Layer) else Layer.model_validate(item))
        except ValidationError as e:
            first = e.errors()[0]
            loc = first["loc"]
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            message = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                message = "unknown key" + did_you_mean(str(loc[-1]), _keys_at(loc[:-1]))
            raise ConfigError(f"model.layers[{i}]{path}: {message}") from None
    return layers
