"""The model zoo: every registered model runs; torchvision's parameter counts and state_dicts match exactly;
custom stacks infer their shapes and name the layer at fault."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnctl.config import ModelConfig, load_config
from cnnctl.errors import ConfigError, ShapeError
from cnnctl.models.layers import PLANS, check_layers
from cnnctl.models.limits import MAX_ELEMENTS
from cnnctl.models.registry import MODELS, create_model
from cnnctl.models.specs import KINDS

SMALL_CUSTOM = [{"conv": {"out": 4, "kernel": 3, "padding": 1}}, "relu", {"maxpool": 2}, "flatten", "linear"]


def build(arch: str, channels: int = 3, side: int = 32, classes: int = 10, **options) -> nn.Module:
    layers = options.pop("layers", SMALL_CUSTOM if arch == "custom" else [])
    cfg = ModelConfig(arch=arch, layers=layers, **options)
    return create_model(cfg, in_channels=channels, image_size=(side, side), num_classes=classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The smallest sensible input for each family: AlexNet needs 63x63; VGG's five pools need 32; the deep ResNets
# run their CIFAR stem on 16x16 (layer4 at 2x2) to keep the test fast.
SIDES = {"alexnet": 64, "resnet101": 16, "resnet152": 16, "resnet200": 16, "lenet5": 28}


# resnet1202 is resnet20's blocks repeated 200 times a stage: its own slow test below runs it (in training mode).
ZOO = [a for a in MODELS.names() if a != "resnet1202"]


@pytest.mark.parametrize("arch", ZOO)
def test_every_registered_model_runs_two_images(arch):
    torch.manual_seed(0)
    side = SIDES.get(arch, 32)
    model = build(arch, side=side, classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "alexnet": 61_100_840,
}


@pytest.mark.parametrize(("arch", "params"), TORCHVISION_COUNTS.items())
def test_torchvision_parameter_count_and_strict_state_dict(arch, params):
    # Built on the meta device: the same code paths, names and shapes without allocating or initialising 140M
    # weights; test_torchvision_weights_give_torchvision_outputs loads real ones.
    options = {} if arch == "alexnet" else {"stem": "imagenet"}
    with torch.device("meta"):
        ours = build(arch, side=224, classes=1000, **options)
        theirs = torchvision.models.get_model(arch, weights=None)
    assert n_params(ours) == params == n_params(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg11_bn", "alexnet"])
def test_torchvision_weights_give_torchvision_outputs(arch):
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(arch, weights=None).eval()
    ours = build(arch, side=224, classes=1000, **({} if arch == "alexnet" else {"stem": "imagenet"})).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_classic_parameter_counts():
    assert n_params(build("lenet5", channels=1, side=28)) == 61_706  # LeCun et al. 1998 on 28x28 padded by 2
    resnet20 = n_params(build("resnet20"))
    # He et al. 2016, Table 6: 0.27M with zero-padding shortcuts (option A); our 1x1 projections add 2,752.
    assert resnet20 == 272_474 and 0.26e6 < resnet20 < 0.28e6
    assert n_params(build("resnet110")) == pytest.approx(1.7e6, rel=0.03)  # Table 6: 1.7M
    assert n_params(build("alexnet", side=224, classes=1000)) == 61_100_840


# He et al. 2016, "Deep Residual Learning for Image Recognition", Table 6 (CIFAR-10): ResNet-1202, 19.4M
# parameters. Ours: 19,424,026 = 19.4M, of which 2,752 are the two 1x1 projection shortcuts (option B; the paper's
# CIFAR nets use option A, zero-padding, which has none: 19,421,274).
RESNET1202_PARAMS = 19_424_026


def cifar_resnet_params(n: int, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet-(6n+2) counted by hand: a 3x3 conv of 16 + BN, three stages of n basic blocks (two
    3x3 convs + two BNs each) at 16/32/64 channels, a 1x1 conv + BN projection where a stage halves the map, and fc."""
    total = 3 * 16 * 9 + 2 * 16
    for w_in, w in ((16, 16), (16, 32), (32, 64)):
        total += n * (2 * w * w * 9 + 2 * 2 * w) - (w - w_in) * w * 9  # the first block's conv takes w_in channels
        total += (w_in * w + 2 * w) if w_in != w else 0
    return total + 64 * classes + classes


