"""Tests that catch small bugs: each one fails on a one-line mutation of the code a user relies on (issue 18).

Every test checks what a user sees (the CLI, or a public function) against numbers computed here, apart from
the code under test: the surviving checkpoint after a failed write, an ensemble's accuracy, the resume policy over
every config key, ``--set`` values holding ``=``, top-k on few classes, the plateau lr after warmup, early
stopping on a flat loss, top-5 on 5 classes, and the stratified split's per-class counts.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import tempfile
import typing
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cnnctl import __version__
from cnnctl.config import Config, load_config, parse_override
from cnnctl.errors import CnnctlError, UsageError
from cnnctl.training.checkpoint import FORMAT, atomic_write, load_checkpoint, save_checkpoint
from tests.conftest import write_config

# ---------------------------------------------------------------- atomic writes


def fake_checkpoint(step: int) -> dict:
    """The smallest dict load_checkpoint accepts, with 80 kB of weights (more than one write buffer)."""
    return {"format": FORMAT, "config": {}, "classes": [],
            "input": {"channels": 1, "size": [8, 8], "mean": [0.5], "std": [0.25]}, "model": {"w": torch.full((20_000,), float(step))},
            "step": step}


class FailingFile:
    """A file object that raises ENOSPC at one stage (``write`` after half the bytes, or ``flush``)."""

    def __init__(self, real, stage: str) -> None:
        self.real, self.stage = real, stage

    def write(self, data):
        if self.stage == "write":
            view = memoryview(data).cast("B") if not isinstance(data, str) else data
            self.real.write(view[: len(view) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def flush(self):
        if self.stage == "flush":
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.flush()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.real.close()
        except OSError:
            pass


STAGES = ["open", "write", "flush", "fsync", "replace"]


@pytest.mark.parametrize("stage", STAGES)
def test_atomic_write_failure_at_every_stage_keeps_the_previous_checkpoint(tmp_path, monkeypatch, stage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, fake_checkpoint(1))
    calls = []

    def fail(*args, **kwargs):
        calls.append(stage)
        raise OSError(errno.ENOSPC, "No space left on device")

    if stage == "open":
        monkeypatch.setattr(tempfile, "mkstemp", fail)
    elif stage in ("write", "flush"):
        real_fdopen = os.fdopen

        def fdopen(*args, **kwargs):
            calls.append(stage)
            return FailingFile(real_fdopen(*args, **kwargs), stage)

        monkeypatch.setattr(os, "fdopen", fdopen)
    elif stage == "fsync":
        real_fsync = os.fsync

        def fsync(fd):
            if os.path.isfile(f"/proc/self/fd/{fd}") or not os.path.isdir(f"/proc/self/fd/{fd}"):
                fail()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    else:
        monkeypatch.setattr(os, "replace", fail)

    # The open stage fails before any temporary file exists; today that OSError is not yet a CnnctlError.
    expected = (CnnctlError, OSError) if stage == "open" else CnnctlError
    with pytest.raises(expected) as info:
        save_checkpoint(path, fake_checkpoint(2))
    monkeypatch.undo()

    assert calls, f"the {stage} stage was never reached: the injection point moved"
    if isinstance(info.value, CnnctlError):
        assert info.value.exit_code == 1
        assert "last.pt" in str(info.value) and "No space left on device" in str(info.value)
    survivor = load_checkpoint(path)  # not a 0-byte or half-written file
    assert survivor["step"] == 1
    assert torch.equal(survivor["model"]["w"], torch.full((20_000,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_atomic_write_success_replaces_the_whole_file(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write(path, lambda f: f.write("old text, longer than the new one\n"), binary=False)
    atomic_write(path, lambda f: f.write("new\n"), binary=False)
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- hand-made digits checkpoints

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


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[tuple[Path, torch.Tensor, torch.Tensor]]:
    return make_members(tmp_path_factory.mktemp("members"))


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


def test_ensemble_accuracy_is_that_of_the_mean_of_softmax(cli, members):
    x, y = digits_split("test")
    probs = [softmax64(x, w, b) for _, w, b in members]
    mean = torch.stack(probs).mean(0)
    top2 = mean.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-5  # no near-tie that float32 could decide otherwise
    expected = int((mean.argmax(1) == y).sum()) / len(y)
    alone = [int((p.argmax(1) == y).sum()) / len(y) for p in probs]
    assert expected not in alone  # the ensemble's number is its own: a member alone would not give it

    result = cli("eval", members[0][0], members[1][0], "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ensemble = report["ensemble"]
    assert ensemble["n"] == len(y) == 359
    assert ensemble["accuracy"] == expected
    assert [m["accuracy"] for m in report["members"]] == alone
    assert ensemble["loss"] == pytest.approx(float(-mean[torch.arange(len(y)), y].log().mean()), rel=1e-5)
    top5 = int((mean.topk(5, dim=1).indices == y[:, None]).any(1).sum()) / len(y)
    assert ensemble["top5"] == pytest.approx(top5, abs=1e-12)
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((y, mean.argmax(1)), torch.ones(len(y), dtype=torch.int64), accumulate=True)
    assert ensemble["confusion_matrix"] == confusion.tolist()


# ---------------------------------------------------------------- predict --topk


def test_predict_topk_above_the_class_count_shows_every_class(cli, members, tmp_path):
    x, _ = digits_split("test")
    image = tmp_path / "digit.png"
    Image.fromarray(x[0, 0].numpy(), mode="L").save(image)
    path, weight, bias = members[0]

    result = cli("predict", image, "-c", path, "--topk", "20", "--json")

    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    topk = entry["topk"]
    assert len(topk) == 10
    assert sorted(t["index"] for t in topk) == list(range(10))
    expected = softmax64(x[:1], weight, bias)[0]
    assert [t["index"] for t in topk] == expected.argsort(descending=True).tolist()
    assert [t["prob"] for t in topk] == pytest.approx(expected.sort(descending=True).values.tolist(), abs=1e-6)
    text = cli("predict", image, "-c", path, "--topk", "20")
    assert text.exit_code == 0 and text.stdout.count("%") == 10


# ---------------------------------------------------------------- top-5 needs at least 5 classes


@pytest.mark.parametrize("classes", [4, 5, 6])
def test_top5_is_reported_from_five_classes_on(cli, tmp_path, classes):
    data = {"dataset": "fake", "num_classes": classes, "num_samples": 40, "channels": 1, "image_size": 8}
    g = torch.Generator().manual_seed(classes)
    path = linear_checkpoint(tmp_path / "best.pt", torch.randn(classes, 64, generator=g), torch.zeros(classes),
                             classes=[str(i) for i in range(classes)], data=data)

    result = cli("eval", path, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if classes < 5:
        assert report["top5"] is None
        assert "top-5" not in cli("eval", path).stdout
    else:
        assert report["top5"] is not None
        if classes == 5:
            assert report["top5"] == 1.0  # five guesses out of five classes always hold the label
        assert "top-5" in cli("eval", path).stdout


# ---------------------------------------------------------------- --set values holding "="


def test_set_value_may_hold_equals_signs(cli, tmp_path):
    assert parse_override("data.root=/mnt/set=a") == (["data", "root"], "/mnt/set=a")
    assert parse_override("name=a=b=c") == (["name"], "a=b=c")
    path = write_config(tmp_path / "c.yaml", "data: {dataset: digits}\n")
    cfg, _ = load_config(path, ["data.root=/mnt/set=a"])
    assert cfg.data.root == "/mnt/set=a"
    result = cli("summary", path, "--set", "data.root=/mnt/set=a")
    assert result.exit_code == 0, result.output


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


# ---------------------------------------------------------------- early stopping on a flat loss

FLAT = """\
seed: 0
data: {dataset: digits, batch_size: 256}
model: {arch: custom, layers: [flatten, linear]}
optimizer: {name: sgd, lr: 1.0e-30, momentum: 0.0}
train: {epochs: 6, early_stopping: {monitor: val_loss, mode: min, patience: 2}}
"""


def test_early_stopping_min_mode_stops_a_flat_loss(cli, tmp_path):
    """An lr of 1e-30 moves no float32 weight: val_loss is the same number every epoch, which is no improvement."""
    cfg = write_config(tmp_path / "flat.yaml", FLAT)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len({r["val_loss"] for r in rows}) == 1  # the loss is flat
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["epochs"] == 3 and len(rows) == 3  # best at 1, no improvement at 2 and 3: patience 2 spent
    assert summary["best_epoch"] == 1


def test_early_stopping_min_mode_counts_an_equal_value_as_no_improvement():
    try:
        from cnnctl.training.hooks import EarlyStopping
    except ImportError:
        from cnnctl.callbacks import EarlyStopping
    for mode in ("min", "auto"):
        es = EarlyStopping("val_loss", mode, patience=2)
        assert [es.step(0.5, epoch)[0] for epoch in (1, 2, 3)] == [False, False, True]
    es = EarlyStopping("val_acc", "max", patience=2)
    assert [es.step(0.5, epoch)[0] for epoch in (1, 2, 3)] == [False, False, True]
    es = EarlyStopping("val_loss", "min", patience=1, min_delta=0.1)
    assert [es.step(v, e)[0] for e, v in enumerate([1.0, 0.9], 1)] == [False, True]  # 0.1 better is not > 0.1


def test_early_stopping_state_is_a_file_format_and_resumes_mid_wait():
    """The state's keys are what checkpoints hold (old checkpoints must keep loading); a resumed wait goes on."""
    try:
        from cnnctl.training.hooks import EarlyStopping
    except ImportError:
        from cnnctl.callbacks import EarlyStopping
    fresh = EarlyStopping("val_loss", "auto", patience=3)
    assert fresh.restore_best is True
    assert fresh.state_dict() == {"monitor": "val_loss", "mode": "min", "best": None, "best_epoch": None, "wait": 0,
                                  "patience": 3, "stopped_epoch": None}
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.95], 1):
        fresh.step(value, epoch)
    assert fresh.state_dict() == {"monitor": "val_loss", "mode": "min", "best": 0.8, "best_epoch": 2, "wait": 2,
                                  "patience": 3, "stopped_epoch": None}
    resumed = EarlyStopping("val_loss", "auto", patience=3)
    resumed.load_state_dict(fresh.state_dict())
    stop, reason = resumed.step(0.85, 5)
    assert stop and resumed.stopped_epoch == 5 and "best 0.8000 at epoch 2" in reason
    assert resumed.state_dict()["stopped_epoch"] == 5
    stopped = EarlyStopping("val_loss", "auto", patience=3)
    stopped.load_state_dict(resumed.state_dict())
    assert stopped.stopped_epoch == 5 and stopped.wait == 3
    assert EarlyStopping("val_loss", "auto", patience=1, restore_best=False).restore_best is False
    with pytest.raises(UsageError, match="patience must be at least 1, not 0"):
        EarlyStopping(patience=0)
    nan = EarlyStopping("val_loss", patience=3)
    assert nan.step(float("nan"), 1)[0] and nan.stopped_epoch == 1


