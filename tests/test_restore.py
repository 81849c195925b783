"""Restore: a checkpoint's state back into a run, and the resume policy's checks that need the checkpoint (a run
that stopped early is refused; one extended with ``--set train.epochs=N`` gets a fresh patience)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_config

# min_delta 100: no epoch after the first improves val_loss by that much, so patience 2 runs out at epoch 3.
STOPS_AT_3 = """\
seed: 0
data: {dataset: fake, num_samples: 200, num_classes: 3, channels: 1, image_size: 8, batch_size: 32}
model: {arch: custom, layers: [flatten, linear]}
optimizer: {name: adam, lr: 0.05}
train: {epochs: 5, early_stopping: {patience: 2, min_delta: 100}}
"""


def test_a_run_that_stopped_early_is_refused_until_extended_and_then_gets_a_fresh_patience(cli, tmp_path):
    cfg = write_config(tmp_path / "stops.yaml", STOPS_AT_3)
    result = cli("train", cfg, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip())
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    saved = (run / "last.pt").read_bytes()

    again = cli("train", "--resume", run)
    assert again.exit_code == 2, again.output
    assert again.stderr == (f"error: --resume: {run} stopped early at epoch 3; to train on, add --set "
                            "train.epochs=N (which also restarts the patience count)\n")
    assert (run / "last.pt").read_bytes() == saved

    extended = cli("train", "--resume", run, "--set", "train.epochs=7")
    assert extended.exit_code == 0, extended.output
    summary = json.loads((run / "summary.json").read_text())
    # the patience counted afresh from epoch 4: two more epochs without improvement, a stop at epoch 5
    assert (summary["epochs"], summary["stopped_early"]) == (5, True)
    assert "stopping at epoch 5" in summary["stop_reason"]
