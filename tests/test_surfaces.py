"""Optimizers on a surface (``cnnctl optimizers``): the surfaces' gradients, the descents, the pictures and the
command's refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from cnnctl.insight.surfaces import (
    FRAMES,
    RULES,
    SURFACES,
    TOLERANCE,
    default_lr,
    descend,
    frame_steps,
    lines_for,
    optimizer_config,
    summarize,
)
from cnnctl.training.optim import OPTIMIZERS


def tree(root):
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def points(surface):
    """The start, the minima and a 3x3 grid over the plotted box."""
    x0, x1, y0, y1 = surface.box
    grid = [(x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * j / 4) for i in (1, 2, 3) for j in (1, 2, 3)]
    return [surface.start, *surface.global_minima, *surface.local_minima, *grid]


@pytest.mark.parametrize("name", SURFACES.names())
def test_the_gradient_written_by_hand_is_autograds(name):
    surface = SURFACES.get(name)
    for x, y in points(surface):
        xy = torch.tensor([x, y], dtype=torch.float64, requires_grad=True)
        (autograd,) = torch.autograd.grad(surface.loss(xy[0], xy[1]), xy)
        assert torch.allclose(torch.tensor(surface.grad(x, y), dtype=torch.float64), autograd, rtol=1e-12,
                              atol=1e-12), (name, x, y)


@pytest.mark.parametrize("name", SURFACES.names())
def test_the_minima_are_stationary_and_the_global_ones_lowest(name):
    surface = SURFACES.get(name)
    for m in (*surface.global_minima, *surface.local_minima):
        assert math.hypot(*surface.grad(*m)) < 1e-9, m
    assert all(float(surface.loss(*m)) == pytest.approx(surface.f_min) for m in surface.global_minima)
    assert all(float(surface.loss(*m)) > surface.f_min + 1 for m in surface.local_minima)
    x0, x1, y0, y1 = surface.box
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in (surface.start, *surface.global_minima))


def test_every_registry_optimizer_has_an_lr_on_every_surface_and_a_rule():
    lines = lines_for(OPTIMIZERS.names())
    assert {line.optimizer for line in lines} == set(OPTIMIZERS.names()) == set(RULES)
    for surface in (SURFACES.get(n) for n in SURFACES.names()):
        assert set(surface.lrs) == {line.key for line in lines}, surface.name


def test_the_first_step_of_plain_sgd_is_minus_lr_times_the_gradient():
    surface = SURFACES.get("rosenbrock")
    cfg = optimizer_config(lines_for(["sgd"])[0], 0.001, [])
    assert cfg.momentum == 0
    path = descend(surface, cfg, 1)
    gx, gy = surface.grad(*surface.start)
    assert (path.xs[1], path.ys[1]) == pytest.approx((surface.start[0] - 0.001 * gx, surface.start[1] - 0.001 * gy),
                                                     rel=1e-12)
    assert path.losses == pytest.approx([float(surface.loss(x, y)) for x, y in zip(path.xs, path.ys, strict=True)])


def by_hand(cfg, grad, start, steps):
    """The update rules ``--explain`` prints, in plain arithmetic, coordinate by coordinate."""
    theta, path = list(start), [tuple(start)]
    state = [{"b": 0.0, "s": 0.0, "m": 0.0, "v": 0.0} for _ in theta]
    for t in range(1, steps + 1):
        for i, g in enumerate(grad(*theta)):
            th, st = theta[i], state[i]
            if cfg.name == "adamw":
                th *= 1 - cfg.lr * cfg.weight_decay
            else:
                g += cfg.weight_decay * th
            if cfg.name == "sgd":
                st["b"] = g if t == 1 else cfg.momentum * st["b"] + g
                th -= cfg.lr * (g + cfg.momentum * st["b"] if cfg.nesterov else st["b"])
            elif cfg.name == "adagrad":
                st["s"] += g * g
                th -= cfg.lr * g / (math.sqrt(st["s"]) + cfg.eps)
            elif cfg.name == "rmsprop":
                st["v"] = cfg.alpha * st["v"] + (1 - cfg.alpha) * g * g
                st["b"] = cfg.momentum * st["b"] + g / (math.sqrt(st["v"]) + cfg.eps)
                th -= cfg.lr * st["b"]
            else:
                (b1, b2) = cfg.betas
                st["m"], st["v"] = b1 * st["m"] + (1 - b1) * g, b2 * st["v"] + (1 - b2) * g * g
                th -= cfg.lr * (st["m"] / (1 - b1**t)) / (math.sqrt(st["v"] / (1 - b2**t)) + cfg.eps)
            theta[i] = th
        path.append(tuple(theta))
    return path


@pytest.mark.parametrize("nesterov", [False, True])
def test_every_path_follows_the_rule_explain_prints(nesterov):
    surface = SURFACES.get("rosenbrock")
    overrides = ["optimizer.weight_decay=0.1", f"optimizer.nesterov={str(nesterov).lower()}"]
    for line in lines_for(OPTIMIZERS.names()):
        cfg = optimizer_config(line, 1e-3, overrides)
        path = descend(surface, cfg, 4)
        expected = by_hand(cfg, surface.grad, surface.start, 4)
        assert path.xs + path.ys == pytest.approx([x for x, _ in expected] + [y for _, y in expected], rel=1e-12), line


@pytest.mark.parametrize("name", SURFACES.names())
def test_with_its_default_lr_every_optimizer_ends_lower_than_it_starts(name):
    surface = SURFACES.get(name)
    for line in lines_for(OPTIMIZERS.names()):
        path = descend(surface, optimizer_config(line, surface.lrs[line.key], []), 100)
        assert not path.diverged and path.losses[-1] < path.losses[0], (name, line)


@pytest.mark.parametrize("name", [n for n in SURFACES.names() if SURFACES.get(n).convex])
@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_on_a_convex_surface_every_optimizer_goes_downhill_at_a_small_lr(name, lr):
    surface = SURFACES.get(name)
    for line in lines_for(OPTIMIZERS.names()):
        losses = descend(surface, optimizer_config(line, lr, []), 100).losses
        assert losses[-1] < losses[0], (line, lr)
        if line.fixed:  # momentum 0: every step goes down
            assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), (line, lr)


def test_a_diverging_path_stops_and_is_reported():
    surface = SURFACES.get("rosenbrock")
    path = descend(surface, optimizer_config(lines_for(["sgd"])[0], 1.0, []), 50)
    assert path.diverged and len(path.xs) < 51
    row = summarize(surface, path)
    assert row["diverged"] and row["final_loss"] is None and row["steps_to_tol"] is None


@pytest.mark.parametrize("steps", [1, 2, 5, 58, 59, 60, 61, 100, 1000, 9999])
def test_the_frames_run_from_step_0_to_the_last_each_step_once(steps):
    shown = frame_steps(steps)
    assert len(shown) == min(FRAMES, steps + 1)
    assert shown[0] == 0 and shown[-1] == steps
    assert all(a < b for a, b in zip(shown, shown[1:], strict=False))


def test_optimizers_draws_every_optimizer_and_its_table(tmp_path, cli):
    out = tmp_path / "out"
    result = cli("optimizers", "--surface", "ravine", "--surface", "saddle", "--steps", "80", "-o", out,
                 "--set", "optimizer.weight_decay=0.1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert tree(tmp_path) == {"out", "out/optimizer-paths.png", "out/optimizer-paths-ravine.gif",
                              "out/optimizer-paths-saddle.gif"}
    assert Image.open(out / "optimizer-paths.png").size == (1600, 480)
    for surface in report["surfaces"]:
        gif = Image.open(surface["gif"])
        assert surface["frames"] == gif.n_frames == FRAMES
        rows = surface["rows"]
        assert [r["label"] for r in rows] == ["sgd momentum=0", "sgd momentum=0.9", "adagrad", "rmsprop momentum=0",
                                              "rmsprop momentum=0.9", "adam", "adamw"]
        assert all(r["weight_decay"] == 0.1 and r["steps_taken"] == 80 for r in rows)
        lrs = SURFACES.get(surface["name"]).lrs
        assert [r["lr"] for r in rows] == [lrs[k] for k in ("sgd momentum=0", "sgd", "adagrad", "rmsprop momentum=0",
                                                           "rmsprop", "adam", "adamw")]
        adam, adamw = rows[-2:]
        assert adam["final_loss"] != adamw["final_loss"]  # the decay in the gradient, or decoupled from it
    ravine = report["surfaces"][0]["rows"]
    assert all(r["ends_in"] is None or r["ends_in"] == "global" for r in ravine)
    assert report["tolerance"] == TOLERANCE and "rules" not in report


def test_optimizers_prints_the_rules_and_a_table_with_one_lr_for_all(tmp_path, cli):
    result = cli("optimizers", "--surface", "styblinski-tang", "--optimizer", "adam", "--optimizer", "sgd",
                 "--optimizer", "adagrad", "--steps", "5", "--set", "optimizer.lr=0.002", "-o", tmp_path, "--explain")
    assert result.exit_code == 0, result.output
    text = result.stdout
    rules = text[:text.index("styblinski-tang: f(x, y)")]
    assert [line[:-1] for line in rules.splitlines()[1:] if line and line[0] != " "] == ["sgd", "adagrad", "adam"]
    assert "θ ← θ − η·m̂ / (√v̂ + ε)" in rules and "betas = (β₁, β₂) ([0.9, 0.999])" in rules
    assert "lr = η (0.002), momentum = μ (0.9)" in rules
    assert "s only grows" in rules  # Adagrad's weakness, as the notes give it
    table = text[len(rules):].splitlines()
    assert "start (-4.6, 4)" in table[0] and "5 steps" in table[0]
    assert [line.split()[0] for line in table[2:6]] == ["sgd", "sgd", "adagrad", "adam"]
    assert all("  0.002  " in line for line in table[2:6]), table
    assert f"wrote {tmp_path / 'optimizer-paths-styblinski-tang.gif'} (6 frames of 80 ms" in text
    assert Image.open(tmp_path / "optimizer-paths-styblinski-tang.gif").n_frames == 6


@pytest.mark.parametrize(("args", "names"), [
    (["--surface", "rosenbrok"], "did you mean 'rosenbrock'? Known: rosenbrock, saddle, ravine, styblinski-tang"),
    (["--optimizer", "adamax"], "Known: sgd, adagrad, rmsprop, adam, adamw"),
    (["--steps", "0"], "--steps must be between 1 and 10,000, not 0"),
    (["--steps", "10001"], "--steps must be between 1 and 10,000, not 10001"),
    (["--set", "train.epochs=3"], "reads only the optimizer section's keys"),
    (["--set", "optimizer.name=adam"], "choose the optimizers with --optimizer NAME"),
    (["--set", "optimizer.lr=-1"], "optimizer.lr: Input should be greater than 0"),
    (["--set", "optimizer.mometum=0.5"], "did you mean 'momentum'?"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, cli, args, names):
    result = cli("optimizers", *args, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and names in result.stderr, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_folder_that_cannot_be_made_is_exit_1(tmp_path, cli, where):
    (tmp_path / "file").write_text("keep me\n")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "out"
    result = cli("optimizers", "--surface", "ravine", "--optimizer", "adam", "--steps", "3", "-o", out)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: could not write {out}: "), result.stderr
    assert (tmp_path / "file").read_text() == "keep me\n" and tree(tmp_path) == {"file"}


def test_nesterov_reaches_sgd_and_only_sgd():
    lines = {line.key: line for line in lines_for(OPTIMIZERS.names())}
    overrides = ["optimizer.nesterov=true"]
    assert optimizer_config(lines["sgd"], 0.01, overrides).nesterov
    assert not optimizer_config(lines["sgd momentum=0"], 0.01, overrides).nesterov  # the plain form stays plain
    assert not optimizer_config(lines["adam"], 0.01, overrides).nesterov


@pytest.mark.heavy  # 10-20 s a surface: the lr table against its rule; scripts/test.sh -m heavy runs it
@pytest.mark.parametrize("name", SURFACES.names())
def test_the_default_lrs_are_the_ones_the_documented_rule_picks(name):
    surface = SURFACES.get(name)
    assert {line.key: default_lr(surface, line) for line in lines_for(OPTIMIZERS.names())} == surface.lrs
