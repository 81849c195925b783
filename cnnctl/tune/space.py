"""The search-space language of ``cnnctl tune``, as pydantic models.

A space file maps dotted config keys (or nested sections) to distributions::

    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    optimizer.name: {choice: [sgd, adam, rmsprop]}
    model.dropout: {uniform: [0.0, 0.5]}           # also {uniform: [a, b], step: 0.1} or log: true
    data.batch_size: [64, 128, 256]                # a plain list is a choice (and what --method grid takes)
    train.epochs: {int: [5, 20], step: 5}          # also log: true

A distribution is one of four models (a discriminated union keyed by the distribution's name, ``extra="forbid"``).
Each key's values are then checked with that config field's own pydantic type, the combinations against the whole
config (validators that relate keys, such as nesterov needing sgd), and every network the space can build against
the input its data gives it, so a bad space is refused before any trial runs.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    Discriminator,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo

from cnnctl.config import (
    Config,
    UnknownKey,
    apply_overrides,
    bundled_spaces,
    clip,
    field_at,
    fields_of,
    read_yaml,
    short_repr,
    validate_config,
)
from cnnctl.errors import CnnctlError, ConfigError, ShapeError
from cnnctl.registry import did_you_mean
from cnnctl.tune.distributions import (
    KINDS,
    BaseDistribution,
    Choice,
    IntRange,
    LogUniform,
    Uniform,
    kind_of,
    shown,
    yaml_value,
)

log = logging.getLogger("cnnctl.tune")

SET_BY_TUNE = ("name", "out")  # every trial gets its own run name and the study folder
# Keys that change the network or the input it is given; their values are built and run once before the study.
SHAPE_KEYS = ("model.", "data.dataset", "data.image_size", "data.channels", "data.num_classes")
SHAPE_COMBOS = 64  # beyond this many networks, each value is checked beside the others' first values only
# Pydantic error types that mean "the right kind of value, out of range" rather than "the wrong kind".
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"}
_EXAMPLES = ("{uniform: [0.0, 0.5]}, {loguniform: [1.0e-4, 1.0e-1]}, {int: [1, 8]}, {choice: [a, b]} "
             "or a plain list [a, b]")


# ---------------------------------------------------------------- a value's distribution, by its kind


_MODELS: dict[str, type[BaseDistribution]] = {"uniform": Uniform, "loguniform": LogUniform, "int": IntRange,
                                           "choice": Choice}


Distribution = Annotated[
    Annotated[Uniform, Tag("uniform")] | Annotated[LogUniform, Tag("loguniform")] | Annotated[IntRange, Tag("int")]
    | Annotated[Choice, Tag("choice")],
    Discriminator(kind_of),
]
_DISTRIBUTION: TypeAdapter[Any] = TypeAdapter(Distribution)


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a dotted config key and its distribution."""

    key: str
    dist: Uniform | LogUniform | IntRange | Choice

    @property
    def kind(self) -> str:
        """uniform, loguniform, int or choice (``uniform`` with ``log: true`` is loguniform)."""
        return self.dist.kind

    @property
    def choices(self) -> tuple[Any, ...]:
        return tuple(self.dist.values) if isinstance(self.dist, Choice) else ()

    def suggest(self, trial: Any) -> Any:
        return self.dist.suggest(trial, self.key)

    def probes(self) -> list[Any]:
        return self.dist.probes()

    def describe(self) -> str:
        return self.dist.describe()


# ---------------------------------------------------------------- reading a space file


