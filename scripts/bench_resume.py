"""Kill a training run with SIGKILL at random moments, resume it each time, compare with the uninterrupted run.

    .venv/bin/python scripts/bench_resume.py [--kills 5] [--seed 0] [--config FILE] [--set KEY=VALUE ...]

The default config trains LeNet-5 on the offline digits with dropout, augmentation, a warmup + cosine
schedule and mid-epoch saves every 7 steps. Kills alternate between a random moment and the moment a save is
under way (a temporary checkpoint file exists), so mid-epoch and mid-save kills are both covered. Prints the
maximum absolute difference of every weight and optimizer tensor between the two runs (expected: 0.0) and
whether metrics.csv matches except its timing column.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
name: resume
seed: 7
data: {dataset: digits, batch_size: 32, image_size: 16, augment: {crop_padding: 2, hflip: true}}
model: {arch: lenet5, dropout: 0.2}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.0005}
scheduler: {name: cosine, warmup_epochs: 1}
train: {epochs: 30, early_stopping: null, checkpoint: {save_every_steps: 7}}
"""


def train(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnctl", "train", str(cfg), "--out", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tensors(ckpt: dict) -> dict:
    import torch

    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{pid}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def metrics(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sets = [a for o in args.overrides for a in ("--set", o)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = args.config or tmp / "resume.yaml"
        if args.config is None:
            cfg.write_text(CONFIG)
        start = time.perf_counter()
        ref = train(cfg, tmp / "a", *sets)
        _, err = ref.communicate()
        assert ref.returncode == 0, err
        ref_seconds = time.perf_counter() - start
        ref_dir = next((tmp / "a").iterdir())
        run_dir = tmp / "b" / ref_dir.name

        kills, log = 0, []
        proc = train(cfg, tmp / "b", *sets)
        saved_before = 0  # last.pt's mtime when the current process started: wait for a save of its own
        while True:
            while proc.poll() is None and (not (run_dir / "last.pt").exists()
                                           or (run_dir / "last.pt").stat().st_mtime_ns == saved_before):
                time.sleep(0.01)
            if proc.poll() is not None or kills >= args.kills:
                _, err = proc.communicate()
                assert proc.returncode == 0, err
                break
            mode = "mid-save" if kills % 2 else "random"
            if mode == "mid-save":  # wait for a save in progress: its temporary file exists
                deadline = time.monotonic() + 10
                while proc.poll() is None and time.monotonic() < deadline \
                        and not any(p.name.endswith(".tmp") for p in run_dir.iterdir()):
                    time.sleep(0.0005)
            else:  # a random moment within the training (the uninterrupted run's length, less start-up and finish)
                time.sleep(rng.uniform(0.05, max(0.1, 0.3 * ref_seconds - 2)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                import torch

                ckpt = torch.load(run_dir / "last.pt", weights_only=True)
                step = ckpt["step"]
                if ckpt["epoch"] >= ckpt["config"]["train"]["epochs"] and ckpt.get("partial_epoch") is None:
                    print(f"kill {kills} ({mode}): after the last epoch (during the test pass); nothing to resume")
                    log.append({"kill": kills, "mode": mode, "after_training": True})
                    break
                log.append({"kill": kills, "mode": mode, "resumed_from_step": step})
                print(f"kill {kills} ({mode}): last.pt at step {step}; resuming", flush=True)
                saved_before = (run_dir / "last.pt").stat().st_mtime_ns
                proc = train(cfg, tmp / "b", "--resume", str(run_dir))
            else:
                _, err = proc.communicate()
                assert proc.returncode == 0, err
                break

        import torch

        a = tensors(torch.load(ref_dir / "last.pt", weights_only=True))
        b = tensors(torch.load(run_dir / "last.pt", weights_only=True))
        assert a.keys() == b.keys()
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
        same_metrics = metrics(ref_dir) == metrics(run_dir)
        print(json.dumps({"kills": kills, "log": log, "tensors_compared": len(a), "max_abs_difference": diff,
                          "metrics_identical_except_time": same_metrics,
                          "uninterrupted_seconds": round(ref_seconds, 1)}, indent=2))
        sys.exit(0 if diff == 0.0 and same_metrics else 1)


if __name__ == "__main__":
    main()
