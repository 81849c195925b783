#!/usr/bin/env bash
# Transfer learning, offline: a LeNet-5 pretrained on MNIST digits 0-5 learns digits 6-9 from 10 labelled images a
# class, against the same network from random weights on the same images (configs/compare-transfer/).
#
#     scripts/transfer_demo.sh [WORKDIR]        (SEEDS="0 1 2 3 4", MNIST=../shared/data/MNIST/raw)
#
# Why this pair: the target classes are ones the pretrained network never saw (its 6-class head is replaced by a
# new 4-class one), and both sets are MNIST, so the test is whether strokes and shapes learnt on six digits help to
# tell four others apart from 40 examples. It is an easier transfer than ImageNet to someone's photos (same
# writers, same scanning), and says so. Each seed draws another 40 images and another initialisation; every run
# is tested on all of MNIST's test images of 6-9 (3,969). Prints a table: test accuracy, mean and spread.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(realpath -m "${1:-${TMPDIR:-/tmp}/cnnctl-transfer}")
SEEDS=${SEEDS:-"0 1 2 3 4"}
MNIST=${MNIST:-../shared/data/MNIST/raw}
PY=${PY:-.venv/bin/python}
CNNCTL="$PY -m cnnctl"

"$PY" - "$MNIST" "$WORK" $SEEDS <<'EOF'
"""The image folders: pretrain (digits 0-5, 2,000 a class), test69 (MNIST's test images of 6-9) and, per seed,
subset-SEED/train (10 training images a class of 6-9, drawn by the seed) with subset-SEED/test -> test69."""
import gzip, shutil, sys, tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.mnist import read_image_file, read_label_file

raw, work, seeds = Path(sys.argv[1]), Path(sys.argv[2]), [int(s) for s in sys.argv[3:]]


def read(prefix):
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for kind, reader in (("images-idx3", read_image_file), ("labels-idx1", read_label_file)):
            path = Path(tmp) / kind
            with gzip.open(raw / f"{prefix}-{kind}-ubyte.gz") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out.append(reader(str(path)).numpy())
    return out


def write(root, images, labels, index):
    for i in index:
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
    (root / ".complete").write_text("")


train_x, train_y = read("train")
test_x, test_y = read("t10k")
if not (work / "pretrain" / ".complete").exists():
    write(work / "pretrain", train_x, train_y, [i for d in range(6) for i in np.flatnonzero(train_y == d)[:2000]])
if not (work / "test69" / ".complete").exists():
    write(work / "test69", test_x, test_y, np.flatnonzero(test_y >= 6))
for seed in seeds:
    subset = work / f"subset-{seed}"
    if not (subset / "train" / ".complete").exists():
        rng = np.random.default_rng(seed)
        write(subset / "train", train_x, train_y,
              [i for d in range(6, 10) for i in rng.choice(np.flatnonzero(train_y == d), 10, replace=False)])
        (subset / "test").symlink_to(work / "test69")
EOF

RUNS="$WORK/runs"
if [ ! -f "$RUNS/pretrain/best.pt" ]; then
    $CNNCTL train compare-transfer/pretrain --set "data.root=$WORK/pretrain" --out "$RUNS" >/dev/null
fi
for seed in $SEEDS; do
    for cfg in scratch frozen-body fine-tune fine-tune-schedule; do
        init=(); [ "$cfg" = scratch ] || init=(--set "model.init_from=$RUNS/pretrain")
        [ -f "$RUNS/$cfg-$seed/summary.json" ] || \
            $CNNCTL train "compare-transfer/$cfg" --set "data.root=$WORK/subset-$seed" --set "seed=$seed" "${init[@]}" \
                --name "$cfg-$seed" --out "$RUNS" >/dev/null 2>"$RUNS/$cfg-$seed.log"
    done
done

"$PY" - "$RUNS" $SEEDS <<'EOF'
import json, statistics, sys
from pathlib import Path

runs, seeds = Path(sys.argv[1]), sys.argv[2:]
pre = json.loads((runs / "pretrain" / "summary.json").read_text())["test"]["accuracy"]
print(f"pretrained LeNet-5, digits 0-5: {pre:.2%} test accuracy\n")
print(f"| digits 6-9 from 10 images a class ({len(seeds)} seeds) | test accuracy, mean ± sd | min - max | train s |")
print("|---|---|---|---|")
for cfg, what in (("scratch", "from random weights"), ("frozen-body", "pretrained body frozen, new head (cached features)"),
                  ("fine-tune", "pretrained, every layer trains"),
                  ("fine-tune-schedule", "pretrained, head 5 epochs, then all at lr x 0.1 for the body")):
    summaries = [json.loads((runs / f"{cfg}-{s}" / "summary.json").read_text()) for s in seeds]
    acc = [s["test"]["accuracy"] for s in summaries]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    seconds = statistics.median(s["wall_seconds"] for s in summaries)
    print(f"| `{cfg}`: {what} | {statistics.mean(acc):.1%} ± {sd:.1%} | {min(acc):.1%} - {max(acc):.1%} | {seconds:.1f} |")
EOF
