"""Time to 99.0% MNIST test accuracy: configs/lenet5-mnist.yaml through cnnctl against a hand-written loop.

    .venv/bin/python scripts/bench_mnist_time.py [--repeats 2] [--target 0.99] [--shared ../shared/data] [--device cpu]

Both sides use the same recipe (LeNet-5, Adam, one-cycle lr, batch 128, random crops with padding 2, the same
54,000 training images, seed 0, the same data order and crop offsets) and the same threads, alternating
A B A B. After every epoch the test accuracy
is measured outside the clock; the figure is the training wall time until it first reaches the target.
cnnctl's time includes what ``cnnctl train`` does besides the arithmetic (the validation pass, metrics.csv,
checkpoints); the hand-written loop does none of it. Prints the median times and their ratio.
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
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i: i + 1000]).argmax(1) == y[i: i + 1000]).sum()) for i in range(0, len(y), 1000))
    model.train()
    return correct / len(y)


def run_cnnctl(config, test_x, test_y, target: float, out: Path) -> tuple[float | None, int]:
    """Seconds of cnnctl training until the test accuracy first reaches ``target``, and the epoch."""
    from cnnctl.config import resolve_run
    from cnnctl.training.engine import fit
    from cnnctl.training.hooks import Hook
    from cnnctl.training.run import build_run

    class TimeToTarget(Hook):
        """Stops the run once the test accuracy reaches ``target``; its own test passes are not timed."""

        def __init__(self) -> None:
            self.start, self.excluded, self.reached, self.epoch = time.perf_counter(), 0.0, None, 0

        def on_epoch_end(self, run, row: dict) -> None:
            t = time.perf_counter()
            elapsed = t - self.start - self.excluded  # training time so far, earlier test passes excluded
            acc = test_accuracy(run.model, test_x, test_y)
            self.excluded += time.perf_counter() - t
            if acc >= target and self.reached is None:
                self.reached, self.epoch = elapsed, row["epoch"]
                run.stop_reason = f"reached {acc:.4f}"

    timer = TimeToTarget()
    fit(build_run(resolve_run(config, out=str(out), name=f"run-{time.monotonic_ns()}").config, hooks=[timer]))
    return timer.reached, timer.epoch


def run_hand(config, train_x: torch.Tensor, train_y: torch.Tensor, mean: float, std: float, test_x, test_y,
             target: float, device: torch.device = torch.device("cpu")) -> tuple[float | None, int]:
    """The same recipe written out by hand: uint8 data in memory, per-batch crops, Adam + OneCycleLR.

    It draws each epoch's order and each batch's crop offsets from the same seeds as cnnctl (``derive_seed``), so
    both sides do the same arithmetic and reach the target at the same epoch; only the loop around it differs.
    """
    from cnnctl.data.base import derive_seed
    from cnnctl.models.registry import create_model

    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=1, image_size=(28, 28), num_classes=10).to(device)
    train_x, train_y, test_x, test_y = train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device)
    epochs, bs, pad = config.train.epochs, config.data.batch_size, config.data.augment.crop_padding
    steps = (len(train_y) + bs - 1) // bs
    opt = torch.optim.Adam(model.parameters(), lr=config.optimizer.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.optimizer.lr, total_steps=epochs * steps)
    rows = torch.arange(28, device=device)
    scale = (1 / (255 * torch.tensor(std, dtype=torch.float64))).float().to(device)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std).float().to(device)
    start, excluded = time.perf_counter(), 0.0
    for epoch in range(epochs):
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(derive_seed(config.seed, "perm", epoch)))
        perm = perm.to(device)
        for b, i in enumerate(range(0, len(perm), bs)):
            idx = perm[i: i + bs]
            if len(idx) < 2:
                continue
            crops = torch.Generator().manual_seed(derive_seed(config.seed, "augment", epoch, b))
            dy, dx = torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=crops).to(device).unbind(1)
            x = F.pad(train_x.index_select(0, idx), (pad,) * 4)  # uint8, zero-padded as cnnctl pads
            x = x[torch.arange(len(idx), device=device)[:, None, None], (dy[:, None] + rows)[:, :, None], (dx[:, None] + rows)[:, None, :]]
            x = x.float().mul_(scale).add_(shift)  # (x / 255 - mean) / std, rounded as cnnctl rounds it
            loss = F.cross_entropy(model(x[:, None]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's kernels are queued, not done, until here
        t = time.perf_counter()
        elapsed = t - start - excluded
        acc = test_accuracy(model, test_x, test_y)
        excluded += time.perf_counter() - t
        if acc >= target:
            return elapsed, epoch + 1
    return None, epochs


def main() -> None:
    from bench_mnist import add_mnist_arguments, stage_mnist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: both sides train there (fp32, NCHW on CUDA)")
    add_mnist_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from cnnctl.config import load_config
    from cnnctl.data.base import load_data, to_model_input

    stage_mnist(args.shared, args.root)
    overrides = [f"data.root={args.root}", "train.checkpoint.monitor=val_acc", f"train.device={args.device}"]
    if args.device.startswith("cuda"):  # the hand loop's arithmetic: fp32, NCHW (cnnctl's CUDA default is bf16)
        overrides += ["train.precision=fp32", "train.channels_last=false"]
    config, _ = load_config("lenet5-mnist", overrides)
    device = torch.device(args.device)
    bundle = load_data(config.data, config.seed)
    mean, std = bundle.mean[0], bundle.std[0]
    test_x = to_model_input(bundle.test.images, bundle.mean, bundle.std, device)
    test_y = bundle.test.labels.to(device)
    a_times, b_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            a, a_epoch = run_cnnctl(config, test_x, test_y, args.target, Path(tmp))
            b, b_epoch = run_hand(config, bundle.train.images[:, 0], bundle.train.labels, mean, std, test_x, test_y,
                                  args.target, device)
            print(f"repeat {r + 1}: cnnctl {a and round(a, 1)} s (epoch {a_epoch}), hand-written "
                  f"{b and round(b, 1)} s (epoch {b_epoch})", flush=True)
            if a is not None and b is not None:
                a_times.append(a)
                b_times.append(b)
    result = {"target": args.target, "device": args.device, "threads": torch.get_num_threads(), "repeats": args.repeats,
              "cnnctl_seconds": [round(t, 1) for t in a_times], "hand_seconds": [round(t, 1) for t in b_times]}
    if a_times:
        result["median_ratio"] = round(statistics.median(a / b for a, b in zip(a_times, b_times, strict=True)), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
