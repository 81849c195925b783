"""Network summaries: parameter and multiply-add counts, the weight-sharing comparison, the per-layer arithmetic and
receptive fields of --explain, and check_input's message for a network that cannot take its input."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from cnnctl.config import ModelConfig
from cnnctl.errors import ShapeError
from cnnctl.insight.summary import check_input, depth, explain, format_explain, format_summary, summarize
from cnnctl.models.registry import MODELS, create_model


def build(arch: str, channels: int = 3, side: int | tuple[int, int] = 32, classes: int = 10, **options) -> nn.Module:
    size = (side, side) if isinstance(side, int) else side
    cfg = ModelConfig(arch=arch, **options)
    return create_model(cfg, in_channels=channels, image_size=size, num_classes=classes)


def test_resnet18_params_and_macs_match_torchvision():
    s = summarize(build("resnet18", side=224, classes=1000), (3, 224, 224))
    assert s["params"] == s["trainable_params"] == 11_689_512
    # torchvision's table gives 1.81 "GFLOPS", which are multiply-adds of the convs and the fc.
    assert s["macs"] == 1_814_073_344
    assert s["size_mb"] == pytest.approx(11_689_512 * 4 / 2**20)
    assert s["unlisted_params"] == 0
    first = s["layers"][0]
    assert first == {
        "name": "conv1",
        "kind": "Conv2d",
        "output_shape": [64, 112, 112],
        "params": 9408,
        "macs": 118_013_952,
    }
    relus = [r for r in s["layers"] if r["name"] == "layer1.0.relu"]
    assert len(relus) == 2 and all(r["params"] == 0 for r in relus)  # one module called twice: two rows
    json.dumps(s)


def test_lenet5_rows_and_totals():
    s = summarize(build("lenet5", channels=1, side=28), (1, 28, 28))
    assert [r["output_shape"] for r in s["layers"] if r["kind"] == "Conv2d"] == [[6, 28, 28], [16, 10, 10]]
    assert sum(r["params"] for r in s["layers"]) == s["params"] == 61_706
    # conv1: 5*5*1 per output * 6*28*28 outputs; conv2: 5*5*6 * 16*10*10; fcs: 400*120 + 120*84 + 84*10
    assert s["macs"] == 25 * 4704 + 150 * 1600 + 48_000 + 10_080 + 840
    model = build("lenet5", channels=1, side=28)
    model.features.requires_grad_(False)
    assert summarize(model, (1, 28, 28))["trainable_params"] == 61_706 - 156 - 2416


def test_format_summary_table_and_weight_sharing():
    text = format_summary(summarize(build("lenet5", channels=1, side=28), (1, 28, 28)), title="lenet5")
    assert text.startswith("lenet5\n")
    assert "features.3    Conv2d     16x10x10         2,416          240,000" in text
    assert "61,706 parameters (61,706 trainable)" in text and "0.24 MB" in text
    assert (
        "a fully-connected layer from the 1x28x28 input to features.0's 6x28x28 output would need 784*4704 = "
        "3,687,936 weights; features.0 shares 6 kernels of 1x5x5 = 150 weights (+6 biases)"
    ) in text


def test_weight_sharing_of_a_conv_after_other_layers():
    layers = [{"maxpool": 2}, {"conv": {"out": 4, "kernel": 3, "bias": False}}, "flatten", "linear"]
    s = summarize(build("custom", channels=3, side=16, layers=layers), (3, 16, 16))
    text = format_summary(s)
    assert "from its 3x8x8 input to layers.1's 4x6x6 output would need 192*144 = 27,648 weights" in text
    assert "shares 4 kernels of 3x3x3 = 108 weights (+0 biases)" in text
    assert (
        format_summary(summarize(build("custom", side=4, layers=["flatten", "linear"]), (3, 4, 4))).count(
            "Weight sharing"
        )
        == 0
    )


def test_explain_lenet5_arithmetic_and_receptive_fields():
    rows = explain(build("lenet5", channels=1, side=28), (1, 28, 28))
    fields = [(r["name"], r["receptive_field"], r["jump"]) for r in rows if "receptive_field" in r]
    # By hand: rf += (k - 1) * jump, jump *= stride.
    assert fields == [("features.0", 5, 1), ("features.2", 6, 2), ("features.3", 14, 2), ("features.5", 16, 4)]
    conv1, pool1, conv2 = rows[0], rows[1], rows[2]
    assert conv1["arithmetic"] == "out = floor((28 + 2*2 - 5) / 1) + 1 = 28"
    assert conv1["param_formula"] == "k*k*c_in*c_out + c_out = 5*5*1*6 + 6 = 156" and conv1["params"] == 156
    assert pool1["arithmetic"] == "out = floor((28 + 2*0 - 2) / 2) + 1 = 14" and "param_formula" not in pool1
    assert conv2["arithmetic"] == "out = floor((14 + 2*0 - 5) / 1) + 1 = 10"
    assert rows[4]["name"] == "classifier.0"
    assert rows[4]["param_formula"] == "in*out + out = 400*120 + 120 = 48,120"
    text = format_explain(rows)
    assert "features.5 (MaxPool2d): 16x10x10 -> 16x5x5   RF 16x16, jump 4" in text
    assert "params: k*k*c_in*c_out + c_out = 5*5*6*16 + 16 = 2,416" in text


def test_explain_non_square_dilated_ceil_and_flatten():
    rows = explain(build("lenet5", channels=1, side=(28, 32)), (1, 28, 32))
    assert rows[0]["arithmetic"] == (
        "H: out = floor((28 + 2*2 - 5) / 1) + 1 = 28; W: out = floor((32 + 2*2 - 5) / 1) + 1 = 32"
    )
    odd = nn.Sequential(
        nn.Conv2d(1, 2, 3, dilation=2, bias=False), nn.MaxPool2d(2, ceil_mode=True), nn.BatchNorm2d(2), nn.Flatten()
    )
    rows = explain(odd, (1, 9, 9))
    assert rows[0]["arithmetic"] == "out = floor((9 + 2*0 - (2*(3 - 1) + 1)) / 1) + 1 = 5"
    assert rows[0]["param_formula"] == "k*k*c_in*c_out = 3*3*1*2 = 18"
    assert (rows[0]["receptive_field"], rows[0]["jump"]) == (5, 1)
    assert rows[1]["arithmetic"] == "out = ceil((5 + 2*0 - 2) / 2) + 1 = 3" and rows[1]["output_shape"] == [2, 3, 3]
    assert (rows[1]["receptive_field"], rows[1]["jump"]) == (6, 2)
    assert rows[2]["param_formula"].startswith("2*c = 2*2 = 4")
    assert rows[3]["arithmetic"] == "flatten: 2*3*3 = 18"


def test_explain_follows_the_main_path_through_residual_blocks():
    rows = explain(build("resnet18", side=32), (3, 32, 32))
    by_name = {r["name"]: r for r in rows}
    # The 1x1/2 projection runs after the block's branch and leaves the main path's receptive field as it was.
    assert by_name["layer2.0.downsample.0"]["receptive_field"] == by_name["layer2.0.bn2"]["receptive_field"]
    # CIFAR stem: conv1 3x3/1 (rf 3); layer1: four 3x3/1 convs (+8); layer2.0.conv1 3x3/2 (+2, jump 2)
    assert (by_name["layer1.1.conv2"]["receptive_field"], by_name["layer1.1.conv2"]["jump"]) == (11, 1)
    assert (by_name["layer2.0.conv1"]["receptive_field"], by_name["layer2.0.conv1"]["jump"]) == (13, 2)
    assert by_name["avgpool"]["output_shape"] == [512, 1, 1]


def test_check_input_names_the_layer_and_the_smallest_input():
    model = build("alexnet", channels=1, side=8)
    with pytest.raises(ShapeError) as info:
        check_input(model, arch="alexnet", in_channels=1, image_size=(8, 8))
    message = str(info.value)
    for words in (
        "model.arch alexnet cannot take a 1x8x8 input",
        "features.2 (MaxPool2d) fails on the 64x1x1 map that reaches it",
        "out = floor((1 + 2*0 - 3) / 2) + 1 = 0",
        "alexnet needs inputs of at least 63x63: set data.image_size: 63",
    ):
        assert words in message, (words, message)
    check_input(build("alexnet", channels=1, side=63), arch="alexnet", in_channels=1, image_size=(63, 63))
    check_input(build("resnet18", side=8, stem="imagenet"), arch="resnet18", in_channels=3, image_size=(8, 8))
    with pytest.raises(ShapeError, match=r"features\.20 \(MaxPool2d\).*at least 32x32"):
        check_input(build("vgg11", side=16), arch="vgg11", in_channels=3, image_size=(16, 16))
    assert model.training  # left as it was found


class _Block(nn.Module):
    """A residual block whose branch halves the map with no projection: the addition fails in the block itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


