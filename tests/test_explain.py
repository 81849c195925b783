"""The arithmetic of one prediction (safe softmax, cross-entropy) and the attribution maps (Captum)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnctl.insight.explain import confident_mistakes, confused_pairs, explain_logits, softmax_steps


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
    from cnnctl.insight.attribution import attribution_maps, peak

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
    from cnnctl.config import ModelConfig
    from cnnctl.insight.attribution import attribution_maps, plot_attribution
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
    from cnnctl.errors import UsageError
    from cnnctl.insight.attribution import find_layer

    with pytest.raises(UsageError, match=r"--layer 'convv'.*did you mean 'conv'"):
        find_layer(Corner(), torch.zeros(1, 1, 8, 8), "convv")


# ---------------------------------------------------------------- predict --explain through the CLI


def _checkpoint(path, *, scale: float = 1.0, classes: int = 10, names: list[str] | None = None) -> dict:
    """A custom flatten + linear network on 8x8 grayscale digits, its weights scaled by ``scale`` (big logits)."""
    from cnnctl import __version__
    from cnnctl.config import validate_config
    from cnnctl.models.registry import create_model
    from cnnctl.training.checkpoint import FORMAT, save_checkpoint

    cfg = validate_config({"name": "lin", "data": {"dataset": "digits"},
                           "model": {"arch": "custom", "layers": ["flatten", "linear"]}}, "lin.yaml")
    torch.manual_seed(0)
    model = create_model(cfg.model, in_channels=1, image_size=(8, 8), num_classes=classes)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    ckpt = {"format": FORMAT, "cnnctl_version": __version__, "config": cfg.dump(),
            "classes": names or [f"c{i}" for i in range(classes)],
            "input": {"channels": 1, "size": [8, 8], "mean": [0.3], "std": [0.4]}, "model": model.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, ckpt)
    return ckpt


def _image(path, seed: int = 0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(path)
    return path


def test_predict_explain_json_logits_softmax_and_loss(cli, tmp_path):
    import json

    ckpt = tmp_path / "best.pt"
    _checkpoint(ckpt)
    img = _image(tmp_path / "x.png")
    result = cli("predict", img, "-c", ckpt, "--explain", "--label", "c3", "--json", "--topk", "10")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    ex = entry["explain"]
    softmax = torch.tensor(ex["logits"], dtype=torch.float64).softmax(0)
    shown = {t["index"]: t["prob"] for t in entry["topk"]}
    assert len(shown) == 10
    for i, p in shown.items():
        assert p == pytest.approx(float(softmax[i]), abs=1e-6)
        assert ex["probs"][i] == pytest.approx(float(softmax[i]), abs=1e-12)
    assert ex["loss"] == pytest.approx(-math.log(ex["probs"][3]), rel=1e-9)
    assert ex["label"] == {"class": "c3", "index": 3}
    assert ex["uniform_loss"] == pytest.approx(math.log(10))
    assert "resized to 8x8" in ex["preprocessing"] and "std [0.4]" in ex["preprocessing"]
    p = torch.tensor(ex["probs"], dtype=torch.float64)
    assert ex["entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-9)
    assert 0 < ex["entropy"] < math.log(10)
    # cross-entropy = entropy of the target + KL divergence: a one-hot target has none, the loss is all KL
    info = ex["information"]
    assert info["target_entropy"] == 0.0
    assert info["kl_divergence"] == pytest.approx(float(torch.nn.functional.kl_div(
        p.log()[None], torch.nn.functional.one_hot(torch.tensor([3]), 10).double(), reduction="sum")), rel=1e-9)
    assert info["cross_entropy"] == pytest.approx(info["target_entropy"] + info["kl_divergence"], rel=1e-12)
    assert info["cross_entropy"] == pytest.approx(ex["loss"], rel=1e-12)


def test_predict_explain_survives_logits_a_naive_exp_overflows(cli, tmp_path):
    import json

    ckpt = tmp_path / "best.pt"
    _checkpoint(ckpt, scale=5000.0)
    img = _image(tmp_path / "x.png")
    result = cli("predict", img, "-c", ckpt, "--explain", "--json", "--label", "c0")
    assert result.exit_code == 0, result.output
    ex = json.loads(result.stdout)[0]["explain"]
    assert max(abs(z) for z in ex["logits"]) > 1000  # exp() of these overflows a float64
    assert all(math.isfinite(p) for p in ex["probs"]) and sum(ex["probs"]) == pytest.approx(1.0)
    z = torch.tensor(ex["logits"], dtype=torch.float64)
    assert ex["loss"] == pytest.approx(float(torch.logsumexp(z, 0) - z[0]), rel=1e-9)


def test_predict_explain_text_and_labels_from_folders(cli, tmp_path):
    ckpt = tmp_path / "best.pt"
    _checkpoint(ckpt)
    _image(tmp_path / "imgs" / "c2" / "a.png")
    _image(tmp_path / "imgs" / "other" / "b.png", seed=1)
    result = cli("predict", tmp_path / "imgs", "-c", ckpt, "--explain", "--labels-from-folders")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "cross-entropy loss for true class 'c2'" in text and "ln 10 = 2.3026" in text
    assert "entropy of the prediction H(p) = -sum p log p = " in text
    assert "cross-entropy H(y, p) = H(y) + KL(y || p) = 0.0000 + " in text
    assert "subtract the largest logit" in text
    assert "folder 'other' is not one of the classes" in text


def test_predict_label_errors(cli, tmp_path):
    ckpt = tmp_path / "best.pt"
    _checkpoint(ckpt)
    img = _image(tmp_path / "x.png")
    result = cli("predict", img, "-c", ckpt, "--explain", "--label", "c33")
    assert result.exit_code == 2 and "--label 'c33' is not one of the checkpoint's classes" in result.stderr
    result = cli("predict", img, "-c", ckpt, "--label", "c3")
    assert result.exit_code == 2 and "add --explain" in result.stderr


@pytest.mark.parametrize("model", [
    {"arch": "lenet5"},
    {"arch": "resnet20"},
    {"arch": "custom", "layers": [{"conv": {"out": 4, "kernel": 3, "padding": 1}}, "relu", {"maxpool": 2}, "flatten",
                                  "linear"]},
])
def test_visualize_image_writes_the_three_attribution_maps(cli, tmp_path, model):
    from cnnctl import __version__
    from cnnctl.config import validate_config
    from cnnctl.models.registry import create_model
    from cnnctl.training.checkpoint import FORMAT, save_checkpoint

    cfg = validate_config({"name": "m", "data": {"dataset": "fake", "num_classes": 3, "channels": 3, "image_size": 16},
                           "model": model}, "m.yaml")
    torch.manual_seed(0)
    net = create_model(cfg.model, in_channels=3, image_size=(16, 16), num_classes=3)
    save_checkpoint(tmp_path / "best.pt", {
        "format": FORMAT, "cnnctl_version": __version__, "config": cfg.dump(), "classes": ["a", "b", "c"],
        "input": {"channels": 3, "size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}, "model": net.state_dict()})
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(tmp_path / "i.png")
    result = cli("visualize", tmp_path / "best.pt", "--image", tmp_path / "i.png", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for name in ("gradcam.png", "occlusion.png", "saliency.png"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.size == (900, 420)
    bad = cli("visualize", tmp_path / "best.pt", "--image", tmp_path / "i.png", "-o", tmp_path / "out", "--layer", "nope")
    assert bad.exit_code == 2 and "--layer 'nope': no such layer" in bad.stderr


def test_eval_plots_mistakes_are_really_misclassified(cli, tmp_path):
    import json

    from PIL import Image

    from cnnctl.data.base import load_data, to_model_input
    from cnnctl.inference.evaluate import checkpoint_config, model_from_checkpoint, split_images
    from cnnctl.training.checkpoint import load_checkpoint

    ckpt_path = tmp_path / "best.pt"
    _checkpoint(ckpt_path, names=[str(i) for i in range(10)])  # digits' classes; untrained: most images are wrong
    result = cli("eval", ckpt_path, "--json", "--plots", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    mistakes = report["mistakes"]
    assert len(mistakes) == 32
    probs = [m["prob"] for m in mistakes]
    assert probs == sorted(probs, reverse=True)
    with Image.open(tmp_path / "plots" / "mistakes.png") as im:
        assert im.format == "PNG"
    assert str(tmp_path / "plots" / "mistakes.png") in result.stderr
    # each listed image, run through the network again, is predicted as listed and is not its true class
    ckpt = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, "best.pt")
    model = model_from_checkpoint(ckpt, "best.pt", torch.device("cpu"))
    test = load_data(cfg.data, cfg.seed).test
    images = split_images(test, [m["index"] for m in mistakes], 1, (8, 8))
    spec = ckpt["input"]
    with torch.no_grad():
        p = model(to_model_input(images, spec["mean"], spec["std"], torch.device("cpu"))).softmax(1)
    for m, row in zip(mistakes, p, strict=True):
        assert ckpt["classes"][int(row.argmax())] == m["pred"] != m["true"]
        assert ckpt["classes"][int(test.labels[m["index"]])] == m["true"]
        assert float(row.max()) == pytest.approx(m["prob"], abs=1e-5)
    # the confused pairs are the largest off-diagonal cells, and the text report lists them
    cm = report["confusion_matrix"]
    top = max(cm[t][q] for t in range(10) for q in range(10) if t != q)
    assert report["confused_pairs"][0]["count"] == top
    text = cli("eval", ckpt_path)
    assert "most confused (true -> predicted: images)" in text.stdout
