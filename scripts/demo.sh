#!/usr/bin/env bash
# Set up (creates .venv when missing), train LeNet-5 on the offline digits, evaluate it, predict one digit image.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'
fi
CNNCTL=.venv/bin/cnnctl
OUT=${OUT:-runs/demo}

echo "== the network"
$CNNCTL summary lenet5-digits

echo "== training (lenet5-digits)"
start=$(date +%s%N)
run=$($CNNCTL train lenet5-digits --out "$OUT")
end=$(date +%s%N)
ms=$(( (end - start) / 1000000 ))
printf '== trained in %d.%03d s (including start-up)\n' $((ms / 1000)) $((ms % 1000))

echo "== evaluation on the test split"
$CNNCTL eval "$run/best.pt"

echo "== predicting one test digit"
img="$OUT/digit.png"
.venv/bin/python - "$img" <<'PY'
import sys
from cnnctl.config import DataConfig
from cnnctl.data.base import load_data
from PIL import Image

bundle = load_data(DataConfig(dataset="digits"), seed=0)
x, y = bundle.test.images[0], int(bundle.test.labels[0])
Image.fromarray(x[0].numpy(), mode="L").save(sys.argv[1])
print(f"{sys.argv[1]}: a test image of class {bundle.classes[y]}")
PY
$CNNCTL predict "$img" -c "$run/best.pt" --topk 3

echo "== the run is in $run"
ls "$run"
