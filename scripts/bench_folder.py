"""Image folders: streamed, decoded once (``data.cache: memory``), and the same images as an in-memory dataset.

    .venv/bin/python scripts/bench_folder.py [--repeats 3] [--epochs 3] [--images 10000] [--cases ...]
                                             [--mnist ../shared/data/MNIST/raw] [--workdir DIR]

It writes the folders first (kept in ``--workdir`` for the next run): the first ``--images`` MNIST training
images as PNG class folders (read with torchvision's MNIST reader from the raw archives), and as many synthetic
32x32 RGB images (noise plus a class-placed square, as the tests make). Each case (a folder and a model) trains
through ``cnnctl.training.run.train``, the function ``cnnctl train`` runs, in three variants, their order rotated each
repeat so a drift of the machine's speed spreads over all of them:

- ``stream``: ``data.cache: none``, every image decoded every epoch by the DataLoader workers;
- ``memory``: ``data.cache: memory``, decoded once at start, then batches cut from one uint8 tensor;
- ``tensor``: the same pixels handed to the run as an in-memory dataset (what the built-in datasets are).

The process gets the allocator settings ``cnnctl train`` makes (``runtime.tune_cpu_allocator``). Steady-state
images/s are from the epochs after the first (metrics.csv's ``epoch_seconds``). The start costs are
``load_data`` wall times: a streaming start (scan only), a decode-once start (scan + decode), and a start from a
warm disk cache (``data.cache: disk``, second run), set against one streaming epoch (the first, workers
starting included). Ratios are per repeat, then the median; ``normalize: none`` everywhere so that no variant
pays for computing the mean and std.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnctl.config import Config
from cnnctl.data.base import DataBundle, TensorSplit, load_data
from cnnctl.runtime import tune_cpu_allocator

REPO = Path(__file__).resolve().parent.parent
CONVNET = [{"conv": {"out": 32, "kernel": 3, "padding": 1}}, "batchnorm", "relu", {"maxpool": 2},
           {"conv": {"out": 64, "kernel": 3, "padding": 1}}, "batchnorm", "relu", {"maxpool": 2},
           "flatten", "linear"]
CASES = {
    # name: (folder, model section)
    "mnist-lenet5": ("mnist", {"arch": "lenet5"}),
    "rgb32-lenet5": ("rgb32", {"arch": "lenet5"}),
    "rgb32-convbn": ("rgb32", {"arch": "custom", "layers": CONVNET}),  # the two-conv BN net: heavier
}
VARIANTS = ("stream", "memory", "tensor")


def write_mnist_folder(root: Path, raw: Path, n: int) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            paths[name] = Path(tmp) / name
            with gzip.open(raw / f"{name}.gz") as src, open(paths[name], "wb") as dst:
                shutil.copyfileobj(src, dst)
        images = read_image_file(str(paths["train-images-idx3-ubyte"]))[:n].numpy()
        labels = read_label_file(str(paths["train-labels-idx1-ubyte"]))[:n].tolist()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")


def write_rgb_folder(root: Path, n: int, side: int = 32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    for i, label in enumerate(labels):
        image = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
        row, col = (label * 3) % (side - 8), (label * 5) % (side - 8)
        image[row: row + 8, col: col + 8] = (200 + label * 5, 255 - label * 9, 100 + label * 12)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def make_folders(workdir: Path, mnist_raw: Path, n: int) -> dict[str, tuple[Path, int]]:
    """{folder name: (root, channels)}, written once per ``workdir`` and image count."""
    folders = {"mnist": (workdir / f"mnist-{n}", 1), "rgb32": (workdir / f"rgb32-{n}", 3)}
    for name, (root, _) in folders.items():
        if (root / ".complete").exists():
            continue
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        write_mnist_folder(root, mnist_raw, n) if name == "mnist" else write_rgb_folder(root, n)
        (root / ".complete").write_text("")
        print(f"wrote {n} PNGs to {root} in {time.perf_counter() - start:.1f} s", flush=True)
    return folders


def config_for(root: Path, channels: int, model: dict, cache: str, epochs: int, batch: int, out: Path) -> Config:
    return Config.model_validate({
        "name": f"bench-{cache}", "seed": 0, "out": str(out),
        "data": {"dataset": "imagefolder", "root": str(root), "channels": channels, "cache": cache,
                 "batch_size": batch, "val_split": 0, "test_split": 0, "normalize": "none"},
        "model": model,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": epochs, "device": "cpu", "early_stopping": None,
                  "checkpoint": {"monitor": "train_loss"}},
    })


def train_epochs(cfg: Config, tensors: DataBundle | None = None) -> list[float]:
    """Per-epoch training seconds of ``cnnctl.training.run.train(cfg)``; ``tensors``: train from this bundle instead."""
    import cnnctl.training.assembly as assembly
    from cnnctl.training.run import train

    original = assembly.load_data
    if tensors is not None:  # the same pixels as an in-memory dataset, through the same run assembly
        assembly.load_data = lambda *_args, **_kw: tensors
    try:
        summary = train(cfg)
    finally:
        assembly.load_data = original
    rows = list(csv.DictReader((Path(summary["run_dir"]) / "metrics.csv").open()))
    shutil.rmtree(summary["run_dir"], ignore_errors=True)
    return [float(r["epoch_seconds"]) for r in rows]


def load_seconds(cfg) -> float:
    start = time.perf_counter()
    load_data(cfg, 0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (>= 2: the first is not steady)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "MNIST" / "raw")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cnnctl-bench-folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # As `cnnctl train` runs (the CLI entry point calls it): without it glibc's mmap threshold, which grows when
    # a large block is freed, left the heap in a state that depended on what ran before (decoding 10,000 images
    # frees large blocks), and a variant's speed on which variant ran earlier in this process.
    tune_cpu_allocator()
    if not (args.mnist / "train-images-idx3-ubyte.gz").is_file():
        parser.error(f"no MNIST archives (train-images-idx3-ubyte.gz) in {args.mnist}; pass --mnist DIR")
    folders = make_folders(args.workdir, args.mnist, args.images)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for case in args.cases:
            folder, model = CASES[case]
            root, channels = folders[folder]
            cfg = {v: config_for(root, channels, model, "none" if v == "stream" else "memory", args.epochs,
                                 args.batch, Path(out)) for v in VARIANTS}
            disk_cfg = config_for(root, channels, model, "disk", args.epochs, args.batch, Path(out)).data
            shutil.rmtree(root / ".cnnctl-cache", ignore_errors=True)
            load_data(disk_cfg, 0)  # writes the disk cache that the warm-start timings read
            tensors = load_data(cfg["memory"].data, 0)
            assert isinstance(tensors.train, TensorSplit)
            n = len(tensors.train)
            ips: dict[str, list[float]] = {v: [] for v in VARIANTS}
            starts: dict[str, list[float]] = {"scan": [], "decode": [], "disk": [], "stream_epoch": []}
            for r in range(args.repeats):
                order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
                for v in order:
                    epochs = train_epochs(cfg[v], tensors if v == "tensor" else None)
                    ips[v].append(n / statistics.median(epochs[1:]))
                    if v == "stream":
                        starts["stream_epoch"].append(epochs[0])
                starts["scan"].append(load_seconds(cfg["stream"].data))
                starts["decode"].append(load_seconds(cfg["memory"].data))
                starts["disk"].append(load_seconds(disk_cfg))
            ratio = {
                "memory_vs_tensor": [m / t for m, t in zip(ips["memory"], ips["tensor"], strict=True)],
                "memory_vs_stream": [m / s for m, s in zip(ips["memory"], ips["stream"], strict=True)],
                "decode_vs_stream_epoch": [(d - s) / e for d, s, e in
                                           zip(starts["decode"], starts["scan"], starts["stream_epoch"], strict=True)],
            }
            results[case] = {
                "train_images": n,
                "images_per_s": {v: round(statistics.median(x), 1) for v, x in ips.items()},
                "start_s": {k: round(statistics.median(x), 3) for k, x in starts.items()},
                "median_ratio": {k: round(statistics.median(x), 3) for k, x in ratio.items()},
                "ratios": {k: [round(y, 3) for y in x] for k, x in ratio.items()},
            }
            res = results[case]
            print(f"{case}: img/s stream {res['images_per_s']['stream']:,.0f}, memory "
                  f"{res['images_per_s']['memory']:,.0f}, tensor {res['images_per_s']['tensor']:,.0f}; "
                  f"memory/tensor {res['median_ratio']['memory_vs_tensor']:.3f}, memory/stream "
                  f"{res['median_ratio']['memory_vs_stream']:.2f}x; decode-once start "
                  f"{res['start_s']['decode'] - res['start_s']['scan']:.2f} s = "
                  f"{res['median_ratio']['decode_vs_stream_epoch']:.2f} streaming epochs; warm disk start "
                  f"{res['start_s']['disk']:.2f} s", flush=True)
    print(markdown(results))
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
                      "epochs": args.epochs, "images": args.images, "batch": args.batch, "results": results},
                     indent=2))


def markdown(results: dict) -> str:
    lines = ["| case | stream img/s | memory img/s | in-memory dataset img/s | memory / in-memory | memory / stream "
             "| decode-once start | one streaming epoch | warm disk-cache start |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        ips, s, m = r["images_per_s"], r["start_s"], r["median_ratio"]
        lines.append(f"| {case} ({r['train_images']:,} images) | {ips['stream']:,.0f} | {ips['memory']:,.0f} | "
                     f"{ips['tensor']:,.0f} | {m['memory_vs_tensor']:.3f} | {m['memory_vs_stream']:.2f}x | "
                     f"{s['decode'] - s['scan']:.2f} s ({m['decode_vs_stream_epoch']:.2f} epochs) | "
                     f"{s['stream_epoch']:.2f} s | {s['disk']:.2f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
