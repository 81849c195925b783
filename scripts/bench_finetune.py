"""Fine-tuning with a frozen body: the feature cache (``train.cache_features``) against the same run without it.

    .venv/bin/python scripts/bench_finetune.py [--repeats 3] [--epochs 4] [--images 400] [--size 128]
                                               [--workdir DIR]

``freeze: body`` on resnet18 over an image folder of ``--images`` generated photos (``--size`` px RGB, 4 classes,
noise plus a class-placed square, as the tests make them; 80/20 train/val), ``data.cache: memory``, no
augmentation, trained through ``cnnctl.training.run.train`` (what ``cnnctl train`` runs) in two variants, their
order alternated each repeat so a drift of the machine's speed spreads over both:

- ``uncached``: ``train.cache_features: false``: every epoch runs the frozen body (forward only: no gradient
  reaches it) over every training and validation image;
- ``cached``: the body runs once, at the first epoch's start, and the head trains on its features.

128 px: what this README suggests for photos on a CPU. ResNet's ImageNet stem (7x7/2 conv + max-pool) takes over
from 64 px; 224 px, the size torchvision's weights were trained at, costs 3x the multiply-adds of 128 (the
count goes with the pixels), and 128 px keeps a 4x4 map before the pool, enough for a photo's object.

Reported: the median steady epoch (metrics.csv's ``epoch_seconds``, the epochs after the first; it times the
steps, not validation), the median whole run (summary.json's ``wall_seconds``: every epoch with its validation,
the cache's one pass included), and their ratios per repeat, then the median. Both variants end with the same
weights (tests/test_features.py checks it).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnctl.config import Config
from cnnctl.runtime import tune_cpu_allocator

VARIANTS = ("uncached", "cached")


def write_photo_folder(root: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` RGB PNGs of ``side`` px in 4 class folders: noise with a square whose place and colour give the class."""
    rng = np.random.default_rng(seed)
    block = side // 4
    for i in range(n):
        label = i % 4
        image = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
        row, col = (label * 3 * block // 4) % (side - block), (label * 5 * block // 4) % (side - block)
        image[row: row + block, col: col + block] = (200 + label * 10, 255 - label * 30, 100 + label * 30)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def make_folder(workdir: Path, n: int, side: int) -> Path:
    root = workdir / f"photos-{n}-{side}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        write_photo_folder(root, n, side)
        (root / ".complete").write_text("")
        print(f"wrote {n} PNGs to {root} in {time.perf_counter() - start:.1f} s", flush=True)
    return root


def config_for(root: Path, variant: str, epochs: int, batch: int, out: Path) -> Config:
    return Config.model_validate({
        "name": f"bench-{variant}", "seed": 0, "out": str(out),
        "data": {"dataset": "imagefolder", "root": str(root), "cache": "memory", "batch_size": batch,
                 "val_split": 0.2, "test_split": 0, "normalize": "none"},
        "model": {"arch": "resnet18"},
        "optimizer": {"name": "adam", "lr": 0.001},
        "train": {"epochs": epochs, "device": "cpu", "early_stopping": None, "freeze": "body",
                  "cache_features": variant == "cached", "record_gradients_every": None,
                  "record_activations": False},
    })


def run_once(cfg: Config) -> tuple[list[float], float]:
    """Per-epoch step seconds and the whole run's wall seconds of ``cnnctl.training.run.train(cfg)``."""
    from cnnctl.training.run import train

    summary = train(cfg)
    rows = list(csv.DictReader((Path(summary["run_dir"]) / "metrics.csv").open()))
    shutil.rmtree(summary["run_dir"], ignore_errors=True)
    return [float(r["epoch_seconds"]) for r in rows], summary["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2: the first is not steady)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cnnctl-bench-finetune")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_cpu_allocator()  # as `cnnctl train` does (see scripts/bench_folder.py)
    root = make_folder(args.workdir, args.images, args.size)
    epoch_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    run_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                epochs, wall = run_once(config_for(root, v, args.epochs, args.batch, Path(out)))
                epoch_s[v].append(statistics.median(epochs[1:]))
                run_s[v].append(wall)
                print(f"repeat {r + 1} {v}: steady epoch {epoch_s[v][-1]:.3f} s, run {wall:.2f} s", flush=True)
    ratio = {"epoch": [u / c for u, c in zip(epoch_s["uncached"], epoch_s["cached"], strict=True)],
             "run": [u / c for u, c in zip(run_s["uncached"], run_s["cached"], strict=True)]}
    med = {k: statistics.median(x) for k, x in ratio.items()}
    print(f"\n| resnet18, freeze: body, {args.size} px, {args.images} images, {args.epochs} epochs | uncached | "
          "cached | uncached / cached |\n|---|---|---|---|")
    print(f"| steady epoch (steps) | {statistics.median(epoch_s['uncached']):.3f} s | "
          f"{statistics.median(epoch_s['cached']):.4f} s | {med['epoch']:.0f}x |")
    print(f"| whole run (with validation and the cache's one pass) | {statistics.median(run_s['uncached']):.2f} s | "
          f"{statistics.median(run_s['cached']):.2f} s | {med['run']:.1f}x |")
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
                      "epochs": args.epochs, "images": args.images, "size": args.size, "batch": args.batch,
                      "epoch_seconds": epoch_s, "run_seconds": run_s,
                      "ratios": {k: [round(y, 2) for y in x] for k, x in ratio.items()}}, indent=2))


if __name__ == "__main__":
    main()
