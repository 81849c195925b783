"""The bundled experiments: each config describes itself, builds, and differs from its partners only where meant."""

from __future__ import annotations

import pytest
import torch

from cnnctl.config import CONFIGS_DIR, bundled_configs, load_config, read_yaml, resolve_config_path
from cnnctl.models.registry import create_model

EXPERIMENTS = sorted(n for n in bundled_configs() if n.split("/")[0] in
                     ("compare-activations", "compare-depth", "compare-dropout", "compare-dnn-cnn",
                      "compare-loss"))


def test_the_experiments_are_bundled():
    assert {"compare-activations/sigmoid", "compare-activations/tanh", "compare-activations/relu",
            "compare-activations/leaky_relu", "compare-depth/plain-20", "compare-depth/resnet-20",
            "compare-depth/plain-56", "compare-depth/resnet-56", "compare-dropout/no-dropout",
            "compare-dropout/dropout", "compare-dnn-cnn/mlp", "compare-dnn-cnn/cnn",
            "compare-loss/cross_entropy", "compare-loss/mse"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_describes_itself_and_builds(name):
    first = (CONFIGS_DIR / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20
    cfg, _ = load_config(name)
    model = create_model(cfg.model, in_channels=1, image_size=(16, 16), num_classes=10)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def _layers(name: str) -> list:
    """The layer list as the file writes it (``relu``, ``{conv: {...}}``); load_config types each layer."""
    return read_yaml(resolve_config_path(name))["model"]["layers"]


def test_the_activation_runs_differ_only_in_the_activation():
    nets = {a: _layers(f"compare-activations/{a}") for a in ("sigmoid", "tanh", "relu", "leaky_relu")}
    for act, layers in nets.items():
        assert [x if x != act else "ACT" for x in layers] == [x if x != "sigmoid" else "ACT" for x in nets["sigmoid"]]
    assert sum(isinstance(x, dict) and "conv" in x for x in nets["relu"]) == 9


def test_the_residual_nets_are_the_plain_nets_with_shortcuts():
    def unwrap(layers: list) -> list:
        out = []
        for x in layers:
            out += x["residual"] + ["relu"] if isinstance(x, dict) and "residual" in x else [x]
        return [x for i, x in enumerate(out) if not (x == "relu" and i and out[i - 1] == "relu")]

    for depth in (8, 20, 56):
        plain, res = _layers(f"compare-depth/plain-{depth}"), _layers(f"compare-depth/resnet-{depth}")
        assert unwrap(res) == plain
        convs = sum(isinstance(x, dict) and "conv" in x for x in plain)
        assert convs + 1 == depth  # the classifier is the last weighted layer


def test_the_dropout_runs_differ_only_in_dropout():
    plain, dropped = _layers("compare-dropout/no-dropout"), _layers("compare-dropout/dropout")
    assert [x for x in dropped if not (isinstance(x, dict) and "dropout" in x)] == plain
    assert len(dropped) - len(plain) == 3


def test_the_dnn_and_cnn_runs_differ_only_in_the_network():
    mlp, cnn = (read_yaml(resolve_config_path(f"compare-dnn-cnn/{n}")) for n in ("mlp", "cnn"))
    assert {k: v for k, v in mlp.items() if k not in ("name", "model")} == \
           {k: v for k, v in cnn.items() if k not in ("name", "model")}
    assert not any(isinstance(x, dict) and ("conv" in x or "dropout" in x) for x in mlp["model"]["layers"])
    assert sum(isinstance(x, dict) and "conv" in x for x in cnn["model"]["layers"]) == 2


def test_the_loss_runs_differ_only_in_the_loss():
    ce, mse = (read_yaml(resolve_config_path(f"compare-loss/{n}")) for n in ("cross_entropy", "mse"))
    assert (ce["train"].pop("loss"), mse["train"].pop("loss")) == ("cross_entropy", "mse")
    assert {k: v for k, v in ce.items() if k != "name"} == {k: v for k, v in mse.items() if k != "name"}
    assert (load_config("compare-loss/cross_entropy")[0].train.loss, load_config("compare-loss/mse")[0].train.loss) \
        == ("cross_entropy", "mse")
