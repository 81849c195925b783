#!/usr/bin/env bash
# Regenerate every picture and number the Learn pages (docs/learn/*.md) show, by running the commands the pages
# print. Pictures go to docs/images/ (docs/images/learn/ for those only the Learn pages use); the runs go to $OUT;
# each section's output goes to $OUT/logs/SECTION.log, where every number quoted on a page can be found as it printed.
#
#   scripts/docs_figures.sh                      # every section
#   scripts/docs_figures.sh first-network search # some of them
#   MNIST_ROOT=DIR scripts/docs_figures.sh dnn-cnn   # a folder with MNIST's four archives (else it is downloaded)
#
# How long, on 2 CPU cores (lenet5-digits trains in 21 s on them when idle); seed 0 everywhere, and CPU runs are
# deterministic, so the numbers come out as the pages quote them (the time columns of tune's table apart):
#   first-network  ~3 min   measured 2026-12-06: 13.8 min on this machine while other jobs kept its load average near
#                           9 (epochs ran 30-400x slower than idle); idle it is ~40 training epochs of LeNet-5 on
#                           digits, 3 visualize, 2 predict, 1 eval, 13 summary and 5 step commands
#   search         ~2 min   measured 2026-12-06 on the same loaded machine: 10 min; idle, the 8-trial study took
#                           17 s, plus three LeNet-5 runs of ~20 s and two evals
#   activations    ~4 min   estimated: four 9-conv runs of 15 epochs (12 ms per step, 51 steps an epoch, plus the
#                           validation and recording passes)
#   optimizers     ~9 min   estimated from the README's timings: six 20-epoch LeNet-5 runs (~15 s each), `cnnctl
#                           optimizers` 29 s, lr-find 7 s, scripts/check_lr_find.py for 8 seeds (16 runs, ~6 min)
#   regularisation ~10 min  estimated: two 40-epoch and two 20-40-epoch runs of an 811k-parameter CNN on 720 digits,
#                           two LeNet-5 runs
#   depth          ~10 min  estimated: plain and residual nets of 8, 20 and 56 layers, 10 epochs each
#   loss           ~9 min   estimated: 30 LeNet-5 runs of 20 epochs (~15 s each), 4 step commands
#   dnn-cnn        ~35 min  from the README: six MNIST runs of 2.4 to 8.2 min each (validating on 57,000 digits is
#                           the slow part), and the pair on digits (~1 min each)
#   all            ~80 min  (the estimates are for an idle machine; under load multiply freely)
set -euo pipefail
cd "$(dirname "$0")/.."
CNNCTL=${CNNCTL:-$PWD/.venv/bin/cnnctl}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
OUT=${OUT:-runs/docs-figures}
IMG=${IMAGES:-docs/images}      # IMAGES=DIR writes the pictures elsewhere, to compare them with the committed ones
LEARN=$IMG/learn
mkdir -p "$OUT/logs" "$LEARN"

c() { echo "+ cnnctl $*"; "$CNNCTL" "$@"; }      # print each command as the pages write it, then run it

stats() {  # stats DIR... : test accuracy of each run (summary.json) and their mean ± sd, as the pages' tables give
    "$PYTHON" - "$@" <<'PY'
import json, statistics, sys
accs = []
for run in sys.argv[1:]:
    s = json.load(open(f"{run}/summary.json"))
    accs.append(100 * s["test"]["accuracy"])
    ratio = (s.get("gradients") or {}).get("first_over_last")
    print(f"  {run}: test {accs[-1]:.2f}%  best epoch {s['best_epoch']}  first/last-layer gradient {ratio}")
if len(accs) > 1:
    print(f"  mean ± sd: {statistics.mean(accs):.1f}% ± {statistics.stdev(accs):.1f}")
PY
}

write_digits() {  # the PNGs the pages predict: the first test digit (an 8) and scikit-learn's digit 1788 (a 4)
    mkdir -p "$OUT/digits/4"
    "$PYTHON" - "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from cnnctl.config import DataConfig
from cnnctl.data.base import load_data

out = sys.argv[1]
bundle = load_data(DataConfig(dataset="digits"), seed=0)
Image.fromarray(bundle.test.images[0][0].numpy(), mode="L").save(f"{out}/digit.png")
scan = load_digits().images[1788]
Image.fromarray((scan / 16 * 255).round().astype(np.uint8), mode="L").save(f"{out}/digits/4/digit1788.png")
PY
}

