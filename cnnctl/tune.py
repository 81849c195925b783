"""``cnnctl tune``: hyper-parameter search with Optuna (grid, random, TPE), median pruning, studies shared by
several processes through a storage URL, and the ensemble of the best trials.

A space file maps dotted config keys to distributions::

    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    optimizer.name: {choice: [sgd, adam, rmsprop]}
    model.dropout: {uniform: [0.0, 0.5]}
    data.batch_size: [64, 128, 256]          # a plain list is a choice (and what --method grid takes)
    train.epochs: {int: [5, 20], step: 5}

Every trial is an ordinary run, ``OUT/STUDY/trial-NNNN``, of the base config with the trial's values applied as
``--set`` overrides. The space is checked against the config schema before any trial runs. Optuna is imported
inside ``run_tune`` only, so the rest of cnnctl works without it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import logging
import math
import os
import re
import time
import types
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cnnctl.config import CONFIGS_DIR, Config, apply_overrides, load_config, read_yaml, validate_config
from cnnctl.errors import CnnctlError, ConfigError, TrainingError
from cnnctl.registry import closest

log = logging.getLogger("cnnctl.tune")

SPACES_DIR = CONFIGS_DIR / "spaces"
METHODS = ("grid", "random", "tpe")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
KINDS = ("uniform", "loguniform", "int", "choice")
OPTIONS = ("step", "log")
SET_BY_TUNE = ("name", "out")  # every trial gets its own run name and the study folder
FINISHED = ("complete", "pruned", "failed")
DEFAULT_TRIALS = 20  # random/tpe without --trials or --timeout
# MedianPruner: a trial stops at an epoch when its value there is worse than the median of the completed trials'
# values at the same epoch. Nothing is pruned before 2 trials have completed (the "median" of one run is that run),
# nor before the end of a trial's 2nd epoch: the first epoch of a small CNN ranks runs poorly.
PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 2}  # steps are the 1-based epochs of metrics.csv
# A trial whose process died (a killed worker, a lost node) is marked failed once its heartbeat is this old, so it
# does not count as running for ever (RDB storages only).
HEARTBEAT = {"heartbeat_interval": 60, "grace_period": 180}
HISTORY_FIGSIZE = (8.0, 5.0)
# PyYAML reads 1e-4 (no dot) as a string; accept it as the number everyone means.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


# ---------------------------------------------------------------- the space


@dataclass(frozen=True)
class Param:
    """One dimension of the space: ``kind`` is uniform, loguniform, int or choice."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.kind == "loguniform")

    def probes(self) -> list[Any]:
        """Values checked against the config before any trial: the ends, and an inner fractional point for floats."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        inner = math.sqrt(self.low * self.high) if self.kind == "loguniform" else self.low + 0.37 * (self.high - self.low)
        return [self.low, inner, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {_yaml_value(list(self.choices))}"
        extra = (f", step {self.step:g}" if self.step else "") + (", log" if self.log else "")
        return f"{self.kind} [{self.low:g}, {self.high:g}]{extra}"


def resolve_space_path(spec: str | Path) -> Path:
    """A space file, or the name of a bundled one in configs/spaces/."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))} if SPACES_DIR.is_dir() else {}
    if str(spec) in bundled:
        return bundled[str(spec)]
    hint = closest(str(spec), bundled)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    known = f" Bundled spaces: {', '.join(bundled)}." if bundled else ""
    raise ConfigError(f"no such space file, nor a bundled space of that name.{did_you_mean}{known}", file=str(spec))


