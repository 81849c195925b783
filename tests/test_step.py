"""``cnnctl step``: one training step worked by hand, checked against networks and optimizers built here apart from
cnnctl (plain torch.nn layers loaded with the printed weights, torch.optim classes built by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cnnctl.config import load_config
from cnnctl.insight.step import LOSSES, UPDATES, run_step
from cnnctl.runtime import rng_state, set_rng_state
from cnnctl.training.checkpoint import FORMAT, save_checkpoint
from cnnctl.training.optim import OPTIMIZERS

TOL = 1e-6
TINY_CONV = "model.layers=[{conv: {out: 1, kernel: 2, padding: 1}}, sigmoid, flatten, linear]"


def step_json(cli, *args: str) -> dict:
    r = cli("step", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def rebuilt(result: dict, layers: list[nn.Module]) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A plain nn.Sequential holding the weights a tiny network's step printed, and the printed input and label."""
    net = nn.Sequential(*layers)
    net.load_state_dict({p["param"].removeprefix("layers."): torch.tensor(p["value"]) for p in result["network"]})
    x = torch.tensor(result["input"]["values"], dtype=torch.float32).reshape(result["input"]["shape"])
    return net, x, torch.tensor([result["input"]["label"]["index"]])


def tiny_layers() -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(4, 2), nn.Sigmoid(), nn.Linear(2, 3)]


def tiny_conv_layers() -> list[nn.Module]:
    return [nn.Conv2d(1, 1, 2, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(9, 3)]


def autograd_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor, **loss_args) -> dict[str, torch.Tensor]:
    nn.functional.cross_entropy(net(x), y, **loss_args).backward()
    return {f"layers.{name}": p.grad for name, p in net.named_parameters()}


def check_worked(result: dict, grads: dict[str, torch.Tensor]) -> None:
    """The chosen weight's gradient by hand, its autograd value, and every gradient and chain link printed, all
    equal to the gradients computed here."""
    worked = result["backward"]["param"]
    expected = float(grads[worked["param"]][tuple(worked["index"])])
    assert expected != 0  # a zero gradient would make the comparison easy to pass
    assert abs(worked["by_hand"] - expected) < TOL and abs(worked["autograd"] - expected) < TOL
    for p in result.get("network", []):
        printed = torch.tensor(p["grad"], dtype=torch.float64)
        assert torch.allclose(printed, grads[p["param"]].double(), atol=TOL), p["param"]
    rows = [row for row in result["backward"]["chain"] if "by_hand" in row]
    assert rows and all(row["max_abs_diff"] < TOL for row in rows)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("param", [None, "layers.3.weight[2,1]", "layers.1.weight[1,2]", "layers.1.bias[0]",
                                   "layers.3.bias[2]"])
def test_the_tiny_networks_gradients_by_hand_are_autograds(cli, param):
    result = step_json(cli, "backprop-tiny", *(["--param", param] if param else []))
    net, x, y = rebuilt(result, tiny_layers())
    check_worked(result, autograd_of(net, x, y))
    label = result["input"]["label"]["index"]
    if param is None:  # the note's w11 of layer 2: the last linear layer, hidden unit 0 -> the true class
        worked = result["backward"]["param"]
        assert (worked["param"], worked["index"]) == ("layers.3.weight", [label, 0])
    # every layer of the tiny network is shown with all its numbers, down to the first weights
    assert [row["layer"] for row in result["backward"]["chain"]] == ["layers.3", "layers.2", "layers.1"]
    out = result["output"]
    assert out["target"] == [1.0 if i == label else 0.0 for i in range(3)]
    assert abs(out["loss"]["by_hand"] - float(nn.functional.cross_entropy(net(x), y).detach())) < TOL