def test_resnet1202_has_he_et_al_parameter_count():
    assert cifar_resnet_params(3) == n_params(build("resnet20")) == 272_474
    with torch.device("meta"):  # the layout and the count without allocating or initialising 19.4M weights
        model = build("resnet1202")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [200, 200, 200]  # n = (1202 - 2) / 6
    assert n_params(model) == cifar_resnet_params(200) == RESNET1202_PARAMS
    assert round(n_params(model) / 1e6, 1) == 19.4


@pytest.mark.heavy
def test_resnet1202_builds_and_summarises_on_cifar_images():
    from cnnctl.insight.summary import summarize

    model = build("resnet1202")
    s = summarize(model, (3, 32, 32))
    assert s["params"] == RESNET1202_PARAMS and s["depth"] == 1202
    # Training mode: batch norm uses the batch's statistics. In eval mode an *untrained* ResNet-1202 overflows:
    # with BN's initial running statistics (mean 0, variance 1) each of the 600 blocks adds a branch about as large
    # as its input, doubling the variance 600 times; training replaces those statistics before any evaluation.
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_cifar_resnet_layout():
    model = build("resnet20")
    assert [name for name, _ in model.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "avgpool", "dropout", "fc"
    ]  # fmt: skip
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16 and model.fc.in_features == 64
    assert model.layer1[0].downsample is None
    projection = model.layer2[0].downsample  # option B: 1x1/2 conv + BN where the shape changes
    assert isinstance(projection[0], nn.Conv2d) and projection[0].stride == (2, 2) and projection[0].out_channels == 32
    assert len(build("resnet56").layer2) == 9
    with pytest.raises(ConfigError, match="CIFAR net"):
        build("resnet20", stem="imagenet")


def test_lenet5_on_small_and_large_inputs():
    digits = build("lenet5", channels=1, side=8)  # conv2 padded by 2 too: 8 -> 8 -> 4 -> 4 -> 2
    assert digits.features[3].padding == (2, 2) and digits.classifier[0].in_features == 16 * 2 * 2
    assert build("lenet5", channels=1, side=32).classifier[0].in_features == 400  # the paper's 32x32, no padding
    assert build("lenet5", channels=3, side=64).classifier[0].in_features == 16 * 13 * 13
    with torch.no_grad():
        assert digits(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ShapeError, match=r"at least 4x4") as info:
        build("lenet5", channels=1, side=3)
    assert "pool out = floor(1 / 2) = 0" in str(info.value)


def test_lenet_options_and_an_option_an_arch_lacks():
    tanh_avg = build("lenet5", channels=1, side=28, activation="tanh", pool="avg", dropout=0.25)
    kinds = [type(m).__name__ for m in tanh_avg.features]
    assert kinds == ["Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "AvgPool2d"]
    assert tanh_avg.classifier[2].p == 0.25
    with pytest.raises(ConfigError, match="model.activation"):
        build("resnet18", activation="tanh")
    with pytest.raises(ConfigError, match="model.stem"):
        build("alexnet", side=64, stem="cifar")


def test_stems():
    cifar = build("resnet18", side=32)  # auto: below 64 pixels
    assert isinstance(cifar.maxpool, nn.Identity) and cifar.conv1.kernel_size == (3, 3)
    assert cifar.conv1.stride == (1, 1)
    imagenet = build("resnet18", side=64)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert build("resnet18", side=224, stem="cifar").conv1.kernel_size == (3, 3)
    # VGG: the 7x7 head only from 224 pixels, where the last map is 7x7 (built on meta: only the layout matters).
    with torch.device("meta"):
        assert build("vgg11", side=223).classifier[0].in_features == 512
        assert build("vgg11", side=224).classifier[0].in_features == 512 * 7 * 7
        assert build("vgg11", side=32, stem="imagenet").avgpool.output_size == (7, 7)


def test_zero_init_residual_and_init():
    zero = build("resnet18", zero_init_residual=True)
    assert all(not b.bn2.weight.any() for layer in (zero.layer1, zero.layer4) for b in layer)
    assert not build("resnet50", zero_init_residual=True).layer3[0].bn3.weight.any()
    plain = build("resnet18")
    assert bool((plain.layer1[0].bn2.weight == 1).all())
    # kaiming_normal_(fan_out): std = sqrt(2 / (out * k * k)) = sqrt(2 / 576) for layer1's 64-channel 3x3 convs
    assert plain.layer1[0].conv1.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_in_channels_changes_only_the_first_conv():
    for arch, side in (("resnet18", 32), ("vgg11_bn", 32), ("alexnet", 64), ("lenet5", 28), ("resnet20", 32)):
        rgb, gray = build(arch, channels=3, side=side).state_dict(), build(arch, channels=1, side=side).state_dict()
        changed = [k for k in rgb if rgb[k].shape != gray[k].shape]
        assert len(changed) == 1 and changed[0].endswith("weight"), (arch, changed)
        assert gray[changed[0]].shape[1] == 1


def test_torchvision_zoo_and_channels():
    model = build("torchvision.mobilenet_v3_small", channels=1, side=32, classes=5).eval()
    assert model.features[0][0].in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="Did you mean torchvision.resnet18"):
        build("torchvision.resnet81")
    with pytest.raises(ConfigError, match="model.dropout"):
        build("torchvision.resnet18", dropout=0.5)


