"""Optimizers and schedules: every entry builds and steps; lr sequences match torch's own schedulers; resume is exact."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from cnnctl.config import OptimizerConfig, SchedulerConfig
from cnnctl.errors import CheckpointError, CnnctlError, ConfigError, UsageError
from cnnctl.training.optim import OPTIMIZERS, SCHEDULERS, Schedule, create_optimizer, create_scheduler, param_groups

S = torch.optim.lr_scheduler
SPE = 5  # optimizer steps per epoch
EPOCHS = 12
LR = 0.1


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def sgd(momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(tiny().parameters(), lr=LR, momentum=momentum)


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_learns(name):
    model = tiny()
    opt = create_optimizer(model, OptimizerConfig(name=name, lr=0.01, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.Optimizer)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("name", "cls", "expected"), [
    ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": False}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-7}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 0.05, "momentum": 0.8, "alpha": 0.9, "eps": 1e-7}),
    ("adam", torch.optim.Adam, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-7}),
    ("adamw", torch.optim.AdamW, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 0.3}),
])
def test_optimizer_takes_its_config_keys(name, cls, expected):
    cfg = OptimizerConfig(name=name, lr=0.05, momentum=0.8, alpha=0.9, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)
    opt = create_optimizer(tiny(), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert {k: group[k] for k in expected} == expected
    assert group["weight_decay"] == 0.3


def test_nesterov_reaches_torch_sgd():
    model = tiny()
    opt = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True))
    ref_model = tiny()
    ref = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    plain_model = tiny()
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for m, o in ((model, opt), (ref_model, ref), (plain_model, plain)):
        for _ in range(3):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert opt.param_groups[0]["nesterov"] is True
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters(), strict=True))
    assert not torch.equal(model[0].weight, plain_model[0].weight)


def net() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 2, bias=False))
    model[5].weight.requires_grad_(False)  # frozen: in no group
    return model


def test_weight_decay_groups_exclude_bias_and_norm():
    model = net()
    decay, no_decay = param_groups(model, 0.1, decay_bias_and_norm=False)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]  # conv and linear weights
    assert len(no_decay["params"]) == 6  # conv and linear biases, BN and LayerNorm weight and bias
    (group,) = param_groups(model, 0.1, decay_bias_and_norm=True)
    assert len(group["params"]) == 8 and group["weight_decay"] == 0.1
    assert len(param_groups(model, 0.0, decay_bias_and_norm=False)) == 1  # nothing to exclude
    opt = create_optimizer(model, OptimizerConfig(name="adamw", weight_decay=0.1, decay_bias_and_norm=False))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 6]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_excluded_parameters_do_not_decay():
    model = net()
    opt = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.5, momentum=0, weight_decay=0.1,
                                                  decay_bias_and_norm=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay moves a parameter
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"0.weight", "3.weight"}


# ---------------------------------------------------------------- schedules against torch's own


def ours(name: str, epochs: int = EPOCHS, opt: torch.optim.Optimizer | None = None, **kw) -> list[float]:
    """The lr of every optimizer step of a run, and after the last."""
    opt = opt or sgd()
    sched = create_scheduler(opt, SchedulerConfig(name=name, **kw), epochs=epochs, steps_per_epoch=SPE)
    assert sched.interval == SCHEDULERS.get(name).interval == "step"
    out = []
    for _ in range(epochs * SPE):
        out.append(sched.lr)
        opt.step()
        sched.step()
    return [*out, sched.lr]


def theirs(make, per: str, epochs: int = EPOCHS, opt: torch.optim.Optimizer | None = None) -> list[float]:
    """Torch's scheduler stepped per optimizer step (``per="step"``) or per epoch."""
    opt = opt or sgd()
    sched = make(opt)
    out = []
    for s in range(epochs * SPE):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per == "step" or (s + 1) % SPE == 0:
            sched.step()
    return [*out, opt.param_groups[0]["lr"]]