def test_best_metric_ignores_non_finite_values_and_honours_min_delta_in_max_mode():
    """The mutants scripts/mutation.sh found alive in callbacks: NaN as a best value, min_delta's sign in max mode,
    the constructor's defaults, and an old state without "wait"."""
    try:
        from cnnctl.training.hooks import BestMetric, EarlyStopping, resolve_mode
    except ImportError:
        from cnnctl.callbacks import BestMetric, EarlyStopping, resolve_mode
    best = BestMetric("val_acc")
    assert not best.update(float("nan"), 1) and best.best is None
    assert best.update(0.5, 2) and not best.update(float("inf"), 3) and best.best == 0.5
    strict = BestMetric("val_acc", "max", min_delta=0.1)
    assert strict.update(0.5, 1)
    assert not strict.update(0.55, 2) and not strict.update(0.6, 3) and strict.update(0.65, 4)
    default = EarlyStopping()
    assert (default.monitor, default.tracker.mode, default.patience) == ("val_loss", "min", 5)
    old = EarlyStopping(patience=2)
    old.load_state_dict({"monitor": "val_loss", "mode": "min", "best": 1.0, "best_epoch": 1})
    assert old.wait == 0 and old.stopped_epoch is None
    with pytest.raises(UsageError, match="mode must be auto, min or max, not 'up'"):
        resolve_mode("val_loss", "up")


