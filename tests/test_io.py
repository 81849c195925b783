"""Unwritable outputs (cnnctl/io.py): every failed mkdir/open/write of an output is ``WriteError`` (exit 1) naming the
path and the operating system's reason, whichever command writes it, and nothing already saved changes.

The tests run as root in CI, where a chmod-ed folder is still writable, so the read-only location is ``/sys`` (sysfs
refuses new entries, to root as well) or a path under a regular file.
"""

from __future__ import annotations

from tests.conftest import READ_ONLY, error_line, read_only, snapshot


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
