"""Train configs for a few epochs with the gradient recorder and activation statistics wired in by hand.

Until the recorders are hooks of the loop, this is how their figures are made: it builds each run exactly as
``cnnctl train`` does (``engine.build_run``), runs the same step as ``engine.train_one_epoch`` with the recorder
around the optimizer step, and after each epoch computes the activation statistics over the validation split.

    python scripts/run_recorder_demo.py configs/compare-activations/*.yaml --epochs 3 --out /tmp/demo

writes OUT/NAME/{gradients.csv, gradients.png, activations.png, activations.json} and prints, per run and epoch,
the first layer's gradient norm over the last layer's (the vanishing-gradient ratio) and the validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from cnnctl.config import load_config
from cnnctl.engine import build_run, evaluate
from cnnctl.recorders import GradientRecorder, activation_stats, plot_activations, plot_gradients


def demo(config_path: str, *, epochs: int, every: int, out: Path, overrides: list[str]) -> dict:
    cfg = load_config(config_path, overrides)[0]
    run = build_run(cfg, device="cpu")
    model, optimizer, loader = run.model, run.optimizer, run.train_loader
    recorder = GradientRecorder(model, every_n_steps=every)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    folder = out / (cfg.name or Path(config_path).stem)
    folder.mkdir(parents=True, exist_ok=True)
    activations, epochs_out = {}, []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        losses = []
        for step, (x, y) in enumerate(loader.batches(epoch)):
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            recorder.before_optimizer_step(step)
            if cfg.train.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            recorder.after_optimizer_step(step)
            run.scheduler.step()
            losses.append(loss.detach())
        rows = recorder.end_epoch(epoch + 1)
        seconds = time.perf_counter() - t0
        acc, _ = evaluate(model, run.val_loader.batches(0), len(run.data.classes), run.device)
        val_acc = acc.result(run.data.classes)["accuracy"]
        activations[epoch + 1] = activation_stats(model, run.val_loader.batches(0))
        first, last = rows[0]["grad_norm"], rows[-1]["grad_norm"]
        epochs_out.append({"epoch": epoch + 1, "train_loss": float(torch.stack(losses).mean()), "val_acc": val_acc,
                           "first_layer": rows[0]["layer"], "last_layer": rows[-1]["layer"],
                           "first_grad_norm": first, "last_grad_norm": last,
                           "first_over_last": first / last if first and last else math.nan,
                           "seconds": seconds})
        print(json.dumps({"run": folder.name, **epochs_out[-1]}), flush=True)
    recorder.write_csv(folder / "gradients.csv")
    plot_gradients(recorder.rows, folder / "gradients.png", title=f"{folder.name}: gradient flow")
    plot_activations(activations, folder / "activations.png", title=f"{folder.name}: activations (validation split)")
    (folder / "activations.json").write_text(json.dumps(activations, indent=1))
    return {"run": folder.name, "epochs": epochs_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=1, help="record every Nth step")
    parser.add_argument("--out", type=Path, default=Path("runs/recorder-demo"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    results = [demo(c, epochs=args.epochs, every=args.every, out=args.out, overrides=args.overrides)
               for c in args.configs]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
