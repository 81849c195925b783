"""Run names and devices (cnnctl/config/names.py, issue 13: 2, 7): a bad run name or device in a config, --name,
--set or --device is exit 2 naming the file or flag and the key, with nothing written; the name a config's file stem
gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnctl.config import check_device, check_run_name, load_config, safe_run_name
from cnnctl.errors import ConfigError
from tests.conftest import GOOD_CONFIG as GOOD
from tests.conftest import assert_refused, write_config

# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["/abs/path", "../../x", "..", ".hidden", "a/b", "a b", "x" * 101, "-dash", "a..b"])
def test_bad_run_name_in_config_names_file_and_key(cli, tmp_path, name):
    path = write_config(tmp_path / "c.yaml", GOOD + f"name: {name!r}\n")
    assert_refused(cli("train", path, "--out", tmp_path / "runs"), "name: run name", file=path)
    assert not (tmp_path / "runs").exists()


def test_bad_run_name_by_flag_names_the_flag(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", GOOD)
    out = tmp_path / "deep" / "runs"
    first = assert_refused(cli("train", path, "--out", out, "--name", "../../x"))
    assert first.startswith("error: --name: run name '../../x'") and str(path) not in first
    first = assert_refused(cli("train", path, "--out", out, "--set", "name=../../x"))
    assert first.startswith("error: --set name=../../x: name: run name")
    assert not (tmp_path / "deep").exists() and not (tmp_path / "x").exists()


def test_run_name_rule_and_default_from_the_file_stem(tmp_path):
    for good in ("lenet5", "lenet5-lr0.1", "a_b.c-2", "_x", "9"):
        assert check_run_name(good, "--name") == good
    with pytest.raises(ConfigError, match="^--name: run name"):
        check_run_name("x/y", "--name")
    assert safe_run_name("my config") == "my-config"
    assert safe_run_name("..") == "run" and safe_run_name(".hidden") == "hidden" and safe_run_name("a..b") == "a.b"
    assert safe_run_name("x" * 300) == "x" * 100
    for stem, name in [("my config", "my-config"), ("..", "run"), ("résumé (2)", "r-sum-2")]:
        cfg, _ = load_config(write_config(tmp_path / f"{stem}.yaml", GOOD))
        assert cfg.name == name
        assert check_run_name(cfg.name, "test") == name


@pytest.mark.slow
def test_default_name_from_a_spaced_stem_trains_under_an_absolute_out(cli, tmp_path):
    """`out` is a folder and may be absolute; the run name from `my config.yaml` is `my-config`, inside it."""
    path = write_config(tmp_path / "my config.yaml", "data: {dataset: digits, batch_size: 256}\ntrain: {epochs: 1}\n")
    out = (tmp_path / "abs" / "runs").resolve()
    result = cli("train", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]) == out / "my-config"
    assert (out / "my-config" / "config.yaml").is_file()


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_bad_device_flag_lists_the_valid_forms(cli, tmp_path, command):
    target = write_config(tmp_path / "c.yaml", GOOD) if command == "train" else tmp_path / "missing.pt"
    first = assert_refused(cli(command, target, "--device", "bogus"), "--device", "'bogus'")
    for form in ("auto", "cpu", "cuda:N", "mps"):
        assert form in first


@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x", "cuda:", "CPU", "cuda:0:1", "mps:0"])
def test_bad_device_in_config_names_file_and_key(cli, tmp_path, device):
    path = write_config(tmp_path / "c.yaml", f"train: {{device: {device!r}}}\n")
    assert_refused(cli("summary", path), "train.device", "cuda:N", "mps", file=path)


def test_device_forms_accepted():
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:15", "mps"):
        assert check_device(device, "--device") == device
