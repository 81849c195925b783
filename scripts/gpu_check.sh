#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 8 minutes: the CUDA-marked tests, then the CUDA speed benchmarks, and one
# Markdown table of the results for the README's Performance section. Creates .venv when missing, as test.sh does.
#
#     scripts/gpu_check.sh            # everything (about 7 minutes on one GPU)
#     GPU_CHECK_SKIP_TESTS=1 scripts/gpu_check.sh   # the benchmarks only
#
# Each step has its own time limit, so one that hangs cannot take the rest with it; a failed step shows as such in
# the table and the script exits 1. The raw outputs stay in the folder printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
# Before creating .venv (a torch install is gigabytes): no NVIDIA driver, no point.
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi -L failed); run it on a machine with a CUDA GPU" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'
fi
PY=.venv/bin/python
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: torch sees no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
OUT=$(mktemp -d -t cnnctl-gpu-check.XXXXXX)
MNIST_SHARED=${MNIST_SHARED:-../shared/data}
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt, record the exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" >&2
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
    local rc=$?
    echo "$rc" >"$OUT/$name.rc"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "   $name failed (exit $rc); last lines:" >&2
        tail -n 5 "$OUT/$name.err" >&2
    fi
}

if [ -z "${GPU_CHECK_SKIP_TESTS:-}" ]; then
    step tests 180 $PY -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider
fi
step loop 50 $PY scripts/bench_loop.py --device cuda --repeats 3 --epochs 3
step switches 150 $PY scripts/bench_switches.py --device cuda --case resnet18-cifar --batch 512 --repeats 2 --epochs 3 \
    --variants fp32 bf16 bf16+channels_last bf16+channels_last+compile
if [ -d "$MNIST_SHARED/MNIST/raw" ]; then
    step mnist 80 $PY scripts/bench_mnist_time.py --device cuda --repeats 1 --shared "$MNIST_SHARED"
else
    echo "== mnist: skipped, no $MNIST_SHARED/MNIST/raw (set MNIST_SHARED to the folder that holds MNIST/raw)" >&2
fi

$PY - "$OUT" <<'EOF'
"""One Markdown table from the steps' outputs (each benchmark ends with one JSON document)."""
import json
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])


def step(name):
    rc_file = out / f"{name}.rc"
    if not rc_file.exists():
        return None, "not run"
    rc = int(rc_file.read_text())
    text = (out / f"{name}.txt").read_text()
    start = text.find("\n{")
    doc = json.loads(text[start:]) if start >= 0 else (json.loads(text) if text.startswith("{") else None)
    return doc, "ok" if rc == 0 else ("timed out" if rc in (124, 137) else f"failed (exit {rc})")


props = torch.cuda.get_device_properties(0)
print(f"\nGPU: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}\n")
print("| check | result |")
print("|---|---|")
if (out / "tests.rc").exists():
    summary = [line for line in (out / "tests.txt").read_text().splitlines() if " passed" in line or " failed" in line
               or " skipped" in line or " error" in line]
    status = step("tests")[1]
    print(f"| CUDA tests (`pytest -m cuda`) | {summary[-1].strip('= ') if summary else status} |")
loop, status = step("loop")
for case, r in (loop or {}).get("results", {}).items():
    print(f"| bench_loop {case}: cnnctl / hand-written loop | {r['median_ratio']:.3f} "
          f"({r['cnnctl_images_per_s']:,.0f} vs {r['hand_images_per_s']:,.0f} img/s) |")
if not loop:
    print(f"| bench_loop | {status} |")
switches, status = step("switches")
for name, r in (switches or {}).get("results", {}).items():
    extra = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
    vs = f" ({r['vs_fp32']:.2f}x fp32)" if r.get("vs_fp32") else ""
    print(f"| bench_switches resnet18, CIFAR-shaped, batch {switches['batch']}: {name} | "
          f"{r['images_per_s']:,.0f} img/s{vs}{extra} |")
if not switches:
    print(f"| bench_switches | {status} |")
mnist, status = step("mnist")
if mnist and mnist.get("cnnctl_seconds"):
    print(f"| MNIST time to {mnist['target']:.0%} (lenet5-mnist, fp32): cnnctl / hand-written | "
          f"{mnist['cnnctl_seconds'][0]} s / {mnist['hand_seconds'][0]} s (ratio {mnist['median_ratio']}) |")
elif (out / "mnist.rc").exists():
    print(f"| MNIST time to 99% | {status} |")
EOF
echo "raw outputs: $OUT" >&2
exit $failed
