"""Start-up times: ``cnnctl --help``, a config error, and ``cnnctl predict one.png`` beyond importing torch.

    .venv/bin/python scripts/bench_startup.py [--repeats 11]

Every command runs as a whole process, in turn (A B C ... A B C ...), and the medians are printed. The predict
figure is the median of (predict wall - ``python -c "import torch, torchvision"`` wall) pair by pair; the target
is at most 0.5 s. A small digits run is trained first to have a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "tiny.yaml"
        cfg.write_text("data: {dataset: digits}\nmodel: {arch: lenet5}\ntrain: {epochs: 1}\n")
        bad = tmp / "bad.yaml"
        bad.write_text("optimizer: {lrr: 0.1}\n")
        subprocess.run([PY, "-m", "cnnctl", "train", str(cfg), "--out", str(tmp / "runs")], cwd=ROOT, check=True,
                       capture_output=True)
        ckpt = tmp / "runs" / "tiny" / "best.pt"
        from PIL import Image

        image = tmp / "one.png"
        Image.new("L", (8, 8), 200).save(image)
        cnnctl = [str(Path(PY).parent / "cnnctl")]
        commands = {
            "cnnctl --help": cnnctl + ["--help"],
            "cnnctl summary --help": cnnctl + ["summary", "--help"],
            "cnnctl summary bad.yaml (config error)": cnnctl + ["summary", str(bad)],
            "python -c 'import torch, torchvision'": [PY, "-c", "import torch, torchvision"],
            "cnnctl predict one.png -c best.pt": cnnctl + ["predict", str(image), "-c", str(ckpt)],
        }
        for cmd in commands.values():  # warm the file cache
            wall(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                times[name].append(wall(cmd))
    imports = times["python -c 'import torch, torchvision'"]
    predict = times["cnnctl predict one.png -c best.pt"]
    result = {name: round(statistics.median(t), 3) for name, t in times.items()}
    result["predict beyond importing torch+torchvision"] = round(
        statistics.median(p - i for p, i in zip(predict, imports, strict=True)), 3)
    for name, value in result.items():
        print(f"{name:<48} median {value:.3f} s")
    print(json.dumps({"repeats": args.repeats, "medians_s": result}, indent=2))


if __name__ == "__main__":
    main()
