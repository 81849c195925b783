"""cnnctl.training.checkpoint's public functions on hand-made files: every refusal of ``load_checkpoint`` with its words,
the ``input`` block's checks, weights that do not fit the network, and what the atomic writes leave on disk.

Fast (no training): each file is written here in the form the failure takes; a failure at each stage of an atomic
write keeps the previous checkpoint. ``scripts/mutation.sh checkpoint`` runs this file, less its one test on a trained
checkpoint (the session's ``world`` run) whose input block is edited.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import stat
import tempfile
import zipfile

import pytest
import torch
from torch import nn

from cnnctl.errors import CheckpointError, CnnctlError, WriteError
from cnnctl.training.checkpoint import (
    FORMAT,
    MAX_SIDE,
    atomic_write,
    current_umask,
    input_problem,
    load_checkpoint,
    load_model_state,
    run_checkpoint,
    save_checkpoint,
    weights_problem,
    write_json,
    write_text,
)
from tests.conftest import error_line

GOOD_INPUT = {"channels": 1, "size": [28, 28], "mean": [0.1307], "std": [0.3081]}


def checkpoint(**overrides):
    data = {"format": FORMAT, "config": {"name": "x"}, "classes": ["a", "b"], "input": dict(GOOD_INPUT),
            "model": {"w": torch.arange(3.0)}, "step": 7}
    data.update(overrides)
    return data


class Opaque:  # a class torch.load(weights_only=True) must refuse to rebuild
    def __init__(self):
        self.x = 1


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert info.value.exit_code == 2
    assert info.value.file == str(path)
    return str(info.value)


def test_a_saved_checkpoint_loads_back_whole(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, checkpoint())
    data = load_checkpoint(path)
    assert data["step"] == 7 and data["classes"] == ["a", "b"]
    assert torch.equal(data["model"]["w"], torch.arange(3.0))


def test_older_formats_load(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, checkpoint(format=0))
    assert load_checkpoint(str(path))["format"] == 0


def test_a_directory_is_refused_with_what_to_give(tmp_path):
    message = refusal(tmp_path)
    assert message == f"{tmp_path}: is a directory; give a .pt file such as best.pt or last.pt"


def test_a_missing_file_is_refused(tmp_path):
    assert refusal(tmp_path / "nope.pt") == f"{tmp_path / 'nope.pt'}: no such file"


def test_an_empty_file_is_refused_as_an_interrupted_save(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    assert refusal(path) == f"{path}: empty file (0 bytes): not a checkpoint; a save may have been interrupted"


def test_a_one_byte_file_is_not_called_empty(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"x")
    message = refusal(path)
    assert "empty file" not in message


def test_pickled_code_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Opaque()}, path)
    message = refusal(path)
    assert message == (f"{path}: refused: it carries pickled Python objects (code) that torch.load(weights_only=True) "
                       "will not run; only load checkpoints you trust, and re-save them as plain tensors")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_garbage_is_not_a_checkpoint(tmp_path, legacy):
    path = tmp_path / "noise.pt"
    # A legacy (non-zip) torch file starts with a pickle; bytes that are no pickle fail there.
    path.write_bytes(b"\x80\x02" + b"\xff" * 64 if legacy else b"this is a text file, not a checkpoint\n" * 4)
    message = refusal(path)
    if legacy:
        assert message == f"{path}: not a PyTorch checkpoint (unreadable pickle data)"
    else:
        assert message == (f"{path}: not a PyTorch checkpoint, or truncated: it is not the zip archive torch.save "
                           "writes")


def test_a_truncated_archive_is_named_truncated(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint(model={"w": torch.zeros(50_000)}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = refusal(path)
    assert "not a PyTorch checkpoint, or truncated: it is not the zip archive torch.save writes" in message


def test_a_zip_that_torch_did_not_write_is_corrupt(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not torch")
    message = refusal(path)
    assert message == (f"{path}: truncated or corrupt checkpoint ([enforce fail at inline_container.cc:180] . file "
                       "in archive is not in a subdirectory: hello.txt)")


def test_a_bare_state_dict_names_every_missing_key(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, path)
    message = refusal(path)
    assert message == (f"{path}: not a cnnctl checkpoint (missing format, config, classes, input, model); a bare "
                       "state_dict cannot say which network and data it belongs to")


def test_a_checkpoint_without_some_keys_names_only_those(tmp_path):
    path = tmp_path / "part.pt"
    data = checkpoint()
    del data["classes"], data["input"]
    torch.save(data, path)
    assert "(missing classes, input)" in refusal(path)


def test_a_list_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    assert "(missing format, config, classes, input, model)" in refusal(path)


@pytest.mark.parametrize("fmt", [FORMAT + 1, "1", 1.0, None])
def test_a_newer_or_strange_format_asks_for_an_upgrade(tmp_path, fmt):
    path = tmp_path / "new.pt"
    torch.save(checkpoint(format=fmt), path)
    message = refusal(path)
    assert f"written by a newer cnnctl (checkpoint format {fmt}; this cnnctl reads up to {FORMAT})" in message


def test_a_damaged_input_block_is_named(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save(checkpoint(input={**GOOD_INPUT, "std": [0.0]}), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert info.value.key == "input"
    assert str(info.value) == (f"{path}: input: std must be positive (images are divided by it), got [0.0]; "
                               "the checkpoint was edited or damaged, use one written by `cnnctl train`")


@pytest.mark.parametrize("spec, problem", [
    (["channels"], "expected a mapping with channels, size, mean and std, got list"),
    ({"channels": 1, "size": [2, 2]}, "missing mean, std"),
    ({}, "missing channels, size, mean, std"),
    ({**GOOD_INPUT, "channels": 0}, "channels must be a positive integer, got '0'"),
    ({**GOOD_INPUT, "channels": True}, "channels must be a positive integer, got 'True'"),
    ({**GOOD_INPUT, "channels": 1.0}, "channels must be a positive integer, got '1.0'"),
    ({**GOOD_INPUT, "size": [28]}, "size must be [height, width] of positive integers, got '[28]'"),
    ({**GOOD_INPUT, "size": [28, 28, 1]}, "size must be [height, width] of positive integers, got '[28, 28, 1]'"),
    ({**GOOD_INPUT, "size": "28x28"}, "size must be [height, width] of positive integers, got '28x28'"),
    ({**GOOD_INPUT, "size": [28, 0]}, "size must be [height, width] of positive integers, got '[28, 0]'"),
    ({**GOOD_INPUT, "size": [True, 28]}, "size must be [height, width] of positive integers, got '[True, 28]'"),
    ({**GOOD_INPUT, "size": [28.0, 28]}, "size must be [height, width] of positive integers, got '[28.0, 28]'"),
    ({**GOOD_INPUT, "mean": [0.1, 0.2]}, "mean must be 1 finite number(s), one per channel, got '[0.1, 0.2]'"),
    ({**GOOD_INPUT, "mean": 0.1}, "mean must be 1 finite number(s), one per channel, got '0.1'"),
    ({**GOOD_INPUT, "mean": [float("nan")]}, "mean must be 1 finite number(s), one per channel, got '[nan]'"),
    ({**GOOD_INPUT, "std": [float("inf")]}, "std must be 1 finite number(s), one per channel, got '[inf]'"),
    ({**GOOD_INPUT, "std": [True]}, "std must be 1 finite number(s), one per channel, got '[True]'"),
    ({**GOOD_INPUT, "std": ["1"]}, "std must be 1 finite number(s), one per channel, got \"['1']\""),
    ({**GOOD_INPUT, "std": [-0.5]}, "std must be positive (images are divided by it), got [-0.5]"),
    ({**GOOD_INPUT, "std": [0]}, "std must be positive (images are divided by it), got [0]"),
    ({"channels": 3, "size": [4, 5], "mean": [0, 0, 0], "std": [1, 1, 0.0]},
     "std must be positive (images are divided by it), got [1, 1, 0.0]"),
    ({"channels": 3, "size": [4, 5], "mean": (0, 0), "std": [1, 1, 1]},
     "mean must be 3 finite number(s), one per channel, got '(0, 0)'"),
])
def test_input_problem_names_what_is_wrong(spec, problem):
    assert input_problem(spec) == problem


@pytest.mark.parametrize("spec", [
    GOOD_INPUT,
    {"channels": 3, "size": (32, 32), "mean": (0.5, 0.5, 0.5), "std": [0.25, 0.25, 1]},
    {"channels": 1, "size": [1, 1], "mean": [0], "std": [1e-9], "extra": "kept"},
])
def test_input_problem_accepts_sound_blocks(spec):
    assert input_problem(spec) is None


def test_weights_that_fit_are_loaded_exactly():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_model_state(target, source.state_dict(), "best.pt")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_weights_of_another_network_are_described():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    state = {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2), "2.weight": torch.zeros(1), "3.x": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load_model_state(net, state, "runs/a/best.pt")
    assert str(info.value) == (
        "runs/a/best.pt: its weights do not match the network its config describes: "
        "2 weights missing (e.g. 1.weight); 2 unexpected (e.g. 2.weight); "
        "1 of another shape (e.g. 0.weight: [2, 4] in the file, [2, 3] in the network). "
        "Was the config edited? Use the checkpoint written with it")


def test_only_missing_weights_are_reported_alone():
    net = nn.Linear(3, 2)
    with pytest.raises(CheckpointError) as info:
        load_model_state(net, {"weight": torch.zeros(2, 3)}, "x.pt")
    assert "do not match the network its config describes: 1 weights missing (e.g. bias). Was" in str(info.value)


def test_only_unexpected_weights_are_reported_alone():
    net = nn.Linear(3, 2)
    state = {**net.state_dict(), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load_model_state(net, state, "x.pt")
    assert "describes: 1 unexpected (e.g. extra). Was" in str(info.value)


def test_a_run_directory_gives_its_checkpoint(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"x")
    assert run_checkpoint(tmp_path, "best.pt") == tmp_path / "best.pt"
    assert run_checkpoint(str(tmp_path / "last.pt"), "best.pt") == tmp_path / "last.pt"  # a file is itself
    with pytest.raises(CheckpointError) as info:
        run_checkpoint(tmp_path, "last.pt")
    assert str(info.value) == f"{tmp_path}: is a run directory without last.pt; it holds no finished epoch yet"


def test_written_files_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert current_umask() == old


def test_write_json_is_indented_with_a_final_newline(tmp_path):
    write_json(tmp_path / "s.json", {"a": [1, 2], "b": "é"})
    text = (tmp_path / "s.json").read_text(encoding="utf-8")
    assert text == json.dumps({"a": [1, 2], "b": "é"}, indent=2) + "\n"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    write_text(path, "old\n")

    def boom(f):
        f.write("half")
        raise ValueError("bug in the writer")

    with pytest.raises(ValueError, match="bug in the writer"):
        atomic_write(path, boom, binary=False)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_write_into_a_missing_folder_is_a_write_error(tmp_path):
    target = tmp_path / "gone" / "best.pt"
    with pytest.raises(WriteError) as info:
        save_checkpoint(target, checkpoint())
    assert info.value.exit_code == 1
    assert str(info.value) == f"could not write {target}: No such file or directory; the previous file, if any, is intact"


def test_a_checkpoint_that_cannot_pickle_never_touches_the_disk(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint())
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        save_checkpoint(path, checkpoint(bad=lambda: 1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_saved_bytes_are_what_torch_save_writes(tmp_path):
    buffer = io.BytesIO()
    data = checkpoint()
    torch.save(data, buffer)
    save_checkpoint(tmp_path / "x.pt", data)
    assert len((tmp_path / "x.pt").read_bytes()) == len(buffer.getvalue())


def test_a_long_load_error_is_cut_to_160_characters(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint())

    def fail(*args, **kwargs):
        raise RuntimeError("x" * 300)

    monkeypatch.setattr(torch, "load", fail)
    assert refusal(path) == f"{path}: truncated or corrupt checkpoint ({'x' * 160})"


def test_a_path_through_a_file_cannot_be_read(tmp_path):
    (tmp_path / "run").write_text("a file, not a folder")
    path = tmp_path / "run" / "best.pt"
    assert refusal(path) == f"{path}: cannot read: Not a directory"


@pytest.mark.parametrize("key, value, shown", [
    ("channels", "c" * 100, "channels must be a positive integer, got '" + "c" * 40 + "'"),
    ("size", "s" * 100, "size must be [height, width] of positive integers, got '" + "s" * 40 + "'"),
    ("mean", "m" * 100, "mean must be 1 finite number(s), one per channel, got '" + "m" * 60 + "'"),
])
def test_input_problem_cuts_long_values(key, value, shown):
    assert input_problem({**GOOD_INPUT, key: value}) == shown


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_follow_any_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_checkpoint(tmp_path / "x.pt", checkpoint())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.pt").stat().st_mode) == 0o666 & ~mask


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_the_umask_is_read_without_setting_it(monkeypatch):
    """Setting the umask to read it would give a file another thread creates meanwhile the wrong mode."""
    expected = os.umask(0o022)
    os.umask(expected)

    def refuse(mask):
        raise AssertionError("current_umask changed the process umask")

    monkeypatch.setattr(os, "umask", refuse)
    assert current_umask() == expected


def test_without_proc_the_umask_is_set_back(monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(file, *args, **kwargs)

    old = os.umask(0o037)
    try:
        monkeypatch.setattr(builtins, "open", no_proc)
        assert current_umask() == 0o037
        assert current_umask() == 0o037  # and it was put back
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write(b"data")

    atomic_write(tmp_path / "last.pt", write)
    [name] = seen
    assert name.startswith(".last.pt.") and name.endswith(".tmp")
    assert (tmp_path / "last.pt").read_bytes() == b"data"


def test_a_write_error_without_an_errno_keeps_its_words(tmp_path):
    def write(f):
        raise OSError("device went away")

    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "a.bin", write)
    assert str(info.value) == f"could not write {tmp_path / 'a.bin'}: device went away; the previous file, if any, is intact"


@pytest.mark.parametrize("weights, problem", [
    ({"w": torch.tensor([1.0, float("nan"), float("nan")])},
     "weight 'w' holds 2 NaN value(s) of 3: a network with non-finite weights outputs NaN for every image."),
    ({"w": torch.arange(3.0), "b": torch.tensor([float("inf"), -float("inf")], dtype=torch.float16)},
     "weight 'b' holds 2 infinite value(s) of 2:"),
    ({"w": torch.tensor([float("nan"), float("inf")])}, "weight 'w' holds 2 NaN and infinite value(s) of 2:"),
    ({"w": [1.0, 2.0]}, "weight 'w' is a list, not a tensor; the checkpoint was edited or damaged"),
    ([torch.zeros(2)], "expected a mapping of weight names to tensors, got list"),
], ids=["nan", "inf-half", "nan-and-inf", "a-list", "not-a-mapping"])
def test_non_finite_or_foreign_weights_are_refused_naming_the_first(tmp_path, weights, problem):
    """Issue 23: eval of a checkpoint with NaN weights printed "loss nan accuracy 10.03%" and exited 0."""
    path = tmp_path / "nan.pt"
    save_checkpoint(path, checkpoint(model=weights))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert info.value.exit_code == 2 and info.value.key == "model"
    assert str(info.value).startswith(f"{path}: model: {problem}")


def test_a_non_finite_weight_says_what_to_do_instead():
    problem = weights_problem({"ok": torch.zeros(2), "fc.weight": torch.full((2, 3), float("nan"))})
    assert problem == ("weight 'fc.weight' holds 6 NaN value(s) of 6: a network with non-finite weights outputs NaN "
                       "for every image. Training stops before it saves once its loss turns non-finite, so the file "
                       "was edited or damaged, or its run diverged in the very step it was saved: use another "
                       "checkpoint of the run (best.pt), or train again with a lower optimizer.lr or train.grad_clip")


def test_a_weight_name_is_shown_clipped_to_80_characters():
    """A damaged or hand-made file's key can be of any length: the message shows its first 80 characters."""
    name = "layer." * 20  # 120 characters
    assert weights_problem({name: 1.5}) == (f"weight {name[:80]!r} is a float, not a tensor; the checkpoint was edited "
                                            "or damaged")