EVERY_KIND = [
    {"conv": {"out": 8, "kernel": 3, "padding": 1}},
    "batchnorm",
    "relu",
    {"residual": [{"conv": {"out": 8, "kernel": 3, "padding": 1}}, "batchnorm", {"leaky_relu": 0.1}]},
    {"maxpool": 2},
    {"residual": [{"conv": {"out": 16, "kernel": 3, "stride": 2, "padding": 1}}, "gelu"]},
    {"avgpool": 2},
    "tanh",
    {"sumpool": {"kernel": 2, "stride": 2}},
    "sigmoid",
    {"conv": 16},
    {"adaptive_avgpool": 1},
    "flatten",
    {"dropout": 0.1},
    {"linear": {"out": 32, "in": 16}},
    "identity",
    "batchnorm",
    "relu",
    "linear",
]


def test_custom_stack_with_every_kind():
    torch.manual_seed(0)
    model = build("custom", channels=1, side=32, layers=EVERY_KIND).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    layers = model.layers
    assert isinstance(layers[3].shortcut, nn.Identity)  # the branch keeps 8x32x32
    projection = layers[5].shortcut  # 8x16x16 -> 16x8x8: a 1x1/2 conv + BN
    assert isinstance(projection[0], nn.Conv2d) and projection[0].stride == (2, 2) and projection[0].out_channels == 16
    assert isinstance(layers[1], nn.BatchNorm2d) and isinstance(layers[16], nn.BatchNorm1d)
    assert layers[10].kernel_size == (3, 3) and layers[10].padding == (1, 1)  # `conv: 16` keeps the size
    assert layers[14].in_features == 16 and layers[18].out_features == 10  # inferred; the last is the classifier
    assert layers[0].in_channels == 1 and layers[5].branch[0].in_channels == 8


def test_custom_in_features_inferred_through_the_arithmetic():
    layers = [{"conv": {"out": 6, "kernel": 5}}, {"maxpool": 2}, {"conv": {"out": 16, "kernel": 5}}, {"maxpool": 2}]
    model = build("custom", channels=1, side=32, layers=[*layers, "flatten", {"linear": 120}, "linear"])
    assert model.layers[5].in_features == 16 * 5 * 5
    assert check_layers(layers, in_channels=1, image_size=(32, 28), num_classes=10) == (16, 5, 4)


def test_sumpool_adds_up_each_window():
    model = build("custom", channels=1, side=4, layers=[{"sumpool": 2}, "flatten", {"linear": {"bias": False}}])
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert model.layers[0](x).flatten().tolist() == [10.0, 18.0, 42.0, 50.0]


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        (
            [{"conv": {"out": 4, "kernel": 5}}, {"maxpool": 2}, {"conv": {"out": 4, "kernel": 5}}, "flatten", "linear"],
            ["model.layers[2] (conv)", "4x2x2 map", "out = floor((2 + 2*0 - 5) / 1) + 1 = -2"],
        ),
        (
            ["flatten", {"linear": {"out": 10, "in": 100}}, "linear"],
            ["model.layers[1] (linear)", "in = 100", "64 features reach it"],
        ),
        (
            [{"residual": ["flatten", {"linear": 8}]}, "linear"],
            ["model.layers[0] (residual)", "flatten", "outside"],
        ),
        (
            [{"residual": [{"conv": {"out": 4, "kernel": 3}}]}, "flatten", "linear"],
            ["model.layers[0] (residual)", "1x8x8 map into 4x6x6 map", "no 1x1 projection"],
        ),
        (
            ["relu", {"residual": [{"conv": 4}, {"conv": {"out": 4, "kernel": 9}}]}, "flatten", "linear"],
            ["model.layers[1].residual[1] (conv)", "out = floor((8 + 2*0 - 9) / 1) + 1 = 0"],
        ),
        ([{"conv": {"out": 4, "kernel": 3}}], ["last layer gives a 4x6x6 map", "10 class scores", "linear"]),
        (["flatten", {"linear": 7}], ["last layer gives 7 features", "linear"]),
        (["flatten", {"conv": 4}, "linear"], ["model.layers[1] (conv)", "feature map", "64 features"]),
        ([{"conv": 8}, "linear"], ["model.layers[1] (linear)", "8x8x8 map", "add `flatten`"]),
    ],
)
def test_custom_shape_errors_name_the_layer(layers, words):
    with pytest.raises(ShapeError) as info:
        build("custom", channels=1, side=8, layers=layers)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# Errors that need no data: the typed layers (cnnctl.models.specs) report them when the config loads, through the