first_network() {  # first-network, convolution, backprop, seeing-inside, softmax (predict --explain), transfer
    local run=$OUT/lenet5-digits
    c configs
    c summary lenet5-digits
    c summary lenet5-mnist --explain
    c train lenet5-digits --out "$OUT"
    c eval "$run/best.pt" --plots "$run/eval"
    write_digits
    (cd "$OUT" && c predict digit.png -c lenet5-digits/best.pt --topk 3)
    (cd "$OUT" && c predict digits/4/digit1788.png -c lenet5-digits --explain --labels-from-folders --topk 3)
    c visualize "$run"
    c visualize "$run" --image "$OUT/digits/4/digit1788.png" -o "$run/explain"
    c visualize "$run" --image "$OUT/digits/4/digit1788.png" --layer features.0 -o "$OUT/cam-conv1"
    cp "$run/curves.png" "$run/confusion_matrix.png" "$IMG/"
    cp "$run/visualize/filters.png" "$run/visualize/prediction.png" "$IMG/"
    cp "$run/visualize/featuremaps_01_features_0.png" "$IMG/featuremaps_conv1.png"
    cp "$run/visualize/overview.png" "$LEARN/overview.png"
    cp "$run/gradients.png" "$LEARN/gradients-lenet5-digits.png"
    for m in gradcam occlusion saliency; do cp "$run/explain/$m.png" "$IMG/explain-$m.png"; done
    cp "$run/eval/mistakes.png" "$IMG/explain-mistakes.png"
    # things to try (first-network, convolution, pooling-and-fc, architectures, transfer-learning)
    c train lenet5-digits --set train.epochs=3 --name short --out "$OUT"
    c train lenet5-digits --set data.augment.crop_padding=0 --name no-shift --out "$OUT"
    c summary compare-dnn-cnn/cnn --explain --set 'model.layers=[{conv: {out: 8, kernel: 3, stride: 2}}, relu, {conv: {out: 8, kernel: 3, padding: 1}}, relu, flatten, linear]'
    c summary compare-dnn-cnn/cnn --set data.dataset=cifar10
    c summary compare-dnn-cnn/cnn --set 'model.layers=[conv: 8, relu, maxpool: 2, conv: 16, relu, flatten, linear]'
    for cfg in vgg11-cifar10 resnet20-cifar10 resnet18-cifar10 compare-depth/plain-56 compare-depth/resnet-56; do
        c summary "$cfg"
    done
    c summary lenet5-mnist --set model.arch=alexnet --set data.image_size=64
    c summary lenet5-mnist --set model.arch=alexnet || echo "(exit $?: refused, as the page says)"
    c summary lenet5-mnist --set model.arch=torchvision.mobilenet_v3_small --set data.image_size=64
    # back-propagation by hand
    c step backprop-tiny
    c step backprop-tiny --set optimizer.name=adam --set optimizer.lr=0.05 --steps 3
    c step backprop-tiny --set optimizer.momentum=0.9 --steps 2
    c step backprop-tiny --param 'layers.1.weight[0,0]'
    c step lenet5-digits --param 'features.0.weight[1,0,2,2]'
}

activations() {
    local act=$OUT/act
    for a in sigmoid relu tanh leaky_relu; do c train "configs/compare-activations/$a.yaml" --out "$act"; done
    c plot "$act/sigmoid" "$act/relu" --gradients -o "$IMG/gradient-flow-activations.png"
    cp "$act/sigmoid/gradients.png" "$IMG/gradients-sigmoid.png"
    cp "$act/sigmoid/activations.png" "$IMG/activations-sigmoid.png"
    stats "$act/sigmoid" "$act/relu" "$act/tanh" "$act/leaky_relu"
    c visualize "$act/sigmoid" -o "$OUT/act-sigmoid"
}

optimizers() {
    local cmp=$OUT/compare
    for o in sgd sgd-momentum nesterov adagrad rmsprop adam; do c train "compare-optimizers/$o" --out "$cmp"; done
    c plot "$cmp/sgd" "$cmp/sgd-momentum" "$cmp/nesterov" "$cmp/adagrad" "$cmp/rmsprop" "$cmp/adam" \
        --metric val_loss -o "$IMG/optimizers.png"
    stats "$cmp/sgd" "$cmp/sgd-momentum" "$cmp/nesterov" "$cmp/adagrad" "$cmp/rmsprop" "$cmp/adam"
    c optimizers -o "$IMG" --explain
    c train compare-optimizers/sgd --set optimizer.lr=1.0 --name sgd-lr1 --out "$cmp"
    c optimizers --surface ravine --optimizer adam --optimizer adamw --set optimizer.weight_decay=0.1 -o "$OUT/adamw"
    c optimizers --surface rosenbrock --optimizer sgd --set optimizer.momentum=0.9 --set optimizer.nesterov=true \
        -o "$OUT/nesterov"
    c optimizers --surface rosenbrock --optimizer sgd --set optimizer.momentum=0.9 --set optimizer.nesterov=true \
        --set optimizer.lr=0.001 -o "$OUT/nesterov"
    c lr-find lenet5-digits --out "$OUT"
    cp "$OUT/lr-find-lenet5-digits/lr_find.png" "$IMG/lr_find.png"
    "$PYTHON" scripts/check_lr_find.py --seeds 0 1 2 3 4 5 6 7
}

