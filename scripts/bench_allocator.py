"""What cnnctl's CPU allocator settings are worth: ``cnnctl train`` with them and with glibc's defaults.

    .venv/bin/python scripts/bench_allocator.py [--repeats 4] [--epochs 2] [--shared ../shared/data]

Runs configs/lenet5-mnist.yaml on the real MNIST (staged from ``--shared`` as scripts/bench_mnist.py does) as
whole ``cnnctl train`` processes, alternating A B A B: A as cnnctl runs by default (runtime.tune_cpu_allocator
raises glibc's mmap and trim thresholds), B with ``CNNCTL_DEFAULT_MALLOC=1``. Everything else is identical
(seed, data, threads). Prints the median training seconds per epoch (metrics.csv's ``epoch_seconds``) of each
and the per-pair speed ratio B / A.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_mnist import ROOT, add_mnist_arguments, stage_mnist


def epoch_seconds(out: Path, env: dict[str, str], config: str, overrides: list[str]) -> list[float]:
    cmd = [sys.executable, "-m", "cnnctl", "train", config, "--out", str(out), "--name", "run"]
    for o in overrides:
        cmd += ["--set", o]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    with open(run / "metrics.csv") as f:
        return [float(r["epoch_seconds"]) for r in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    add_mnist_arguments(parser)
    args = parser.parse_args()
    stage_mnist(args.shared, args.root)
    overrides = [f"data.root={args.root}", f"train.epochs={args.epochs}"]
    env_tuned = {k: v for k, v in os.environ.items() if k != "CNNCTL_DEFAULT_MALLOC"}
    env_default = {**env_tuned, "CNNCTL_DEFAULT_MALLOC": "1"}
    tuned, default = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            tuned.append(statistics.median(epoch_seconds(Path(tmp) / f"a{i}", env_tuned, "lenet5-mnist", overrides)))
            default.append(statistics.median(epoch_seconds(Path(tmp) / f"b{i}", env_default, "lenet5-mnist", overrides)))
    ratios = [d / t for t, d in zip(tuned, default, strict=True)]
    result = {"config": "lenet5-mnist", "epochs": args.epochs, "repeats": args.repeats,
              "tuned_epoch_seconds": round(statistics.median(tuned), 2),
              "glibc_default_epoch_seconds": round(statistics.median(default), 2),
              "median_speedup": round(statistics.median(ratios), 3), "speedups": [round(r, 3) for r in ratios]}
    print(f"epoch: {result['tuned_epoch_seconds']:.2f} s tuned, {result['glibc_default_epoch_seconds']:.2f} s glibc "
          f"defaults; median speed-up {result['median_speedup']:.3f}x")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