def resolve_space_path(spec: str | Path) -> Path:
    """A space file, or the name of a bundled one in configs/spaces/."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_spaces()
    if str(spec) in bundled:
        return bundled[str(spec)]
    known = f" Bundled spaces: {', '.join(bundled)}." if bundled else ""
    raise ConfigError(f"no such space file, nor a bundled space of that name{did_you_mean(str(spec), bundled)}{known}",
                      file=str(spec))


def load_space(path: Path, base: dict[str, Any], source: str, *, grid: bool) -> list[Param]:
    """Read a space file and check it against the config schema and the base config ``base`` (from ``source``).

    Every error names the file and the key. The networks are checked separately (``check_networks``: it builds
    them, so it needs torch).
    """
    raw = read_yaml(path)  # the one YAML reader: size and alias limits, duplicate keys
    if not raw:
        raise ConfigError("the space is empty; give dotted config keys with distributions, e.g. "
                          "optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}", file=str(path))
    params = [parse_param(path, key, spec, grid=grid) for key, spec in _flatten(path, raw)]
    for p in params:
        others = [q for q in params if q is not p]
        for value in p.probes():
            problem = _config_problem(base, {p.key: value})
            if problem and not _any_valid(base, {p.key: value}, others):
                raise ConfigError(f"{clip(p.describe(), 120)}: the config refuses {p.key}={shown(value)} whatever the "
                                  f"space's other values: {clip(problem, 400)}", file=str(path), key=p.key)
    numeric = [p for p in params if p.kind != "choice"]
    choices = [p for p in params if p.kind == "choice"]
    for end, pick in (("lowest", 0), ("highest", -1)):
        ends = {p.key: p.probes()[pick] for p in numeric}
        problem = _config_problem(base, ends)
        if problem and not _any_valid(base, ends, choices):
            raise ConfigError(f"the config ({source}) refuses the {end} values of the space's ranges together "
                              f"({clip(' '.join(overrides_for(ends)), 400)}): {clip(problem, 400)}", file=str(path))
    return params


def _flatten(path: Path, raw: dict[Any, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys, or nested sections (``optimizer: {lr: ...}``) flattened to them."""
    out: list[tuple[str, Any]] = []
    for k, spec in raw.items():
        key = f"{prefix}{k}"
        nested = isinstance(spec, dict) and not (set(spec) & {*KINDS, "step", "log"})
        if nested and _is_section(key):
            out += _flatten(path, spec, key + ".")
        else:
            out.append((key, spec))
    seen: set[str] = set()
    for key, _ in out:
        if key in seen:
            raise ConfigError("given twice (once dotted, once nested?); keep one", file=str(path), key=key)
        seen.add(key)
    return out


def parse_param(path: Path, key: str, spec: Any, *, grid: bool) -> Param:
    """One ``key: distribution`` entry, checked: the key names a config field, the distribution is well formed,
    and the field's own pydantic type takes the values it can draw."""
    field = config_field(path, key)
    if key in SET_BY_TUNE:
        raise ConfigError("is set by cnnctl tune for every trial (its run name and the study folder); remove it",
                          file=str(path), key=key)
    dist = parse_distribution(path, key, spec)
    if grid and not isinstance(dist, Choice):
        raise ConfigError(f"--method grid needs the values listed, e.g. {key}: [v1, v2, v3]; got {dist.kind} (use "
                          "--method random or tpe to sample ranges)", file=str(path), key=key)
    _check_field_type(path, key, field, dist)
    return Param(key, dist)


def parse_distribution(path: Path, key: str, spec: Any) -> Uniform | LogUniform | IntRange | Choice:
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"got {short_repr(spec)}; give a list of values, or a distribution such as {_EXAMPLES}",
                          file=str(path), key=key)
    kinds = [k for k in KINDS if k in spec]
    if not kinds:
        unknown = str(next(iter(spec), ""))
        raise ConfigError(f"unknown distribution {unknown!r}{did_you_mean(unknown, KINDS)} Give one of {_EXAMPLES}",
                          file=str(path), key=f"{key}.{unknown}" if unknown else key)
    if len(kinds) > 1:
        raise ConfigError(f"give exactly one of {', '.join(KINDS)}; got {', '.join(kinds)}", file=str(path), key=key)
    try:
        return _DISTRIBUTION.validate_python(spec)
    except ValidationError as e:
        raise ConfigError(_format_distribution_error(e, path, key, kinds[0])) from None