def test_integer_buffers_and_finite_weights_pass():
    net = nn.BatchNorm1d(3)  # num_batches_tracked is an int64 buffer
    assert weights_problem(net.state_dict()) is None


def test_integer_weights_where_the_network_has_floats_are_refused():
    net = nn.Linear(3, 2)
    state = {"weight": torch.ones(2, 3, dtype=torch.int64), "bias": torch.zeros(2, dtype=torch.int32)}
    with pytest.raises(CheckpointError) as info:
        load_model_state(net, state, "runs/a/best.pt")
    assert info.value.exit_code == 2
    assert str(info.value) == ("runs/a/best.pt: model: weight 'weight' holds int64 values where the network has "
                               "float32 (2 such weight(s)); the checkpoint was edited or damaged, use one written by "
                               "`cnnctl train`")
    assert torch.count_nonzero(net.weight) > 0  # nothing was copied in


def test_input_sizes_are_bounded_as_data_image_size_is():
    """Issue 23: a 40000x40000 size in an exported file's metadata allocated 6.4 GB per image in predict."""
    from pydantic import ValidationError

    from cnnctl.config import DataConfig

    assert DataConfig(image_size=MAX_SIDE).image_size == MAX_SIDE  # the same bound as the config's
    with pytest.raises(ValidationError):
        DataConfig(image_size=MAX_SIDE + 1)
    assert input_problem({**GOOD_INPUT, "size": [MAX_SIDE, 1]}) is None
    assert input_problem({**GOOD_INPUT, "size": [28, MAX_SIDE + 1]}) == (
        f"size [28, {MAX_SIDE + 1}] is larger than {MAX_SIDE} pixels a side, the most data.image_size allows")