def load_space(path: Path, base: dict[str, Any], source: str, *, grid: bool) -> list[Param]:
    """Read and check a space file against the config schema and the base config; every error names the key."""
    raw = read_yaml(path)
    if not raw:
        raise ConfigError("the space is empty; give dotted config keys with distributions, e.g. "
                          "optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}", file=str(path))
    schema = _schema_keys()
    params = [_parse_param(path, key, spec, schema, grid=grid) for key, spec in _flatten_space(path, raw, schema)]
    for p in params:
        others = [q for q in params if q is not p]
        for value in p.probes():
            problem = _config_problem(base, {p.key: value})
            if problem and not _any_valid(base, {p.key: value}, others):
                raise ConfigError(f"{p.describe()}: the config refuses {p.key}={_yaml_value(value)} whatever the "
                                  f"space's other values: {problem}", file=str(path), key=p.key)
    numeric = [p for p in params if p.kind != "choice"]
    choices = [p for p in params if p.kind == "choice"]
    for end, pick in (("lowest", 0), ("highest", -1)):
        ends = {p.key: p.probes()[pick] for p in numeric}
        problem = _config_problem(base, ends)
        if problem and not _any_valid(base, ends, choices):
            raise ConfigError(f"the config ({source}) refuses the {end} values of the space's ranges together "
                              f"({' '.join(_overrides(ends))}): {problem}", file=str(path))
    return params


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
        validate_config(apply_overrides(base, _overrides(values)), marker)
    except ConfigError as e:
        return "; ".join(line.removeprefix(f"{marker}: ") for line in str(e).splitlines())
    return None