def _format_distribution_error(error: ValidationError, path: Path, key: str, kind: str) -> str:
    """One line per problem, ``FILE: key.path: message``, with did-you-mean for an unknown option."""
    model = _MODELS[kind]
    options = [f.alias or name for name, f in model.model_fields.items()]
    lines = []
    for err in error.errors():
        loc = [p for p in err["loc"][1:] if p not in KINDS or p == kind]  # the first part is the union's tag
        if err["type"] == "extra_forbidden":
            name = str(loc[-1])
            lines.append(f"{path}: {key}.{name}: unknown option of {kind}{did_you_mean(name, options)} "
                         f"{kind} takes: {', '.join(options)}")
            continue
        # a problem with the whole distribution, or with its list as a whole, is the key's
        where = "" if loc in ([], [kind]) else "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("value_error", "assertion_error") and "input" in err:
            msg += f" (got {short_repr(err['input'])})"
        lines.append(f"{path}: {key}{where}: {msg}")
    return "\n".join(dict.fromkeys(lines))


# ---------------------------------------------------------------- the config schema


def _is_section(key: str) -> bool:
    """Whether a space's nested mapping at ``key`` is a config section to flatten, not a distribution."""
    try:
        return bool(fields_of(field_at(Config, key).annotation))
    except UnknownKey:
        return False


def config_field(path: Path, key: str) -> FieldInfo:
    """The pydantic field a dotted key names; an unknown part is an error with the closest name at its level."""
    try:
        return field_at(Config, key)
    except UnknownKey as e:
        if e.valid is None:
            raise ConfigError(f"{e.where} is a value, not a section; it has no key {e.part!r}", file=str(path),
                              key=key) from None
        section = f"{e.where} takes" if e.where else "sections and keys of a config"
        raise ConfigError(f"unknown config key{did_you_mean(e.part, e.valid)} ({section}: {', '.join(e.valid)})",
                          file=str(path), key=key) from None


def _field_adapter(field: FieldInfo) -> TypeAdapter[Any]:
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(annotation)


def _check_field_type(path: Path, key: str, field: FieldInfo, dist: BaseDistribution) -> None:
    """Validate what the distribution can draw with the field's own type: strictly for numbers drawn by a sampler
    (a 0/1 is no true/false, 2.5 is no batch size), as a config file would be read for listed choices."""
    adapter = _field_adapter(field)
    numeric = not isinstance(dist, Choice)
    for value in dist.probes():
        try:
            adapter.validate_python(value, strict=numeric)
            continue
        except ValidationError as e:
            errors = e.errors()
        reason = errors[-1]["msg"]
        if not numeric:
            raise ConfigError(f"{clip(dist.describe(), 120)}: {key} cannot be {shown(value)}: {clip(reason, 120)}",
                              file=str(path), key=key)
        if any(err["type"] in _RANGE_ERRORS for err in errors):
            reason = next(err["msg"] for err in errors if err["type"] in _RANGE_ERRORS)
            raise ConfigError(f"{dist.describe()}: {key} cannot be {value:g}: {reason}", file=str(path), key=key)
        if isinstance(value, float) and not value.is_integer() and _accepts(adapter, round(value)):
            low, high = (math.ceil(dist.bounds[0]), math.floor(dist.bounds[1]))  # type: ignore[attr-defined]
            raise ConfigError(f"{dist.kind} draws fractional numbers, but {key} takes whole numbers; use "
                              f"{{int: [{low}, {high}]}}", file=str(path), key=key)
        raise ConfigError(f"{dist.kind} draws numbers, but {key} refuses them ({value:g}: {reason}); list its values "
                          f"as a choice, e.g. {key}: [a, b]", file=str(path), key=key)


