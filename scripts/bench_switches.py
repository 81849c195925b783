"""The speed switches of ``train``: precision, channels_last, compile, side by side on the device at hand.

    .venv/bin/python scripts/bench_switches.py [--repeats 3] [--epochs 3] [--device auto] [--case resnet20-cifar]

Each variant trains through ``cnnctl.training.engine.fit`` (as ``cnnctl train`` does, through bench_loop.run_cnnctl) on the same synthetic uint8 data;
the variants take turns (A B C ... A B C ...). Prints the median steady-state images/s of each (epochs after
the first), its ratio to fp32, and for ``compile`` the compile time: its first epoch minus a steady epoch.
The defaults of ``train.precision: auto`` and ``train.channels_last: auto`` follow these figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from bench_loop import CASES, config_for, run_cnnctl, synthetic

CASES = {**CASES, "resnet18-cifar": ("resnet18", 3, 32, 10_000, 256)}  # configs/resnet18-cifar10.yaml's network

VARIANTS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16": {"precision": "bf16", "channels_last": False},
    "channels_last": {"precision": "fp32", "channels_last": True},
    "bf16+channels_last": {"precision": "bf16", "channels_last": True},
    "compile": {"precision": "fp32", "channels_last": False, "compile": True},
    "bf16+channels_last+compile": {"precision": "bf16", "channels_last": True, "compile": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--case", default="resnet20-cifar", choices=list(CASES))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--samples", type=int, default=None, help="images per epoch (default: the case's)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the case's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    arch, channels, side, n, batch = CASES[args.case]
    n, batch = args.samples or n, args.batch or batch
    split = synthetic(channels, side, n)
    steady: dict[str, list[float]] = {v: [] for v in args.variants}
    first: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        run_cnnctl(config_for(arch, batch, 1, device), split, Path(tmp))  # warm-up
        for _ in range(args.repeats):
            for name in args.variants:
                torch._dynamo.reset()  # every compile run pays its compile time
                _, epochs = run_cnnctl(config_for(arch, batch, args.epochs, device, **VARIANTS[name]), split, Path(tmp))
                steady[name].append(statistics.median(epochs[1:]))
                first[name].append(epochs[0])
    base = n / statistics.median(steady["fp32"]) if "fp32" in steady else None
    results = {}
    for name in args.variants:
        ips = n / statistics.median(steady[name])
        results[name] = {"images_per_s": round(ips, 1), "vs_fp32": round(ips / base, 3) if base else None}
        if "compile" in name:
            results[name]["compile_s"] = round(statistics.median(f - s for f, s in zip(first[name], steady[name], strict=True)), 2)
        extra = f", compile {results[name]['compile_s']:.1f} s" if "compile" in name else ""
        print(f"{args.case} {name}: {ips:,.0f} img/s" + (f" ({ips / base:.3f}x fp32)" if base else "") + extra,
              flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "case": args.case,
                      "samples": n, "batch": batch, "repeats": args.repeats, "epochs": args.epochs,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
