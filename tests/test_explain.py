"""The arithmetic of one prediction (safe softmax, cross-entropy) and the attribution maps (Captum)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnctl.explain import confident_mistakes, confused_pairs, explain_logits, softmax_steps


def test_softmax_steps_match_torch_and_survive_huge_logits():
    logits = [2.0, -1.0, 0.5, 3.0]
    steps = softmax_steps(logits)
    expected = torch.tensor(logits, dtype=torch.float64).softmax(0)
    assert steps["probs"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert steps["max_logit"] == 3.0 and max(steps["shifted"]) == 0.0
    assert steps["sum_exp"] >= 1.0

    huge = [1000.0, 999.0, 0.0]
    with np.errstate(over="ignore", invalid="ignore"):  # the naive way overflows to inf / inf = nan
        naive = np.exp(np.array(huge)) / np.exp(np.array(huge)).sum()
    assert np.isnan(naive).any()
    steps = softmax_steps(huge)
    assert all(math.isfinite(p) for p in steps["probs"])
    assert steps["probs"][0] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)


def test_cross_entropy_equals_torch_and_minus_log_p():
    logits = torch.tensor([[1.5, -0.3, 0.2, 2.2, 0.0]], dtype=torch.float64)
    classes = list("abcde")
    for label in range(5):
        out = explain_logits(logits[0], classes, label)
        reference = nn.functional.cross_entropy(logits, torch.tensor([label])).item()
        assert out["loss"] == pytest.approx(reference, rel=1e-12)
        assert out["loss"] == pytest.approx(-math.log(out["probs"][label]), rel=1e-12)
        assert out["uniform_loss"] == pytest.approx(math.log(5))
    # a confident wrong answer: p(label) underflows to 0 in float64, the loss stays exact
    out = explain_logits([1000.0, -1000.0], ["x", "y"], 1)
    assert out["probs"][1] == 0.0 and out["loss"] == pytest.approx(2000.0)


def test_confident_mistakes_and_confused_pairs():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    found = confident_mistakes(probs, labels, limit=2)
    assert [m["index"] for m in found] == [4, 1]  # wrong, most confident first
    assert found[0]["pred"] == 0 and found[0]["true"] == 1 and found[0]["prob"] == pytest.approx(0.95)
    assert all(m["pred"] != m["true"] for m in confident_mistakes(probs, labels))
    pairs = confused_pairs([[5, 1, 0], [4, 2, 2], [0, 0, 7]], ["a", "b", "c"], limit=2)
    assert pairs == [{"true": "b", "pred": "a", "count": 4}, {"true": "b", "pred": "c", "count": 2}]


class Corner(nn.Module):
    """Class 1's logit is the mean brightness of the top-left 4x4 corner, through a conv; class 0 is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = self.relu(self.conv(x))[:, :, :4, :4].mean((1, 2, 3))
        return torch.stack([torch.full_like(corner, 0.5), 10 * corner], 1)


def test_attribution_finds_the_evidence_in_its_corner():
    pytest.importorskip("captum")
    from cnnctl.attribution import attribution_maps, peak

    x = torch.zeros(1, 1, 16, 16)
    x[:, :, :4, :4] = 1.0
    result = attribution_maps(Corner(), x, target=1, grey=0.0, patch=4)
    assert result["layer"] == "conv"
    for method in ("gradcam", "occlusion", "saliency"):
        heat = result["maps"][method]
        assert heat.shape == (16, 16)
        r, c = peak(heat)
        assert r < 5 and c < 5, (method, r, c)
    # away from the corner (and the conv's reach) nothing matters
    assert np.abs(result["maps"]["occlusion"][8:, 8:]).max() == 0.0


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "custom"])
def test_attribution_on_zoo_and_custom_networks(arch, tmp_path):
    pytest.importorskip("captum")
    from cnnctl.attribution import attribution_maps, plot_attribution
    from cnnctl.config import ModelConfig
    from cnnctl.models.registry import create_model

    layers = [{"conv": {"out": 4, "kernel": 3, "padding": 1}}, "relu",
              {"residual": [{"conv": {"out": 4, "kernel": 3, "padding": 1}}, "relu"]}, {"maxpool": 2}]
    cfg = ModelConfig(arch=arch, layers=[*layers, "flatten", "linear"] if arch == "custom" else [])
    torch.manual_seed(0)
    model = create_model(cfg, in_channels=1, image_size=(16, 16), num_classes=3).eval()
    x = torch.randn(1, 1, 16, 16)
    result = attribution_maps(model, x, target=2)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    # the last conv stage: a ResNet's last layerN, otherwise the last convolution
    assert result["layer"] == ("layer3" if arch == "resnet20" else convs[-1])
    for method, heat in result["maps"].items():
        assert heat.shape == (16, 16) and np.isfinite(heat).all()
        out = plot_attribution(np.clip(x[0, 0].numpy() * 0.2 + 0.5, 0, 1), heat, method, "c", tmp_path / f"{method}.png",
                               layer=result["layer"])
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_layer_is_named_with_a_suggestion():
    pytest.importorskip("captum")
    from cnnctl.attribution import find_layer
    from cnnctl.errors import UsageError

    with pytest.raises(UsageError, match=r"--layer 'convv'.*did you mean 'conv'"):
        find_layer(Corner(), torch.zeros(1, 1, 8, 8), "convv")
