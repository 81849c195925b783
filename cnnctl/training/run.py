"""The train entry: a run from a config to its outputs (``resolve`` -> ``train_resolved`` = ``train``), and the
failure status a crashed run leaves for ``cnnctl runs``.

A run's other jobs have a module each, re-exported here: ``state.Run`` (what ``fit`` trains, and its checkpoint),
``assembly`` (``assemble`` -> ``Parts``, the hooks in their order, ``build_run``), ``restore``, ``rundir`` (the
run directory and torchrun's elastic markers) and ``finish`` (test evaluation, summary.json, plots).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnctl.config import Config, ResolvedRun, resolve_run
from cnnctl.errors import CnnctlError, Interrupted, TrainingError, WriteError, first_line
from cnnctl.insight.runs import STATUS_FILE
from cnnctl.training.assembly import Parts, Trackers, assemble, build_run
from cnnctl.training.checkpoint import load_checkpoint, run_checkpoint, write_json
from cnnctl.training.distributed import DistContext
from cnnctl.training.engine import fit
from cnnctl.training.finish import finish
from cnnctl.training.hooks import Hook
from cnnctl.training.restore import restore
from cnnctl.training.rundir import elastic_restart_dir, new_run_dir, remove_if_empty
from cnnctl.training.state import Run

__all__ = [
    "Parts", "Run", "Trackers", "assemble", "build_run", "elastic_restart_dir", "finish", "new_run_dir",
    "remove_if_empty", "restore", "resolve", "resume_command", "train", "train_resolved",
]

log = logging.getLogger("cnnctl")


def resolve(config: Config | str | Path | None = None, *, overrides: Sequence[str] | None = None,
            name: str | None = None, out: str | None = None, resume: str | Path | None = None) -> ResolvedRun:
    """The run ``train`` would start: its validated config and, on resume, the checkpoint it continues.

    Only the resumed checkpoint is loaded here (torch.load); the config is resolved by ``config.resolve_run``, once:
    a torchrun restart (the same command again) resumes the attempt that died with the config resolved for it.
    """
    overrides = list(overrides or [])
    if resume is not None:
        path = run_checkpoint(resume, "last.pt")
        return resolve_run(config, overrides=overrides, name=name, out=out, resume_from=path,
                           checkpoint=load_checkpoint(path))
    fresh = resolve_run(config, overrides=overrides, name=name, out=out)
    restart = elastic_restart_dir(fresh.config.out)  # its marker lives under the resolved `out`
    if restart is None:
        return fresh
    # CONFIG is not read again: the resolved config is the base, checked against the checkpoint's as on any resume.
    path = run_checkpoint(restart, "last.pt")
    resumed = resolve_run(fresh.config, resume_from=path, checkpoint=load_checkpoint(path))
    return dataclasses.replace(resumed, overrides=fresh.overrides)


def train(config: Config | str | Path | None = None, *, overrides: Sequence[str] | None = None, name: str | None = None,
          out: str | None = None, resume: str | Path | None = None, device: str | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """``cnnctl train``: a new run from ``config`` (a Config, a file or a bundled config name), or a resumed one
    (``resume``: a run directory or checkpoint); returns summary.json's content.

    ``hooks``: extra ``cnnctl.training.hooks.Hook`` objects (``cnnctl tune``'s pruner is one).
    Raises ``errors.Interrupted`` after a SIGINT/SIGTERM (last.pt saved). Changes no process-wide state but the
    seeds: the CLI sets threads, the allocator and logging (``runtime.configure_process``).
    """
    return train_resolved(resolve(config, overrides=overrides, name=name, out=out, resume=resume), device=device,
                          hooks=hooks)


def train_resolved(resolved: ResolvedRun, *, device: str | None = None, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """``train`` for a run already resolved (``resolve``): build it, fit it, finish it."""
    import time

    config = resolved.config
    dist = DistContext.from_env(device or config.train.device)
    trackers = Trackers.from_config(config)
    finished = False
    run: Run | None = None
    try:
        run = build_run(config, dist=dist, device=device, hooks=list(hooks), resume=resolved, trackers=trackers)
        started = time.perf_counter()
        fit(run)
        if run.interrupted is not None and run.epoch < config.train.epochs and run.stop_reason is None:
            raise Interrupted(run.interrupted, resume_command(run.run_dir, resolved.overrides))
        summary = finish(run, trackers, wall_seconds=time.perf_counter() - started)
        finished = True
        return summary
    except Exception as e:
        if run is not None and run.dist.is_main and _is_failure(e):
            _write_failed(run.run_dir, e)
        raise
    finally:
        # released here, not at exit: a notebook's process lives on and may train this run again
        if run is not None and run.lock is not None:
            run.lock.release()
        dist.close(finished=finished)


def _is_failure(error: Exception) -> bool:
    """A failure ``cnnctl runs`` should show: a run-time one (non-finite loss, failed write) or a crash, not an
    interruption (last.pt says it all) nor bad input."""
    if isinstance(error, Interrupted):
        return False
    return isinstance(error, (TrainingError, WriteError)) or not isinstance(error, CnnctlError)


def _write_failed(run_dir: Path, error: Exception) -> None:
    try:
        write_json(run_dir / STATUS_FILE, {"status": "failed", "reason": first_line(error)})
    except WriteError as e:  # the failure itself may be the disk: the error that ended the run is what to report
        log.warning("%s", e)


def resume_command(run_dir: Path, overrides: Sequence[str]) -> str:
    """The command that continues ``run_dir`` (an epochs override kept: it is what the run was extended to)."""
    return f"cnnctl train --resume {run_dir}" + "".join(f" --set {o}" for o in overrides if "epochs" in o)