@pytest.mark.parametrize(("name", "kw", "make", "per"), [
    ("none", {}, lambda o: S.ConstantLR(o, 1.0, 0), "step"),
    ("step", {"step_size": 3, "gamma": 0.5}, lambda o: S.StepLR(o, 3, 0.5), "epoch"),
    ("step", {"step_size": 20}, lambda o: S.StepLR(o, 20), "epoch"),  # step_size > epochs: no decay
    ("multistep", {"milestones": [2, 7, 7, 40], "gamma": 0.3}, lambda o: S.MultiStepLR(o, [2, 7, 7, 40], 0.3),
     "epoch"),
    ("exponential", {"gamma": 0.8}, lambda o: S.ExponentialLR(o, 0.8), "epoch"),
    ("cosine", {"min_lr": 0.001}, lambda o: S.CosineAnnealingLR(o, EPOCHS * SPE, 0.001), "step"),
    ("onecycle", {"pct_start": 0.25}, lambda o: S.OneCycleLR(o, LR, total_steps=EPOCHS * SPE, pct_start=0.25),
     "step"),
])
def test_lr_sequence_matches_torch(name, kw, make, per):
    got, want = ours(name, **kw), theirs(make, per)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    if per == "epoch":  # constant within an epoch
        assert all(len(set(got[e * SPE:(e + 1) * SPE])) == 1 for e in range(EPOCHS))


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_onecycle_cycles_momentum_as_torch_does(opt_name):
    def make_opt() -> torch.optim.Optimizer:
        return create_optimizer(tiny(), OptimizerConfig(name=opt_name, lr=LR))

    key = "momentum" if opt_name == "sgd" else "betas"
    opt, ref = make_opt(), make_opt()
    sched = create_scheduler(opt, SchedulerConfig(name="onecycle"), epochs=EPOCHS, steps_per_epoch=SPE)
    torch_sched = S.OneCycleLR(ref, LR, total_steps=EPOCHS * SPE)
    for _ in range(EPOCHS * SPE):
        assert opt.param_groups[0][key] == pytest.approx(ref.param_groups[0][key], rel=1e-12)
        assert sched.lr == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12)
        opt.step(), ref.step()
        sched.step(), torch_sched.step()


def test_onecycle_leaves_optimizers_without_momentum_alone():
    for cfg in (OptimizerConfig(name="adagrad"), OptimizerConfig(name="sgd", momentum=0)):
        opt = create_optimizer(tiny(), cfg)
        create_scheduler(opt, SchedulerConfig(name="onecycle"), epochs=2, steps_per_epoch=SPE)
        assert opt.param_groups[0].get("momentum", 0) == 0


# ---------------------------------------------------------------- warmup


def test_warmup_then_cosine_matches_linearlr_then_cosine():
    got = ours("cosine", warmup_epochs=2, warmup_start_factor=0.1, min_lr=0.002)
    want = theirs(lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=2 * SPE),
                                               S.CosineAnnealingLR(o, (EPOCHS - 2) * SPE, 0.002)], [2 * SPE]), "step")
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("name", "kw", "make"), [
    ("step", {"step_size": 1, "gamma": 0.5}, lambda o: S.StepLR(o, 1, 0.5)),
    ("multistep", {"milestones": [1, 4]}, lambda o: S.MultiStepLR(o, [1, 4])),
    ("exponential", {"gamma": 0.9}, lambda o: S.ExponentialLR(o, 0.9)),
])
def test_warmup_times_epoch_schedule_matches_torch(name, kw, make):
    # Epochs count from the start of the run; within the warmup the two factors multiply: torch's LinearLR stepped
    # per step and its per-epoch scheduler stepped per epoch, on one optimizer.
    got = ours(name, warmup_epochs=2.4, warmup_start_factor=0.2, **kw)  # 12 steps
    opt = sgd()
    linear, per_epoch = S.LinearLR(opt, 0.2, total_iters=12), make(opt)
    want = []
    for s in range(EPOCHS * SPE):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        linear.step()
        if (s + 1) % SPE == 0:
            per_epoch.step()
    assert got == pytest.approx([*want, opt.param_groups[0]["lr"]], rel=1e-12)


