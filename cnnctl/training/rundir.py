"""The run directory: a new one per run (``NAME``, ``NAME-2``, ...), opened for writing (stale temporaries gone,
config.yaml written), removed again when a run fails before writing; and torchrun's elastic markers, which name
a job's run directory so that a restarted attempt resumes it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cnnctl.errors import UsageError, WriteError
from cnnctl.insight.runs import STATUS_FILE
from cnnctl.io import make_folders, writing
from cnnctl.runtime import precision_name
from cnnctl.training.checkpoint import write_text
from cnnctl.training.runlock import LOCK_NAME

if TYPE_CHECKING:
    from cnnctl.config import Config
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.state import Run

log = logging.getLogger("cnnctl")


def new_run_dir(out: Path, name: str) -> Path:
    """``OUT/NAME``, or ``NAME-2``, ``NAME-3``... when it exists. WriteError (naming the folder and the reason)
    when ``out`` cannot hold it: read-only, a regular file, under a regular file."""
    note = "give --out a writable folder"
    with writing(out, note=note):  # exists() too: a name too long for the file system fails already there
        if out.exists() and not out.is_dir():
            raise WriteError(str(out), "it is a file, not a folder", note="give --out a folder for run directories")
        make_folders(out)
    for i in range(1, 100_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        with writing(path, note=note):
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    raise UsageError(f"{out}: too many runs named {name}; use --name")


def new_run_dir_for(cfg: Config, dist: DistContext) -> Path:
    """Rank 0 makes the directory, every rank gets its path; under torchrun a marker names it for restarts."""
    path = new_run_dir(Path(cfg.out), cfg.name or "run") if dist.is_main else None
    run_dir = Path(dist.broadcast_path(str(path) if path else None))
    marker = _elastic_marker(cfg.out)
    if marker is not None and dist.is_main:
        write_text(marker, str(run_dir))
    return run_dir


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory this run created that holds nothing but its lock (it failed before writing)."""
    try:
        if {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:  # unreadable or not ours to remove: leaving it is harmless
        pass


def open_run_dir(run: Run, *, resuming: bool = False) -> None:
    """Rank 0: clear what a kill left (half-written saves; on resume, the failure status) and write config.yaml."""
    if not run.dist.is_main:
        return
    run_dir = run.run_dir
    for stale in run_dir.glob(".*.tmp"):  # a save that a kill interrupted
        with writing(stale):
            stale.unlink(missing_ok=True)
    if resuming:  # a failure a resume continues from is no longer the run's state
        with writing(run_dir / STATUS_FILE, note="the run directory must be writable to resume it"):
            (run_dir / STATUS_FILE).unlink(missing_ok=True)
    write_text(run_dir / "config.yaml", run.config.to_yaml())
    log.info("run directory: %s  (device %s, %s, %d parameters)", run_dir, run.device,
             precision_name(run.amp_dtype), sum(p.numel() for p in run.model.parameters()))


def _elastic_marker(out: str | Path) -> Path | None:
    """Under torchrun, a file naming this job's run directory, so an elastic restart resumes it."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or "LOCAL_RANK" not in os.environ:
        return None
    return Path(out) / f".torchrun-{run_id}"


def elastic_restart_dir(out: str | Path) -> Path | None:
    """On a torchrun restart (``--max-restarts``), the run directory of the attempt that died, if it saved."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    marker = _elastic_marker(out)
    if marker is None or not marker.exists():
        return None
    run_dir = Path(marker.read_text().strip())
    if not (run_dir / "last.pt").exists():
        return None
    log.warning("torchrun restart %s: resuming %s from last.pt", os.environ["TORCHELASTIC_RESTART_COUNT"], run_dir)
    return run_dir
