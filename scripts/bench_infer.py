"""Inference throughput: cnnctl's eval and predict paths against the bare model, side by side in one process.

    .venv/bin/python scripts/bench_infer.py [--repeats 5] [--images 10000] [--files 1000] [--arch lenet5]
                                            [--paths eval predict]

- eval: ``cnnctl.training.engine.evaluate`` over the loader ``cnnctl eval`` uses (uint8 images normalized per batch,
  loss, top-5 and confusion matrix accumulated) against ``model(x)`` under ``torch.inference_mode()`` on the same
  batches already normalized in memory.
- predict: ``cnnctl.inference.predict.predict`` on a folder of PNG files against a hand-written loop that decodes the same
  files with PIL, stacks, normalizes and runs the model on the same batch size.
Alternating A B B A; medians of images/s and of the per-pair ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnctl.config import Config
from cnnctl.data.base import TensorSplit, make_loader, to_model_input
from cnnctl.models.registry import create_model
from cnnctl.training.checkpoint import save_checkpoint
from cnnctl.training.engine import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=1_000)
    parser.add_argument("--arch", default="lenet5")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--paths", nargs="*", default=["eval", "predict"], choices=["eval", "predict"])
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    mean, std = [0.1307], [0.3081]
    cfg = Config.model_validate({"data": {"dataset": "mnist"}, "model": {"arch": args.arch}})
    model = create_model(cfg.model, in_channels=1, image_size=(28, 28), num_classes=10).eval()
    device = torch.device("cpu")

    loader = make_loader(TensorSplit(images, labels), batch_size=args.batch, train=False, device=device, mean=mean,
                         std=std, augment=None, seed=0)
    ready = [to_model_input(images[i: i + args.batch], mean, std, device) for i in range(0, args.images, args.batch)]

    def cnnctl_eval() -> float:
        start = time.perf_counter()
        acc, _ = evaluate(model, loader.batches(0), 10, device)
        acc.result([str(i) for i in range(10)])
        return args.images / (time.perf_counter() - start)

    def bare_forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in ready:
                model(x)
        return args.images / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(args.files):
            Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")
        ckpt = Path(tmp) / "best.pt"
        save_checkpoint(ckpt, {"format": 1, "config": cfg.dump(), "classes": [str(i) for i in range(10)],
                               "input": {"channels": 1, "size": [28, 28], "mean": mean, "std": std},
                               "model": model.state_dict()})
        files = sorted(folder.iterdir())

        from cnnctl.inference.predict import predict

        def cnnctl_predict() -> float:
            start = time.perf_counter()
            predict([str(folder)], str(ckpt), topk=5, batch_size=args.batch)
            return args.files / (time.perf_counter() - start)

        def hand_predict() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(files), args.batch):
                    batch = np.stack([np.asarray(Image.open(f).convert("L")) for f in files[i: i + args.batch]])
                    x = to_model_input(torch.from_numpy(batch)[:, None], mean, std, device)
                    model(x).softmax(1).topk(5, dim=1)
            return args.files / (time.perf_counter() - start)

        results = {}
        paths = {"eval": (cnnctl_eval, bare_forward), "predict": (cnnctl_predict, hand_predict)}
        for name in args.paths:
            a, b = paths[name]
            a(), b()  # warm-up
            def pair(r: int, a=a, b=b) -> tuple[float, float]:
                """(a, b) run in the order A B, then B A: the second of two runs tends to be the faster."""
                if r % 2 == 0:
                    return a(), b()
                b_first = b()
                return a(), b_first

            pairs = [pair(r) for r in range(args.repeats)]
            results[name] = {
                "cnnctl_images_per_s": round(statistics.median(p[0] for p in pairs), 1),
                "bare_images_per_s": round(statistics.median(p[1] for p in pairs), 1),
                "median_ratio": round(statistics.median(p[0] / p[1] for p in pairs), 4),
            }
            r = results[name]
            print(f"{name}: cnnctl {r['cnnctl_images_per_s']:,.0f} img/s, bare {r['bare_images_per_s']:,.0f} img/s, "
                  f"median ratio {r['median_ratio']:.3f}", flush=True)
    print(json.dumps({"arch": args.arch, "threads": torch.get_num_threads(), "batch": args.batch,
                      "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()
