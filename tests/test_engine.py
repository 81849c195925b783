"""The training loop's public functions (``train_one_epoch``, ``evaluate``, ``EpochState``) against hand-written
arithmetic, and ``fit`` through ``cnnctl.train`` with a recording hook: the events in order, the step count, the
metrics rows. Fast (tiny linear networks, a few dozen images). ``scripts/mutation.sh engine`` runs this file.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import cnnctl
from cnnctl.errors import TrainingError
from cnnctl.training.engine import EpochState, evaluate, train_one_epoch
from cnnctl.training.hooks import Hook


def batches_of(n_batches: int = 4, size: int = 5, last: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        k = last if b == n_batches - 1 else size
        out.append((torch.randn(k, 6, generator=g), torch.randint(0, 3, (k,), generator=g)))
    return out


def linear(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(6, 3)


def hand_epoch(model, batches, lr, grad_clip=None):
    """SGD by hand: per-step losses (as computed before the step), hits, and the model after."""
    model = copy.deepcopy(model)
    losses, hits = [], []
    for x, y in batches:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        model.zero_grad()
        loss.backward()
        if grad_clip is not None:
            total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
            scale = min(1.0, grad_clip / (float(total) + 1e-6))
            for p in model.parameters():
                p.grad.mul_(scale)
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        losses.append(float(loss.detach()))
        hits.append(int((logits.argmax(1) == y).sum()))
    return model, losses, hits


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_an_epoch_is_sgd_by_hand(grad_clip):
    batches = batches_of()
    model = linear()
    expected, losses, hits = hand_epoch(model, batches, 0.5, grad_clip)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    state = EpochState.empty(len(batches), torch.device("cpu"))

    out = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, iter(batches), state, grad_clip=grad_clip)

    assert out is state and state.step == 4
    assert state.losses.tolist() == pytest.approx(losses, abs=1e-6)
    assert state.correct.tolist() == hits and state.sizes.tolist() == [5, 5, 5, 3]
    assert torch.allclose(model.weight, expected.weight, atol=1e-6)
    assert torch.allclose(model.bias, expected.bias, atol=1e-6)
    assert model.training


def test_clipping_changes_the_step():
    batches = batches_of()
    clipped, unclipped = linear(), linear()
    for model, clip in ((clipped, 0.05), (unclipped, None)):
        train_one_epoch(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5), iter(batches),
                        EpochState.empty(4, torch.device("cpu")), grad_clip=clip)
    assert not torch.allclose(clipped.weight, unclipped.weight, atol=1e-4)


def test_the_step_callbacks_see_gradients_then_updated_weights_and_can_end_the_epoch():
    batches = batches_of()
    model = linear()
    seen = []

    def before(state):
        seen.append(("before", state.step, model.weight.grad.clone(), model.weight.detach().clone()))

    def after(state):
        seen.append(("after", state.step, None, model.weight.detach().clone()))

    def end(state):
        seen.append(("end", state.step, None, None))
        return state.step == 2

    state = train_one_epoch(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5),
                            iter(batches), EpochState.empty(4, torch.device("cpu")), on_step_end=end,
                            before_optimizer_step=before, after_optimizer_step=after)

    assert [(kind, step) for kind, step, _, _ in seen] == [("before", 0), ("after", 0), ("end", 1),
                                                           ("before", 1), ("after", 1), ("end", 2)]
    assert state.step == 2 and state.sizes.tolist() == [5, 5, 0, 0]
    _, _, grad, w_before = seen[0]
    w_after = seen[1][3]
    assert torch.allclose(w_after, w_before - 0.5 * grad)


def test_totals_weigh_each_step_by_its_batch_and_stop_at_the_step():
    state = EpochState(torch.tensor([1.0, 4.0, 100.0]), torch.tensor([2, 3, 9]), torch.tensor([2, 6, 9]), step=2)
    loss, acc, n = state.totals()
    assert n == 8
    assert loss == pytest.approx((1.0 * 2 + 4.0 * 6) / 8)
    assert acc == pytest.approx(5 / 8)
    assert EpochState.empty(3, torch.device("cpu")).totals() == (0.0, 0.0, 0)


def test_a_non_finite_loss_names_its_epoch_and_step_and_what_was_kept():
    state = EpochState(torch.tensor([0.5, float("inf"), float("nan"), float("nan")]), torch.zeros(4, dtype=torch.int64),
                       torch.ones(4, dtype=torch.int64), step=3)
    assert state.first_nonfinite() == 1
    with pytest.raises(TrainingError) as info:
        state.check_finite(4, kept=True)
    assert str(info.value) == ("the training loss became inf at epoch 5, step 2; training stopped and the last good "
                               "checkpoint (last.pt) is kept. Try a lower optimizer.lr or set train.grad_clip (e.g. 1.0)")
    assert info.value.exit_code == 1
    with pytest.raises(TrainingError) as info:
        state.check_finite(0, kept=False)
    assert str(info.value) == ("the training loss became inf at epoch 1, step 2; training stopped and no checkpoint "
                               "had been written yet, so there is nothing to resume. Try a lower optimizer.lr or set "
                               "train.grad_clip (e.g. 1.0)")
    finite = EpochState(torch.tensor([0.5, 0.25, float("nan")]), torch.zeros(3, dtype=torch.int64),
                        torch.ones(3, dtype=torch.int64), step=2)
    assert finite.first_nonfinite() is None
    finite.check_finite(0, kept=False)  # the step not taken yet does not count


def test_an_epoch_state_round_trips():
    state = EpochState(torch.tensor([0.5, 0.25]), torch.tensor([1, 2]), torch.tensor([3, 4]), step=1)
    saved = state.state_dict()
    back = EpochState.from_state(saved, torch.device("cpu"))
    assert back.step == 1
    assert torch.equal(back.losses, state.losses) and torch.equal(back.correct, state.correct)
    assert torch.equal(back.sizes, state.sizes)
    saved["sizes"][0] = 99
    assert state.sizes[0] == 3  # the saved copy is its own


def test_evaluate_counts_loss_hits_and_confusion_in_eval_mode():
    model = nn.Sequential(nn.Linear(6, 3), nn.Dropout(0.9))
    batches = batches_of(n_batches=3)
    model.train()
    acc, probs = evaluate(model, iter(batches), 3, torch.device("cpu"), keep_probs=True)
    assert not model.training  # dropout off: the numbers below are deterministic
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(x)
    result = acc.result(["a", "b", "c"])
    assert result["n"] == 13
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert result["accuracy"] == int((logits.argmax(1) == y).sum()) / 13
    confusion = torch.zeros(3, 3, dtype=torch.int64)
    confusion.index_put_((y, logits.argmax(1)), torch.ones(13, dtype=torch.int64), accumulate=True)
    assert result["confusion_matrix"] == confusion.tolist()
    assert torch.allclose(probs, logits.softmax(1), atol=1e-6)
    _, none = evaluate(model, iter(batches), 3, torch.device("cpu"))
    assert none is None
    _, empty = evaluate(model, iter([]), 3, torch.device("cpu"), keep_probs=True)
    assert empty is None


class Recorder(Hook):
    def __init__(self):
        self.events = []

    def on_train_start(self, run):
        self.events.append(("train_start", run.epoch, run.step))

    def on_epoch_start(self, run, state):
        self.events.append(("epoch_start", run.epoch, state.step))

    def on_step_end(self, run, state):
        self.events.append(("step_end", run.epoch, run.step, state.step))

    def on_epoch_end(self, run, row):
        self.events.append(("epoch_end", run.epoch, row["epoch"], run.scheduler.lr))

    def on_train_end(self, run):
        self.events.append(("train_end", run.epoch, run.step))


class StopAt(Hook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, row):
        if row["epoch"] == self.epoch:
            run.stop_reason = "test stop"


def tiny(val_split=0.25, epochs=3, **train):
    return {"name": "tiny", "seed": 3,
            "data": {"dataset": "fake", "num_classes": 3, "num_samples": 48, "channels": 1, "image_size": 4,
                     "batch_size": 8, "val_split": val_split, "test_split": 0, "normalize": "none"},
            "model": {"arch": "custom", "layers": ["flatten", "linear"]},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
            "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
            "train": {"epochs": epochs, "device": "cpu", "early_stopping": None, "threads": 1,
                      "record_gradients_every": None, "record_activations": False, **train}}


def test_fit_calls_the_events_in_order_and_counts_steps(tmp_path):
    recorder = Recorder()
    result = cnnctl.train(tiny(), out=tmp_path, hooks=[recorder])
    steps = 36 // 8 + 1  # 36 training images in batches of 8: four full and one of 4
    events = recorder.events
    assert events[0] == ("train_start", 0, 0)
    assert events[-1] == ("train_end", 3, 3 * steps)
    for epoch in range(3):
        block = events[1 + epoch * (steps + 2): 1 + (epoch + 1) * (steps + 2)]
        assert block[0] == ("epoch_start", epoch, 0)
        assert block[1:-1] == [("step_end", epoch, epoch * steps + s + 1, s + 1) for s in range(steps)]
        assert block[-1] == ("epoch_end", epoch + 1, epoch + 1, pytest.approx(0.1 * 0.5 ** (epoch + 1)))
    rows = result.metrics
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.025, 0.0125])  # the lr after the epoch's steps
    assert all(r["val_loss"] is not None and 0 <= r["val_acc"] <= 1 for r in rows)
    assert all(r["epoch_seconds"] > 0 for r in rows)
    assert result.summary["stop_reason"] is None and result.summary["stopped_early"] is False


def test_fit_without_a_val_split_leaves_its_columns_empty(tmp_path):
    result = cnnctl.train(tiny(val_split=0, epochs=2, checkpoint={"monitor": "train_loss"}), out=tmp_path)
    assert [r["val_loss"] for r in result.metrics] == [None, None]
    assert [r["val_acc"] for r in result.metrics] == [None, None]


def test_a_hook_that_sets_stop_reason_ends_training_after_that_epoch(tmp_path):
    recorder = Recorder()
    result = cnnctl.train(tiny(epochs=5), out=tmp_path, hooks=[StopAt(2), recorder])
    assert [r["epoch"] for r in result.metrics] == [1, 2]
    assert recorder.events[-1][0] == "train_end" and recorder.events[-1][1] == 2
    assert result.summary["stop_reason"] == "test stop" and result.summary["stopped_early"] is True


def test_train_loss_is_the_mean_over_the_epochs_images(tmp_path):
    """A negligible learning rate keeps the weights: the epoch's train loss is the loss of the initial network over
    the training split, each image weighted once (the last batch is smaller)."""
    result = cnnctl.train(tiny(val_split=0.25, epochs=1) | {"optimizer": {"name": "sgd", "lr": 1e-12}}, out=tmp_path)
    from cnnctl.data.base import load_data
    from cnnctl.inference.evaluate import load_model

    _, ckpt, model = load_model(result.run_dir / "last.pt")
    bundle = load_data(result.config.data, result.config.seed)
    x = bundle.train.images.float() / 255
    y = bundle.train.labels
    with torch.no_grad():
        logits = model(x)
    row = result.metrics[0]
    assert row["train_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert row["train_acc"] == pytest.approx(int((logits.argmax(1) == y).sum()) / len(y))
    vx, vy = bundle.val.images.float() / 255, bundle.val.labels
    with torch.no_grad():
        vlogits = model(vx)
    assert row["val_loss"] == pytest.approx(float(nn.functional.cross_entropy(vlogits, vy)), rel=1e-5)
    assert not math.isnan(row["val_acc"])


def test_totals_of_a_one_image_epoch():
    state = EpochState(torch.tensor([0.75]), torch.tensor([1]), torch.tensor([1]), step=1)
    assert state.totals() == (0.75, 1.0, 1)


class StepWatcher(Hook):
    """Overrides the optimizer-step events: sees the run, the state and the gradients (before) and weights (after)."""

    def __init__(self):
        self.seen = []

    def wants_unscaled_gradients(self, run, state):
        self.seen.append(("wants", run, state.step))
        return False

    def on_before_optimizer_step(self, run, state):
        weight = run.module[-1].weight if isinstance(run.module, nn.Sequential) else next(run.module.parameters())
        self.seen.append(("before", run.step, state.step, weight.grad is not None))

    def on_after_optimizer_step(self, run, state):
        self.seen.append(("after", run.step, state.step))


def test_optimizer_step_hooks_are_called_with_the_run_each_step(tmp_path):
    watcher = StepWatcher()
    cnnctl.train(tiny(epochs=1), out=tmp_path, hooks=[watcher])
    steps = 36 // 8 + 1
    events = [e for e in watcher.seen if e[0] != "wants"]
    assert events == [e for s in range(steps) for e in (("before", s, s, True), ("after", s, s))]


def test_step_callbacks_are_only_those_some_hook_listens_to():
    from types import SimpleNamespace

    from cnnctl.training.engine import Events

    plain = Events(SimpleNamespace(hooks=[Hook()])).step_callbacks()
    assert plain == {"before_optimizer_step": None, "after_optimizer_step": None, "wants_unscaled": None}

    class AfterOnly(Hook):
        def on_after_optimizer_step(self, run, state):
            pass

    after = Events(SimpleNamespace(hooks=[AfterOnly()])).step_callbacks()
    assert after["before_optimizer_step"] is None and after["wants_unscaled"] is None
    assert after["after_optimizer_step"] is not None

    run = SimpleNamespace(hooks=[StepWatcher()])
    events = Events(run)
    both = events.step_callbacks()
    assert all(v is not None for v in both.values())
    state = EpochState.empty(2, torch.device("cpu"))
    assert both["wants_unscaled"](state) is False
    assert run.hooks[0].seen == [("wants", run, 0)]

    class Wants(Hook):
        def on_before_optimizer_step(self, run, state):
            pass

        def wants_unscaled_gradients(self, run, state):
            return state.step == 1

    run2 = SimpleNamespace(hooks=[StepWatcher(), Wants()])
    state.step = 1
    assert Events(run2).wants_unscaled(state) is True


def test_grad_clip_reaches_the_loop(tmp_path):
    still = cnnctl.train(tiny(epochs=1) | {"optimizer": {"name": "sgd", "lr": 1e-12}}, out=tmp_path, name="still")
    clipped = cnnctl.train(tiny(epochs=1, grad_clip=1e-9), out=tmp_path, name="clipped")
    free = cnnctl.train(tiny(epochs=1), out=tmp_path, name="free")
    w = [torch.load(r.last_checkpoint, weights_only=True)["model"] for r in (still, clipped, free)]
    key = next(k for k in w[0] if k.endswith("weight"))
    assert torch.allclose(w[1][key], w[0][key], atol=1e-8)  # steps of at most lr * 1e-9
    assert not torch.allclose(w[2][key], w[0][key], atol=1e-4)


def test_the_run_precision_reaches_the_loop(tmp_path):
    fp32 = cnnctl.train(tiny(epochs=1, precision="fp32"), out=tmp_path, name="fp32")
    bf16 = cnnctl.train(tiny(epochs=1, precision="bf16"), out=tmp_path, name="bf16")
    for column in ("train_loss", "val_loss"):  # training and validation both run under the run's autocast
        a, b = fp32.metrics[0][column], bf16.metrics[0][column]
        assert math.isfinite(a) and math.isfinite(b)
        assert a != b  # bf16 autocast rounds the matmul inputs: not the same numbers
        assert a == pytest.approx(b, rel=0.05)


class RowKeeper(Hook):
    def __init__(self):
        self.rows = []

    def on_epoch_end(self, run, row):
        self.rows.append(dict(row))


def test_each_epochs_row_has_every_column_and_a_true_duration(tmp_path):
    import time

    keeper = RowKeeper()
    start = time.perf_counter()
    cnnctl.train(tiny(val_split=0, epochs=2, checkpoint={"monitor": "train_loss"}), out=tmp_path, hooks=[keeper])
    wall = time.perf_counter() - start
    assert [set(r) for r in keeper.rows] == [{"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                              "epoch_seconds"}] * 2
    assert all(r["val_loss"] is None and r["val_acc"] is None for r in keeper.rows)
    assert all(0 < r["epoch_seconds"] < wall for r in keeper.rows)


def test_a_loss_that_turns_nan_after_a_checkpoint_says_last_pt_is_kept(tmp_path, monkeypatch):
    from cnnctl.errors import TrainingError
    from tests.conftest import explode_loss_from

    steps = 36 // 8 + 1
    explode_loss_from(monkeypatch, call=steps + 2)  # epoch 2, step 2: epoch 1's last.pt exists
    with pytest.raises(TrainingError) as info:
        cnnctl.train(tiny(epochs=3), out=tmp_path)
    assert "at epoch 2, step 2" in str(info.value)
    assert "the last good checkpoint (last.pt) is kept" in str(info.value)


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_an_epoch_with_a_grad_scaler_is_still_sgd_by_hand(grad_clip):
    """fp16 training's GradScaler (here on the CPU, fp32 arithmetic): the loss is scaled for backward and the
    gradients unscaled before clipping and the step, so the weights end where plain SGD puts them; a
    before-optimizer-step callback that asks for unscaled gradients sees the true ones."""
    batches = batches_of()
    model = linear()
    expected, losses, _ = hand_epoch(model, batches, 0.5, grad_clip)
    seen = []

    def before(state):
        seen.append(model.weight.grad.abs().max().item())

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    state = train_one_epoch(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.5), iter(batches),
                            EpochState.empty(4, torch.device("cpu")), scaler=scaler, grad_clip=grad_clip,
                            before_optimizer_step=before, wants_unscaled=lambda s: s.step % 2 == 0)
    assert state.losses.tolist() == pytest.approx(losses, abs=1e-6)
    assert torch.allclose(model.weight, expected.weight, atol=1e-5)
    assert torch.allclose(model.bias, expected.bias, atol=1e-5)
    # steps 0 and 2 asked for unscaled gradients (or clipping unscaled them anyway): below 10; steps 1 and 3 see
    # them still multiplied by the scale (2 ** 12) unless clipping unscaled them first
    assert seen[0] < 10 and seen[2] < 10
    if grad_clip is None:
        assert seen[1] > 100 and seen[3] > 100
    else:
        assert seen[1] < 10 and seen[3] < 10