def test_check_input_names_a_block_that_fails_after_its_layers_ran():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Sequential(nn.ReLU(), _Block()), nn.Flatten())
    with pytest.raises(ShapeError, match=r"1\.1 \(_Block\) fails on the 4x8x8 map that reaches it") as info:
        check_input(model, arch="custom-test", in_channels=1, image_size=(8, 8))
    assert "torch: The size of tensor a (4) must match the size of tensor b (8)" in str(info.value)
    assert "a size this model takes" in str(info.value)


def test_summary_command_json_and_text(cli):
    result = cli("summary", "lenet5-mnist", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["params"] == 61_706 and doc["input_shape"] == [1, 28, 28]
    assert {"name", "kind", "output_shape", "params", "macs"} <= set(doc["layers"][0])
    assert doc["weight_sharing"]["dense_weights"] == 3_687_936

    text = cli("summary", "resnet18-cifar10", "--explain")
    assert text.exit_code == 0, text.output
    assert "Weight sharing" in text.stdout and "RF 3x3, jump 1" in text.stdout and "layer4.1.bn2" in text.stdout

    for arch, stem, params in (("resnet18", "imagenet", 11_689_512), ("alexnet", "auto", 61_100_840)):
        overrides = ["data.dataset=fake", "data.image_size=224", "data.channels=3", "data.num_classes=1000"]
        args = [f"--set={o}" for o in (*overrides, f"model.arch={arch}", f"model.stem={stem}")]
        result = cli("summary", "lenet5-digits", *args, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["params"] == params


def test_impossible_shape_through_the_cli(cli, tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("data: {dataset: digits}\nmodel: {arch: alexnet}\n")
    result = cli("summary", path)
    assert result.exit_code == 2
    assert "alexnet" in result.stderr and "features.2 (MaxPool2d)" in result.stderr and "63x63" in result.stderr
    assert "Traceback" not in result.output

    path.write_text("data: {dataset: digits}\nmodel: {arch: custom, layers: [{conv: {out: 4, kernel: 9}}, linear]}\n")
    result = cli("summary", path)
    assert result.exit_code == 2 and "model.layers[0] (conv)" in result.stderr
    assert "out = floor((8 + 2*0 - 9) / 1) + 1 = 0" in result.stderr


def _named_depth(arch: str) -> int:
    """The number in the network's name: lenet5 -> 5, vgg11_bn -> 11; AlexNet's "eight learned layers" (Krizhevsky
    et al. 2012, Sec. 3). resnet1202's 1202 is checked by test_models' slow build-and-summary test."""
    return 8 if arch == "alexnet" else int(re.search(r"\d+", arch).group())


@pytest.mark.parametrize("arch", [a for a in MODELS.names() if a not in ("custom", "resnet1202")])
def test_depth_is_the_number_in_the_name(arch):
    # On the meta device: the same forward, no weights allocated (vgg's 140M).
    side = 224 if arch.startswith(("vgg", "alexnet")) else 32
    with torch.device("meta"):
        model = build(arch, side=side)
    assert depth(model, (3, side, side)) == _named_depth(arch)


@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")
@pytest.mark.parametrize(("name", "expected"), [("googlenet", 22), ("densenet121", 121), ("inception_v3", 48)])
def test_depth_counts_parallel_branches_once(name, expected):
    # GoogLeNet is "22 layers deep" (Szegedy et al. 2014); DenseNet-121's concatenations and Inception's parallel
    # towers: the longest chain, not the sum of the branches.
    with torch.device("meta"):
        model = build(f"torchvision.{name}", side=299)
    assert depth(model, (3, 299, 299)) == expected


def test_depth_of_a_custom_stack_takes_the_longer_side_of_a_residual_block():
    layers = [{"conv": 8}, {"residual": [{"conv": 16}, "relu", {"conv": 16}]}, "flatten", "linear"]
    model = build("custom", side=8, layers=layers)  # shortcut: one 1x1 projection; branch: two convs
    s = summarize(model, (3, 8, 8))
    assert s["depth"] == 4
    assert "depth 4: weighted layers (conv, linear) on the longest path" in format_summary(s)


def test_dropout_rows_carry_p_and_none_at_zero():
    plain = summarize(build("lenet5", channels=1, side=28), (1, 28, 28))
    assert not [r for r in plain["layers"] if "Dropout" in r["kind"]]
    assert "Dropout" not in format_summary(plain)
    dropped = summarize(build("lenet5", channels=1, side=28, dropout=0.25), (1, 28, 28))
    rows = [r for r in dropped["layers"] if r["kind"] == "Dropout"]
    assert [(r["name"], r["p"]) for r in rows] == [("classifier.2", 0.25), ("classifier.5", 0.25)]
    assert "classifier.2  Dropout(p=0.25)" in format_summary(dropped)
    custom = summarize(build("custom", side=4, layers=["flatten", {"dropout": 0.0}, {"dropout": 0.5}, "linear"]),
                       (3, 4, 4))
    assert [(r["name"], r["p"]) for r in custom["layers"] if "p" in r] == [("layers.2", 0.5)]


def test_weight_sharing_sentence_in_english_for_one_kernel():
    layers = [{"conv": {"out": 1, "kernel": 1}}, "flatten", "linear"]
    text = format_summary(summarize(build("custom", channels=1, side=4, layers=layers), (1, 4, 4)))
    assert "layers.0 shares 1 kernel of 1x1x1 = 1 weight (+1 bias) across all 4x4 output positions" in text
    assert "kernels" not in text and "biases" not in text


def test_summary_explain_dropout_and_loss_through_the_cli(cli):
    result = cli("summary", "lenet5-digits", "--explain", "--set", "model.dropout=0.5")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "depth 5: weighted layers" in text
    assert "multiplied by 1/(1-p) (inverted dropout), so each activation's expected value is unchanged" in text
    assert "classifier.2: p = 0.5, the kept activations are scaled by 2" in text
    assert "In evaluation (validation, eval, predict: model.eval()) dropout passes everything through" in text
    assert "cross-entropy = log-softmax + negative log-likelihood" in text
    assert "-log(1/10) = ln(10) = 2.30" in text

    doc = json.loads(cli("summary", "lenet5-digits", "--explain", "--json", "--set", "train.label_smoothing=0.1").stdout)
    assert doc["depth"] == 5
    assert doc["training"]["dropout"] == []
    loss = doc["training"]["loss"]
    assert loss["name"] == "cross_entropy" and loss["classes"] == 10 and loss["label_smoothing"] == 0.1
    assert loss["initial_loss"] == pytest.approx(math.log(10)) == pytest.approx(2.302585)


def test_summary_says_how_deep_resnet18_is(cli):
    result = cli("summary", "resnet18-cifar10")
    assert result.exit_code == 0, result.output
    assert "depth 18: weighted layers" in result.stdout and "Dropout" not in result.stdout
    assert json.loads(cli("summary", "resnet18-cifar10", "--json").stdout)["depth"] == 18


@pytest.mark.parametrize(("overrides", "first"), [
    (["data.image_size=4096"], "model.arch 'lenet5' on 1x4096x4096 images: the network would have 2,001,500,426 "
                               "parameters (7.5 GiB of float32 weights"),
    (["data.image_size=4096", "model.arch=resnet18"], "model.arch 'resnet18' on 1x4096x4096 images: one image would "
                                                      "make 2,499,806,218 activations (9.3 GiB of float32)"),
], ids=["parameters", "activations"])
def test_summary_refuses_a_zoo_network_too_large_to_build(cli, overrides, first):
    """Issue 23: `summary lenet5-digits --set data.image_size=4096` built 2,001,500,426 parameters in 33 s and 10 GB."""
    result = cli("summary", "lenet5-digits", *[f"--set={o}" for o in overrides])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {first}")
    assert "limit of 1,000,000,000" in result.stderr and "Use a smaller data.image_size" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_summary_counts_the_dnn_vs_cnn_parameters_the_readme_states(cli, tmp_path, monkeypatch):
    """The README's DNN vs CNN section: its two MNIST nets, and the note's fully-connected layer on a 32x32x3 image."""
    monkeypatch.chdir(tmp_path)  # the configs' data.root is relative: summary must neither read nor fetch it
    docs = {}
    for name in ("mlp", "cnn"):
        result = cli("summary", f"compare-dnn-cnn/{name}", "--json")
        assert result.exit_code == 0, result.output
        docs[name] = json.loads(result.stdout)
    assert {n: (d["params"], d["macs"]) for n, d in docs.items()} == {"mlp": (669_706, 668_672),
                                                                       "cnn": (9_098, 290_080)}
    assert [row["params"] for row in docs["mlp"]["layers"] if row["params"]] == [401_920, 262_656, 5_130]

    dense = cli("summary", "compare-dnn-cnn/mlp", "--explain", "--set=data.dataset=cifar10",
                "--set=model.layers=[flatten, {linear: 4096}, relu, linear]")
    assert dense.exit_code == 0, dense.output
    assert "layers.1 (Linear): 3072 -> 4096\n    params: in*out + out = 3072*4096 + 4096 = 12,587,008" in dense.stdout
    conv = cli("summary", "compare-dnn-cnn/cnn", "--set=data.dataset=cifar10")
    assert conv.exit_code == 0, conv.output
    assert "layers.0 shares 8 kernels of 3x3x3 = 216 weights (+8 biases)" in conv.stdout
    assert re.search(r"layers\.0 +Conv2d +8x32x32 +224 ", conv.stdout)
    assert list(tmp_path.iterdir()) == []


def test_summary_marks_frozen_layers_and_counts_trainable_and_frozen(cli, tmp_path):
    """train.freeze: body, as training starts; model.pretrained builds torchvision's layout (the 7x7 stem at 32 px)
    without reading any weights file."""
    path = tmp_path / "frozen.yaml"
    path.write_text("data: {dataset: fake, image_size: 32, num_classes: 5}\n"
                    "model: {arch: resnet18, pretrained: true}\ntrain: {freeze: body}\n")
    result = cli("summary", path)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("conv1 ", "fc ", "layer4.1.bn2 "))}
    assert rows["conv1"].endswith("  frozen") and rows["layer4.1.bn2"].endswith("  frozen")
    assert not rows["fc"].endswith("frozen")
    assert rows["conv1"].split()[1:3] == ["Conv2d", "64x16x16"]  # 7x7/2 conv: torchvision's stem
    assert "11,179,077 parameters (2,565 trainable, 11,176,512 frozen)" in result.stdout
    doc = json.loads(cli("summary", path, "--json").stdout)
    assert doc["frozen_params"] == 11_176_512 and doc["trainable_params"] == 2_565
    assert [r["name"] for r in doc["layers"] if r.get("frozen")][:2] == ["conv1", "bn1"]
