"""The end of a run: the best weights back when asked, the test split evaluated, summary.json and the plots."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cnnctl.runtime import precision_name
from cnnctl.training.checkpoint import load_checkpoint, load_model_state, write_json
from cnnctl.training.engine import evaluate

if TYPE_CHECKING:
    from cnnctl.training.assembly import Trackers
    from cnnctl.training.state import Run

log = logging.getLogger("cnnctl")


def finish(run: Run, trackers: Trackers, *, wall_seconds: float) -> dict[str, Any]:
    """Restore the best weights when asked, evaluate the test split, write summary.json and the plots.

    ``trackers``: the run's best-metric tracker and early stopping, as ``build_run`` was handed them (the best
    epoch and the early stop are theirs to say)."""
    cfg = run.config
    run.dist.barrier()  # every rank reads best.pt only after rank 0 has written it
    weights = "last"
    best_path = run.run_dir / "best.pt"
    restore_best = cfg.train.early_stopping.restore_best if cfg.train.early_stopping else True
    if restore_best and best_path.exists():
        load_model_state(run.model, load_checkpoint(best_path)["model"], str(best_path))
        weights = "best"
    test = None
    if run.test_loader is not None:
        acc, _ = evaluate(run.module, run.test_loader.batches(0), len(run.data.classes), run.device,
                          amp_dtype=run.amp_dtype, loss=cfg.train.loss)
        test = run.dist.reduce_eval(acc, run.data.classes)
    if run.stop_reason:
        log.info("early stopping: %s", run.stop_reason)
    summary = _summary(run, trackers, test=test, weights=weights, wall_seconds=wall_seconds)
    if run.dist.is_main:
        write_json(run.run_dir / "summary.json", summary)
        from cnnctl.insight.plots import run_plots

        es = trackers.early_stopping
        run_plots(run.run_dir, summary, run.data.classes, es.stopped_epoch if es and run.stop_reason else None)
        if test is not None:
            top5 = f", top-5 {test['top5']:.2%}" if test["top5"] is not None else ""
            log.info("test (%s weights): loss %.4f, accuracy %.2f%%%s on %d images", weights, test["loss"],
                     100 * test["accuracy"], top5, test["n"])
    for hook in run.hooks:  # after the plots: TensorBoard shows confusion_matrix.png
        hook.on_run_end(run, summary)
    return summary


def _summary(run: Run, trackers: Trackers, *, test: dict[str, Any] | None, weights: str,
             wall_seconds: float) -> dict[str, Any]:
    """summary.json's content: the run's figures, then what each hook adds (``Hook.summary_items``: the recorders'
    "gradients" and "activations", or a hook of the caller's)."""
    best = trackers.best
    rows = run.history
    images = run.train_loader.num_samples * run.dist.world_size * len(rows)
    seconds = sum(r["epoch_seconds"] for r in rows)
    summary = {
        "name": run.config.name,
        "run_dir": str(run.run_dir),
        "epochs": run.epoch,
        "steps": run.step,
        "monitor": best.monitor,
        "best_epoch": best.best_epoch,
        "best": next((r for r in rows if r["epoch"] == best.best_epoch), None),
        "stopped_early": run.stop_reason is not None,
        "stop_reason": run.stop_reason,
        "test_weights": weights,
        "test": test,
        "wall_seconds": wall_seconds,
        "train_images_per_second": images / seconds if seconds > 0 else None,
        "device": str(run.device),
        "precision": precision_name(run.amp_dtype),
        "world_size": run.dist.world_size,
        "params": sum(p.numel() for p in run.model.parameters()),
    }
    for hook in run.hooks:
        summary.update(hook.summary_items())
    return summary
