"""TensorBoard as a view of a run (train.tensorboard: true): the HParams session (the flattened resolved config
against the final metrics) and the end-of-run images, read back from the event files as TensorBoard reads them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import cnnctl
from cnnctl.training.hooks import final_metrics, hparam_values

pytest.importorskip("tensorboard")

CONFIG = {
    "seed": 0,
    "data": {"dataset": "digits", "batch_size": 64},
    "model": {"arch": "lenet5"},
    "optimizer": {"name": "adam", "lr": 0.003},
    "train": {"epochs": 2, "threads": 1, "tensorboard": True, "grad_clip": None},
}


def test_tensorboard_shows_hparams_confusion_matrix_and_filters(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hp_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = cnnctl.train(CONFIG, name="tb", out=tmp_path)
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()

    content = events.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert {hp_metadata.EXPERIMENT_TAG, hp_metadata.SESSION_START_INFO_TAG, hp_metadata.SESSION_END_INFO_TAG} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_START_INFO_TAG]).session_start_info
    hp = start.hparams
    assert hp["optimizer.name"].string_value == "adam" and hp["optimizer.lr"].number_value == pytest.approx(0.003)
    assert hp["train.epochs"].number_value == 2 and hp["data.dataset"].string_value == "digits"
    assert hp["train.grad_clip"].string_value == "null" and hp["train.tensorboard"].string_value == "true"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.EXPERIMENT_TAG]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/best_val_acc", "hparams/test_accuracy", "hparams/best_val_loss"} <= metric_tags
    # each metric is a scalar of its tag, the value the HParams table shows
    scalars = set(events.Tags()["scalars"])
    assert metric_tags <= scalars
    assert events.Scalars("hparams/test_accuracy")[-1].value == pytest.approx(result.summary["test"]["accuracy"])
    assert events.Scalars("hparams/best_val_acc")[-1].value == pytest.approx(result.summary["best"]["val_acc"])
    assert {"train/loss", "val/acc"} <= scalars  # the per-epoch scalars are still there

    images = set(events.Tags()["images"])
    assert "confusion_matrix/test" in images
    filters = [t for t in images if t.startswith("filters/")]
    assert len(filters) == 1
    for tag in ("confusion_matrix/test", filters[0]):
        image = events.Images(tag)[-1]
        assert image.width > 50 and image.height > 50 and image.encoded_image_string.startswith(b"\x89PNG")


def test_hparam_values_and_final_metrics_are_what_tensorboard_accepts():
    values = hparam_values({"a": {"b": 1, "c": None, "d": [1, 2], "e": True, "f": "x", "g": 0.5}})
    assert values == {"a.b": 1, "a.c": "null", "a.d": "[1, 2]", "a.e": "true", "a.f": "x", "a.g": 0.5}
    summary = {"best": {"val_acc": 0.9, "val_loss": float("nan")}, "test": None, "best_epoch": 3, "epochs": 4,
               "wall_seconds": 1.5}
    assert final_metrics(summary) == {"hparams/best_val_acc": 0.9, "hparams/best_epoch": 3.0, "hparams/epochs": 4.0,
                                      "hparams/wall_seconds": 1.5}


# ---------------------------------------------------------------- a log folder that cannot be written (issue 23, item 7)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run with TensorBoard on, to resume."""
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}
    return cnnctl.train(config, name="tb", out=tmp_path_factory.mktemp("tb")).run_dir


def resume_with(cli, finished: Path, tmp_path: Path, block) -> tuple:
    """Resume a copy of ``finished`` for one more epoch after ``block(RUN/tensorboard)``; the result, the copy, and
    its checkpoints' bytes before."""
    run = tmp_path / "tb"
    shutil.copytree(finished, run)
    (run / ".lock").unlink(missing_ok=True)
    shutil.rmtree(run / "tensorboard")
    block(run / "tensorboard")
    before = {name: (run / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.csv")}
    return cli("train", "--resume", run, "--set", "train.epochs=2"), run, before


def test_a_tensorboard_folder_that_is_a_file_is_a_failed_write(cli, finished, tmp_path):
    result, run, before = resume_with(cli, finished, tmp_path, lambda folder: folder.write_text("keep me\n"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (f"error: could not write {run / 'tensorboard'}: it is a file, not a "
                                              "folder; move the file away or set train.tensorboard: false")
    assert (run / "tensorboard").read_text() == "keep me\n"
    assert {name: (run / name).read_bytes() for name in before} == before
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs /sys (sysfs), where nobody can create a file")
def test_a_read_only_tensorboard_folder_is_a_failed_write(cli, finished, tmp_path):
    """Read-only for root too: the log folder is a link to a sysfs folder (root writes through any chmod). A
    PermissionError traceback from TensorBoard's writer thread before, and then another from the main thread."""
    result, run, before = resume_with(cli, finished, tmp_path, lambda folder: folder.symlink_to("/sys/kernel"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Exception in thread" not in result.output
    assert result.stderr.splitlines()[-1] == (f"error: could not write {run / 'tensorboard'}: Permission denied; "
                                              "train.tensorboard: true writes its event files there; make it a "
                                              "writable folder or set train.tensorboard: false")
    assert {name: (run / name).read_bytes() for name in before} == before