def test_warmup_numbers():
    got = ours("none", warmup_epochs=1.5, warmup_start_factor=0.01)  # round(7.5) = 8 steps
    warm = [LR * (0.01 + 0.99 * s / 8) for s in range(8)]
    assert got[:8] == pytest.approx(warm, rel=1e-12)
    assert got[8:] == pytest.approx([LR] * (len(got) - 8))
    step = ours("step", warmup_epochs=1, warmup_start_factor=0.1, step_size=4, gamma=0.5)
    assert step[0] == pytest.approx(0.01) and step[SPE] == pytest.approx(LR) and step[4 * SPE] == pytest.approx(0.05)
    assert ours("cosine", epochs=2, warmup_epochs=5)[-1] == pytest.approx(LR)  # warmup longer than the run: capped


def test_onecycle_refuses_warmup_and_too_few_steps():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="onecycle warms up by itself"):  # refused when the config is read
        SchedulerConfig(name="onecycle", warmup_epochs=1)
    with pytest.raises(ConfigError, match="scheduler.pct_start"):
        ours("onecycle", epochs=2, pct_start=0.1)  # 0.1 x 10 steps: torch would divide by zero


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_a_two_step_run_plans(name):
    cfg = SchedulerConfig(name=name, pct_start=0.6, warmup_epochs=0 if name == "onecycle" else 3)
    sched = create_scheduler(opt := sgd(), cfg, epochs=1, steps_per_epoch=2)
    for _ in range(2):
        opt.step()
        sched.step({"val_loss": 1.0} if sched.interval == "epoch" else None)
    assert sched.lr > 0


# ---------------------------------------------------------------- plateau


def plateau(**kw) -> tuple[torch.optim.Optimizer, Schedule]:
    opt = sgd()
    return opt, create_scheduler(opt, SchedulerConfig(name="plateau", **kw), epochs=10, steps_per_epoch=SPE)


def test_plateau_reduces_after_patience():
    _, sched = plateau(patience=1, factor=0.5, monitor="val_loss")
    assert sched.interval == "epoch"
    seen = []
    for value in [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86]:
        sched.step({"val_loss": value, "val_acc": 0.5})
        seen.append(sched.lr)
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    _, sched = plateau(patience=0, factor=0.5, monitor="val_acc")  # mode max
    for value in [0.5, 0.6, 0.6]:
        sched.step({"val_acc": value})
    assert sched.lr == pytest.approx(0.05)
    with pytest.raises(UsageError, match="val_acc"):
        sched.step({"val_loss": 1.0})


def test_plateau_warms_up_per_epoch_then_counts():
    opt, sched = plateau(warmup_epochs=2, warmup_start_factor=0.1, patience=0, factor=0.5)
    ref = sgd()
    linear = S.LinearLR(ref, 0.1, total_iters=2)
    seen, want = [], []
    for value in [1.0, 2.0, 3.0, 2.5, 2.6]:  # worse during warmup: ignored
        seen.append(sched.lr)
        want.append(ref.param_groups[0]["lr"])
        opt.step(), ref.step()
        sched.step({"val_loss": value})
        linear.step()
    assert seen[:3] == pytest.approx(want[:3], rel=1e-12) and seen[2] == pytest.approx(LR)
    assert seen[3:] == pytest.approx([LR, LR]) and sched.lr == pytest.approx(LR / 2)  # 3.0 best, 2.5 better


# ---------------------------------------------------------------- resume and re-planning