# ---------------------------------------------------------------- stratified split


def largest_remainder(counts: list[int], n_held: int) -> list[int]:
    """Hamilton's apportionment of ``n_held`` over classes of ``counts`` (distinct remainders assumed)."""
    n = sum(counts)
    exact = [Fraction(c * n_held, n) for c in counts]
    quota = [math.floor(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: exact[i] - quota[i], reverse=True)
    for i in order[: n_held - sum(quota)]:
        quota[i] += 1
    return quota


@pytest.mark.parametrize(("counts", "fraction"), [([7, 5, 3], 0.4), ([10, 7, 4], 0.3), ([9, 6, 2, 14], 0.35),
                                                  ([11, 3, 8], 0.45)])
def test_stratified_split_gives_leftover_places_to_the_largest_remainders(counts, fraction):
    from cnnctl.data.base import TensorSplit, split_off, stratified_indices

    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    n_held = round(len(labels) * fraction)
    expected = largest_remainder(counts, n_held)
    remainders = sorted((Fraction(c * n_held, sum(counts)) % 1 for c in counts), reverse=True)
    short = n_held - sum(math.floor(Fraction(c * n_held, sum(counts))) for c in counts)
    assert 0 < short < len(counts) and remainders[short - 1] > remainders[short]  # which classes round up is unique
    for seed in (0, 1, 2):
        kept, held = stratified_indices(labels, fraction, seed)
        assert torch.bincount(labels[held], minlength=len(counts)).tolist() == expected
        assert sorted(torch.cat([kept, held]).tolist()) == list(range(len(labels)))
    images = torch.arange(len(labels), dtype=torch.uint8)[:, None, None, None]
    rest, part = split_off(TensorSplit(images, labels), fraction, 0)
    assert torch.bincount(part.labels, minlength=len(counts)).tolist() == expected
    assert torch.equal(labels[part.images.flatten().long()], part.labels)  # images and labels moved together
    assert len(rest) + len(part) == len(labels)


# ---------------------------------------------------------------- resume policy over every config key

# What README ("What may change on resume") promises; everything else is refused and named.
RESUME_ALLOWED = {
    "name", "out", "train.epochs", "train.device", "train.threads", "train.compile", "train.tensorboard",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.restore_best",
    "train.checkpoint.save_every", "train.checkpoint.save_every_steps", "data.root", "data.download",
    "data.workers", "data.eval_batch_size", "data.cache", "data.cache_dir", "data.cache_verify",
    "train.record_gradients_every",
    "train.record_activations",
}
BASE = """\
seed: 0
data: {dataset: digits, batch_size: 256}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 2, early_stopping: {patience: 5}}
"""
# Keys that cannot change alone and still validate, with what goes with them.
TOGETHER = {
    "model.layers": ["model.arch=custom", "model.layers=[flatten, linear]"],
    "data.num_classes": ["data.dataset=fake", "data.num_classes=3"],
    "data.num_samples": ["data.dataset=fake", "data.num_samples=50"],
    "data.channels": ["data.dataset=fake", "data.channels=3"],
    "optimizer.nesterov": ["optimizer.name=sgd", "optimizer.nesterov=true"],
}
# A value other than BASE's for keys whose alternative is not obvious from the type.
ALTERNATIVES = {
    "name": "other", "out": "elsewhere", "data.dataset": "fake", "data.root": "/tmp/elsewhere", "data.normalize": "none",
    "data.workers": 0, "data.eval_batch_size": 32, "data.image_size": 16, "model.arch": "resnet20",
    "optimizer.name": "adamw", "optimizer.betas": [0.8, 0.999], "scheduler.name": "step", "scheduler.milestones": [5],
    "train.epochs": 1, "train.threads": 2, "train.device": "cpu", "train.channels_last": False, "train.grad_clip": 1.0, "train.checkpoint.save_every_steps": 5,
}


def _field_choices(key: str) -> list[typing.Any]:
    """The Literal values a config key may take, from the pydantic models (for keys added after this test)."""
    model: typing.Any = Config
    parts = key.split(".")
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation
        model = next(a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type))
    found, todo = [], [model.model_fields[parts[-1]].annotation]
    while todo:
        a = todo.pop()
        if typing.get_origin(a) is typing.Literal:
            found += list(typing.get_args(a))
        else:
            todo += list(typing.get_args(a))
    return found