def _flatten_space(path: Path, raw: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys, or nested sections (``optimizer: {lr: ...}``) flattened to them."""
    out: list[tuple[str, Any]] = []
    for k, spec in raw.items():
        key = f"{prefix}{k}"
        nested = isinstance(spec, dict) and not (set(spec) & {*KINDS, *OPTIONS})
        if nested and _models_in(schema.get(key)):
            out += _flatten_space(path, spec, schema, key + ".")
        else:
            out.append((key, spec))
    seen: set[str] = set()
    for key, _ in out:
        if key in seen:
            raise ConfigError("given twice (once dotted, once nested?); keep one", file=str(path), key=key)
        seen.add(key)
    return out


def _parse_param(path: Path, key: str, spec: Any, schema: dict[str, Any], *, grid: bool) -> Param:
    def bad(message: str) -> ConfigError:
        return ConfigError(message, file=str(path), key=key)

    if key not in schema:
        hint = closest(key, schema)
        raise bad("unknown config key" + (f"; did you mean {hint!r}?" if hint else "") +
                  " Keys are dotted config keys such as optimizer.lr, model.dropout, data.batch_size")
    if key in SET_BY_TUNE:
        raise bad("is set by cnnctl tune for every trial (its run name and the study folder); remove it")
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise bad(f"got {spec!r}; give a list of values, or a distribution such as {{uniform: [0.0, 0.5]}}, "
                  "{loguniform: [1.0e-4, 1.0e-1]}, {int: [1, 8]}, {choice: [a, b]}")
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in (*KINDS, *OPTIONS)]
    if unknown:
        hint = closest(str(unknown[0]), (*KINDS, *OPTIONS))
        raise bad(f"unknown distribution {unknown[0]!r}" + (f"; did you mean {hint!r}?" if hint else "") +
                  f" Known: {', '.join(KINDS)} (with step or log for int and uniform)")
    if len(kinds) != 1:
        raise bad(f"give exactly one of {', '.join(KINDS)}; got {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    args = spec[kind]
    if kind == "choice":
        if set(spec) != {"choice"}:
            raise bad("choice takes no step or log")
        if not isinstance(args, list) or not args:
            raise bad("choice needs a non-empty list of values, e.g. {choice: [sgd, adam]}")
        values = tuple(_number(v) if isinstance(v, str) and _EXPONENT.fullmatch(v) else v for v in args)
        for v in values:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise bad(f"choice value {v!r}: values must be numbers, strings, true/false or null")
            if isinstance(v, float) and not math.isfinite(v):
                raise bad(f"choice value {v!r} is not a finite number")
        if len(set(map(repr, values))) != len(values):
            raise bad(f"choice {list(args)} lists a value twice")
        return Param(key, "choice", choices=values)
    if grid:
        raise bad(f"--method grid needs the values listed, e.g. {key}: [v1, v2, v3]; got {kind} (use --method "
                  "random or tpe to sample ranges)")
    if not isinstance(args, list) or len(args) != 2 or any(_number(a) is None for a in args):
        raise bad(f"{kind} needs [low, high], two finite numbers; got {args!r}")
    low, high = (_number(a) for a in args)
    assert low is not None and high is not None
    if low > high:
        raise bad(f"{kind} [{low:g}, {high:g}]: low is greater than high; swap them")
    use_log = spec.get("log", False)
    if not isinstance(use_log, bool):
        raise bad(f"log must be true or false, not {use_log!r}")
    step = _number(spec.get("step")) if "step" in spec else None
    if "step" in spec and (step is None or step <= 0):
        raise bad(f"step must be a positive number, not {spec['step']!r}")
    if use_log and step is not None:
        raise bad("give step or log: true, not both (a log scale has no fixed step)")
    kinds_taken = _number_kinds(schema[key])
    if kind == "loguniform":
        if low <= 0:
            raise bad(f"loguniform [{low:g}, {high:g}]: low must be > 0 (a log scale has no 0); e.g. [1.0e-5, {high:g}]")
        if step is not None or "log" in spec:
            raise bad("loguniform takes no step or log (it is uniform's log: true)")
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high)):
            raise bad(f"int [{low:g}, {high:g}] needs whole numbers")
        low, high = int(low), int(high)
        if step is not None:
            if not float(step).is_integer():
                raise bad(f"int step must be a whole number, not {step:g}")
            step = int(step)
            if (high - low) % step:
                raise bad(f"int [{low}, {high}], step {step}: high - low is not a multiple of the step; e.g. "
                          f"[{low}, {high - (high - low) % step}]")
        if use_log and low <= 0:
            raise bad(f"int [{low}, {high}] with log: true needs low >= 1")
        if not kinds_taken:
            raise bad(f"int draws whole numbers, but {key} takes {_type_name(schema[key])}; list the values as a "
                      "choice instead")
    elif "float" not in kinds_taken:
        if kinds_taken == {"int"}:
            raise bad(f"{kind} draws fractional numbers, but {key} takes whole numbers; use {{int: [low, high]}}")
        raise bad(f"{kind} draws numbers, but {key} takes {_type_name(schema[key])}; list the values as a choice, "
                  f"e.g. {key}: {{choice: [...]}}")
    if kind == "uniform" and use_log:
        kind, use_log = "loguniform", False
        if low <= 0:
            raise bad(f"uniform with log: true needs low > 0, not {low:g}")
    return Param(key, kind, low=low, high=high, step=step, log=use_log if kind == "int" else False)


def _number(x: Any) -> float | int | None:
    if isinstance(x, str) and _EXPONENT.fullmatch(x.strip()):
        x = float(x)
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return x
    return None


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union (Annotated and Optional unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _unwrap(arg)]
    return [annotation]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if annotation is None:
        return []
    return [a for a in _unwrap(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _schema_keys() -> dict[str, Any]:
    """Every dotted config key (sections too) and its annotation."""
    keys: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            keys[prefix + name] = field.annotation
            for sub in _models_in(field.annotation):
                walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return keys


def _number_kinds(annotation: Any) -> set[str]:
    """Which numbers a key takes: {"int"}, {"int", "float"} or none."""
    kinds: set[str] = set()
    for a in _unwrap(annotation):
        if a is bool or a is type(None):
            continue
        if a is int:
            kinds.add("int")
        elif a is float or a is Any:
            kinds |= {"int", "float"}
        elif typing.get_origin(a) is typing.Literal:
            for v in typing.get_args(a):
                if isinstance(v, int) and not isinstance(v, bool):
                    kinds.add("int")
                elif isinstance(v, float):
                    kinds.add("float")
    return kinds


def _type_name(annotation: Any) -> str:
    parts = []
    for a in _unwrap(annotation):
        if a is type(None):
            continue
        if a is bool:
            parts.append("true or false")
        elif a is str:
            parts.append("a string (a name)")
        elif typing.get_origin(a) is typing.Literal:
            parts.append("one of " + ", ".join(map(str, typing.get_args(a))))
        elif isinstance(a, type) and issubclass(a, BaseModel):
            parts.append("a section")
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return " or ".join(parts) or "no numbers"


def _yaml_value(value: Any) -> str:
    """``value`` as the text of a ``--set KEY=VALUE`` that reads back as exactly ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={_yaml_value(v)}" for k, v in values.items()]


def _trial_config(base: dict[str, Any], values: dict[str, Any], source: str) -> Config:
    overrides = _overrides(values)
    return validate_config(apply_overrides(base, overrides), source, overrides)


# ---------------------------------------------------------------- the study


class _TrialFailed(Exception):
    """A trial whose run raised CnnctlError: optuna marks it failed and the study goes on."""


class _DropOptunaFailureLines(logging.Filter):
    # Optuna logs a failed trial with its traceback; cnnctl has already said why in one line.
    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"Trial \d+ failed", str(record.msg))


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The engine's per-epoch lines and optuna's failure tracebacks are held back; tune prints its own lines."""
    engine_log, optuna_log = logging.getLogger("cnnctl"), logging.getLogger("optuna.study._optimize")
    quiet, drop = _DropInfo(), _DropOptunaFailureLines()
    engine_log.addFilter(quiet)
    optuna_log.addFilter(drop)
    try:
        yield
    finally:
        engine_log.removeFilter(quiet)
        optuna_log.removeFilter(drop)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise CnnctlError("optuna is not installed: pip install 'cnnctl[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _open_storage(optuna: Any, url: str) -> Any:
    """An RDB storage with heartbeats; concurrent first opens of one SQLite file may race, so retry a little."""
    import warnings

    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
                return optuna.storages.RDBStorage(url, **HEARTBEAT)
        except ImportError as e:
            raise ConfigError(f"--storage {url}: {e}; install the database driver (e.g. pip install "
                              "psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)") from None
        except Exception as e:  # sqlalchemy's errors: a bad URL, an unreachable server, a locked file
            last = e
            time.sleep(0.2 * (attempt + 1))
    first = str(last).strip().splitlines()[0] if last and str(last).strip() else type(last).__name__
    raise ConfigError(f"--storage {url}: cannot open it ({first[:200]}). Give sqlite:///path.db, "
                      "postgresql://user:pass@host/db or mysql+pymysql://user:pass@host/db")


def _open_study(optuna: Any, storage: str | None, name: str, *, sampler: Any, pruner: Any, direction: str,
                identity: dict[str, Any]) -> Any:
    """Create the study, or join it when another process (or an earlier run) has made it with the same metric and
    space."""
    try:
        study = optuna.create_study(storage=_open_storage(optuna, storage) if storage else None, sampler=sampler,
                                    pruner=pruner, study_name=name, direction=direction, load_if_exists=True)
    except ValueError as e:
        raise ConfigError(f"--study {name}: {e}") from None
    known = study.user_attrs.get("cnnctl")
    if known is None:
        study.set_user_attr("cnnctl", identity)
    elif known != identity or study.direction.name.lower() != direction:
        raise ConfigError(f"--study {name} in {_mask(storage)} was started with --metric {known.get('metric')} and the "
                          f"space {json.dumps(known.get('space'))}; the processes of a study share one metric and "
                          "space. Use the same ones, or another --study")
    if "cnnctl_uid" not in study.user_attrs:  # tells this study's files from those of a study since deleted
        study.set_user_attr("cnnctl_uid", uuid.uuid4().hex)
    return study


def _sampler(optuna: Any, method: str, params: list[Param], seed: int, shared: bool) -> Any:
    if method == "grid":
        # Every process must shuffle the grid alike: optuna maps trial numbers to grid points through the shuffle.
        return optuna.samplers.GridSampler({p.key: list(p.choices) for p in params}, seed=seed)
    if shared:
        # Processes sharing a study with one seed would propose the same points; each mixes in its process id.
        seed = (seed * 1_000_003 + os.getpid()) % 2**32
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _check_args(method: str, metric: str, trials: int | None, timeout: float | None, ensemble_top: int,
                study: str | None) -> None:
    if method not in METHODS:
        hint = closest(method, METHODS)
        raise ConfigError(f"--method {method!r}: choose grid, random or tpe" + (f" (did you mean {hint!r}?)" if hint else ""))
    if metric not in METRICS:
        hint = closest(metric, METRICS)
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}" +
                          (f" (did you mean {hint!r}?)" if hint else ""))
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise ConfigError(f"--timeout {timeout}: give a positive number of seconds")
    if ensemble_top < 0 or ensemble_top == 1:
        raise ConfigError(f"--ensemble-top {ensemble_top}: an ensemble needs at least 2 members (0: none)")
    if study is not None and (not study.strip() or "/" in study or "\\" in study or study in (".", "..")):
        raise ConfigError(f"--study {study!r}: the name is also a folder name; use letters, digits, - and _")


def run_tune(config: str, space: str, *, overrides: list[str] | None = None, trials: int | None = None,
             method: str = "tpe", timeout: float | None = None, storage: str | None = None, study: str | None = None,
             prune: bool = True, metric: str = "val_acc", ensemble_top: int = 0, out: str | None = None,
             seed: int = 0) -> dict[str, Any]:
    """Search the space around ``config``; returns the study folder, the best trial and every trial's row.

    ``trials`` is the study's total number of trials over every process that shares it (a re-run with the same
    number runs nothing more); grid defaults to every point, random/tpe to 20 (or no limit with ``timeout``).
    """
    _check_args(method, metric, trials, timeout, ensemble_top, study)
    base_cfg, config_path = load_config(config, overrides)
    space_path = resolve_space_path(space)
    base = base_cfg.dump()
    params = load_space(space_path, base, str(config_path), grid=method == "grid")
    optuna = _import_optuna()
    from optuna.trial import TrialState

    study_name = study or base_cfg.name or config_path.stem
    direction = "maximize" if metric.endswith("_acc") else "minimize"
    grid_size = math.prod(len(p.choices) for p in params) if method == "grid" else None
    total = trials if trials is not None else (None if timeout is not None else DEFAULT_TRIALS)
    if grid_size is not None:
        total = min(trials or grid_size, grid_size)
    pruner = optuna.pruners.MedianPruner(**PRUNER) if prune else optuna.pruners.NopPruner()
    sampler = _sampler(optuna, method, params, seed, shared=storage is not None)
    the_study = _open_study(optuna, storage, study_name, sampler=sampler, pruner=pruner, direction=direction,
                            identity={"metric": metric, "space": {p.key: p.describe() for p in params}})

    out_root = Path(out or base_cfg.out)
    if storage is None:
        from cnnctl.run import new_run_dir

        study_dir = new_run_dir(out_root, study_name)  # an in-memory study starts afresh: STUDY-2 when STUDY exists
    else:
        study_dir = out_root / study_name
        study_dir.mkdir(parents=True, exist_ok=True)
    _write_text(study_dir / "space.yaml", space_path.read_text(encoding="utf-8"))

    done = len(the_study.get_trials(deepcopy=False))
    budget = None if total is None else total - done
    where = f"storage {_mask(storage)}" if storage else "in memory"
    log.info("study %s (%s, %s %s, %s): %s", study_name, where, direction, metric, method,
             "no trial limit" if total is None else f"{total} trials in all, {done} already there")
    if budget is not None and budget <= 0:
        log.info("the study already has %d trials (--trials %s); raise --trials to run more", done, total)
    else:
        objective = _Objective(the_study, params, base, str(config_path), study_dir, metric, direction)
        callbacks = [optuna.study.MaxTrialsCallback(total, states=None)] if total is not None else []
        with _quiet_logs():
            the_study.optimize(objective, n_trials=budget, timeout=timeout, callbacks=callbacks,
                               catch=(_TrialFailed,))

    rows = trial_rows(the_study.get_trials(deepcopy=False), params, TrialState)
    info = {"study": study_name, "uid": the_study.user_attrs.get("cnnctl_uid"), "storage": _mask(storage),
            "method": method, "metric": metric, "direction": direction, "trials": total,
            "finished": sum(r["state"] in FINISHED for r in rows)}
    return _report(the_study, rows, params, base, str(config_path), study_dir, info, ensemble_top,
                   base_cfg.train.device)


def _mask(url: str | None) -> str | None:
    """A storage URL with its password hidden, for messages and study.json."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url) if url else url


