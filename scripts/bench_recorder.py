"""What the gradient recorder costs per training epoch, side by side with no recorder (medians of repeats).

    python scripts/bench_recorder.py lenet5-digits configs/compare-depth/resnet-20.yaml --every 1 10 50 --repeats 5

For each config: one run built as ``cnnctl train`` builds it, then epochs of the engine's step with the recorder
off and at each ``--every``, interleaved (off, every=1, every=10, ..., off, ...) so that a machine whose load
changes affects all modes alike. Prints the median epoch time per mode and its ratio to "off".
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from cnnctl.config import load_config
from cnnctl.engine import build_run
from cnnctl.recorders import GradientRecorder


def epoch_seconds(run, criterion, recorder: GradientRecorder | None, epoch: int) -> float:
    model, optimizer = run.model, run.optimizer
    model.train()
    batches = list(run.train_loader.batches(epoch))  # cut before timing: the loader is not what is measured
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches):
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recorder is not None:
            recorder.before_optimizer_step(step)
        optimizer.step()
        if recorder is not None:
            recorder.after_optimizer_step(step)
    if recorder is not None:
        recorder.end_epoch(epoch)  # its one sync is part of the cost
    float(loss.detach())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    results = []
    for spec in args.configs:
        cfg = load_config(spec, args.overrides)[0]
        run = build_run(cfg, device=args.device)
        criterion = nn.CrossEntropyLoss()
        modes: dict[str, GradientRecorder | None] = {"off": None}
        modes.update({f"every={n}": GradientRecorder(run.model, every_n_steps=n) for n in args.every})
        times: dict[str, list[float]] = {m: [] for m in modes}
        epoch_seconds(run, criterion, None, 0)  # warm-up
        for r in range(args.repeats):
            for mode, recorder in modes.items():
                if run.device.type == "cuda":
                    torch.cuda.synchronize()
                times[mode].append(epoch_seconds(run, criterion, recorder, r + 1))
        base = statistics.median(times["off"])
        row = {"config": cfg.name, "steps_per_epoch": len(run.train_loader), "device": str(run.device),
               "threads": torch.get_num_threads(),
               "median_epoch_s": {m: round(statistics.median(t), 4) for m, t in times.items()},
               "ratio_to_off": {m: round(statistics.median(t) / base, 4) for m, t in times.items()}}
        results.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