def alternative(key: str, value: typing.Any) -> list[str]:
    """``--set`` arguments that change ``key`` alone (or with what it needs) to a valid, different value."""
    if key in TOGETHER:
        return TOGETHER[key]
    if key in ALTERNATIVES:
        new = ALTERNATIVES[key]
    elif isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = value + 1
    elif isinstance(value, float):
        new = value / 2 if value > 0 else 0.1
    else:
        choices = [c for c in _field_choices(key) if c != value]
        if not choices:
            pytest.fail(f"no alternative value for config key {key!r}: add one to ALTERNATIVES in {__file__}")
        new = choices[0]
    assert new != value, key
    text = yaml.safe_dump(new, default_flow_style=True).removesuffix("\n").removesuffix("\n...")
    return [f"{key}={text}"]


def flat_keys(data: dict, prefix: str = "") -> dict[str, typing.Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train(tmp: Path, name: str, text: str) -> Path:
    from typer.testing import CliRunner

    from cnnctl.cli import app

    cfg = write_config(tmp / f"{name}.yaml", text)
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp / "runs")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished digits runs (2 epochs, not stopped early): with early stopping, and without."""
    tmp = tmp_path_factory.mktemp("resume")
    threads = torch.get_num_threads()
    runs = {"with": _train(tmp, "with", BASE),
            "without": _train(tmp, "without", BASE.replace("early_stopping: {patience: 5}", "early_stopping: null"))}
    yield runs
    torch.set_num_threads(threads)


def resume_cases() -> list:
    keys = flat_keys(Config.model_validate(load_yaml_text(BASE)).dump())
    keys.pop("name")  # None in BASE: the config's stem fills it in
    keys.pop("data.cache_dir")  # imagefolder only (with cache: disk); BASE trains digits, where no value validates
    keys.pop("data.cache_verify")  # the same
    cases = [pytest.param(k, v, id=k) for k, v in sorted(keys.items())]
    return cases + [pytest.param("name", "with", id="name")]


def load_yaml_text(text: str) -> dict:
    return yaml.safe_load(text)


@pytest.mark.parametrize(("key", "value"), resume_cases())
def test_resume_allows_or_refuses_each_key_changed_alone(cli, finished_runs, key, value):
    run = finished_runs["with"]
    before = (run / "last.pt").read_bytes()
    args = [a for kv in alternative(key, value) for a in ("--set", kv)]
    threads = torch.get_num_threads()

    result = cli("train", "--resume", run, *args)

    torch.set_num_threads(threads)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (run / "last.pt").read_bytes() == before
    if key in ("name", "out"):  # allowed only to the run's own place; another is refused (test_resume.py)
        assert f"error: --set {args[1]}: a resumed run stays in {run} " in result.stderr, result.stderr
    elif key in RESUME_ALLOWED:
        # Past the policy: refused only because the run already did its 2 epochs (train.epochs=1 included).
        assert "different run" not in result.stderr, result.stderr
        assert "already finished" in result.stderr, result.stderr
    else:
        assert "different run" in result.stderr, result.stderr
        assert key in result.stderr, result.stderr


@pytest.mark.parametrize(("key", "value"), resume_cases())
def test_resolve_run_applies_the_resume_policy_to_each_key_changed_alone(tmp_path, key, value):
    """The policy above where it is decided, on a checkpoint's config with no run trained (what mutation testing runs)."""
    from cnnctl.config import RESUME_ALLOWED, resolve_run

    saved = resolve_run({**load_yaml_text(BASE), "name": "with"}).config.dump()
    sets = alternative(key, value)
    resume = dict(resume_from=tmp_path / "last.pt", checkpoint={"config": saved})
    if key in ("name", "out"):  # allowed only to the run's own place (test_config_edges.py); another is refused
        with pytest.raises(CnnctlError, match=f"^--set {sets[0]}: a resumed run stays in {tmp_path} "):
            resolve_run(None, overrides=sets, **resume)
    elif key in RESUME_ALLOWED:
        resumed = resolve_run(None, overrides=sets, **resume).config.dump()
        assert flat_keys(resumed)[key] != value
        assert {k for k, v in flat_keys(resumed).items() if flat_keys(saved).get(k) != v} == {key}
    else:
        with pytest.raises(CnnctlError) as info:
            resolve_run(None, overrides=sets, **resume)
        assert info.value.exit_code == 2
        assert str(info.value).startswith("--resume: changing ") and "would make this a different run" in str(info.value)
        assert f"{key} ({flat_keys(saved).get(key)!r} -> " in str(info.value)