# same formatter as every other key: `FILE: model.layers[i].kind.key: message`.
@pytest.mark.parametrize(
    ("layers", "line"),
    [
        ("[{convv: {out: 4}}]", "model.layers[0].convv: unknown key; did you mean 'conv'? Valid keys: conv, batchnorm"),
        ("[rellu, flatten]", "model.layers[0].rellu: unknown key; did you mean 'relu'?"),
        ("[{conv: {out: 4, kernal: 3}}]", "model.layers[0].conv.kernal: unknown key; did you mean 'kernel'? Valid keys: out, kernel, stride, padding, bias"),
        ("[flatten, {linear: {inn: 64}}]", "model.layers[1].linear.inn: unknown key; did you mean 'in'?"),
        ("[{conv: {out: 4}}]", "model.layers[0].conv.kernel: required key is missing"),
        ("[{conv: {out: 4, kernel: 0}}]", "model.layers[0].conv.kernel: Input should be greater than or equal to 1 (got 0)"),
        ("[{conv: {out: 4, kernel: '3'}}]", "model.layers[0].conv.kernel: Input should be a valid integer (got '3')"),
        ("[{conv: {out: 4, kernel: 3, bias: 'no'}}]", "model.layers[0].conv.bias: Input should be a valid boolean (got 'no')"),
        ("[flatten, {dropout: 1.5}]", "model.layers[1].dropout.p: Input should be less than 1 (got 1.5)"),
        ("[relu, {tanh: 3}]", "model.layers[1].tanh: takes no arguments; write the kind's name alone, not 3"),
        ("[{maxpool: {kernel: 2, padding: 2}}]", "model.layers[0].maxpool: padding 2 must be at most half the kernel (1)"),
        ("[{maxpool: two}]", "model.layers[0].maxpool: takes a number (kernel) or a mapping of kernel, stride, padding, not 'two'"),
        ("[{conv: 4, relu: null}]", "model.layers[0]: a layer is a name (e.g. relu) or a one-key mapping"),
        ("[{residual: {conv: 4}}]", "model.layers[0].residual: Input should be a valid list"),
        ("[{residual: []}]", "model.layers[0]: residual takes a non-empty list of layers (its branch)"),
        ("[{residual: [relu, {conv: {out: 4, kernel: 3, biass: false}}]}]", "model.layers[0].residual[1].conv.biass: unknown key; did you mean 'bias'?"),
        ("[{leaky_relu: .nan}]", "model.layers[0].leaky_relu.slope: Input should be a finite number"),
    ],
)
def test_custom_layer_errors_name_the_file_and_the_key(tmp_path, layers, line):
    path = tmp_path / "net.yaml"
    path.write_text(f"model:\n  arch: custom\n  layers: {layers}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{path}: {line}"), first


def test_a_misspelt_layer_key_through_the_cli(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {dataset: digits}\nmodel:\n  arch: custom\n  layers:\n    - conv: {out: 4, kernal: 3}\n"
                    "    - flatten\n    - linear\n")
    result = cli("summary", path)
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert f"{path}: model.layers[0].conv.kernal: unknown key; did you mean 'kernel'?" in first, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # not also "kernel is missing": kernal is the one mistake
    assert "Traceback" not in result.output


