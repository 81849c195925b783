"""What the gradient recorder costs, side by side with no recorder (medians of interleaved repeats).

    python scripts/bench_recorder.py lenet5-digits configs/compare-depth/resnet-20.yaml --every 1 10 20 50

For each config, built as ``cnnctl train`` builds it: the time of a training step (forward, backward, optimizer
step on one fixed batch) without the recorder and with a sampled step (``before_optimizer_step`` +
``after_optimizer_step``), in alternating blocks so a machine whose load changes affects both alike. A step that
is not sampled does no work beyond an integer test, so the overhead at ``every_n_steps=N`` is
``(sampled - plain) / plain / N``; printed for each ``--every``. (Timing whole epochs was tried first: on a
shared machine their noise, about 10%, hid an overhead of 1-3%.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from cnnctl.config import load_config
from cnnctl.training.recorders import GradientRecorder
from cnnctl.training.run import assemble


def bench(spec: str, *, every: list[int], repeats: int, block_steps: int, device: str, overrides: list[str]) -> dict:
    cfg = load_config(spec, overrides)[0]
    run = assemble(cfg, device=device)
    model, optimizer = run.model, run.optimizer
    x, y = next(iter(run.train_loader.batches(0)))
    recorder = GradientRecorder(model, every_n_steps=1)
    criterion = nn.CrossEntropyLoss()
    cuda = run.device.type == "cuda"

    def step(record: bool) -> None:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if record:
            recorder.before_optimizer_step(0)
        optimizer.step()
        if record:
            recorder.after_optimizer_step(0)

    def block(record: bool) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(block_steps):
            step(record)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / block_steps

    for _ in range(3):  # warm-up
        step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for record in (False, True):
            times[record].append(block(record))
    plain, sampled = statistics.median(times[False]), statistics.median(times[True])
    extra = (sampled - plain) / plain
    return {"config": cfg.name, "device": str(run.device), "threads": torch.get_num_threads(),
            "step_ms": round(plain * 1e3, 3), "sampled_step_ms": round(sampled * 1e3, 3),
            "overhead_percent": {f"every={n}": round(100 * extra / n, 2) for n in every}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10, 20, 50])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block", type=int, default=5, help="steps per timed block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    for spec in args.configs:
        print(json.dumps(bench(spec, every=args.every, repeats=args.repeats, block_steps=args.block,
                               device=args.device, overrides=args.overrides)), flush=True)


if __name__ == "__main__":
    main()