@pytest.mark.parametrize("sets", [["train.early_stopping.patience=3"], ["train.early_stopping={monitor: val_acc}"]],
                         ids=["patience", "section"])
def test_resume_refuses_turning_early_stopping_on(cli, finished_runs, sets):
    run = finished_runs["without"]
    before = (run / "last.pt").read_bytes()
    result = cli("train", "--resume", run, *[a for kv in sets for a in ("--set", kv)])  # accepted: "already finished"
    assert result.exit_code == 2, result.output
    assert "different run" in result.stderr and "train.early_stopping" in result.stderr
    assert (run / "last.pt").read_bytes() == before


def test_resume_refuses_turning_early_stopping_off(cli, finished_runs):
    run = finished_runs["with"]
    result = cli("train", "--resume", run, "--set", "train.early_stopping=null")
    assert result.exit_code == 2, result.output
    assert "different run" in result.stderr and "train.early_stopping" in result.stderr


def test_resume_with_allowed_changes_trains_on(cli, finished_runs, tmp_path):
    """The allowed keys really are accepted: extending with several of them trains epochs 3 and 4."""
    run = tmp_path / "with"
    shutil.copytree(finished_runs["with"], run)
    result = cli("train", "--resume", run, "--set", "train.epochs=4", "--set", "train.early_stopping.patience=9",
                 "--set", "data.workers=0", "--set", "train.checkpoint.save_every=2")
    assert result.exit_code == 0, result.output
    assert [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())] == [1, 2, 3, 4]
    saved = load_checkpoint(run / "last.pt")["config"]
    assert saved["train"]["epochs"] == 4 and saved["train"]["early_stopping"]["patience"] == 9