@pytest.mark.parametrize("command", ["eval", "predict", "resume"])
def test_nan_weights_are_refused_by_every_command_that_loads_them(cli, tmp_path, command):
    """Issue 23: eval printed "loss nan accuracy 10.03%" and exited 0. A resume names the file and says what to use."""
    from tests.checkpoints import linear_checkpoint

    run = tmp_path / "runs" / "diverged"
    weight = torch.zeros(10, 64)
    weight[3, 5] = float("nan")
    path = linear_checkpoint(run / "last.pt", weight, torch.zeros(10))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    args = {"eval": ["eval", path], "predict": ["predict", tmp_path / "nothing.png", "-c", path],
            "resume": ["train", "--resume", run]}[command]

    result = cli(*args)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: model: weight 'layers.1.weight' holds 1 NaN value(s) of 640: ")
    assert "use another checkpoint of the run (best.pt), or train again" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_integer_weights_are_refused_by_eval(cli, tmp_path):
    from tests.checkpoints import linear_checkpoint

    path = linear_checkpoint(tmp_path / "best.pt", torch.ones(10, 64), torch.zeros(10))
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: v.long() for k, v in ckpt["model"].items()}
    save_checkpoint(path, ckpt)

    result = cli("eval", path)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: model: weight 'layers.1.weight' holds int64 values where the "
                                    "network has float32 (2 such weight(s)); the checkpoint was edited or damaged")
    assert "Traceback" not in result.output and result.stdout == ""


# ---------------------------------------------------------------- atomic writes: a failure at any stage keeps the previous checkpoint


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


# ---------------------------------------------------------------- a trained checkpoint's input block, edited


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
