"""The language of a search space's values: ``{uniform: [lo, hi]}``, ``{loguniform: ...}``, ``{int: ...}``,
``{choice: [...]}`` (and a bare list for a grid), one pydantic model each, with the messages a mistake in one gets."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from cnnctl.config import (
    clip,
    short_repr,
)

KINDS = ("uniform", "loguniform", "int", "choice")


# PyYAML reads 1e-4 (no dot) as a string; accept it as the number everyone means.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _exponent(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


def as_number(value: Any) -> float | int:
    value = _exponent(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"needs a finite number, not {short_repr(value)}")
    return value


def as_whole(value: Any) -> int:
    value = as_number(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"needs a whole number, not {value:g}")
    return int(value)


def as_scalar(value: Any) -> Any:
    value = _exponent(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"choice values are numbers, strings, true/false or null (optuna samples no lists or "
                         f"mappings); got {short_repr(value)}")
    return value


# Plain validators rather than unions of strict types: one message per bad value, and no bool taken for a number.
Number = Annotated[Any, AfterValidator(as_number)]


Whole = Annotated[Any, AfterValidator(as_whole)]


Value = Annotated[Any, AfterValidator(as_scalar)]


class BaseDistribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def probes(self) -> list[Any]:
        """Values checked against the config before any trial."""
        raise NotImplementedError

    def _ordered(self) -> None:
        low, high = self.bounds  # type: ignore[attr-defined]
        if low > high:
            raise ValueError(f"{self.describe()}: low is greater than high; swap them")

    def describe(self) -> str:
        raise NotImplementedError


class Uniform(BaseDistribution):
    """``{uniform: [low, high]}``, optionally ``step: s`` (a grid of low, low+s, ...) or ``log: true``."""

    bounds: tuple[Number, Number] = Field(alias="uniform")
    step: Annotated[Number, Field(gt=0)] | None = None
    log: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> Uniform:
        self._ordered()
        if self.step is not None and self.log:
            raise ValueError("give step or log: true, not both (a log scale has no fixed step)")
        if self.log and self.bounds[0] <= 0:
            raise ValueError(f"{self.describe()}: log: true needs low > 0 (a log scale has no 0)")
        return self

    @property
    def kind(self) -> str:
        return "loguniform" if self.log else "uniform"

    def suggest(self, trial: Any, key: str) -> float:
        return trial.suggest_float(key, self.bounds[0], self.bounds[1], step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        low, high = self.bounds
        inner = math.sqrt(low * high) if self.log else low + 0.37 * (high - low)  # a fractional inner point
        return [low, inner, high]

    def describe(self) -> str:
        return f"{self.kind} [{self.bounds[0]:g}, {self.bounds[1]:g}]" + (f", step {self.step:g}" if self.step else "")


class LogUniform(BaseDistribution):
    """``{loguniform: [low, high]}``: uniform on a log scale (``uniform`` with ``log: true``)."""

    bounds: tuple[Number, Number] = Field(alias="loguniform")

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        self._ordered()
        low, high = self.bounds
        if low <= 0:
            raise ValueError(f"{self.describe()}: low must be > 0 (a log scale has no 0); e.g. [1.0e-5, {high:g}]")
        return self

    @property
    def kind(self) -> str:
        return "loguniform"

    def suggest(self, trial: Any, key: str) -> float:
        return trial.suggest_float(key, self.bounds[0], self.bounds[1], log=True)

    def probes(self) -> list[Any]:
        low, high = self.bounds
        return [low, math.sqrt(low * high), high]

    def describe(self) -> str:
        return f"loguniform [{self.bounds[0]:g}, {self.bounds[1]:g}]"


class IntRange(BaseDistribution):
    """``{int: [low, high]}``: whole numbers, optionally ``step: s`` or ``log: true``."""

    bounds: tuple[Whole, Whole] = Field(alias="int")
    step: Annotated[Whole, Field(ge=1)] | None = None
    log: StrictBool = False

    @model_validator(mode="after")
    def _consistent(self) -> IntRange:
        self._ordered()
        low, high = self.bounds
        if self.step is not None and self.log:
            raise ValueError("give step or log: true, not both (a log scale has no fixed step)")
        if self.step is not None and (high - low) % self.step:
            raise ValueError(f"{self.describe()}: high - low is not a multiple of the step; e.g. "
                             f"[{low}, {high - (high - low) % self.step}]")
        if self.log and low <= 0:
            raise ValueError(f"{self.describe()} with log: true needs low >= 1")
        return self

    @property
    def kind(self) -> str:
        return "int"

    def suggest(self, trial: Any, key: str) -> int:
        return trial.suggest_int(key, self.bounds[0], self.bounds[1], step=self.step or 1, log=self.log)

    def probes(self) -> list[Any]:
        return list(self.bounds)

    def describe(self) -> str:
        extra = (f", step {self.step}" if self.step else "") + (", log" if self.log else "")
        return f"int [{self.bounds[0]}, {self.bounds[1]}]{extra}"


class Choice(BaseDistribution):
    """``{choice: [a, b, ...]}`` or a plain list: numbers, strings, true/false or null."""

    values: list[Value] = Field(alias="choice")

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError("choice needs a non-empty list of values, e.g. {choice: [sgd, adam]}")
        if len({repr(v) for v in values}) != len(values):
            twice = next(v for i, v in enumerate(values) if repr(v) in {repr(u) for u in values[:i]})
            raise ValueError(f"choice lists {shown(twice)} twice")
        return values

    @property
    def kind(self) -> str:
        return "choice"

    def suggest(self, trial: Any, key: str) -> Any:
        return trial.suggest_categorical(key, list(self.values))

    def probes(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return f"choice {yaml_value(list(self.values))}"


def kind_of(spec: Any) -> str | None:
    return next((k for k in KINDS if k in spec), None) if isinstance(spec, dict) else None


def shown(value: Any) -> str:
    """A value as a space file would write it, cut short: a huge value never makes a huge message."""
    return clip(yaml_value(value), 60)


def yaml_value(value: Any) -> str:
    """``value`` as the text of a ``--set KEY=VALUE`` that reads back as exactly ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()