def _accepts(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


# ---------------------------------------------------------------- values -> configs


def _any_valid(base: dict[str, Any], fixed: dict[str, Any], others: list[Param], limit: int = 256) -> bool:
    """Whether some combination of the other parameters' probe values makes ``fixed`` a valid config (a value valid
    only beside another, such as optimizer.nesterov=true beside optimizer.name=sgd, is not a mistake)."""
    combos = itertools.islice(itertools.product(*(q.probes() for q in others)), limit)
    return any(_config_problem(base, {**fixed, **dict(zip((q.key for q in others), combo, strict=True))}) is None
               for combo in combos)


def _config_problem(base: dict[str, Any], values: dict[str, Any]) -> str | None:
    """Why the config refuses ``values``, as 'key: message' lines, or None when it takes them."""
    marker = "\0"
    try:
        validate_config(apply_overrides(base, overrides_for(values)), marker)
    except ConfigError as e:
        return "; ".join(line.removeprefix(f"{marker}: ") for line in str(e).splitlines())
    return None


def overrides_for(values: dict[str, Any]) -> list[str]:
    """A trial's values as ``--set`` overrides."""
    return [f"{k}={yaml_value(v)}" for k, v in values.items()]


def trial_config(base: dict[str, Any], values: dict[str, Any], source: str, extra: list[str] | None = None) -> Config:
    """The base config with a trial's values (and ``extra`` overrides such as its run name) applied, validated."""
    overrides = overrides_for(values) + list(extra or [])
    return validate_config(apply_overrides(base, overrides), source, overrides)


# ---------------------------------------------------------------- networks


def _shapes(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SHAPE_KEYS)


def check_networks(path: Path, base: dict[str, Any], source: str, params: list[Param]) -> None:
    """Build every network the space can ask for (each combination of the values of keys that change the network
    or its input) and run one zero image through it on the CPU, so an architecture that cannot take the input is
    refused before any trial trains. Ranges of numbers count by their ends; float keys change no shape."""
    from cnnctl.data.spec import input_spec
    from cnnctl.insight.summary import check_input
    from cnnctl.models.registry import create_model

    shaping = [p for p in params if _shapes(p.key) and p.kind in ("choice", "int")]
    grids = [p.probes() for p in shaping]
    if math.prod(len(g) for g in grids) <= SHAPE_COMBOS:
        combos = list(itertools.product(*grids))
    else:  # too many networks to build: each value once, beside the others' first values
        log.info("the space can build more than %d networks; checking each value beside the others' first", SHAPE_COMBOS)
        combos = [tuple(v if j == i else g[0] for j, g in enumerate(grids)) for i, grid in enumerate(grids) for v in grid]
    checked: set[str] = set()
    for combo in combos:
        values = dict(zip((p.key for p in shaping), combo, strict=True))
        try:
            cfg = trial_config(base, values, source)
        except ConfigError:
            continue  # refused by the config: load_space has judged these; such a trial fails on its own
        try:
            channels, size, classes = input_spec(cfg.data)
            identity = yaml_value([cfg.model.model_dump(mode="json"), channels, list(size), classes])
            if identity in checked:
                continue
            checked.add(identity)
            model = create_model(cfg.model, in_channels=channels, image_size=size, num_classes=classes)
            check_input(model, arch=cfg.model.arch, in_channels=channels, image_size=size)
        except CnnctlError as e:
            if not shaping:
                raise ShapeError(str(e), file=source) from None  # the base config's own network: not the space's fault
            blamed = next((p for p in shaping if p.key == "model.arch"), shaping[0])
            beside = " ".join(f"{k}={shown(v)}" for k, v in values.items() if k != blamed.key)
            value = shown(values[blamed.key])
            raise ShapeError(f"{value}{f' (beside {beside})' if beside else ''}: {e}. Remove {value} from the "
                             f"space's {blamed.key}, or keep to values whose networks take the input",
                             file=str(path), key=blamed.key) from None