@pytest.mark.parametrize("param", ["layers.0.weight[0,0,1,0]", "layers.0.weight[0,0,0,1]", "layers.0.bias[0]"])
def test_a_tiny_convolutions_gradient_is_the_sum_over_positions(cli, param):
    result = step_json(cli, "backprop-tiny", "--set", TINY_CONV, "--param", param)
    net, x, y = rebuilt(result, tiny_conv_layers())
    check_worked(result, autograd_of(net, x, y))
    worked = result["backward"]["param"]
    assert worked["n_terms"] == 9  # a 2x2 kernel over a 2x2 image padded by 1: a 3x3 map
    assert "sum over" in worked["formula"]
    if "weight" in param:  # each shown term is upstream gradient x input pixel
        assert all(abs(t["product"] - t["upstream"] * t["input"]) < 1e-12 for t in worked["terms"])


@pytest.fixture(scope="module")
def lenet_grads():
    """LeNet-5's gradients for the first digits training image, computed here from the config's seeded network."""
    from cnnctl.data.base import load_data, to_model_input
    from cnnctl.models.registry import create_model
    from cnnctl.runtime import seed_everything

    saved = rng_state()
    cfg, _ = load_config("lenet5-digits")
    seed_everything(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    model = create_model(cfg.model, in_channels=data.channels, image_size=data.size, num_classes=len(data.classes))
    x = to_model_input(data.train.images[:1], data.mean, data.std, torch.device("cpu"))
    nn.functional.cross_entropy(model.train()(x), data.train.labels[:1]).backward()
    set_rng_state(saved)
    return {name: (p.detach(), p.grad) for name, p in model.named_parameters()}


@pytest.mark.parametrize("param", [None, "classifier.3.weight[5,1]", "features.3.weight[2,1,3,4]",
                                   "features.0.weight[1,0,2,2]", "features.0.bias[3]", "classifier.6.bias[4]"])
def test_lenet5s_gradients_by_hand_are_autograds(cli, lenet_grads, param):
    result = step_json(cli, "lenet5-digits", *(["--param", param] if param else []))
    worked = result["backward"]["param"]
    value, grad = lenet_grads[worked["param"]]
    assert worked["value"] == float(value[tuple(worked["index"])])  # the same network as the one here
    check_worked(result, {name: g for name, (_, g) in lenet_grads.items()})
    assert grad is not None


def test_every_simple_layer_rule_agrees_with_autograd_on_the_custom_example(cli):
    """conv (transposed convolution), leaky_relu, tanh, sigmoid, flatten, identity and linear links of a network
    with residual blocks, batch norm and pools, down to its first convolution."""
    result = step_json(cli, "custom-example", "--param", "layers.0.weight[3,0,1,1]")
    rows = [row for row in result["backward"]["chain"] if "by_hand" in row]
    rules = " ".join(row["rule"] for row in rows)
    for rule in ("p_i - y_i", "g @ ", "transposed convolution", "(1 - t^2)", "s * (1 - s)", "else slope", "else 0)",
                 "reshaped", "passes unchanged"):
        assert rule in rules, rule
    assert all(row["max_abs_diff"] < TOL for row in rows)
    assert any("autograd_only" in row for row in result["backward"]["chain"])  # a residual sum breaks the chain
    assert abs(result["backward"]["param"]["difference"]) < TOL


def test_label_smoothing_changes_the_target_and_the_gradient(cli):
    result = step_json(cli, "backprop-tiny", "--set", "train.label_smoothing=0.3")
    label = result["input"]["label"]["index"]
    assert result["output"]["target"] == pytest.approx([0.1 + (0.7 if i == label else 0) for i in range(3)])
    net, x, y = rebuilt(result, tiny_layers())
    check_worked(result, autograd_of(net, x, y, label_smoothing=0.3))


# ---------------------------------------------------------------- updates

REFERENCE = {  # the torch.optim class each registry name builds, with the config keys passed by hand
    "sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                         weight_decay=c.weight_decay),
    "adagrad": lambda ps, c: torch.optim.Adagrad(ps, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay),
    "rmsprop": lambda ps, c: torch.optim.RMSprop(ps, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum,
                                                 weight_decay=c.weight_decay),
    "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay),
    "adamw": lambda ps, c: torch.optim.AdamW(ps, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay),
}
CASES = [
    ["optimizer.name=sgd"],
    ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"],
    ["optimizer.name=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
    ["optimizer.name=adagrad", "optimizer.weight_decay=0.01"],
    ["optimizer.name=rmsprop", "optimizer.momentum=0"],
    ["optimizer.name=rmsprop", "optimizer.momentum=0.9", "optimizer.weight_decay=0.01"],
    ["optimizer.name=adam", "optimizer.weight_decay=0.01"],
    ["optimizer.name=adamw", "optimizer.weight_decay=0.1"],
]


def test_every_optimizer_has_an_update_rule_and_a_case_here():
    assert set(UPDATES.names()) == set(OPTIMIZERS.names()) == set(REFERENCE)
    assert {case[0].partition("=")[2] for case in CASES} == set(OPTIMIZERS.names())
    assert "cross_entropy" in LOSSES


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(c.partition("=")[2] for c in case))
def test_the_printed_update_is_torch_optims_step(cli, case, steps):
    overrides = [*case, "optimizer.lr=0.05"]
    result = step_json(cli, "backprop-tiny", "--steps", str(steps), *(a for o in overrides for a in ("--set", o)))
    net, x, y = rebuilt(result, tiny_layers())
    config = load_config("backprop-tiny", overrides)[0].optimizer
    optimizer = REFERENCE[case[0].partition("=")[2]](net.parameters(), config)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    update = result["update"]
    params = {f"layers.{name}": p.detach() for name, p in net.named_parameters()}
    worked = result["backward"]["param"]
    assert abs(update["new_value"] - float(params[worked["param"]][tuple(worked["index"])])) < TOL
    assert abs(update["by_formula"] - update["new_value"]) < TOL
    for line in update["lines"]:  # the state the formula carries is torch's state after the step
        if "state" in line:
            assert math.isclose(line["value"], line["torch"], rel_tol=1e-5, abs_tol=1e-12), line
    assert len(update["history"]) == steps
    for p in result["network"]:
        printed = torch.tensor(p["after"], dtype=torch.float64)
        assert torch.allclose(printed, params[p["param"]].double(), atol=TOL), p["param"]


def test_gradient_clipping_is_applied_before_the_update(cli):
    result = step_json(cli, "backprop-tiny", "--set", "train.grad_clip=0.01")
    net, x, y = rebuilt(result, tiny_layers())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    nn.functional.cross_entropy(net(x), y).backward()
    nn.utils.clip_grad_norm_(net.parameters(), 0.01)
    optimizer.step()
    update, worked = result["update"], result["backward"]["param"]
    clip = update["history"][0]["clip"]
    assert clip["max_norm"] == 0.01 and clip["scale"] < 1
    assert abs(update["g"] - worked["autograd"] * clip["scale"]) < 1e-9
    stepped = dict(net.named_parameters())["3.weight"].detach()
    assert abs(update["new_value"] - float(stepped[tuple(worked["index"])])) < TOL


# ---------------------------------------------------------------- checkpoints, text, state


def test_a_checkpoints_step_continues_its_optimizer_state(cli, tmp_path):
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.run import assemble

    saved = rng_state()
    config, _ = load_config("backprop-tiny", ["optimizer.momentum=0.9"])
    parts = assemble(config, dist=DistContext(), device="cpu")
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])
    for _ in range(2):  # momentum buffers that are not the next gradient
        parts.optimizer.zero_grad()
        nn.functional.cross_entropy(parts.model(x), y).backward()
        parts.optimizer.step()
    set_rng_state(saved)
    data = parts.data
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"format": FORMAT, "config": config.dump(), "classes": data.classes,
                           "input": {"channels": 1, "size": [2, 2], "mean": data.mean, "std": data.std},
                           "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict()})

    result = step_json(cli, str(path.parent))  # a run directory: its last.pt
    worked = result["backward"]["param"]
    weight = parts.model.get_parameter(worked["param"])
    index = tuple(worked["index"])
    assert worked["value"] == float(weight.detach()[index])
    buffer = parts.optimizer.state[weight]["momentum_buffer"]
    assert result["update"]["history"][0]["before"]["momentum_buffer"] == float(buffer[index])
    assert "momentum*b + g" in [line["formula"] for line in result["update"]["lines"]]

    fresh = step_json(cli, str(path), "--set", "optimizer.momentum=0.5")
    assert "momentum_buffer" not in fresh["update"]["history"][0]["before"]
    assert any("fresh" in note for note in fresh["notes"])
    r = cli("step", str(path), "--set", "data.batch_size=4")
    assert r.exit_code == 2 and "data.batch_size" in r.stderr and "network and data are fixed" in r.stderr


