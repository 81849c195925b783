"""Fault tolerance: exact resume after SIGKILL, signals, non-finite loss, failed saves, unsafe checkpoints; the
resume policy (what may change on resume) over every config key."""

from __future__ import annotations

import csv
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml

from cnnctl.config import Config
from cnnctl.errors import CnnctlError
from cnnctl.training.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT, explode_loss_from, run_cnnctl, train_crashing_after, train_run, write_config

# Dropout, augmentation and mid-epoch saves: every source of randomness and every kind of resume point.
EXACT = """\
seed: 3
data: {dataset: digits, batch_size: 32, augment: {crop_padding: 1, hflip: true}}
model: {arch: lenet5, dropout: 0.3}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.0001}
scheduler: {name: cosine, warmup_epochs: 0.5}
train: {epochs: 3, early_stopping: {patience: 10}, checkpoint: {save_every: 1, save_every_steps: 7}}
"""


def tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every weight and optimizer tensor of a checkpoint, by a flat name."""
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, state in ckpt["optimizer"]["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                out[f"optimizer.{pid}.{k}"] = v
    return out


def max_difference(a: dict, b: dict) -> float:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0 for k in ta)


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    for row in rows:
        row.pop("epoch_seconds")
    return rows


def start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnctl", "train", str(cfg), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cfg = write_config(tmp / "exact.yaml", EXACT)
    result = run_cnnctl("train", cfg, "--out", tmp / "runs")
    assert result.exit_code == 0, result.stderr
    return cfg, Path(result.stdout.strip())


def test_sigkill_at_random_moments_then_resume_is_bit_exact(reference, tmp_path):
    cfg, ref_dir = reference
    rng = random.Random(1)
    out = tmp_path / "runs"
    run_dir = out / "exact"
    kills = 0
    proc = start(cfg, out)
    while True:
        # Wait until there is something to resume from, then kill at a random moment after it.
        deadline = time.monotonic() + 120
        while not (run_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and kills < 3:
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
            proc = start(cfg, out, "--resume", str(run_dir))
            continue
        proc.communicate(timeout=300)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        break
    assert kills >= 1
    final, expected = load_checkpoint(run_dir / "last.pt"), load_checkpoint(ref_dir / "last.pt")
    assert final["step"] == expected["step"]
    assert max_difference(final, expected) == 0.0
    assert metrics_without_time(run_dir) == metrics_without_time(ref_dir)


def test_in_process_crash_mid_epoch_resumes_exactly(reference, tmp_path, monkeypatch, cli):
    """A crash right after a mid-epoch save (step 7 of epoch 2) and one after an epoch-end save."""
    cfg, ref_dir = reference

    for crash_at in (len_of_epoch(cfg) + 7, 2 * len_of_epoch(cfg)):
        out = tmp_path / f"runs{crash_at}"
        train_crashing_after(cli, monkeypatch, cfg, out, crash_at)
        assert load_checkpoint(out / "exact" / "last.pt")["step"] == crash_at
        result = cli("train", "--resume", out / "exact")
        assert result.exit_code == 0, result.output
        assert max_difference(load_checkpoint(out / "exact" / "last.pt"), load_checkpoint(ref_dir / "last.pt")) == 0.0
        assert metrics_without_time(out / "exact") == metrics_without_time(ref_dir)


def len_of_epoch(cfg: Path) -> int:
    from cnnctl.config import load_config
    from cnnctl.data.base import load_data

    config, _ = load_config(cfg)
    data = load_data(config.data, config.seed)
    n = len(data.train.labels)
    steps = -(-n // config.data.batch_size)
    return steps - 1 if n % config.data.batch_size == 1 else steps


def test_extend_a_finished_run(reference, tmp_path, cli):
    cfg, ref_dir = reference
    import shutil

    run_dir = tmp_path / "exact"
    shutil.copytree(ref_dir, run_dir)
    again = cli("train", "--resume", run_dir)
    assert again.exit_code == 2 and "already finished 3 of 3 epochs" in again.stderr
    result = cli("train", "--resume", run_dir, "--set", "train.epochs=5")
    assert result.exit_code == 0, result.output
    rows = metrics_without_time(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[:3] == metrics_without_time(ref_dir)
    assert load_checkpoint(run_dir / "last.pt")["config"]["train"]["epochs"] == 5


@pytest.mark.parametrize(("key", "sets"), [("model.arch", ["model.arch=resnet20"]), ("data.batch_size", ["data.batch_size=16"]),
                                           ("optimizer.name", ["optimizer.name=adam", "optimizer.nesterov=false"]),
                                           ("data.dataset", ["data.dataset=fake"])])
def test_resume_refuses_changes_of_meaning(reference, cli, key, sets):
    _, ref_dir = reference
    before = (ref_dir / "last.pt").read_bytes()
    args = [a for kv in sets for a in ("--set", kv)]
    result = cli("train", "--resume", ref_dir, *args, "--set", "train.epochs=9")
    assert result.exit_code == 2
    assert key in result.stderr and "different run" in result.stderr
    assert (ref_dir / "last.pt").read_bytes() == before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_prints_resume_command(tmp_path, sig, code):
    cfg = write_config(tmp_path / "sig.yaml", EXACT.replace("epochs: 3", "epochs: 200"))
    proc = start(cfg, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "sig"
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"cnnctl train --resume {run_dir}" in stderr
    assert "Traceback" not in stderr
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["step"] > 0


def test_nonfinite_loss_exits_1_and_keeps_last_good_checkpoint(tmp_path, cli, monkeypatch):
    explode_loss_from(monkeypatch, 50)
    cfg = write_config(tmp_path / "nan.yaml", """\