regularisation() {
    local d=$OUT/dropout
    c summary compare-dropout/dropout --explain
    c train compare-dropout/no-dropout --out "$d"
    c train compare-dropout/dropout --out "$d"
    c plot "$d/no-dropout" "$d/dropout" --metric train_loss -o "$IMG/dropout-train-loss.png"
    c plot "$d/no-dropout" "$d/dropout" --metric val_loss -o "$IMG/dropout-val-loss.png"
    stats "$d/no-dropout" "$d/dropout"
    c train compare-dropout/no-dropout --out "$d" --name early-stop \
        --set 'train.early_stopping={monitor: val_loss, patience: 5}'
    cp "$d/early-stop/curves.png" "$LEARN/early-stopping-curves.png"
    c train compare-dropout/no-dropout --set optimizer.name=adamw --set optimizer.weight_decay=0.5 \
        --name weight-decay --out "$d"
    c train lenet5-digits --set train.early_stopping.patience=2 --name patience-2 --out "$OUT"
    c train lenet5-digits --set model.dropout=0.5 --name dropout-0.5 --out "$OUT"
}

depth() {
    local d=$OUT/depth
    for n in plain-20 resnet-20 plain-8 resnet-8 plain-56 resnet-56; do
        c train "configs/compare-depth/$n.yaml" --out "$d"
    done
    c plot "$d/plain-20" "$d/resnet-20" --metric train_loss -o "$IMG/depth-train-loss.png"
    c plot "$d/plain-8" "$d/resnet-8" "$d/plain-56" "$d/resnet-56" --metric train_loss -o "$d/depth-8-56.png"
    stats "$d/plain-20" "$d/resnet-20" "$d/plain-8" "$d/resnet-8" "$d/plain-56" "$d/resnet-56"
}

loss() {
    local l=$OUT/loss
    c step compare-loss/cross_entropy
    c step compare-loss/mse
    for s in 0 1 2 3 4 5 6 7 8 9; do
        c train compare-loss/cross_entropy --out "$l" --set seed=$s --name cross_entropy-seed$s
        c train compare-loss/mse --out "$l" --set seed=$s --name mse-seed$s
        c train compare-loss/mse --out "$l" --set seed=$s --set optimizer.lr=0.5 --name mse-lr0.5-seed$s
    done
    c plot "$l/cross_entropy-seed0" "$l/mse-seed0" "$l/mse-lr0.5-seed0" --metric val_acc -o "$IMG/compare-loss.png"
    for kind in cross_entropy mse mse-lr0.5; do echo "$kind:"; stats "$l/$kind"-seed?; done
    c step "$l/cross_entropy-seed0" --label 6
    c step "$l/cross_entropy-seed0" --label 6 --set train.loss=mse
    c train lenet5-digits --set train.label_smoothing=0.1 --name smooth --out "$OUT"
}

dnn_cnn() {
    local d=$OUT/dnn-cnn root=${MNIST_ROOT:-data}
    c summary compare-dnn-cnn/mlp
    c summary compare-dnn-cnn/cnn
    c summary compare-dnn-cnn/mlp --explain --set data.dataset=cifar10 --set 'model.layers=[flatten, {linear: 4096}, relu, linear]'
    for s in 0 1 2; do for net in mlp cnn; do
        c train "compare-dnn-cnn/$net" --name "$net-s$s" --set seed=$s --set data.root="$root" --out "$d"
    done; done
    c plot "$d/mlp-s0" "$d/cnn-s0" --metric val_loss -o "$IMG/compare-dnn-cnn.png"
    c plot "$d/mlp-s0" "$d/cnn-s0" --metric train_acc -o "$IMG/compare-dnn-cnn-train-acc.png"
    c plot "$d/mlp-s0" "$d/cnn-s0" --metric val_acc -o "$IMG/compare-dnn-cnn-val-acc.png"
    stats "$d"/mlp-s? && stats "$d"/cnn-s?
    for net in mlp cnn; do
        c train "compare-dnn-cnn/$net" --name "$net-digits" --set data.dataset=digits --set data.image_size=16 \
            --set data.val_split=0.5 --out "$d"
    done
}

search() {
    local t=$OUT/tune
    c tune lenet5-digits --space lenet5-digits --trials 8 --set train.epochs=5 --ensemble-top 3 --out "$t"
    cp "$t/lenet5-digits/history.png" "$LEARN/tune-history.png"
    [ -d "$OUT/lenet5-digits" ] || c train lenet5-digits --out "$OUT"
    c train lenet5-digits --set seed=1 --name seed1 --out "$OUT"
    c train lenet5-digits --set optimizer.lr=0.001 --name lr-0.001 --out "$OUT"
    c train lenet5-digits --set optimizer.lr=0.004 --name lr-0.004 --out "$OUT"
    c eval "$OUT/lenet5-digits" "$OUT/lr-0.001" "$OUT/lr-0.004"
    c eval "$OUT/lenet5-digits" "$OUT/seed1" || echo "(exit $?: refused, as the page says)"
}

ALL=(first-network activations optimizers regularisation depth loss dnn-cnn search)
for section in "${@:-${ALL[@]}}"; do
    case $section in
        first-network|activations|optimizers|regularisation|depth|loss|dnn-cnn|search) ;;
        *) echo "error: unknown section '$section'; choose from: ${ALL[*]}" >&2; exit 2 ;;
    esac
    echo "== $section (log: $OUT/logs/$section.log)"
    start=$(date +%s)
    "${section//-/_}" 2>&1 | tee "$OUT/logs/$section.log"
    echo "== $section took $(( $(date +%s) - start )) s"
done
