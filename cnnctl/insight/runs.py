"""``cnnctl runs``: what each run under a folder is and how it ended, read from the run folders alone (torch-free).

A run directory is a folder holding ``config.yaml`` (training writes it first). Its status, from the files in it:

| status | rule |
|---|---|
| running | its lock (``.lock``) is held by a live process (:mod:`cnnctl.training.runlock`) |
| failed | ``status.json`` says ``"status": "failed"`` (training writes it when the loss turns non-finite or it crashes); or, |
|        | with no such file, neither ``summary.json`` nor ``last.pt``: it stopped before its first checkpoint |
| finished | ``summary.json`` with ``stopped_early`` false |
| early-stopped | ``summary.json`` with ``stopped_early`` true (``stop_reason`` says why: patience, or a pruned tune trial) |
| interrupted | ``last.pt`` without ``summary.json``: a signal (or a kill) stopped it; ``cnnctl train --resume`` continues it |

A run that failed after its first checkpoint reads as interrupted until training writes ``status.json``.

Run folders may come from anywhere (shared, downloaded), so nothing in one is trusted: config.yaml is read with the
configs' own bounded YAML loader (``config.read_yaml``: an alias bomb is refused in milliseconds), only regular
files are opened (``stat`` first, then ``fstat`` of the file opened non-blocking: a FIFO would wait for a writer
forever, a device never ends), none larger than ``MAX_RUN_FILE_BYTES``. A folder that cannot be listed, or whose
files cannot be read so, is left out with one warning line on stderr saying why (``skipped PATH: reason``); the
rest are listed. Values of the wrong type in a run's files (``arch: 5``, a string wall time) read as unknown.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnctl.config import read_yaml
from cnnctl.errors import ConfigError, UsageError
from cnnctl.io import file_kind
from cnnctl.registry import did_you_mean
from cnnctl.training.runlock import holder

log = logging.getLogger("cnnctl")

STATUS_FILE = "status.json"  # {"status": "failed", "reason": "..."}: what the run folder cannot otherwise show
STATUSES = ("running", "failed", "finished", "early-stopped", "interrupted")
# --sort keys: the field each sorts on and whether the largest comes first
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "name": ("name", False), "status": ("status", False), "arch": ("arch", False), "dataset": ("dataset", False),
    "epochs": ("epochs_done", True), "val_acc": ("best_val_acc", True), "test_acc": ("test_acc", True),
    "wall": ("wall_seconds", False), "started": ("started", True),
}
# The largest run file read (a 1000-class run's summary.json is a few MiB): a larger one is no file cnnctl wrote.
MAX_RUN_FILE_BYTES = 64 << 20
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class SkippedRun(Exception):
    """A run folder left out of the listing; the message says why."""


def _unlisted(error: OSError) -> None:
    log.warning("skipped %s: cannot be read: %s", error.filename, error.strerror or error)


def find_run_dirs(folder: Path) -> list[Path]:
    """Every run directory at or under ``folder`` (a study's trials included), not looking inside a run. A folder
    that cannot be listed is left out with a warning naming it."""
    found = []
    for here, dirs, files in os.walk(folder, onerror=_unlisted):
        if "config.yaml" in files:
            found.append(Path(here))
            dirs.clear()  # a run's own subfolders (tensorboard/, visualize/) are not runs
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _check_file(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SkippedRun(f"{path.name} is {file_kind(info.st_mode)}, not a regular file, so it is not read (in a run "
                         "folder only the regular files training writes are); remove or replace it")
    if info.st_size > MAX_RUN_FILE_BYTES:
        raise SkippedRun(f"{path.name} is {info.st_size:,} bytes, more than training writes "
                         f"({MAX_RUN_FILE_BYTES:,} at most); is this a run folder?")


def _stat(path: Path) -> os.stat_result | None:
    """What ``path`` leads to (a symlink followed), None when nothing is there; SkippedRun when it cannot be asked."""
    try:
        return os.stat(path)
    except FileNotFoundError:  # a dangling link too: as good as absent
        return None
    except OSError as e:  # a symlink loop, no permission
        raise SkippedRun(f"{path.name} cannot be read: {e.strerror or e}") from None


def _read_bytes(path: Path) -> bytes | None:
    """A run file's bytes, None when there is none. Only a regular file of at most MAX_RUN_FILE_BYTES is opened,
    non-blocking, and checked again once open (it may have been swapped in between); else SkippedRun."""
    info = _stat(path)
    if info is None:
        return None
    _check_file(path, info)
    try:
        with open(os.open(path, os.O_RDONLY | _NONBLOCK), "rb") as f:
            _check_file(path, os.fstat(f.fileno()))
            return f.read(MAX_RUN_FILE_BYTES + 1)
    except OSError as e:
        raise SkippedRun(f"{path.name} cannot be read: {e.strerror or e}") from None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a run file; None when there is none or it is not one (a run killed while writing it)."""
    raw = _read_bytes(path)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:  # UnicodeDecodeError included
        return None
    return data if isinstance(data, dict) else None


def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml, within the limits every config is read with; SkippedRun saying what is wrong with it."""
    info = _stat(path)
    if info is None:
        raise SkippedRun(f"{path.name} is gone (removed while listing?)")
    _check_file(path, info)
    try:
        return read_yaml(path)
    except ConfigError as e:
        raise SkippedRun(f"{path.name}: {str(e).removeprefix(f'{e.file}: ')}") from None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """metrics.csv as rows of numbers (None for an empty or unreadable cell); [] when there is none or it cannot be
    parsed (``cnnctl plot`` names what is wrong with it)."""
    raw = _read_bytes(path)
    try:
        lines = io.StringIO(raw.decode("utf-8") if raw is not None else "", newline="")
        rows = [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(lines)]
    except (UnicodeDecodeError, csv.Error):
        return []
    return [r for r in rows if r.get("epoch") is not None]


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _finite(value: Any) -> float | None:
    """A real, finite number from a run file, else None (a bool, a string, NaN: what training never writes)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def run_status(run_dir: Path) -> tuple[str, str | None, int | None]:
    """(status, reason, pid): see the module's table."""
    pid = holder(run_dir)
    if pid is not None:
        return "running", None, pid or None
    marker = _read_json(run_dir / STATUS_FILE)
    if marker and marker.get("status") == "failed":
        return "failed", str(marker.get("reason") or "") or None, None
    summary = _read_json(run_dir / "summary.json")
    if summary is not None:
        if summary.get("stopped_early"):
            return "early-stopped", _text(summary.get("stop_reason")), None
        return "finished", None, None
    if (run_dir / "last.pt").exists():
        return "interrupted", None, None
    return "failed", "stopped before its first checkpoint", None


def describe_run(run_dir: Path, folder: Path) -> dict[str, Any]:
    """One run's line of ``cnnctl runs`` as plain data (the --json form)."""
    config = _read_config(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json") or {}
    rows = read_metrics(run_dir / "metrics.csv")
    status, reason, pid = run_status(run_dir)
    with_val = [r for r in rows if r.get("val_acc") is not None]
    best = max(with_val, key=lambda r: (r["val_acc"], -r["epoch"])) if with_val else None  # the first of equals
    test = summary.get("test") if isinstance(summary.get("test"), dict) else {}
    done = _count(summary.get("epochs"))
    if done is None:
        done = int(rows[-1]["epoch"]) if rows else 0
    wall = _finite(summary.get("wall_seconds"))
    if wall is None:  # unfinished: the epochs' own times, a lower bound
        wall = sum(r.get("epoch_seconds") or 0.0 for r in rows) if rows else None
    try:  # training writes config.yaml when it starts (and again on --resume)
        started = datetime.fromtimestamp((run_dir / "config.yaml").stat().st_mtime, timezone.utc)
    except OSError:
        started = None
    return {
        "name": run_dir.relative_to(folder).as_posix() if run_dir != folder else run_dir.name,
        "path": str(run_dir),
        "arch": _text(_section(config, "model").get("arch")),
        "dataset": _text(_section(config, "data").get("dataset")),
        "epochs_done": done,
        "epochs_planned": _count(_section(config, "train").get("epochs")),
        "status": status,
        "reason": reason,
        "pid": pid,
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "test_acc": _finite(test.get("accuracy")),
        "wall_seconds": wall,
        "started": started.isoformat(timespec="seconds") if started else None,
    }


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers apart from text, each compared with its own kind: a sort never compares a number with a string."""
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def list_runs(folder: str | Path = "runs", *, sort: str = "name") -> list[dict[str, Any]]:
    """Every run under ``folder`` described (see :func:`describe_run`), sorted by ``sort`` (a key of SORT_KEYS;
    accuracies and epochs largest first, runs without the value last). A run folder that cannot be read is left
    out with a warning (``skipped PATH: reason``, on stderr from the CLI)."""
    folder = Path(folder)
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort!r} is not a column{did_you_mean(sort, SORT_KEYS)} (one of: {', '.join(SORT_KEYS)})")
    if not folder.is_dir():
        raise UsageError("no such folder; give the folder your runs are in (training's --out, default runs)",
                         file=str(folder))
    try:
        os.scandir(folder).close()
    except OSError as e:
        raise UsageError(f"cannot be read: {e.strerror or e}", file=str(folder)) from None
    found = []
    for run_dir in find_run_dirs(folder):
        try:
            found.append(describe_run(run_dir, folder))
        except SkippedRun as e:
            log.warning("skipped %s: %s", run_dir, e)
    field, descending = SORT_KEYS[sort]
    present = sorted((r for r in found if r[field] is not None), key=lambda r: _sort_key(r[field]), reverse=descending)
    return present + [r for r in found if r[field] is None]


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def format_runs(runs: list[dict[str, Any]]) -> str:
    """The table ``cnnctl runs`` prints: one line per run under a header."""
    header = ("RUN", "ARCH", "DATASET", "EPOCHS", "STATUS", "BEST VAL_ACC", "TEST_ACC", "WALL")
    lines = [header]
    for r in runs:
        status = f"running (pid {r['pid']})" if r["status"] == "running" and r["pid"] else r["status"]
        best = f"{r['best_val_acc']:.2%} @{r['best_epoch']}" if r["best_val_acc"] is not None else "-"
        planned = r["epochs_planned"] if r["epochs_planned"] is not None else "?"
        lines.append((r["name"], r["arch"] or "?", r["dataset"] or "?", f"{r['epochs_done']}/{planned}", status, best,
                      f"{r['test_acc']:.2%}" if r["test_acc"] is not None else "-", _wall(r["wall_seconds"])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