data: {dataset: digits, batch_size: 32}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.001}
train: {epochs: 3, checkpoint: {save_every_steps: 5}}
""")
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert "nan at epoch 2, step 9" in result.stderr
    assert "lower optimizer.lr" in result.stderr and "grad_clip" in result.stderr
    ckpt = load_checkpoint(tmp_path / "runs" / "nan" / "last.pt")
    assert ckpt["step"] == 46  # epoch 1 ends at step 41; the last save before the NaN at step 50
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_failed_save_reports_the_file_and_keeps_the_previous(tmp_path, cli, monkeypatch):
    cfg = write_config(tmp_path / "disk.yaml", "data: {dataset: digits}\ntrain: {epochs: 3}\n")
    import cnnctl.training.checkpoint as checkpoint

    real_fsync = os.fsync
    run_dir = tmp_path / "runs" / "disk"

    def fsync(fd):
        # Once a first last.pt exists, the disk is full for every later file written.
        if (run_dir / "last.pt").exists() and stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr and "intact" in result.stderr
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    load_checkpoint(run_dir / "last.pt")


class Pickled:
    pass


@pytest.fixture(scope="module")
def good_ckpt(reference):
    return reference[1] / "best.pt"


def test_checkpoint_safety(cli, tmp_path, good_ckpt):
    ckpt = load_checkpoint(good_ckpt)
    cases = {}
    evil = dict(ckpt, extra=Pickled())
    torch.save(evil, tmp_path / "code.pt")
    cases["code.pt"] = "pickled Python objects"
    data = good_ckpt.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated.pt"] = "truncated"
    (tmp_path / "text.pt").write_text("this is not a checkpoint\n")
    cases["text.pt"] = "not a PyTorch checkpoint"
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bare.pt")
    cases["bare.pt"] = "not a cnnctl checkpoint"
    save_checkpoint(tmp_path / "newer.pt", dict(ckpt, format=99))
    cases["newer.pt"] = "newer cnnctl"
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty.pt"] = "empty file"
    mismatch = dict(ckpt, config={**ckpt["config"], "model": {**ckpt["config"]["model"], "arch": "resnet20"}})
    save_checkpoint(tmp_path / "mismatch.pt", mismatch)
    cases["mismatch.pt"] = "do not match"
    for name, words in cases.items():
        for command in (["eval"], ["predict", str(ROOT / "README.md"), "-c"]):
            result = cli(*command, tmp_path / name)
            assert result.exit_code == 2, (name, result.output)
            assert words in result.stderr and name in result.stderr, (name, result.stderr)
            assert "Traceback" not in result.output
        resumed = cli("train", "--resume", tmp_path / name)
        assert resumed.exit_code == 2 and name in resumed.stderr
    result = cli("eval", tmp_path)
    assert result.exit_code == 2 and "best.pt" in result.stderr


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize(("args", "shown", "key"), [
    (["--out", "elsewhere"], "--out elsewhere", "out"),
    (["--name", "renamed"], "--name renamed", "name"),
    (["--set", "out=elsewhere"], "--set out=elsewhere", "out"),
    (["--set", "name=renamed"], "--set name=renamed", "name"),
    (["--set", "name=first", "--name", "renamed"], "--name renamed", "name"),  # --name wins, and is the one named
], ids=["out", "name", "set-out", "set-name", "name-over-set"])
def test_resume_refuses_to_move_or_rename_the_run(reference, cli, tmp_path, monkeypatch, args, shown, key):
    """Issue 23: ``--resume RUN --out/--name`` trained on in RUN while its config.yaml recorded the new name and
    out. Refused, naming the flag and where the run stays, before anything is written anywhere."""
    _, ref_dir = reference
    monkeypatch.chdir(tmp_path)
    before = _files(ref_dir)
    result = cli("train", "--resume", ref_dir, *args, "--set", "train.epochs=9")
    here = ref_dir.name if key == "name" else ref_dir.parent
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {shown}: a resumed run stays in {ref_dir} (--resume continues a run where it is; "
                             f"it does not move or rename it). Leave it out, or give the run's own {key} ({here}); to "
                             "move a run, move its folder and resume it there\n")
    assert _files(ref_dir) == before
    assert list(tmp_path.iterdir()) == []


def test_resume_accepts_the_folder_a_moved_run_is_in(reference, cli, tmp_path):
    """The run's own name and out pass the check and reach the next one (the run is finished): here the folder a
    moved run is in now; the saved ones, and what config.yaml then records, are in test_config_edges.py."""
    import shutil

    moved = tmp_path / "moved" / "renamed"
    shutil.copytree(reference[1], moved)
    before = _files(moved)
    result = cli("train", "--resume", moved, "--name", "renamed", "--out", moved.parent)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: --resume: {moved} already finished 3 of 3 epochs; to train on, add --set "
                             "train.epochs=N with N > 3\n")
    assert _files(moved) == before


# ---------------------------------------------------------------- the resume policy over every config key

# What README ("What may change on resume") promises; everything else is refused and named.
RESUME_ALLOWED = {
    "name", "out", "train.epochs", "train.device", "train.threads", "train.compile", "train.tensorboard",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.restore_best",
    "train.checkpoint.save_every", "train.checkpoint.save_every_steps", "data.root", "data.download",
    "data.workers", "data.eval_batch_size", "data.cache", "data.cache_dir", "data.cache_verify",
    "train.record_gradients_every",
    "train.record_activations",
    "train.cache_features",
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
    "train.freeze_epochs": ["train.freeze=body", "train.freeze_epochs=1"],
    "train.frozen_lr_factor": ["train.freeze=body", "train.freeze_epochs=1", "train.frozen_lr_factor=0.1"],
    "model.pretrained": ["model.arch=resnet18", "model.pretrained=true"],
}

# A value other than BASE's for keys whose alternative is not obvious from the type.
ALTERNATIVES = {
    "name": "other", "out": "elsewhere", "data.dataset": "fake", "data.root": "/tmp/elsewhere", "data.normalize": "none",
    "data.workers": 0, "data.eval_batch_size": 32, "data.image_size": 16, "model.arch": "resnet20",
    "optimizer.name": "adamw", "optimizer.betas": [0.8, 0.999], "scheduler.name": "step", "scheduler.milestones": [5],
    "train.epochs": 1, "train.threads": 2, "train.device": "cpu", "train.channels_last": False, "train.grad_clip": 1.0, "train.checkpoint.save_every_steps": 5,
    "model.init_from": "runs/other/best.pt",
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


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished digits runs (2 epochs, not stopped early): with early stopping, and without."""
    tmp = tmp_path_factory.mktemp("resume")
    threads = torch.get_num_threads()
    runs = {"with": train_run(write_config(tmp / "with.yaml", BASE), tmp / "runs"),
            "without": train_run(write_config(tmp / "without.yaml", BASE.replace("early_stopping: {patience: 5}",
                                                                                 "early_stopping: null")), tmp / "runs")}
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