def roundtrip(state: dict) -> dict:
    """Through torch.save and torch.load(weights_only=True), as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def metric(epoch: int) -> dict[str, float]:
    return {"val_loss": [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86, 0.9, 0.7, 0.75, 0.8, 0.9][epoch]}


def drive(opt: torch.optim.Optimizer, sched: Schedule, start: int, stop: int) -> list[tuple[float, float]]:
    """Steps [start, stop) of a run (epochs for interval "epoch"); the lr and momentum before each and after."""
    out = []
    for i in range(start, stop):
        out.append((sched.lr, opt.param_groups[0]["momentum"]))
        opt.step()
        sched.step(metric(i) if sched.interval == "epoch" else None)
    return [*out, (sched.lr, opt.param_groups[0]["momentum"])]


def cfg_for(name: str) -> SchedulerConfig:
    kw = {"warmup_epochs": 0 if name == "onecycle" else 1.4, "step_size": 2, "milestones": [3, 5], "patience": 1}
    return SchedulerConfig(name=name, gamma=0.5, **kw)


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_state_round_trip_continues_exactly(name):
    cfg = cfg_for(name)
    n = EPOCHS if name == "plateau" else EPOCHS * SPE
    opt = sgd(0.9)
    full = drive(opt, create_scheduler(opt, cfg, epochs=EPOCHS, steps_per_epoch=SPE), 0, n)
    for cut in (1, 5) if name == "plateau" else (3, 17):  # within warmup, after it
        assert resumed(cfg, n, cut) == full  # bit for bit


def resumed(cfg: SchedulerConfig, n: int, cut: int) -> list[tuple[float, float]]:
    opt = sgd(0.9)
    sched = create_scheduler(opt, cfg, epochs=EPOCHS, steps_per_epoch=SPE)
    first = drive(opt, sched, 0, cut)
    saved = roundtrip({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    opt2 = sgd(0.9)  # as on --resume: build fresh, then load the optimizer, then the schedule
    sched2 = create_scheduler(opt2, cfg, epochs=EPOCHS, steps_per_epoch=SPE)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    return first[:-1] + drive(opt2, sched2, cut, n)


@pytest.mark.parametrize(("name", "changes"), [("cosine", True), ("onecycle", True), ("step", False),
                                               ("multistep", False), ("exponential", False), ("none", False)])
def test_replan_continues_on_the_new_plan(name, changes):
    cfg = cfg_for(name)
    opt = sgd(0.9)
    old = create_scheduler(opt, cfg, epochs=4, steps_per_epoch=SPE)
    before = drive(opt, old, 0, 4 * SPE)
    saved = roundtrip({"optimizer": opt.state_dict(), "scheduler": old.state_dict()})
    opt2 = sgd(0.9)
    new = create_scheduler(opt2, cfg, epochs=8, steps_per_epoch=SPE)
    opt2.load_state_dict(saved["optimizer"])
    new.load_state_dict(saved["scheduler"], replan=True)
    opt3 = sgd(0.9)  # configured for 8 epochs from the start
    longer = drive(opt3, create_scheduler(opt3, cfg, epochs=8, steps_per_epoch=SPE), 0, 8 * SPE)
    got = drive(opt2, new, 4 * SPE, 8 * SPE)
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in longer[4 * SPE:] for x in pair], rel=1e-12)
    assert (before[-1] != longer[4 * SPE]) is changes


def test_replan_keeps_plateau_counts_and_lr():
    opt, sched = plateau(patience=1, factor=0.5)
    drive(opt, sched, 0, 7)
    assert sched.lr == pytest.approx(0.025)
    opt2, new = plateau(patience=1, factor=0.5)
    opt2.load_state_dict(opt.state_dict())
    new.load_state_dict(roundtrip(sched.state_dict()), replan=True)
    assert new.lr == sched.lr and new.count == 7
    assert new.torch_scheduler.best == 0.8 and new.torch_scheduler.num_bad_epochs == 0  # reduced after epoch 7
    new.step({"val_loss": 0.9})
    assert new.torch_scheduler.num_bad_epochs == 1 and new.lr == pytest.approx(0.025)


def test_a_state_of_another_schedule_is_refused():
    sched = create_scheduler(sgd(), SchedulerConfig(name="cosine"), epochs=2, steps_per_epoch=SPE)
    other = create_scheduler(sgd(), SchedulerConfig(name="step"), epochs=2, steps_per_epoch=SPE)
    with pytest.raises(CheckpointError, match="'step'.*'cosine'"):
        sched.load_state_dict(other.state_dict())
    with pytest.raises(CheckpointError, match="lacks"):
        sched.load_state_dict({"name": "cosine", "steps": 3})


def test_stepping_past_the_plan_holds_the_lr():
    sched = create_scheduler(opt := sgd(0.9), SchedulerConfig(name="onecycle"), epochs=1, steps_per_epoch=SPE)
    lrs = []
    for _ in range(SPE + 3):  # OneCycleLR itself raises past its total_steps
        opt.step()
        sched.step()
        lrs.append(sched.lr)
    assert sched.count == SPE + 3 and lrs[SPE - 1:] == [lrs[SPE - 1]] * 4


# ---------------------------------------------------------------- registries


def test_unknown_names_list_the_known_ones():
    with pytest.raises(CnnctlError, match="did you mean 'cosine'\\?.*Known: none, step"):
        SCHEDULERS.get("cosin")
    with pytest.raises(CnnctlError, match="Known: sgd, adagrad, rmsprop, adam, adamw"):
        OPTIMIZERS.get("lion")


def test_import_does_not_import_torch():
    code = "import sys, cnnctl.training.optim, cnnctl.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------- edges (mutation survivors)


def test_cosine_with_one_step_after_warmup_ends_at_min_lr():
    got = ours("cosine", epochs=1, warmup_epochs=0.8, min_lr=0.001)  # SPE 5: 4 warmup steps, then 1
    assert got[4] == pytest.approx(LR)  # the first step after warmup: the top of the cosine
    assert got[5] == pytest.approx(0.001)  # one step later the plan is over: min_lr


def test_onecycle_refuses_a_warmup_even_when_the_config_was_not_validated():
    bad = SchedulerConfig.model_construct(**{**SchedulerConfig().model_dump(), "name": "onecycle",
                                             "warmup_epochs": 0.5})
    with pytest.raises(ConfigError) as info:
        create_scheduler(sgd(0.9), bad, epochs=4, steps_per_epoch=SPE)
    assert info.value.key == "scheduler.warmup_epochs"
    assert str(info.value) == "scheduler.warmup_epochs: onecycle warms up by itself (pct_start); set warmup_epochs: 0"


def test_onecycle_with_too_few_rising_steps_says_how_many():
    with pytest.raises(ConfigError) as info:
        create_scheduler(sgd(0.9), SchedulerConfig(name="onecycle", pct_start=0.1), epochs=2, steps_per_epoch=SPE)
    assert info.value.key == "scheduler.pct_start"
    assert str(info.value) == ("scheduler.pct_start: onecycle rises over pct_start x 10 steps = 1 steps; it needs more "
                               "than 1: raise pct_start or train.epochs")


@pytest.mark.parametrize("epochs, spe, ok", [(0, 5, False), (3, 0, False), (1, 1, True), (2, 1, True)])
def test_a_schedule_needs_an_epoch_and_a_step(epochs, spe, ok):
    if ok:
        assert create_scheduler(sgd(), SchedulerConfig(name="step"), epochs=epochs, steps_per_epoch=spe).count == 0
        return
    with pytest.raises(UsageError) as info:
        create_scheduler(sgd(), SchedulerConfig(name="step"), epochs=epochs, steps_per_epoch=spe)
    assert str(info.value) == (f"a schedule needs epochs >= 1 and steps_per_epoch >= 1, got {epochs} and {spe}")


def test_a_state_with_exactly_the_needed_keys_loads():
    sched = create_scheduler(opt := sgd(), SchedulerConfig(name="step", step_size=1, gamma=0.5), epochs=3,
                             steps_per_epoch=SPE)
    drive(opt, sched, 0, SPE + 1)
    state = {k: v for k, v in sched.state_dict().items() if k in ("name", "count", "scheduler")}
    fresh = create_scheduler(sgd(), SchedulerConfig(name="step", step_size=1, gamma=0.5), epochs=3,
                             steps_per_epoch=SPE)
    fresh.load_state_dict(roundtrip(state))
    assert fresh.count == SPE + 1


def test_a_state_that_lacks_keys_names_them():
    sched = create_scheduler(sgd(), SchedulerConfig(name="cosine"), epochs=2, steps_per_epoch=SPE)
    with pytest.raises(CheckpointError) as info:
        sched.load_state_dict({"name": "cosine", "scheduler": {}})
    assert str(info.value) == ("the checkpoint's lr schedule state is not one this cnnctl wrote (it lacks ['count']); "
                               "start a new run")


def test_a_warmup_state_is_ignored_by_a_plateau_without_warmup():
    opt, warm = plateau(warmup_epochs=2)
    drive(opt, warm, 0, 1)
    _, cold = plateau()
    cold.load_state_dict(roundtrip(warm.state_dict()))
    assert cold.count == 1 and cold.warmup_scheduler is None


@pytest.mark.parametrize("done", [1, 3])
def test_replanning_a_plateau_in_its_warmup_sets_the_warmup_lr(done):
    opt, sched = plateau(warmup_epochs=2, warmup_start_factor=0.1)  # 10 warmup steps: epochs 0 and 1
    drive(opt, sched, 0, done)
    opt2, new = plateau(warmup_epochs=2, warmup_start_factor=0.1)
    opt2.load_state_dict(opt.state_dict())
    new.load_state_dict(roundtrip(sched.state_dict()), replan=True)
    assert new.count == done
    if done == 1:  # epoch 1 begins at step 5 of the warmup: 0.1 + 0.9 * 5 / 10
        assert new.lr == pytest.approx(LR * 0.55)
    else:  # past the warmup: the lr the saved optimizer holds
        assert new.lr == pytest.approx(sched.lr)
    assert new.warmup_scheduler.last_epoch == done


def test_decay_bias_and_norm_puts_every_parameter_under_weight_decay():
    model = tiny()
    both = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.01, decay_bias_and_norm=True))
    assert [g["weight_decay"] for g in both.param_groups] == [0.01]
    assert len(both.param_groups[0]["params"]) == len(list(model.parameters()))
    split = create_optimizer(model, OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.01, decay_bias_and_norm=False))
    assert [g["weight_decay"] for g in split.param_groups] == [0.01, 0.0]


# ---------------------------------------------------------------- plateau after warmup


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_plateau_gets_the_first_metric_after_warmup():
    """warmup_epochs 2 over 4 steps an epoch, then plateau with patience 0 on a flat metric.

    Epochs run at the warmup's lr at their first step: 0.25 + 0.75 * step / 8 at steps 0 and 4, then 1. The first
    metric after warmup (end of epoch 3) sets the plateau's best; each later flat epoch halves the lr.
    """
    from cnnctl.config import SchedulerConfig
    from cnnctl.training.optim import create_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0, momentum=0.0)
    cfg = SchedulerConfig(name="plateau", warmup_epochs=2, warmup_start_factor=0.25, patience=0, factor=0.5,
                          monitor="val_loss")
    schedule = create_scheduler(optimizer, cfg, epochs=6, steps_per_epoch=4)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step({"val_loss": 1.0})
    assert lrs == pytest.approx([0.25, 0.625, 1.0, 1.0, 0.5, 0.25], abs=1e-12)
