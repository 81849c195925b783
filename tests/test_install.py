"""Installing cnnctl the ordinary way: the wheel carries the bundled configs and tune spaces, and an installed
cnnctl finds them (never a configs/ folder that happens to be in the working directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from cnnctl.config import CONFIGS_DIR, bundled_configs, bundled_dir, bundled_spaces, load_config
from tests.conftest import ROOT, run_cnnctl, write_config

# What a working checkout holds beside the sources (at its top level) that a wheel build need not copy
NOT_SOURCE = {".venv", ".git", "runs", "data", "build", "dist", ".pytest_cache", ".ruff_cache"}


def _not_source(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in NOT_SOURCE) or n == "__pycache__" or n.endswith(".egg-info")}


def test_bundled_configs_and_spaces_come_from_the_package_not_the_working_directory(cli, tmp_path, monkeypatch):
    own = tmp_path / "configs"
    own.mkdir()
    write_config(own / "lenet5-digits.yaml", "name: mine\ntrain: {epochs: 1}\n")
    write_config(own / "extra.yaml", "name: extra\n")
    (own / "spaces").mkdir()
    write_config(own / "spaces" / "mine.yaml", "optimizer.lr: [0.1, 0.01]\n")
    monkeypatch.chdir(tmp_path)

    assert tmp_path not in bundled_dir("configs").resolve().parents
    assert "extra" not in bundled_configs() and "mine" not in bundled_spaces()
    assert bundled_configs()["lenet5-digits"] == CONFIGS_DIR / "lenet5-digits.yaml"
    assert bundled_spaces()["lenet5-digits"] == CONFIGS_DIR / "spaces" / "lenet5-digits.yaml"
    assert load_config("lenet5-digits")[0].name == "lenet5-digits"  # the bundled name: the bundled file
    assert load_config("configs/lenet5-digits.yaml")[0].name == "mine"  # a path: the user's file
    listed = cli("configs")
    assert listed.exit_code == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == list(bundled_configs()) and "extra" not in names


def test_spaces_are_not_listed_as_configs():
    assert bundled_spaces(), "configs/spaces/ holds the bundled tune spaces"
    assert not any(name.startswith("spaces/") for name in bundled_configs())
    assert {"lenet5-digits", "compare-optimizers/adam"} <= set(bundled_configs())


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (tests set it to the checkout) so the installed wheel is what runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_ships_configs_and_an_installed_cnnctl_trains_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build's build/ and egg-info stay out of the checkout
    shutil.copytree(ROOT, source, ignore=_not_source)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source], tmp_path)
    (wheel,) = dist.glob("cnnctl-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert any(c.startswith("spaces/") for c in configs) and "lenet5-digits.yaml" in configs
    missing = [c for c in configs if f"cnnctl/configs/{c}" not in names]
    assert not missing, f"bundled configs/spaces missing from {wheel.name}: {missing}"
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "cnnctl").rglob("*.py"))
    assert not [m for m in modules if m not in names], "every module of the package is in the wheel"

    # A fresh venv with the wheel alone, installed before it can see anything else; then a .pth file lends it the
    # project venv's packages (torch and the rest), appended after its own site-packages so the wheel's cnnctl wins.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel], tmp_path)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                .stdout.strip())
    (site / "zz-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([python, "-c", "import cnnctl, cnnctl.config as c; print(cnnctl.__file__); print(c.CONFIGS_DIR); "
                  "print(len(c.bundled_spaces()))"], empty).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and Path(where[1]).is_relative_to(venv), where
    assert int(where[2]) == len([c for c in configs if c.startswith("spaces/")])

    cnnctl = python.parent / ("cnnctl.exe" if os.name == "nt" else "cnnctl")
    listed = _run([cnnctl, "configs"], empty).stdout
    assert [line.split()[0] for line in listed.splitlines()] == list(bundled_configs())
    _run([cnnctl, "train", "lenet5-digits", "--set", "train.epochs=1"], empty)
    summary = empty / "runs" / "lenet5-digits" / "summary.json"
    assert summary.is_file() and (empty / "runs" / "lenet5-digits" / "best.pt").is_file()


def test_cnnctl_configs_from_another_folder_lists_the_bundled_ones(tmp_path):
    (tmp_path / "configs").mkdir()
    write_config(tmp_path / "configs" / "stray.yaml", "name: stray\n")
    result = run_cnnctl("configs", cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "lenet5-digits" in result.stdout and "stray" not in result.stdout
