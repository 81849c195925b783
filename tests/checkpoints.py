"""Hand-made checkpoints (no training): linear digits classifiers whose weights a test knows, so what ``cnnctl eval``
and ``cnnctl predict`` report can be computed here in float64, apart from the code under test. The ``members``
fixture in conftest.py holds two of them."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnctl import __version__
from cnnctl.config import Config
from cnnctl.training.checkpoint import FORMAT, save_checkpoint

CLASSES = [str(i) for i in range(10)]
MEAN, STD = [0.25], [0.5]


def digits_split(part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits split a checkpoint of ``data: {dataset: digits}, seed: 0`` is evaluated on."""
    from cnnctl.data.base import load_data

    bundle = load_data(Config.model_validate({"data": {"dataset": "digits"}}).data, 0)
    split = getattr(bundle, part)
    return split.images, split.labels


def features(images: torch.Tensor) -> torch.Tensor:
    """What a flatten + linear network sees, in float64: (x / 255 - mean) / std, flattened."""
    return ((images.double() / 255 - MEAN[0]) / STD[0]).flatten(1)


def linear_checkpoint(path: Path, weight: torch.Tensor, bias: torch.Tensor, *, classes: list[str] = CLASSES,
                      data: dict | None = None, channels: int = 1, side: int = 8) -> Path:
    """A checkpoint of a custom [flatten, linear] network whose weights are the ones given."""
    from cnnctl.models.registry import create_model

    cfg = Config.model_validate({"name": path.stem, "seed": 0, "data": data or {"dataset": "digits"},
                                 "model": {"arch": "custom", "layers": ["flatten", "linear"]}})
    model = create_model(cfg.model, in_channels=channels, image_size=(side, side), num_classes=len(classes))
    [linear] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    ckpt = {"format": FORMAT, "cnnctl_version": __version__, "config": cfg.dump(), "classes": list(classes),
            "input": {"channels": channels, "size": [side, side], "mean": MEAN * channels, "std": STD * channels},
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}, "epoch": 1, "step": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, ckpt)
    return path


def make_members(tmp: Path) -> list[tuple[Path, torch.Tensor, torch.Tensor]]:
    """Two digits classifiers: a least-squares fit on the train split (good) and a random one (poor but confident)."""
    x, y = digits_split("train")
    design = torch.cat([features(x), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    target = torch.nn.functional.one_hot(y, 10).double() * 6 - 3
    solution = torch.linalg.lstsq(design, target, driver="gelsd").solution
    good_w, good_b = solution[:-1].T.float(), solution[-1].float()
    g = torch.Generator().manual_seed(5)
    poor_w, poor_b = torch.randn(10, 64, generator=g) * 0.6, torch.randn(10, generator=g)
    return [(linear_checkpoint(tmp / "good.pt", good_w, good_b), good_w, good_b),
            (linear_checkpoint(tmp / "poor.pt", poor_w, poor_b), poor_w, poor_b)]


def softmax64(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (features(images) @ weight.double().T + bias.double()).softmax(1)
