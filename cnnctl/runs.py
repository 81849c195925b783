"""``cnnctl runs``: what each run under a folder is and how it ended, read from the run folders alone (torch-free).

A run directory is a folder holding ``config.yaml`` (training writes it first). Its status, from the files in it:

| status | rule |
|---|---|
| running | its lock (``.lock``) is held by a live process (:mod:`cnnctl.runlock`) |
| failed | ``status.json`` says ``"status": "failed"`` (training writes it when the loss turns non-finite or it crashes); or, |
|        | with no such file, neither ``summary.json`` nor ``last.pt``: it stopped before its first checkpoint |
| finished | ``summary.json`` with ``stopped_early`` false |
| early-stopped | ``summary.json`` with ``stopped_early`` true (``stop_reason`` says why: patience, or a pruned tune trial) |
| interrupted | ``last.pt`` without ``summary.json``: a signal (or a kill) stopped it; ``cnnctl train --resume`` continues it |

A run that failed after its first checkpoint reads as interrupted until training writes ``status.json``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from cnnctl.errors import UsageError
from cnnctl.registry import did_you_mean
from cnnctl.runlock import holder

STATUS_FILE = "status.json"  # {"status": "failed", "reason": "..."}: what the run folder cannot otherwise show
STATUSES = ("running", "failed", "finished", "early-stopped", "interrupted")
# --sort keys: the field each sorts on and whether the largest comes first
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "name": ("name", False), "status": ("status", False), "arch": ("arch", False), "dataset": ("dataset", False),
    "epochs": ("epochs_done", True), "val_acc": ("best_val_acc", True), "test_acc": ("test_acc", True),
    "wall": ("wall_seconds", False), "started": ("started", True),
}


def find_run_dirs(folder: Path) -> list[Path]:
    """Every run directory at or under ``folder`` (a study's trials included), not looking inside a run."""
    found = []
    for here, dirs, files in os.walk(folder):
        if "config.yaml" in files:
            found.append(Path(here))
            dirs.clear()  # a run's own subfolders (tensorboard/, visualize/) are not runs
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_metrics(path: Path) -> list[dict[str, float | None]]:
    """metrics.csv as rows of numbers (None for an empty or unreadable cell); [] when there is none."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [{k: _number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [r for r in rows if r.get("epoch") is not None]


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


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
            return "early-stopped", summary.get("stop_reason"), None
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
    planned = _section(config, "train").get("epochs")
    done = summary.get("epochs") if isinstance(summary.get("epochs"), int) else (int(rows[-1]["epoch"]) if rows else 0)
    wall = summary.get("wall_seconds")
    if not isinstance(wall, (int, float)):  # unfinished: the epochs' own times, a lower bound
        wall = sum(r.get("epoch_seconds") or 0.0 for r in rows) if rows else None
    try:  # training writes config.yaml when it starts (and again on --resume)
        started = datetime.fromtimestamp((run_dir / "config.yaml").stat().st_mtime, timezone.utc)
    except OSError:
        started = None
    return {
        "name": run_dir.relative_to(folder).as_posix() if run_dir != folder else run_dir.name,
        "path": str(run_dir),
        "arch": _section(config, "model").get("arch"),
        "dataset": _section(config, "data").get("dataset"),
        "epochs_done": done,
        "epochs_planned": planned if isinstance(planned, int) else None,
        "status": status,
        "reason": reason,
        "pid": pid,
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "test_acc": test.get("accuracy") if isinstance(test.get("accuracy"), (int, float)) else None,
        "wall_seconds": wall,
        "started": started.isoformat(timespec="seconds") if started else None,
    }


def list_runs(folder: str | Path = "runs", *, sort: str = "name") -> list[dict[str, Any]]:
    """Every run under ``folder`` described (see :func:`describe_run`), sorted by ``sort`` (a key of SORT_KEYS;
    accuracies and epochs largest first, runs without the value last)."""
    folder = Path(folder)
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort!r} is not a column{did_you_mean(sort, SORT_KEYS)} (one of: {', '.join(SORT_KEYS)})")
    if not folder.is_dir():
        raise UsageError("no such folder; give the folder your runs are in (training's --out, default runs)",
                         file=str(folder))
    found = [describe_run(d, folder) for d in find_run_dirs(folder)]
    field, descending = SORT_KEYS[sort]
    present = sorted((r for r in found if r[field] is not None), key=lambda r: r[field], reverse=descending)
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