def _newer_on_disk(study_dir: Path, info: dict[str, Any]) -> bool:
    """Whether another process sharing the study has already written its files from a later state of it."""
    try:
        disk = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return disk.get("uid") == info["uid"] and int(disk.get("finished") or 0) > info["finished"]


class _Objective:
    """One trial: the base config with the trial's values, trained to its end, a pruning decision, or a failure."""

    def __init__(self, study: Any, params: list[Param], base: dict[str, Any], source: str, study_dir: Path,
                 metric: str, direction: str) -> None:
        self.study, self.params, self.base, self.source = study, params, base, source
        self.study_dir, self.metric, self.direction = study_dir, metric, direction

    def best(self, values: list[float]) -> float:
        return max(values) if self.direction == "maximize" else min(values)

    def __call__(self, trial: Any) -> float:
        import optuna

        from cnnctl.run import train

        n = trial.number
        values = {p.key: p.suggest(trial) for p in self.params}
        overrides = _overrides(values)
        trial.set_user_attr("overrides", overrides)
        log.info("trial %d: %s", n, "  ".join(f"{k}={_short(v)}" for k, v in values.items()))
        rows: list[dict[str, Any]] = []
        pruned: list[str] = []

        def on_epoch(row: dict[str, Any]) -> str | None:
            rows.append(row)
            value = row.get(self.metric)
            if value is None or not math.isfinite(value):
                return None
            trial.report(value, row["epoch"])
            if trial.should_prune():
                pruned.append(f"pruned at epoch {row['epoch']}: {self.metric} {value:.4f} is worse than the median "
                              "of the completed trials at that epoch")
                return pruned[0]
            return None

        t0 = time.perf_counter()
        run_dir = self.study_dir / f"trial-{n:04d}"
        try:
            cfg = _trial_config(self.base, values, f"{self.source} (trial {n})")
            summary = train(cfg, out=str(self.study_dir), name=run_dir.name, on_epoch=on_epoch)
            run_dir = Path(summary["run_dir"])
            scores = [r[self.metric] for r in rows if r.get(self.metric) is not None and math.isfinite(r[self.metric])]
            if not scores:
                raise TrainingError(f"no epoch reported {self.metric} (is there a validation split?); choose another "
                                    "--metric or set data.val_split > 0")
        except CnnctlError as e:
            trial.set_user_attr("error", str(e))
            self._record(trial, run_dir, rows, time.perf_counter() - t0, None)
            log.warning("trial %d failed: %s", n, e)
            raise _TrialFailed(str(e)) from None
        except BaseException as e:  # interrupted, or a bug: optuna marks the trial failed and the study ends here
            log.warning("trial %d stopped: %s", n, str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        value = self.best(scores)
        seconds = time.perf_counter() - t0
        self._record(trial, run_dir, rows, seconds, value)
        _update_summary(run_dir, {"study": self.study.study_name, "trial": n, "pruned": bool(pruned), "value": value})
        done = f"{self.metric} {value:.4f} in {len(rows)} epochs, {seconds:.1f}s -> {run_dir}"
        if pruned:
            trial.set_user_attr("note", pruned[0])
            log.info("trial %d %s; best %s", n, pruned[0], done)
            raise optuna.TrialPruned(pruned[0])
        log.info("trial %d: %s%s", n, done, self._best_so_far(value))
        return value

    def _record(self, trial: Any, run_dir: Path, rows: list[dict[str, Any]], seconds: float, value: float | None) -> None:
        trial.set_user_attr("run_dir", str(run_dir) if run_dir.exists() else None)
        trial.set_user_attr("epochs", len(rows))
        trial.set_user_attr("seconds", round(seconds, 3))
        trial.set_user_attr("value", value)

    def _best_so_far(self, value: float) -> str:
        from optuna.trial import TrialState

        others = [t.value for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return "  (best so far)" if not others or self.best([*others, value]) == value else ""


def _update_summary(run_dir: Path, extra: dict[str, Any]) -> None:
    from cnnctl.checkpoint import write_json

    path = run_dir / "summary.json"
    if path.is_file():
        write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **extra})


