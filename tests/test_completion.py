"""Shell completion: the completers offer the right names (bundled configs and spaces, registry names after
``--set KEY=``, run directories, checkpoints), the shell protocol reaches them, and neither ``--help`` nor a
completion imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cnnctl.completion import (
    MAX_OPENED,
    checkpoints,
    config_keys,
    config_names,
    run_dirs,
    set_values,
    space_names,
)
from cnnctl.config import bundled_configs, bundled_spaces
from cnnctl.data.registry import DATASETS
from cnnctl.models.registry import MODELS
from cnnctl.training.optim import OPTIMIZERS, SCHEDULERS


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A working directory with runs (two, and a comparison of one), a non-run folder and configs of one's own."""
    for run in ("runs/a", "runs/b", "runs/compare/adam"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("model: {arch: lenet5}\n")
        (tmp_path / run / "best.pt").write_bytes(b"")
        (tmp_path / run / "last.pt").write_bytes(b"")
    (tmp_path / "runs" / "empty").mkdir()
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "notes.txt").write_text("not a config\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "wide.yaml").write_text("name: wide\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_names_are_bundled_names_then_yaml_files(folder):
    assert config_names("lenet5-") == [n for n in bundled_configs() if n.startswith("lenet5-")]
    assert {"lenet5-digits", "lenet5-mnist"} <= set(config_names("lenet5-"))
    assert config_names("compare-optimizers/ada") == ["compare-optimizers/adagrad", "compare-optimizers/adam"]
    assert config_names("m") == ["mine.yaml"]
    assert config_names("n") == [], "a .txt is not a config"
    assert config_names("exp") == ["experiments/wide.yaml"], "a single folder opens at once"
    assert "mine.yaml" in config_names("") and "runs/" in config_names("")


def test_space_names(folder):
    assert space_names("") == [*bundled_spaces(), "experiments/", "mine.yaml", "runs/"]


def test_set_completes_keys_then_registry_names(folder):
    assert set_values("model.arch=") == [f"model.arch={n}" for n in MODELS.names()]
    assert set_values("model.arch=vgg1") == [f"model.arch={n}" for n in MODELS.names() if n.startswith("vgg1")]
    assert set_values("data.dataset=") == [f"data.dataset={n}" for n in DATASETS.names()]
    assert set_values("optimizer.name=ad") == [f"optimizer.name={n}" for n in OPTIMIZERS.names() if n.startswith("ad")]
    assert set_values("scheduler.name=") == [f"scheduler.name={n}" for n in SCHEDULERS.names()]
    assert set_values("train.precision=") == ["train.precision=auto", "train.precision=fp32", "train.precision=bf16",
                                              "train.precision=fp16"]
    assert set_values("train.early_stopping.restore_best=") == ["train.early_stopping.restore_best=true",
                                                                "train.early_stopping.restore_best=false"]
    assert "train.grad_clip=null" in set_values("train.grad_clip=")
    assert set_values("optimizer.l") == ["optimizer.lr="], "a key without fixed values ends at '='"
    assert set_values("model.ar") == [f"model.arch={n}" for n in MODELS.names()], "one key left: its values"
    assert set_values("train.early") == [k + "=" for k in config_keys() if k.startswith("train.early")]
    assert {"optimizer.lr", "train.early_stopping.patience", "data.augment.hflip", "seed"} <= set(config_keys())


def test_run_dirs_complete_runs_and_the_folders_leading_to_them(folder):
    assert run_dirs("runs/") == ["runs/a", "runs/b", "runs/compare/", "runs/empty/"]
    assert run_dirs("") == ["experiments/", "runs/"]
    assert run_dirs("r") == ["runs/a", "runs/b", "runs/compare/", "runs/empty/"], "the one folder opens at once"
    assert run_dirs("runs/c") == ["runs/compare/adam"]
    assert run_dirs("nowhere/x") == []


def test_checkpoints_are_run_dirs_and_pt_files(folder):
    assert checkpoints("runs/a") == ["runs/a", "runs/a/"]
    assert checkpoints("runs/a/") == ["runs/a/best.pt", "runs/a/last.pt"]
    assert checkpoints("runs/b/l") == ["runs/b/last.pt"]


def _cnnctl_in_process(env: dict[str, str], *args: str, under_bash: bool = False) -> list[str]:
    """Run cnnctl's real entry point (main) in a fresh interpreter; the last line says whether torch was imported.

    ``under_bash``: as a child of bash (typer finds the shell for --show-completion among the process's parents,
    which a test runner started by a service, or re-parented to init, does not have)."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["cnnctl", *{list(args)!r}]
        from cnnctl.cli import main
        try:
            main()
        except SystemExit:
            pass
        print("torch imported" if "torch" in sys.modules else "torch not imported")
    """)
    command = [sys.executable, "-c", code]
    if under_bash:  # "; exit" keeps bash from exec-ing the interpreter in its own place
        command = ["bash", "-c", '"$0" -c "$1"; exit $?', sys.executable, code]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize(("words", "expected"), [
    ("cnnctl train lenet5-dig", ["lenet5-digits"]),
    ("cnnctl summary --set model.arch=lenet", ["model.arch=lenet5"]),
    ("cnnctl train --resume runs/compare/", ["runs/compare/adam"]),
    ("cnnctl eval runs/a/b", ["runs/a/best.pt"]),
    ("cnnctl runs runs/c", ["runs/compare/adam"]),
])
def test_bash_completion_protocol_reaches_the_completers_without_torch(folder, words, expected):
    env = {"_CNNCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    lines = _cnnctl_in_process(env)
    assert lines == [*expected, "torch not imported"]


def test_help_through_the_entry_point_is_torch_free_and_offers_completion():
    lines = _cnnctl_in_process({}, "--help")
    assert lines[-1] == "torch not imported"
    text = "\n".join(lines)
    assert "--install-completion" in text and "--show-completion" in text and "runs" in text


def test_show_completion_prints_a_script():
    lines = _cnnctl_in_process({}, "--show-completion", under_bash=True)
    assert any("_CNNCTL_COMPLETE=complete_bash" in line for line in lines)


# ---------------------------------------------------------------- hostile folders (issue 23, item 16)


def test_a_600_level_folder_chain_opens_a_bounded_number_of_levels(folder):
    """A RecursionError traceback in the shell before: each single folder was opened by a recursive call."""
    path = folder / "deep"
    for _ in range(600):
        path = path / "d"
    path.mkdir(parents=True)
    words = "cnnctl train --resume dee"
    env = {"_CNNCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "3"}
    lines = _cnnctl_in_process(env)
    assert lines == ["deep/" + "d/" * MAX_OPENED, "torch not imported"]
    assert checkpoints(lines[0]) == [lines[0] + "d/" * (1 + MAX_OPENED)], "the next Tab goes on from there"


def test_a_symlink_loop_is_not_walked(folder):
    """A folder holding only a link to itself was opened 40 levels deep (until the path was too long)."""
    (folder / "loop").mkdir()
    (folder / "loop" / "self").symlink_to(".")
    assert run_dirs("lo") == ["loop/self/"]
    assert checkpoints("loop/") == ["loop/self/"]
    (folder / "ring" / "a").mkdir(parents=True)  # a loop through the parent: ring/a/up -> ring
    (folder / "ring" / "a" / "up").symlink_to("..")
    assert config_names("ri") == ["ring/a/up/"]


def test_a_name_with_a_newline_is_not_offered(folder):
    """The shell reads one candidate per line: ``x\\ny.pt`` became the two candidates ``runs/a/x`` and ``y.pt``."""
    (folder / "runs" / "a" / "x\ny.pt").write_bytes(b"")
    (folder / "runs" / "a" / "two\nlines").mkdir()
    assert checkpoints("runs/a/") == ["runs/a/best.pt", "runs/a/last.pt"]
    assert run_dirs("runs/a/") == []
