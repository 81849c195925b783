"""The gradient recorder and activation statistics against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cnnctl.training.recorder_plots import plot_activations, plot_gradients
from cnnctl.training.recorders import (
    GradientRecorder,
    activation_stats,
    gradient_summary,
    layers_with_params,
    read_gradients,
    tensorboard_scalars,
)


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(),
                         nn.Linear(5, 2))


def data(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 2, (n,), generator=g)


def train_steps(model: nn.Module, recorder: GradientRecorder | None, steps: int, lr: float,
                start: int = 0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(start, steps):
        x, y = data(seed=step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if recorder is not None:
            recorder.before_optimizer_step(step)
        opt.step()
        if recorder is not None:
            recorder.after_optimizer_step(step)


def test_recorder_matches_autograd_with_plain_sgd():
    lr, steps = 0.1, 5
    model = tiny_net()
    reference = copy.deepcopy(model)
    recorder = GradientRecorder(model, every_n_steps=2)  # steps 0, 2 and 4 are sampled
    assert recorder.layer_names == ["0", "3", "5"]
    train_steps(model, recorder, steps, lr)
    rows = recorder.end_epoch(1)

    # By hand: the same steps with torch.autograd.grad; plain SGD moves each weight by exactly lr * grad.
    layers = [reference[0], reference[3], reference[5]]
    expected = {i: {"grad": [], "ratio": [], "weight": []} for i in range(3)}
    for step in range(steps):
        x, y = data(seed=step)
        params = [p for m in layers for p in (m.weight, m.bias)]
        grads = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), params)
        if step % 2 == 0:
            for i, m in enumerate(layers):
                g = torch.cat([grads[2 * i].flatten(), grads[2 * i + 1].flatten()])
                w = torch.cat([m.weight.flatten(), m.bias.flatten()]).detach()
                expected[i]["grad"].append(g.norm().item())
                expected[i]["ratio"].append((lr * g).norm().item() / w.norm().item())
                expected[i]["weight"].append(w.norm().item())
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g

    assert [r["layer"] for r in rows] == ["0", "3", "5"]
    for i, row in enumerate(rows):
        assert row["steps_sampled"] == 3
        assert row["grad_norm"] == pytest.approx(sum(expected[i]["grad"]) / 3, rel=1e-5)
        assert row["update_ratio"] == pytest.approx(sum(expected[i]["ratio"]) / 3, rel=1e-4)
        assert row["weight_norm"] == pytest.approx(sum(expected[i]["weight"]) / 3, rel=1e-5)


def test_frozen_and_gradless_layers():
    model = tiny_net()
    model[0].requires_grad_(False)  # frozen: not a layer the recorder follows
    recorder = GradientRecorder(model, every_n_steps=1)
    assert recorder.layer_names == ["3", "5"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()
    model[3].weight.grad = model[3].bias.grad = None  # a layer without gradient this step
    recorder.before_optimizer_step(0)
    opt.step()
    recorder.after_optimizer_step(0)
    rows = {r["layer"]: r for r in recorder.end_epoch(1)}
    assert rows["3"]["steps_sampled"] == 0 and rows["3"]["grad_norm"] is None
    assert rows["5"]["steps_sampled"] == 1 and rows["5"]["grad_norm"] > 0


def test_state_dict_round_trip_gives_the_same_epoch():
    lr = 0.05
    whole, first = tiny_net(), tiny_net()
    rec_whole = GradientRecorder(whole, every_n_steps=2)
    train_steps(whole, rec_whole, 6, lr)
    expected = rec_whole.end_epoch(1)

    rec_first = GradientRecorder(first, every_n_steps=2)
    train_steps(first, rec_first, 3, lr)  # interrupted after step 2, as a mid-epoch checkpoint would be
    state = rec_first.state_dict()
    weights = copy.deepcopy(first.state_dict())
    resumed = tiny_net()
    resumed.load_state_dict(weights)
    rec_resumed = GradientRecorder(resumed, every_n_steps=2)
    rec_resumed.load_state_dict(state)
    train_steps(resumed, rec_resumed, 6, lr, start=3)
    assert rec_resumed.end_epoch(1) == expected  # bit-exact: equal floats, not approximately


def test_recorder_sees_through_wrappers_and_writes_csv(tmp_path):
    model = tiny_net()

    class Wrapped(nn.Module):  # what torch.compile puts around a module
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    recorder = GradientRecorder(Wrapped(model), every_n_steps=1)
    assert recorder.layer_names == ["0", "3", "5"]
    train_steps(model, recorder, 2, 0.1)
    recorder.end_epoch(1)
    train_steps(model, recorder, 1, 0.1)
    recorder.end_epoch(2)
    path = recorder.write_csv(tmp_path / "gradients.csv")
    assert path.read_text().splitlines()[0] == "epoch,layer,grad_norm,update_ratio,weight_norm,steps_sampled"
    assert read_gradients(path) == recorder.rows
    png = plot_gradients(recorder.rows, tmp_path / "gradients.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forward_order_from_an_example():
    class Backwards(nn.Module):  # registers fc before conv but runs conv first
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    model = Backwards()
    assert [n for n, _ in layers_with_params(model)] == ["fc", "conv"]
    assert [n for n, _ in layers_with_params(model, torch.zeros(1, 1, 4, 4))] == ["conv", "fc"]
    assert model.training


def test_dead_units_equal_the_set_that_never_fires():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 6, 3, padding=1)
    linear = nn.Linear(6 * 5 * 5, 8)
    dead_channels, dead_features = [1, 4], [0, 3, 7]
    with torch.no_grad():
        conv.weight.clamp_(-0.1, 0.1)  # |pre-activation| <= 18 * 0.1 * max|x| < 100 for inputs in [-5, 5]
        conv.bias[dead_channels] = -100.0
        linear.bias[dead_features] = -1e4
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear, nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(16, 2, 5, 5, generator=g) * 10 - 5, torch.zeros(16)) for _ in range(4)]
    rows = {r["layer"]: r for r in activation_stats(model, batches)}
    assert rows["1"]["units"] == 6 and rows["1"]["dead"] == len(dead_channels)
    assert rows["1"]["dead_fraction"] == len(dead_channels) / 6
    assert rows["4"]["units"] == 8 and rows["4"]["dead"] == len(dead_features)
    assert rows["4"]["dead_fraction"] == len(dead_features) / 8
    assert rows["1"]["dead_units"] == dead_channels and rows["4"]["dead_units"] == dead_features


def test_a_unit_alive_for_one_image_is_not_dead():
    model = nn.Sequential(nn.ReLU())
    quiet, one_firing = -torch.ones(3, 4), -torch.ones(3, 4)
    one_firing[2, 1] = 0.5  # feature 1 fires for the last image of the second batch only
    rows = activation_stats(model, [quiet, one_firing])
    assert rows[0]["dead"] == 3 and rows[0]["active_fraction"] == 1 / 24


def test_saturation_of_sigmoid_and_tanh_with_known_inputs():
    # sigmoid(+-5) is within 0.0067 of its bounds (saturated), sigmoid(+-3) 0.047 away (not); tanh(+-3) 0.005 (is).
    x = torch.tensor([[-5.0, -3.0, 0.0, 3.0, 5.0, 10.0, -10.0, 1.0]])
    rows = activation_stats(nn.Sequential(nn.Sigmoid()), [x])
    assert rows[0]["saturated_fraction"] == 4 / 8 and rows[0]["dead"] is None
    rows = activation_stats(nn.Sequential(nn.Tanh()), [x])
    assert rows[0]["saturated_fraction"] == 6 / 8  # all but 0 and 1 (tanh(3) = 0.995)


def test_a_reused_module_gets_one_entry_per_call(tmp_path):
    relu = nn.ReLU()

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = relu
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.fc(self.relu(x)))

    model = Twice()
    rows = activation_stats(model, [torch.randn(5, 4), torch.randn(5, 4)])
    assert [r["layer"] for r in rows] == ["relu", "relu#2"]
    assert all(r["values"] == 40 for r in rows)
    png = plot_activations({1: rows, 2: rows}, tmp_path / "activations.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_leave_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    rows = [{"epoch": 1, "layer": "a", "grad_norm": 1e-5, "update_ratio": 0.0, "weight_norm": 1.0, "steps_sampled": 1},
            {"epoch": 1, "layer": "b", "grad_norm": None, "update_ratio": None, "weight_norm": None, "steps_sampled": 0}]
    plot_gradients(rows, tmp_path / "g.png")
    plot_activations({1: [{"layer": "s", "dead_fraction": None, "saturated_fraction": 0.5}]}, tmp_path / "a.png")
    assert matplotlib.get_backend() == backend
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_and_tensorboard_figures_come_from_the_rows():
    rows = [{"epoch": 1, "layer": "a", "grad_norm": 1.0, "update_ratio": 0.1, "weight_norm": 1.0, "steps_sampled": 1},
            {"epoch": 2, "layer": "a", "grad_norm": 1e-6, "update_ratio": None, "weight_norm": 1.0, "steps_sampled": 1},
            {"epoch": 2, "layer": "b", "grad_norm": 1e-2, "update_ratio": 1e-3, "weight_norm": 1.0, "steps_sampled": 1}]
    summary = gradient_summary(rows)
    assert summary["epoch"] == 2 and summary["first_layer"] == "a" and summary["last_layer"] == "b"
    assert summary["first_over_last"] == pytest.approx(1e-4)
    assert gradient_summary([]) is None
    acts = [{"layer": "r", "dead_fraction": 0.25, "saturated_fraction": None}]
    assert tensorboard_scalars(rows[1:], acts) == [("grad_norm/a", 1e-6), ("grad_norm/b", 1e-2),
                                                   ("update_ratio/b", 1e-3), ("dead_fraction/r", 0.25)]


def test_a_step_with_non_finite_gradients_is_left_out():
    model = tiny_net()
    recorder = GradientRecorder(model, every_n_steps=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        x, y = data(seed=step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if step == 1:
            model[5].weight.grad[0, 0] = math.inf  # what an fp16 overflow leaves before GradScaler skips the step
        recorder.before_optimizer_step(step)
        if step == 0:
            opt.step()
        recorder.after_optimizer_step(step)
    rows = {r["layer"]: r for r in recorder.end_epoch(1)}
    assert rows["5"]["steps_sampled"] == 1 and math.isfinite(rows["5"]["grad_norm"])
    assert rows["0"]["steps_sampled"] == 2


def test_with_a_grad_scaler_the_recorder_reads_unscaled_gradients():
    plain, scaled = tiny_net(), tiny_net()
    rec_plain, rec_scaled = GradientRecorder(plain), GradientRecorder(scaled)
    x, y = data()
    nn.functional.cross_entropy(plain(x), y).backward()
    rec_plain.before_optimizer_step(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = torch.optim.SGD(scaled.parameters(), lr=0.1)
    scaler.scale(nn.functional.cross_entropy(scaled(x), y)).backward()
    if rec_scaled.is_sampled(0):
        scaler.unscale_(opt)  # as the loop must on sampled steps; scaler.step will not unscale again
    rec_scaled.before_optimizer_step(0)
    scaler.step(opt)
    scaler.update()
    rec_scaled.after_optimizer_step(0)
    rec_plain.after_optimizer_step(0)
    for a, b in zip(rec_plain.end_epoch(1), rec_scaled.end_epoch(1), strict=True):
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