def _write_text(path: Path, text: str) -> None:
    from cnnctl.checkpoint import write_text

    write_text(path, text)


# ---------------------------------------------------------------- results


def trial_rows(trials: list[Any], params: list[Param], states: Any) -> list[dict[str, Any]]:
    """One plain row per optuna trial: number, state, values, epochs, seconds, run directory, note."""
    names = {states.COMPLETE: "complete", states.PRUNED: "pruned", states.FAIL: "failed", states.RUNNING: "running",
             states.WAITING: "waiting"}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        seconds = attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        value = attrs.get("value", t.value if t.state == states.COMPLETE else None)
        rows.append({"trial": t.number, "state": names.get(t.state, t.state.name.lower()), "value": value,
                     "params": {p.key: t.params.get(p.key) for p in params}, "epochs": attrs.get("epochs"),
                     "seconds": seconds, "run_dir": attrs.get("run_dir"),
                     "note": attrs.get("error") or attrs.get("note")})
    return rows


def _report(study: Any, rows: list[dict[str, Any]], params: list[Param], base: dict[str, Any], source: str,
            study_dir: Path, info: dict[str, Any], ensemble_top: int, device: str) -> dict[str, Any]:
    """The table on stderr; study.json, trials.csv, history.png, importances.json, best.yaml; the ensemble."""
    study_name, metric, direction = info["study"], info["metric"], info["direction"]
    complete = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                      key=lambda r: r["value"], reverse=direction == "maximize")
    best = complete[0] if complete else None
    log.info("\n%s", format_table(rows, params, metric, best["trial"] if best else None))
    importances = param_importances(study, params)
    # Each process sharing a study writes these files when it ends; one that ends later but saw less leaves them.
    write = not _newer_on_disk(study_dir, info)
    if write:
        _write_text(study_dir / "trials.csv", trials_csv(rows, params, metric))
        plot_history(rows, study_dir / "history.png", metric=metric, direction=direction, title=f"study {study_name}")
        _write_text(study_dir / "importances.json", json.dumps(importances, indent=2) + "\n")
        _write_text(study_dir / "study.json", json.dumps(info, indent=2) + "\n")
    else:
        log.info("another process sharing the study has written its files from a later state; left as they are")
    if importances["importances"]:
        log.info("parameter importances: %s",
                 ", ".join(f"{k} {v:.2f}" for k, v in importances["importances"].items()))
    elif importances.get("note"):
        log.info("parameter importances: none (%s)", importances["note"])
    result: dict[str, Any] = {"study_dir": str(study_dir), "study": study_name, "metric": metric,
                              "direction": direction, "best_trial": None, "best_value": None, "best_params": None,
                              "trials": rows, "ensemble": None}
    if best is None:
        failed = [r for r in rows if r["state"] == "failed"]
        if failed and not any(r["state"] in ("pruned", "running", "waiting") for r in rows):
            raise TrainingError(f"no trial of study {study_name} completed; trial {failed[0]['trial']} failed with: "
                                f"{failed[0]['note']}. Every trial is in {study_dir / 'trials.csv'}")
        log.warning("no completed trial yet: best.yaml not written")
        return result
    cfg = _trial_config(base, best["params"], source).model_copy(update={"name": f"{study_name}-best"})
    header = f"# best trial {best['trial']} of study {study_name}: {metric} {best['value']:.4f}\n"
    if write:
        _write_text(study_dir / "best.yaml", header + cfg.to_yaml())
    log.info("best: trial %d, %s %.4f, %s  ->  cnnctl train %s", best["trial"], metric, best["value"],
             " ".join(_overrides(best["params"])), study_dir / "best.yaml")
    result.update(best_trial=best["trial"], best_value=best["value"], best_params=best["params"])
    if ensemble_top:
        result["ensemble"] = ensemble(complete[:ensemble_top], study_dir, metric, device)
    return result