# ---------------------------------------------------------------- restore_best

RESTORE = """\
seed: 0
data: {dataset: fake, num_samples: 200, num_classes: 3, channels: 1, image_size: 8, batch_size: 32}
model: {arch: custom, layers: [flatten, linear]}
optimizer: {name: adam, lr: 0.05}
train: {epochs: 4, early_stopping: {patience: 10, restore_best: RESTORE}}
"""


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_decides_which_weights_the_test_split_sees(cli, tmp_path, restore):
    """Random images and labels: val_acc wanders at chance (epoch 1 is the best here, seeded), so the best epoch is
    not the last; the summary's test numbers are those of best.pt (restore_best: true) or last.pt (false), as
    `cnnctl eval` computes them."""
    cfg = write_config(tmp_path / "r.yaml", RESTORE.replace("RESTORE", str(restore).lower()))
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] < summary["epochs"] == 4  # otherwise best and last are the same weights
    evaluated = {}
    for name in ("best", "last"):
        report = cli("eval", run / f"{name}.pt", "--json")
        assert report.exit_code == 0, report.output
        evaluated[name] = json.loads(report.stdout)
    assert evaluated["best"]["confusion_matrix"] != evaluated["last"]["confusion_matrix"]
    used = "best" if restore else "last"
    assert summary["test_weights"] == used
    assert summary["test"]["confusion_matrix"] == evaluated[used]["confusion_matrix"]
    assert summary["test"]["accuracy"] == evaluated[used]["accuracy"]
