"""Hostile outputs, files and data (issue 13: 3, 4 status.json, 5, 6, 8, 10, 12, 14, 15).

Unwritable outputs: every failed mkdir/open/write of an output is ``WriteError`` (exit 1) naming the path and the
operating system's reason. The tests run as root in CI, where a chmod-ed folder is still writable, so the read-only
location is ``/sys`` (sysfs refuses new entries, to root as well), a path under a regular file, or, for a resume, a
subprocess run as ``nobody`` on a root-owned run directory. Bad files and data are exit 2 naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cnnctl.insight.runs import STATUS_FILE
from cnnctl.training.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT, explode_loss_from, run_cnnctl, write_config
from tests.datafiles import write_image_folder

READ_ONLY = Path("/sys")  # mkdir and file creation fail there for every user, root included
read_only = pytest.mark.skipif(not READ_ONLY.is_dir() or os.access(READ_ONLY, os.W_OK) and os.geteuid() != 0,
                               reason="needs /sys (sysfs) as a location nobody can write")

CONFIG = """\
name: pets
data: {dataset: imagefolder, root: %s, batch_size: 8, val_split: 0.2, test_split: 0.2}
model: {arch: custom, layers: [{conv: {out: 4, kernel: 3}}, relu, flatten, linear]}
train: {epochs: 1}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A world-readable folder (``nobody`` must read it) with cat/dog, apple/banana and a/b/c image folders and one
    finished cat/dog run, ``runs/pets``, trained through the CLI."""
    base = Path(tempfile.mkdtemp(prefix="cnnctl-hostile-io-"))
    base.chmod(0o755)
    for name, classes in (("pets", ["cat", "dog"]), ("fruit", ["apple", "banana"]), ("three", ["a", "b", "c"])):
        write_image_folder(base / name, {c: 12 for c in classes}, channels=3, size=(12, 12))
    cfg = write_config(base / "pets.yaml", CONFIG % (base / "pets"))
    result = run_cnnctl("train", cfg, "--out", base / "runs", cwd=base)
    assert result.exit_code == 0, result.output
    yield base
    shutil.rmtree(base, ignore_errors=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, result.output
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------- 3: unwritable output locations


def test_train_out_that_is_a_regular_file(tmp_path, world, cli):
    out = tmp_path / "runs"
    out.write_text("keep me\n")
    result = cli("train", world / "pets.yaml", "--out", out)
    assert result.exit_code == 1
    assert error_line(result) == f"error: could not write {out}: it is a file, not a folder; give --out a folder " \
                                 "for run directories"
    assert out.read_text() == "keep me\n"


def test_train_out_under_a_regular_file(tmp_path, world, cli):
    (tmp_path / "file").write_text("keep me\n")
    result = cli("train", world / "pets.yaml", "--out", tmp_path / "file" / "runs")
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: could not write {tmp_path / 'file' / 'runs'}: Not a directory")
    assert (tmp_path / "file").read_text() == "keep me\n"


@read_only
def test_train_out_on_a_read_only_location(world, cli):
    out = READ_ONLY / "cnnctl-runs"
    result = cli("train", world / "pets.yaml", "--out", out)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: could not write {out}: ") and "give --out a writable folder" in line
    assert not out.exists()


def test_a_run_that_fails_before_writing_leaves_no_run_folder(tmp_path, world, cli, monkeypatch):
    import cnnctl.training.run
    from cnnctl.errors import WriteError

    def full_disk(path, text):
        raise WriteError(str(path), "No space left on device")

    monkeypatch.setattr(cnnctl.training.run, "write_text", full_disk)  # config.yaml, the first file a run writes
    result = cli("train", world / "pets.yaml", "--out", tmp_path / "runs")
    assert result.exit_code == 1
    assert error_line(result) == f"error: could not write {tmp_path / 'runs' / 'pets' / 'config.yaml'}: No space " \
                                 "left on device"
    assert list((tmp_path / "runs").iterdir()) == [], "the empty run folder is removed"


def as_nobody():
    os.setgid(65534)
    os.setuid(65534)


def nobody_can_run_python() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    try:
        return subprocess.run([sys.executable, "-c", "import torch"], preexec_fn=as_nobody, capture_output=True,
                              cwd="/", timeout=120).returncode == 0
    except OSError:
        return False


def test_resume_of_a_run_whose_lock_cannot_be_created(world, cli):
    """A run folder where .lock cannot be made (here: a folder holds its name) is refused before anything changes:
    a .lock that is not a regular file is foreign input in the run folder (exit 2 naming it, issue 23), not a
    failed write."""
    run = world / "lockless" / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").mkdir()
    before = snapshot(run)
    result = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: {run / '.lock'}: the run lock is a directory, not the regular file")
    assert "rmdir it" in result.stderr and "Traceback" not in result.output
    assert snapshot(run) == before and not (run / STATUS_FILE).exists()


@pytest.mark.slow
def test_resume_of_a_run_in_a_read_only_folder(world, tmp_path):
    """The run folder is root's, the resume runs as nobody: the lock cannot be created, nothing changes.
    (Root writes through any chmod, so this needs root, dropping to nobody, and an interpreter nobody can run.)"""
    if not nobody_can_run_python():
        pytest.skip("needs root and a Python (with torch) that the user nobody can run")
    run = world / "ro-runs" / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    for p in [run.parent, run, *run.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (run / ".lock").unlink(missing_ok=True)
    before = snapshot(run)
    home = Path(tempfile.mkdtemp(prefix="cnnctl-nobody-"))
    home.chmod(0o777)
    try:
        proc = subprocess.run([sys.executable, "-m", "cnnctl", "train", "--resume", str(run), "--set",
                               "train.epochs=2"], capture_output=True, text=True, cwd=home, timeout=300,
                              preexec_fn=as_nobody,
                              env={**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "PYTHONPATH": str(ROOT),
                                   "TORCHINDUCTOR_CACHE_DIR": str(home), "XDG_CACHE_HOME": str(home)})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][0]
    assert line.startswith(f"error: could not write {run / '.lock'}: Permission denied"), line
    assert snapshot(run) == before


@read_only
def test_export_plot_visualize_eval_plots_into_a_read_only_folder(world, cli, tmp_path):
    run = world / "runs" / "pets"
    before = snapshot(run)
    cases = {
        "export": (["export", run, "--format", "torchscript", "-o", READ_ONLY / "pets.pt"], READ_ONLY / "pets.pt"),
        "plot": (["plot", run, "-o", READ_ONLY / "cmp.png"], READ_ONLY / "cmp.png"),
        "visualize": (["visualize", run, "-o", READ_ONLY / "vis"], READ_ONLY / "vis"),
        "eval": (["eval", run, "--plots", READ_ONLY / "plots"], READ_ONLY / "plots"),
    }
    for command, (args, path) in cases.items():
        result = cli(*args)
        assert result.exit_code == 1, (command, result.output)
        assert error_line(result).startswith(f"error: could not write {path}"), (command, result.output)
        assert not path.exists()
    assert snapshot(run) == before


def test_outputs_under_a_regular_file(world, cli, tmp_path):
    run, blocker = world / "runs" / "pets", tmp_path / "file"
    blocker.write_text("keep me\n")
    for args in (["export", run, "--format", "torchscript", "-o", blocker / "sub" / "pets.pt"],
                 ["plot", run, "-o", blocker / "cmp.png"],
                 ["visualize", run, "-o", blocker / "vis"],
                 ["eval", run, "--plots", blocker / "plots"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert error_line(result).startswith(f"error: could not write {blocker}"), (args, result.output)
    assert blocker.read_text() == "keep me\n"


# ---------------------------------------------------------------- 4: status.json


def test_a_failed_run_says_so_in_status_json_and_a_resume_clears_it(tmp_path, cli, monkeypatch):
    explode_loss_from(monkeypatch, 50)
    cfg = write_config(tmp_path / "nan.yaml", "data: {dataset: digits, batch_size: 32}\n"
                       "model: {arch: custom, layers: [flatten, {linear: {out: 16}}, relu, linear]}\n"
                       "train: {epochs: 2, checkpoint: {save_every_steps: 5}}\n")
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    run = tmp_path / "runs" / "nan"
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["status"] == "failed" and "nan" in status["reason"]
    assert error_line(result) == f"error: {status['reason']}"
    listed = cli("runs", tmp_path / "runs", "--json")
    assert json.loads(listed.stdout)[0]["status"] == "failed"
    monkeypatch.undo()
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert not (run / STATUS_FILE).exists()


# ---------------------------------------------------------------- 5: eval on other data


@pytest.mark.parametrize("other, listed", [("fruit", "2 classes (apple, banana)"), ("three", "3 classes (a, b, c)")])
def test_eval_on_data_of_other_classes_is_refused(world, cli, other, listed):
    result = cli("eval", world / "runs" / "pets", "--data-root", world / other)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: {world / 'runs' / 'pets' / 'best.pt'}: the data in {world / other} has "
                                  f"{listed}, the checkpoint was trained on 2 (cat, dog); evaluate it on data with the "
                                  "classes it was trained on")


def test_eval_on_data_of_the_same_classes_elsewhere_works(world, cli, tmp_path):
    shutil.copytree(world / "pets", tmp_path / "pets")
    result = cli("eval", world / "runs" / "pets", "--data-root", tmp_path / "pets")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- 6: symlink loops, FIFOs


def test_predict_skips_nothing_silently_and_never_hangs(world, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(world / "pets" / "cat", folder)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "loop-dir").symlink_to(folder)  # a folder link is not followed: no endless descent
    os.mkfifo(tmp_path / "pipe.png")
    result = run_cnnctl("predict", folder, tmp_path / "pipe.png", "-c", world / "runs" / "pets", timeout=120)
    assert result.exit_code == 2, result.output
    assert f"{folder / 'loop.png'}: error: cannot be read: Too many levels of symbolic links" in result.stdout
    assert f"{tmp_path / 'pipe.png'}: error: not an image file: a FIFO (named pipe)" in result.stdout
    assert result.stdout.count(": cat ") + result.stdout.count(": dog ") == 12, "the real images are all predicted"
    line = error_line(result)
    assert line.startswith("error: 2 of 14 files could not be read: ") and "loop.png" in line and "pipe.png" in line
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.png").st_mode)


# ---------------------------------------------------------------- 8: metrics.csv with a bad cell


def test_plot_names_the_file_line_and_column_of_a_bad_cell(world, cli, tmp_path):
    run = tmp_path / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("val_acc")] = "oops"
    (run / "metrics.csv").write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    result = cli("plot", run, "-o", tmp_path / "cmp.png")
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: {run / 'metrics.csv'}: line 2, column 'val_acc': 'oops' is not a "
                                         "number")
    assert not (tmp_path / "cmp.png").exists()


# ---------------------------------------------------------------- 10: export --opset


@pytest.mark.parametrize("opset", ["1", "6", "99"])
def test_export_refuses_an_opset_torch_cannot_write(world, cli, opset):
    pytest.importorskip("onnx")
    run = world / "runs" / "pets"
    before = snapshot(run)
    result = cli("export", run, "--opset", opset)
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: --opset {opset}: torch.onnx ") and "writes opsets 7 to 23" in \
        result.stderr
    assert snapshot(run) == before, "nothing written"


# ---------------------------------------------------------------- 12: a checkpoint's input block


@pytest.mark.parametrize("field, value, says", [
    ("std", [0.5, 0.0, 0.5], "input: std must be positive"),
    ("size", [0, 12], "input: size must be [height, width] of positive integers"),
    ("mean", [0.5], "input: mean must be 3 finite number(s)"),
])
def test_a_checkpoint_with_a_bad_input_block_is_refused_naming_it(world, cli, tmp_path, field, value, says):
    ckpt = load_checkpoint(world / "runs" / "pets" / "best.pt")
    ckpt["input"][field] = value
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, ckpt)
    for args in (["eval", bad], ["predict", world / "pets" / "cat", "-c", bad]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert error_line(result).startswith(f"error: {bad}: {says}"), result.output