SHORTHANDS = [
    ("relu", "relu"),
    ({"relu": None}, "relu"),
    ({"maxpool": 2}, {"maxpool": {"kernel": 2, "stride": None, "padding": 0}}),
    ({"conv": 16}, {"conv": {"out": 16, "kernel": 3, "stride": 1, "padding": 1, "bias": True}}),
    ({"leaky_relu": 0.1}, {"leaky_relu": {"slope": 0.1}}),
    ("leaky_relu", {"leaky_relu": {"slope": 0.01}}),
    ({"dropout": 0.3}, {"dropout": {"p": 0.3}}),
    ("dropout", {"dropout": {"p": 0.5}}),
    ({"adaptive_avgpool": 2}, {"adaptive_avgpool": {"size": 2}}),
    ({"linear": 120}, {"linear": {"out": 120, "bias": True, "in": None}}),
    ("linear", {"linear": {"out": None, "bias": True, "in": None}}),
    ({"residual": [{"conv": 8}, "relu"]}, {"residual": [{"conv": {"out": 8, "kernel": 3, "stride": 1, "padding": 1,
                                                                  "bias": True}}, "relu"]}),
]


@pytest.mark.parametrize(("written", "resolved"), SHORTHANDS)
def test_every_form_a_layer_takes_resolves_and_round_trips(written, resolved):
    cfg = ModelConfig(arch="custom", layers=[written])
    assert cfg.model_dump(mode="json")["layers"] == [resolved]
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # the run's config.yaml loads back


def test_every_kind_has_a_plan():
    assert set(PLANS) == set(KINDS)


HUGE_CONV = [{"conv": {"out": 1_000_000_000, "kernel": 5, "padding": 2}}, {"adaptive_avgpool": 1}, "flatten", "linear"]


def test_a_layer_too_large_to_allocate_is_refused_with_its_size():
    with pytest.raises(ConfigError) as info:
        build("custom", channels=1, side=8, layers=HUGE_CONV)
    message = str(info.value)
    # conv 5*5*1*1e9 + 1e9 biases, then linear 1e9*10 + 10: counted before anything is allocated
    assert "would have 36,000,000,010 parameters (134.1 GiB of float32 weights" in message
    assert "model.layers[0] (conv) alone has 5*5*1*1,000,000,000 + 1,000,000,000 = 26,000,000,000" in message
    assert f"limit of {MAX_ELEMENTS:,}" in message
    wide = [{"conv": {"out": 100_000, "kernel": 1}}, {"adaptive_avgpool": 1}, "flatten", "linear"]
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(conv\) alone outputs 100000x128x128 map = 1,638,400,000"):
        build("custom", channels=1, side=128, layers=wide)
    # Just under the limit a network is planned, not refused (check_layers allocates nothing).
    assert check_layers([{"conv": {"out": 100_000_000, "kernel": 1}}], in_channels=1, image_size=(1, 1),
                        num_classes=2) == (100_000_000, 1, 1)


def test_custom_refuses_the_model_level_dropout():
    with pytest.raises(ConfigError, match="model.dropout.*dropout: 0.3"):
        build("custom", dropout=0.5)


def test_check_layers_returns_the_output_shape():
    assert check_layers(SMALL_CUSTOM, in_channels=1, image_size=(8, 8), num_classes=3) == (3,)
    assert check_layers([{"conv": 8}, {"maxpool": 2}], in_channels=3, image_size=(9, 9), num_classes=3) == (8, 4, 4)


@pytest.mark.parametrize("command", ["summary", "train"])
def test_a_layer_too_large_through_the_cli(cli, tmp_path, command):
    path = tmp_path / "huge.yaml"
    path.write_text("data: {dataset: digits}\ntrain: {epochs: 1}\nmodel:\n  arch: custom\n  layers:\n"
                    "    - conv: {out: 1000000000, kernel: 5, padding: 2}\n    - adaptive_avgpool: 1\n    - flatten\n"
                    "    - linear\n")
    out = tmp_path / "runs"
    result = cli(command, path, *(["--out", out] if command == "train" else []))
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert "36,000,000,010 parameters" in first and "model.layers[0] (conv)" in first, first
    assert "Traceback" not in result.output and "DefaultCPUAllocator" not in result.output
    assert not out.exists()  # refused before a run folder was made


# ---------------------------------------------------------------- the size bound covers the zoo


