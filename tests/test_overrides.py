"""``--set KEY=VALUE`` (cnnctl/config/overrides.py, issue 13: 13): values may hold "="; a malformed item is exit 2
naming --set and the item (not the file), and a --set that breaks a section's check names both."""

from __future__ import annotations

import pytest

from cnnctl.config import load_config, parse_override
from tests.conftest import GOOD_CONFIG as GOOD
from tests.conftest import assert_refused, write_config

# ---------------------------------------------------------------- --set values holding "="


def test_set_value_may_hold_equals_signs(cli, tmp_path):
    assert parse_override("data.root=/mnt/set=a") == (["data", "root"], "/mnt/set=a")
    assert parse_override("name=a=b=c") == (["name"], "a=b=c")
    path = write_config(tmp_path / "c.yaml", "data: {dataset: digits}\n")
    cfg, _ = load_config(path, ["data.root=/mnt/set=a"])
    assert cfg.data.root == "/mnt/set=a"
    result = cli("summary", path, "--set", "data.root=/mnt/set=a")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- malformed --set


@pytest.mark.parametrize(("item", "words"), [
    ("model.layers[0]=relu", ["not list indexes", "--set 'model.layers=["]),
    ("model.layers.0=relu", ["not list indexes"]),
    ("optimizer.lr", ["no '='", "KEY=VALUE"]),
    ("=0.1", ["nothing before '='"]),
    ("optimizer..lr=0.1", ["empty part"]),
    ("optimizer.lr=[1", ["not valid YAML", "line 1"]),
    ("seed.x=1", ["seed is a value, not a section"]),  # GOOD + seed: the file has it
])
def test_malformed_set_names_set_not_the_file(cli, tmp_path, item, words):
    path = write_config(tmp_path / "c.yaml", GOOD + "seed: 1\n")
    first = assert_refused(cli("summary", path, "--set", item), f"error: --set {item!r}", *words)
    assert str(path) not in first


def test_set_into_a_list_in_the_file(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", "model: {arch: custom, layers: [flatten, linear]}\n")
    assert_refused(cli("summary", path, "--set", "model.layers.x=1"), "model.layers is a list", "--set 'model.layers=[...]'")


def test_set_over_a_section_check_names_both(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", GOOD)
    assert_refused(cli("summary", path, "--set", "model.arch=custom"), "with --set model.arch=custom", "model:",
                   "non-empty 'layers'", file=path)
