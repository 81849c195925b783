"""``cnnctl tune``'s orchestration: check the arguments and the space, open the study, run the trials, report.

Every trial is an ordinary run, ``OUT/STUDY/trial-NNNN``, of the base config with the trial's values applied as
``--set`` overrides. The space is checked against the config schema and every network it can build before any
trial runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnctl.config import Config, load_config
from cnnctl.errors import CnnctlError, TrainingError, UsageError, first_line
from cnnctl.hooks import Hook
from cnnctl.registry import did_you_mean
from cnnctl.tune.report import format_value, report, trial_rows, update_summary, write_text
from cnnctl.tune.space import (
    Param,
    check_networks,
    load_space,
    overrides_for,
    resolve_space_path,
    trial_config,
    yaml_value,
)
from cnnctl.tune.study import METHODS, import_optuna, make_pruner, make_sampler, mask, open_study

log = logging.getLogger("cnnctl.tune")

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
FINISHED = ("complete", "pruned", "failed")
DEFAULT_TRIALS = 20  # random/tpe without --trials or --timeout


def _train_trial(cfg: Config, pruning: _Pruning) -> dict[str, Any]:
    """The one call into the training engine: train ``cfg`` (its run name and out folder set) with the pruning
    hook and return the run's summary."""
    from cnnctl.run import train

    return train(cfg, hooks=[pruning])


def _new_study_dir(out: Path, name: str) -> Path:
    """``OUT/NAME``, or ``NAME-2``... when it exists: an in-memory study starts afresh."""
    from cnnctl.run import new_run_dir

    return new_run_dir(out, name)


class _TrialFailed(Exception):
    """A trial whose run raised CnnctlError: optuna marks it failed and the study goes on."""


class _Pruning(Hook):
    """A training hook: sees each epoch's metrics row of one trial, reports the metric to optuna and, when the
    pruner says so, stops the run with a sentence (as early stopping would)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.rows: list[dict[str, Any]] = []
        self.reason: str | None = None

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        if run.stop_reason is None:
            reason = run.dist.broadcast_reason(self.decide(row))
            if reason:
                run.stop_reason = reason

    def decide(self, row: dict[str, Any]) -> str | None:
        """Report ``row``'s metric; the sentence that stops the trial when the pruner says so."""
        self.rows.append(row)
        value = row.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        self.trial.report(value, row["epoch"])
        if self.trial.should_prune():
            self.reason = (f"pruned at epoch {row['epoch']}: {self.metric} {value:.4f} is worse than the median of "
                           "the completed trials at that epoch")
        return self.reason

    def scores(self) -> list[float]:
        return [r[self.metric] for r in self.rows if r.get(self.metric) is not None and math.isfinite(r[self.metric])]


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

        n = trial.number
        values = {p.key: p.suggest(trial) for p in self.params}
        trial.set_user_attr("overrides", overrides_for(values))
        log.info("trial %d: %s", n, "  ".join(f"{k}={format_value(v)}" for k, v in values.items()))
        pruning = _Pruning(trial, self.metric)
        t0 = time.perf_counter()
        run_dir = self.study_dir / f"trial-{n:04d}"
        try:
            cfg = trial_config(self.base, values, f"{self.source} (trial {n})",
                               [f"name={run_dir.name}", f"out={yaml_value(str(self.study_dir))}"])
            run_dir = Path(_train_trial(cfg, pruning)["run_dir"])
            scores = pruning.scores()
            if not scores:
                raise TrainingError(f"no epoch reported {self.metric} (is there a validation split?); choose another "
                                    "--metric or set data.val_split > 0")
        except CnnctlError as e:
            trial.set_user_attr("error", str(e))
            self._record(trial, run_dir, pruning.rows, time.perf_counter() - t0, None)
            log.warning("trial %d failed: %s", n, e)
            raise _TrialFailed(str(e)) from None
        except BaseException as e:  # interrupted, or a bug: optuna marks the trial failed and the study ends here
            log.warning("trial %d stopped: %s", n, first_line(e))
            raise
        value = self.best(scores)
        seconds = time.perf_counter() - t0
        self._record(trial, run_dir, pruning.rows, seconds, value)
        update_summary(run_dir, {"study": self.study.study_name, "trial": n, "pruned": pruning.reason is not None,
                                 "value": value})
        done = f"{self.metric} {value:.4f} in {len(pruning.rows)} epochs, {seconds:.1f}s -> {run_dir}"
        if pruning.reason:
            trial.set_user_attr("note", pruning.reason)
            log.info("trial %d %s; best %s", n, pruning.reason, done)
            raise optuna.TrialPruned(pruning.reason)
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