def trials_csv(rows: list[dict[str, Any]], params: list[Param], metric: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *(p.key for p in params), metric, "epochs", "seconds", "state", "run_dir", "note"])
    for r in rows:
        writer.writerow([r["trial"], *(_cell(r["params"][p.key]) for p in params), _cell(r["value"]),
                         _cell(r["epochs"]), _cell(r["seconds"]), r["state"], r["run_dir"] or "", r["note"] or ""])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], params: list[Param], metric: str, best: int | None) -> str:
    """The trials as an aligned text table; the best marked with *."""
    header = ["trial", *(p.key for p in params), metric, "epochs", "time", "state"]
    body = [[f"{r['trial']}{'*' if r['trial'] == best else ''}", *(_short(r["params"][p.key]) for p in params),
             "-" if r["value"] is None else f"{r['value']:.4f}", _short(r["epochs"]),
             "-" if r["seconds"] is None else f"{r['seconds']:.1f}s", r["state"]] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in [header, *body])


def param_importances(study: Any, params: list[Param]) -> dict[str, Any]:
    """optuna's parameter importances over the completed trials, or a note saying why there are none."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result: dict[str, Any] = {"n_complete": len(complete), "importances": {}, "note": None}
    varying = [p.key for p in params if len({repr(t.params.get(p.key)) for t in complete}) > 1]
    if len(complete) < 2:
        result["note"] = "needs at least 2 completed trials"
    elif not varying:
        result["note"] = "no parameter took more than one value among the completed trials"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, params=varying)
            result["importances"] = {k: float(v) for k, v in imp.items()}
        except Exception as e:  # optuna refuses some degenerate studies (e.g. every value equal)
            result["note"] = f"optuna could not compute them: {e}"
    return result


def plot_history(rows: list[dict[str, Any]], path: Path, *, metric: str, direction: str, title: str) -> Path:
    """Each trial's value by trial number (completed and pruned) and the best-so-far line of completed trials."""
    from cnnctl.plots import integer_epochs as _integer_epochs
    from cnnctl.plots import pyplot_compat as _pyplot
    from cnnctl.plots import save_figure as _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=HISTORY_FIGSIZE, layout="constrained")
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    if done:
        ax.scatter([r["trial"] for r in done], [r["value"] for r in done], color="C0", zorder=3, label="completed")
        best, line = None, []
        pick = max if direction == "maximize" else min
        for r in done:
            best = r["value"] if best is None else pick(best, r["value"])
            line.append(best)
        xs = [r["trial"] for r in done]
        last = max(r["trial"] for r in rows)
        if last > xs[-1]:  # carry the line on over the trials after the last completed one
            xs, line = [*xs, last], [*line, line[-1]]
        ax.step(xs, line, where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r["value"] for r in pruned], marker="x", color="0.5", zorder=3,
                   label="pruned (best before it stopped)")
    if not done and not pruned:
        ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{metric} (best epoch)")
    ax.set_title(f"{title}: {metric}, {direction}")
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    return _save(fig, path)