def test_a_zoo_network_too_large_is_refused_before_a_weight_is_allocated():
    """Issue 23: LeNet-5 on 4096x4096 images built 2,001,500,426 parameters in 33 s and 10 GB before training."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ConfigError) as info:
        build("lenet5", channels=1, side=4096)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before

    assert str(info.value) == (
        "model.arch 'lenet5' on 1x4096x4096 images: the network would have 2,001,500,426 parameters (7.5 GiB of "
        f"float32 weights, before gradients and optimizer state), over cnnctl's limit of {MAX_ELEMENTS:,} (3.7 GiB); "
        "classifier.0 (Linear) alone has in*out + out = 16679056*120 + 120 = 2,001,486,840. Use a smaller "
        "data.image_size (a classifier on the flattened map grows with the image) or a smaller arch")
    assert info.value.exit_code == 2
    assert grown < 500 * 1024, f"the refusal allocated {grown / 1024:.0f} MiB"  # 7.5 GiB if the weights were built


def test_a_zoo_network_whose_activations_are_too_large_is_refused():
    with pytest.raises(ConfigError) as info:
        build("resnet110", channels=3, side=600)
    assert str(info.value) == (
        "model.arch 'resnet110' on 3x600x600 images: one image would make 1,120,320,138 activations (4.2 GiB of "
        f"float32), over cnnctl's limit of {MAX_ELEMENTS:,}; conv1 (Conv2d) alone outputs 16x600x600 map = 5,760,000. "
        "Use a smaller data.image_size or a shallower arch")


@pytest.mark.parametrize("arch", ["lenet5", "vgg11_bn", "resnet20"])
def test_the_size_check_changes_neither_the_weights_nor_the_random_stream(arch):
    """The meta build draws no random numbers and the zero-image pass moves no batch-norm statistic, so a seed gives
    the weights the builder alone gives, and training starts in training mode."""
    cfg = ModelConfig(arch=arch)
    torch.manual_seed(0)
    plain = MODELS.get(arch)(num_classes=10, in_channels=3, **({"image_size": (32, 32)} if arch != "resnet20" else {}))
    plain_next = torch.rand(3)
    torch.manual_seed(0)
    checked = create_model(cfg, in_channels=3, image_size=(32, 32), num_classes=10)

    assert torch.equal(torch.rand(3), plain_next)
    assert checked.training and all(m.training for m in checked.modules())
    state = checked.state_dict()
    assert state.keys() == plain.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())


def test_a_builder_that_cannot_run_on_the_meta_device_is_checked_once_built():
    from cnnctl.models.limits import meta_network
    from cnnctl.models.tv import torchvision_model

    # torchvision's RegNets size their stages with torch.arange(...).tolist(), which meta tensors cannot give.
    assert meta_network(lambda: torchvision_model(name="regnet_y_400mf", num_classes=10, in_channels=3)) is None
    assert n_params(build("torchvision.regnet_y_400mf", side=32)) == 3_907_554
    with pytest.raises(ConfigError, match=r"^model.arch 'torchvision.regnet_y_400mf' on 3x4096x4096 images: one "
                                          r"image would make [\d,]+ activations"):
        build("torchvision.regnet_y_400mf", side=4096)


@pytest.mark.parametrize("command", ["summary", "train"])
def test_a_zoo_network_too_large_through_the_cli(cli, tmp_path, command):
    path = tmp_path / "huge.yaml"
    path.write_text("data: {dataset: fake, num_samples: 10, channels: 1, image_size: 4096, num_classes: 10}\n"
                    "model: {arch: lenet5}\ntrain: {epochs: 1}\n")
    out = tmp_path / "runs"
    result = cli(command, path, *(["--out", out] if command == "train" else []))
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert "model.arch 'lenet5' on 1x4096x4096 images" in first and "2,001,500,426 parameters" in first, first
    assert "classifier.0 (Linear)" in first and "data.image_size" in first
    assert "Traceback" not in result.output and "DefaultCPUAllocator" not in result.output
    assert not out.exists()  # refused before a run folder was made


def test_every_zoo_network_is_a_documented_def_of_its_own_name():
    """`grep "def resnet18"` finds the network: each registry name is a module-level def of that name with a
    docstring, not a renamed closure."""
    import inspect

    from cnnctl.models.registry import MODELS

    for name in MODELS.names():
        builder = MODELS.get(name)
        assert inspect.isfunction(builder) and builder.__name__ == name == builder.__qualname__, name
        assert builder.__doc__ and builder.__doc__.strip(), name
        source = inspect.getsource(inspect.getmodule(builder))
        assert f"\ndef {name}(" in source, name
