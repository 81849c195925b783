"""Train configs/lenet5-mnist.yaml on the real MNIST and print test accuracy and wall time.

    .venv/bin/python scripts/bench_mnist.py [--shared ../shared/data] [--set KEY=VALUE ...]

The real archives are copied from ``--shared`` into ``data/MNIST/raw/`` (torchvision extracts them there with
``download: true`` and checks their md5), so the shared folder is never written to.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_mnist(shared: Path, root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in sorted((shared / "MNIST" / "raw").glob("*.gz")):
        if not (raw / archive.name).exists():
            shutil.copy2(archive, raw / archive.name)


def add_mnist_arguments(parser: argparse.ArgumentParser) -> None:
    """``--shared`` (where the real archives are) and ``--root`` (where they are staged), for every MNIST bench."""
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--root", type=Path, default=ROOT / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mnist_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    stage_mnist(args.shared, args.root)

    import logging

    import torch

    from cnnctl.config import load_config
    from cnnctl.training.run import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config, _ = load_config("lenet5-mnist", [f"data.root={args.root}", *args.overrides])
    start = time.perf_counter()
    summary = train(config, out=args.out)
    wall = time.perf_counter() - start
    result = {
        "config": "lenet5-mnist", "overrides": args.overrides, "test_accuracy": summary["test"]["accuracy"],
        "epochs": summary["epochs"], "wall_seconds": round(wall, 1),
        "train_seconds": round(sum(r["epoch_seconds"] for r in _history(summary)), 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "run_dir": summary["run_dir"],
    }
    print(json.dumps(result, indent=2))


def _history(summary: dict) -> list[dict]:
    import csv

    with open(Path(summary["run_dir"]) / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


if __name__ == "__main__":
    main()