def _check_args(method: str, metric: str, trials: int | None, timeout: float | None, ensemble_top: int,
                study: str | None) -> None:
    if method not in METHODS:
        raise UsageError(f"--method {method!r}: choose grid, random or tpe{did_you_mean(method, METHODS)}")
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}{did_you_mean(metric, METRICS)}")
    if trials is not None and trials < 1:
        raise UsageError(f"--trials {trials}: give at least 1")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(f"--timeout {timeout}: give a positive number of seconds")
    if ensemble_top < 0 or ensemble_top == 1:
        raise UsageError(f"--ensemble-top {ensemble_top}: an ensemble needs at least 2 members (0: none)")
    if study is not None and (not study.strip() or "/" in study or "\\" in study or study in (".", "..")):
        raise UsageError(f"--study {study!r}: the name is also a folder name; use letters, digits, - and _")


def run_tune(config: str, space: str, *, overrides: list[str] | None = None, trials: int | None = None,
             method: str = "tpe", timeout: float | None = None, storage: str | None = None, study: str | None = None,
             prune: bool = True, metric: str = "val_acc", ensemble_top: int = 0, out: str | None = None,
             seed: int = 0) -> dict[str, Any]:
    """Search the space around ``config``; returns the study folder, the best trial and every trial's row.

    ``method`` and ``metric`` are plain strings (``str(enum.value)`` of a CLI choice works too). ``trials`` is the
    study's total number of trials over every process that shares it (a re-run with the same number runs nothing
    more); grid defaults to every point, random/tpe to 20 (or no limit with ``timeout``).
    """
    method, metric = str(getattr(method, "value", method)), str(getattr(metric, "value", metric))
    _check_args(method, metric, trials, timeout, ensemble_top, study)
    base_cfg, config_path = load_config(config, overrides)
    space_path = resolve_space_path(space)
    base = base_cfg.dump()
    params = load_space(space_path, base, str(config_path), grid=method == "grid")
    check_networks(space_path, base, str(config_path), params)
    optuna = import_optuna()
    from optuna.trial import TrialState

    study_name = study or base_cfg.name or config_path.stem
    direction = "maximize" if metric.endswith("_acc") else "minimize"
    grid_size = math.prod(len(p.choices) for p in params) if method == "grid" else None
    total = trials if trials is not None else (None if timeout is not None else DEFAULT_TRIALS)
    if grid_size is not None:
        total = min(trials or grid_size, grid_size)
    sampler = make_sampler(optuna, method, params, seed, shared=storage is not None)
    the_study = open_study(optuna, storage, study_name, sampler=sampler, pruner=make_pruner(optuna, prune),
                           direction=direction, identity={"metric": metric,
                                                          "space": {p.key: p.describe() for p in params}})

    out_root = Path(out or base_cfg.out)
    if storage is None:
        study_dir = _new_study_dir(out_root, study_name)
    else:  # processes sharing a study share its folder
        study_dir = out_root / study_name
        study_dir.mkdir(parents=True, exist_ok=True)
    write_text(study_dir / "space.yaml", space_path.read_text(encoding="utf-8"))

    done = len(the_study.get_trials(deepcopy=False))
    budget = None if total is None else total - done
    where = f"storage {mask(storage)}" if storage else "in memory"
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
    info = {"study": study_name, "uid": the_study.user_attrs.get("cnnctl_uid"), "storage": mask(storage),
            "method": method, "metric": metric, "direction": direction, "trials": total,
            "finished": sum(r["state"] in FINISHED for r in rows)}
    return report(the_study, rows, params, base, str(config_path), study_dir, info, ensemble_top,
                  base_cfg.train.device)
