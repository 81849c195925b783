"""train.loss: cross-entropy or the squared error of the softmax, trained, evaluated and resumed like any key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnctl.training.checkpoint import load_checkpoint
from cnnctl.training.losses import SoftmaxMSELoss, create_loss, loss_sum, smoothed_one_hot
from tests.conftest import write_config
from tests.test_resume import max_difference, metrics_without_time

MSE = """\
seed: 1
data: {dataset: digits, batch_size: 64}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 2, loss: mse, early_stopping: null}
"""


def test_mse_is_the_squared_error_of_the_softmax_summed_over_classes():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    t = torch.tensor([0, 1])
    p = torch.softmax(z, 1)
    by_hand = ((p[0, 0] - 1) ** 2 + p[0, 1] ** 2 + p[0, 2] ** 2 + p[1, 0] ** 2 + (p[1, 1] - 1) ** 2 + p[1, 2] ** 2) / 2
    assert float(SoftmaxMSELoss()(z, t)) == pytest.approx(float(by_hand), abs=1e-7)
    assert float(create_loss("mse", reduction="sum")(z, t)) == pytest.approx(2 * float(by_hand), abs=1e-6)
    assert float(loss_sum("mse", z, t)) == pytest.approx(2 * float(by_hand), abs=1e-6)  # what val_loss sums
    assert float(loss_sum("cross_entropy", z, t)) == pytest.approx(
        float(create_loss("cross_entropy", reduction="sum")(z, t)), abs=1e-6)


def test_mse_gradient_at_the_logits_carries_the_softmax_factor():
    """dL/dz_j = 2 p_j ((p_j - y_j) - sum_i p_i (p_i - y_i)) per image (before the batch mean): it vanishes where the
    softmax saturates on a wrong class, where cross-entropy's p - y does not."""
    z = torch.tensor([[8.0, -4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1])
    create_loss("mse")(z, t).backward()
    p = torch.softmax(z.detach(), 1)[0]
    y = smoothed_one_hot(t, 3)[0].double()
    formula = 2 * p * ((p - y) - (p * (p - y)).sum())
    # float32 inside the loss, as in training
    assert torch.allclose(z.grad[0], formula, atol=1e-6)
    ce = torch.softmax(z.detach(), 1)[0] - y
    assert z.grad.abs().max() < 0.01 < ce.abs().max()


def test_label_smoothing_smooths_the_mse_target_too():
    z, t = torch.zeros(1, 4), torch.tensor([2])
    y = smoothed_one_hot(t, 4, 0.2)
    assert y.tolist() == [[pytest.approx(0.05), pytest.approx(0.05), pytest.approx(0.85), pytest.approx(0.05)]]
    assert float(create_loss("mse", 0.2)(z, t)) == pytest.approx(float(((0.25 - y) ** 2).sum()), abs=1e-7)


def test_an_unknown_loss_is_refused_naming_the_known_ones(cli, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", MSE.replace("loss: mse", "loss: hinge"))
    result = cli("summary", cfg)
    assert result.exit_code == 2
    assert "train.loss" in result.stderr and "'cross_entropy'" in result.stderr and "'mse'" in result.stderr
    assert "Traceback" not in result.output


def test_mse_trains_reports_its_own_val_loss_and_resumes_bit_exact(cli, tmp_path):
    cfg = write_config(tmp_path / "mse.yaml", MSE)
    ref = cli("train", cfg, "--out", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    ref_dir = Path(ref.stdout.strip())
    rows = metrics_without_time(ref_dir)
    # the squared error of a probability vector lies in [0, 2]; cross-entropy at this accuracy would be larger
    assert all(0 <= float(r["val_loss"]) <= 2 for r in rows)
    assert float(rows[-1]["val_acc"]) > 0.5
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert 0 <= summary["test"]["loss"] <= 2

    short = cli("train", cfg, "--out", tmp_path / "cut", "--set", "train.epochs=1")
    assert short.exit_code == 0, short.output
    resumed = cli("train", "--resume", Path(short.stdout.strip()), "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    run_dir = Path(resumed.stdout.strip())
    assert max_difference(load_checkpoint(run_dir / "last.pt"), load_checkpoint(ref_dir / "last.pt")) == 0.0
    assert metrics_without_time(run_dir) == rows


def test_resume_refuses_a_change_of_loss(cli, tmp_path):
    cfg = write_config(tmp_path / "mse.yaml", MSE.replace("epochs: 2", "epochs: 1"))
    first = cli("train", cfg, "--out", tmp_path / "o")
    assert first.exit_code == 0, first.output
    run_dir = Path(first.stdout.strip())
    before = (run_dir / "last.pt").read_bytes()
    result = cli("train", "--resume", run_dir, "--set", "train.loss=cross_entropy", "--set", "train.epochs=2")
    assert result.exit_code == 2
    assert "train.loss" in result.stderr
    assert (run_dir / "last.pt").read_bytes() == before


def test_step_shows_the_mse_gradient_at_the_logits_as_autograd_computes_it(cli):
    result = cli("step", "backprop-tiny", "--set", "train.loss=mse", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["output"]
    assert out["loss"]["name"] == "mse"
    assert abs(out["loss"]["difference"]) < 1e-6
    hand, auto = out["gradient"]["by_hand"], out["gradient"]["autograd"]
    assert max(abs(a - b) for a, b in zip(hand, auto, strict=True)) < 1e-6
    p, y = out["softmax"]["probs"], out["target"]
    assert out["loss"]["by_hand"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, y, strict=True)), abs=1e-12)


def test_summary_explains_the_configured_loss(cli):
    mse = cli("summary", "lenet5-digits", "--explain", "--set", "train.loss=mse", "--json")
    assert mse.exit_code == 0, mse.output
    loss = json.loads(mse.stdout)["training"]["loss"]
    assert loss["name"] == "mse" and loss["initial_loss"] == pytest.approx(0.9)
    text = cli("summary", "lenet5-digits", "--explain", "--set", "train.loss=mse").stdout
    assert "mean squared error of the softmax" in text and "1 - 1/10 = 0.900" in text
    ce = json.loads(cli("summary", "lenet5-digits", "--explain", "--json").stdout)["training"]["loss"]
    assert ce["name"] == "cross_entropy" and ce["initial_loss"] == pytest.approx(2.302585, abs=1e-6)