def ensemble(members: list[dict[str, Any]], study_dir: Path, metric: str, device: str) -> dict[str, Any] | None:
    """The test-split ensemble (mean of softmax) of the given trials' best.pt beside each member; ensemble.json."""
    from cnnctl.inference import evaluate_checkpoints

    usable = [m for m in members if m["run_dir"] and (Path(m["run_dir"]) / "best.pt").is_file()]
    if len(usable) < len(members):
        log.warning("ensemble: %d of the best trials have no best.pt here (another machine?); left out",
                    len(members) - len(usable))
    if len(usable) < 2:
        log.warning("ensemble: needs at least 2 completed trials with best.pt; skipped")
        return None
    try:
        result = evaluate_checkpoints([str(Path(m["run_dir"]) / "best.pt") for m in usable], split="test",
                                      device=device)
    except CnnctlError as e:
        log.warning("ensemble: not evaluated: %s", e)
        return None
    for m, r in zip(usable, result["members"], strict=True):
        r.update(trial=m["trial"], value=m["value"], params=m["params"])
    ens = result["ensemble"]
    lines = [f"ensemble of the {len(usable)} best trials on test (n={ens['n']}): loss {ens['loss']:.4f}  "
             f"accuracy {ens['accuracy']:.2%}"]
    lines += [f"  trial {r['trial']:>4} ({metric} {r['value']:.4f}): loss {r['loss']:.4f}  accuracy {r['accuracy']:.2%}"
              for r in result["members"]]
    log.info("\n".join(lines))
    _write_text(study_dir / "ensemble.json", json.dumps(result, indent=2) + "\n")
    return result
