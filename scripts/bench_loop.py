"""cnnctl's training loop against a minimal hand-written PyTorch loop, side by side in one process.

    .venv/bin/python scripts/bench_loop.py [--repeats 5] [--epochs 3] [--threads N] [--device cpu]
                                           [--record-gradients-every N|off]

For each model (lenet5 on MNIST-shaped data, resnet20 on CIFAR-shaped data) it alternates A B B A: A is
``cnnctl.training.run.build_run`` + ``cnnctl.training.engine.fit`` + ``cnnctl.training.run.finish`` (the code ``cnnctl train`` runs: progress, metrics.csv, checkpoints, summary.json; no
validation split so both sides do the same arithmetic; gradient recording at the config's default, every 20th
step, unless ``--record-gradients-every`` says otherwise), B is the hand-written loop on the same model, data,
batch size, dtype and threads. It prints steady-state images/s of each (epochs after the first), the median
ratio cnnctl / hand-written, and cnnctl's fixed overhead per epoch, measured as a marginal cost so one-time
start-up (model build, final plots) cancels out: each side runs 1 and 1 + E epochs, its per-epoch cost is
(wall(1 + E) - wall(1)) / E, and the overhead is cnnctl's per-epoch cost minus the hand-written loop's.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnnctl.config import Config, resolve_run
from cnnctl.data.base import DataBundle, TensorSplit
from cnnctl.runtime import tune_cpu_allocator
from cnnctl.training.engine import fit
from cnnctl.training.run import Trackers, build_run, finish

CASES = {
    # name: (arch, channels, side, samples, batch)
    "lenet5-mnist": ("lenet5", 1, 28, 12_000, 128),
    "resnet20-cifar": ("resnet20", 3, 32, 2_048, 128),
}


def synthetic(channels: int, side: int, n: int, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)
    return TensorSplit(images, labels)


def config_for(arch: str, batch: int, epochs: int, device: str, record_every: int | None = 20,
               **train: object) -> Config:
    return Config.model_validate({
        "name": "bench", "seed": 0,
        "data": {"dataset": "fake", "batch_size": batch, "val_split": 0, "normalize": "none"},
        "model": {"arch": arch},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": epochs, "device": device, "early_stopping": None,
                  "checkpoint": {"monitor": "train_loss"}, "channels_last": False, "precision": "fp32",
                  "record_gradients_every": record_every, **train},
    })


def run_cnnctl(cfg: Config, split: TensorSplit, out: Path) -> tuple[float, list[float]]:
    """Wall time of fit and its per-epoch training seconds (``train.compile`` honoured as ``cnnctl train`` does)."""
    import cnnctl.training.assembly as assembly

    # The bench feeds its own tensors through the real loader: swap load_data for one returning them.
    original = assembly.load_data

    def load(_cfg, _seed, **_kw):
        return DataBundle("bench", [str(i) for i in range(10)], split.images.shape[1], tuple(split.images.shape[2:]),
                          [0.0] * split.images.shape[1], [1.0] * split.images.shape[1], split, None, None)

    assembly.load_data = load
    try:
        start = time.perf_counter()
        trackers = Trackers.from_config(cfg)
        run = build_run(resolve_run(cfg, out=str(out), name=f"run-{time.monotonic_ns()}").config, trackers=trackers)
        fit(run)
        summary = finish(run, trackers, wall_seconds=time.perf_counter() - start)
        wall = time.perf_counter() - start
    finally:
        assembly.load_data = original
    import csv

    rows = list(csv.DictReader((Path(summary["run_dir"]) / "metrics.csv").open()))
    return wall, [float(r["epoch_seconds"]) for r in rows]


def run_hand(cfg: Config, split: TensorSplit) -> tuple[float, list[float]]:
    """The minimal loop: the same model and data, already float on the device, randperm, index, step."""
    from cnnctl.models.registry import create_model

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.train.device if cfg.train.device != "auto" else "cpu")
    x_all = split.images.to(device).float().div_(255)
    y_all = split.labels.to(device)
    model = create_model(cfg.model, in_channels=x_all.shape[1], image_size=tuple(x_all.shape[2:]), num_classes=10)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum)
    criterion = nn.CrossEntropyLoss()
    bs = cfg.data.batch_size
    epoch_seconds = []
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(0, len(perm), bs):
            idx = perm[i: i + bs]
            if len(idx) < 2:
                continue
            loss = criterion(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        float(loss.detach())  # one sync, as an epoch-end log line would
        epoch_seconds.append(time.perf_counter() - t0)
    return time.perf_counter() - start, epoch_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="long runs; short runs take 1 (>= 2)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--record-gradients-every", default="20", metavar="N|off",
                        help="cnnctl's train.record_gradients_every (default 20, the config default; off: none)")
    args = parser.parse_args()
    record = None if args.record_gradients_every == "off" else int(args.record_gradients_every)
    logging.basicConfig(level=logging.WARNING)
    # Both sides share the process, so both get the allocator settings cnnctl makes (runtime.tune_cpu_allocator;
    # scripts/bench_allocator.py measures what they are worth); set CNNCTL_DEFAULT_MALLOC=1 to run both without.
    tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            arch, channels, side, n, batch = CASES[name]
            split = synthetic(channels, side, n)
            cfg = config_for(arch, batch, args.epochs, args.device, record)
            run_hand(cfg, split)  # warm-up: allocator, kernels, first-touch
            short = config_for(arch, batch, 1, args.device, record)
            a_ips, b_ips, ratios, overheads = [], [], [], []
            sides = {"a": lambda c, s=split: run_cnnctl(c, s, Path(tmp)), "b": lambda c, s=split: run_hand(c, s)}
            for r in range(args.repeats):
                # A B B A: a drift of the machine's speed cancels out over two repeats
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                long_runs = {side: sides[side](cfg) for side in order}
                short_runs = {side: sides[side](short) for side in reversed(order)}
                (a_wall, a_epochs), (b_wall, b_epochs) = long_runs["a"], long_runs["b"]
                a_short, b_short = short_runs["a"][0], short_runs["b"][0]
                a = n / statistics.median(a_epochs[1:] or a_epochs)
                b = n / statistics.median(b_epochs[1:] or b_epochs)
                a_ips.append(a)
                b_ips.append(b)
                ratios.append(a / b)
                per_epoch = args.epochs - 1
                overheads.append(((a_wall - a_short) - (b_wall - b_short)) / per_epoch)
            results[name] = {
                "cnnctl_images_per_s": round(statistics.median(a_ips), 1),
                "hand_images_per_s": round(statistics.median(b_ips), 1),
                "median_ratio": round(statistics.median(ratios), 4),
                "ratios": [round(r, 4) for r in ratios],
                "overhead_s_per_epoch": round(statistics.median(overheads), 4),
            }
            print(f"{name}: cnnctl {results[name]['cnnctl_images_per_s']:,.0f} img/s, hand-written "
                  f"{results[name]['hand_images_per_s']:,.0f} img/s, median ratio {results[name]['median_ratio']:.3f}, "
                  f"overhead {results[name]['overhead_s_per_epoch']:+.3f} s/epoch", flush=True)
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "repeats": args.repeats, "epochs": args.epochs, "record_gradients_every": record,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
