"""What ``cnnctl tune`` shows and leaves behind: the trials table, trials.csv, history.png, importances.json,
study.json, best.yaml and the ensemble of the best trials (ensemble.json)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from cnnctl.errors import CnnctlError, TrainingError
from cnnctl.tune.space import Param, overrides_for, trial_config, yaml_value

log = logging.getLogger("cnnctl.tune")

HISTORY_FIGSIZE = (8.0, 5.0)


def update_summary(run_dir: Path, extra: dict[str, Any]) -> None:
    from cnnctl.training.checkpoint import write_json

    path = run_dir / "summary.json"
    if path.is_file():
        write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **extra})


def write_text(path: Path, text: str) -> None:
    from cnnctl.training.checkpoint import write_text as write  # checkpoint imports torch: not before a study needs it

    write(path, text)


def trial_rows(trials: list[Any], params: list[Param], states: Any) -> list[dict[str, Any]]:
    """One plain row per optuna trial: number, state, values, epochs, seconds, run directory, note. A trial a
    signal stopped (failed to optuna) is "interrupted"."""
    names = {states.COMPLETE: "complete", states.PRUNED: "pruned", states.FAIL: "failed", states.RUNNING: "running",
             states.WAITING: "waiting"}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        seconds = attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        value = attrs.get("value", t.value if t.state == states.COMPLETE else None)
        state = "interrupted" if "interrupted" in attrs else names.get(t.state, t.state.name.lower())
        rows.append({"trial": t.number, "state": state, "value": value,
                     "params": {p.key: t.params.get(p.key) for p in params}, "epochs": attrs.get("epochs"),
                     "seconds": seconds, "run_dir": attrs.get("run_dir"),
                     "note": attrs.get("error") or attrs.get("note")})
    return rows


def report(study: Any, rows: list[dict[str, Any]], params: list[Param], base: dict[str, Any], source: str,
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
        write_text(study_dir / "trials.csv", trials_csv(rows, params, metric))
        plot_history(rows, study_dir / "history.png", metric=metric, direction=direction, title=f"study {study_name}")
        write_text(study_dir / "importances.json", json.dumps(importances, indent=2) + "\n")
        write_text(study_dir / "study.json", json.dumps(info, indent=2) + "\n")
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
    cfg = trial_config(base, best["params"], source, [f"name={yaml_value(f'{study_name}-best')}"])
    header = f"# best trial {best['trial']} of study {study_name}: {metric} {best['value']:.4f}\n"
    if write:
        write_text(study_dir / "best.yaml", header + cfg.to_yaml())
    log.info("best: trial %d, %s %.4f, %s  ->  cnnctl train %s", best["trial"], metric, best["value"],
             " ".join(overrides_for(best["params"])), study_dir / "best.yaml")
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


def format_value(value: Any) -> str:
    """A table cell: ``-`` for nothing, four significant digits for a float."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], params: list[Param], metric: str, best: int | None) -> str:
    """The trials as an aligned text table; the best marked with *."""
    header = ["trial", *(p.key for p in params), metric, "epochs", "time", "state"]
    body = [[f"{r['trial']}{'*' if r['trial'] == best else ''}", *(format_value(r["params"][p.key]) for p in params),
             "-" if r["value"] is None else f"{r['value']:.4f}", format_value(r["epochs"]),
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
    from cnnctl.insight.plots import integer_epochs, save_figure, subplots

    fig, ax = subplots(figsize=HISTORY_FIGSIZE)
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
    integer_epochs(ax)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def ensemble(members: list[dict[str, Any]], study_dir: Path, metric: str, device: str) -> dict[str, Any] | None:
    """The test-split ensemble (mean of softmax) of the given trials' best.pt beside each member; ensemble.json."""
    from cnnctl.inference.evaluate import evaluate_checkpoints

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
    write_text(study_dir / "ensemble.json", json.dumps(result, indent=2) + "\n")
    return result


def _newer_on_disk(study_dir: Path, info: dict[str, Any]) -> bool:
    """Whether another process sharing the study has already written its files from a later state of it."""
    try:
        disk = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return disk.get("uid") == info["uid"] and int(disk.get("finished") or 0) > info["finished"]