def test_the_text_shows_the_arithmetic_and_every_weight_of_the_tiny_network(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = step_json(cli, "backprop-tiny")
    r = cli("step", "backprop-tiny")
    assert r.exit_code == 0 and r.stderr == ""
    text = r.stdout
    for part in ("forward (the network in training mode", "dL/dz_i = p_i - y_i", "by hand through layers.3",
                 "g * s * (1 - s)", "w_new = w - lr*g", f"optimizer.step() gave {result['update']['new_value']:.6g}",
                 "every weight", "layers.1.weight (2x4)", "layers.3.bias (3)"):
        assert part in text, part
    assert list(tmp_path.iterdir()) == []  # a step writes nothing


def test_a_step_leaves_the_callers_random_state_alone():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    run_step("backprop-tiny")
    assert torch.equal(torch.get_rng_state(), before)


def test_an_image_file_is_read_as_predict_reads_it(cli, tmp_path):
    from PIL import Image

    Image.new("L", (6, 6), 51).save(tmp_path / "grey.png")
    result = step_json(cli, "backprop-tiny", "--image", str(tmp_path / "grey.png"), "--label", "2")
    assert result["input"]["from"] == str(tmp_path / "grey.png")
    assert result["input"]["values"] == pytest.approx([0.2] * 4)  # 51/255, mean 0, std 1
    assert result["input"]["label"] == {"class": "2", "index": 2}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, said", [
    (["--param", "nope.weight"], ["unknown parameter 'nope.weight'", "layers.1.weight [2x4]", "layers.3.bias [3]"]),
    (["--param", "layers.3.weight[3,0]"], ["outside layers.3.weight", "3x2", "0..2, 0..1"]),
    (["--param", "layers.3.weight[0]"], ["2 dimension(s)", "layers.3.weight[0,0]"]),
    (["--param", "layers.3.weight[0,"], ["is not LAYER.weight[I,J,...]"]),
    (["--param", "layers.3.weight[x,1]"], ["is not LAYER.weight[I,J,...]"]),
    (["--label", "7"], ["--label '7' is not one of the classes", "0..2", "0, 1, 2"]),
    (["--image", "some.png"], ["--image needs --label"]),
    (["--image", "missing.png", "--label", "1"], ["missing.png: no such image file"]),
    (["--set", TINY_CONV.replace("sigmoid", "batchnorm, sigmoid"), "--param", "layers.1.weight[0]"],
     ["a BatchNorm2d parameter", "linear and conv layers", "layers.0.weight [1x1x2x2]"]),
    (["--set", "model.layers=[flatten, {linear: 2}, batchnorm, linear]"], ["a batchnorm on a vector"]),
])
def test_bad_input_is_exit_2_naming_the_valid_ones(cli, tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)
    r = cli("step", "backprop-tiny", *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr and r.stdout == ""
    for part in said:
        assert part in r.stderr, part
    assert list(tmp_path.iterdir()) == []


def test_steps_out_of_range_is_refused_by_the_command_line(cli):
    r = cli("step", "backprop-tiny", "--steps", "0")
    assert r.exit_code == 2 and "--steps" in r.output
