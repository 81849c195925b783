"""Hostile YAML (cnnctl/config/safe_yaml.py, issue 13: 1, 11): alias bombs, huge values, deep nesting and duplicate
keys in a config, a space file or a --set value are each exit 2 with one short message naming the file (or --set)
and the key, no traceback, nothing written, and bounded memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cnnctl.config import MAX_YAML_BYTES, MAX_YAML_VALUES, read_yaml
from tests.conftest import ROOT, assert_refused, write_config

# Refusing a config needs under 128 MiB of address space and never imports torch (measured; a successful `summary`,
# which imports torch, needs 3-4 GiB), so a 1 GiB cap bounds the memory and catches a bomb that gets through.
ADDRESS_SPACE_CAP = 1 << 30


def alias_bomb(levels: int, key: str = "name") -> str:
    """The 'billion laughs': each level a list of nine aliases of the one before; 9**levels values once expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels - 1)]
    return "\n".join(lines) + f"\n{key}: [" + ", ".join([f"*a{levels - 2}"] * 9) + "]\n"


def run_capped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess under an address-space cap; the timeout only guards against a hang."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=cap, timeout=30, env=env)


# ---------------------------------------------------------------- alias bombs and huge values


@pytest.mark.parametrize("key", ["name", "model.layers"])
def test_alias_bomb_is_refused_before_validation_with_bounded_memory(tmp_path, key):
    text = alias_bomb(9) if key == "name" else alias_bomb(9, "model").replace("\nmodel: ", "\nmodel:\n  layers: ")
    path = write_config(tmp_path / "bomb.yaml", text)
    assert len(text.encode()) < 600  # 9**9 = 387 million values from a few hundred bytes
    proc = run_capped("summary", str(path), cwd=tmp_path)
    first = assert_refused(proc, "alias", f"{MAX_YAML_VALUES:,}", file=path)
    assert "line " in first


def test_alias_bomb_as_a_tune_space_is_refused(tmp_path):
    space = write_config(tmp_path / "space.yaml", alias_bomb(9, "optimizer.lr"))
    proc = run_capped("tune", "lenet5-digits", "--space", str(space), "--out", str(tmp_path / "study"), cwd=tmp_path)
    assert_refused(proc, "alias", file=space)
    assert not (tmp_path / "study").exists()


def test_alias_bomb_in_a_set_value_is_refused(cli):
    value = "{" + alias_bomb(7).strip().replace("\n", ", ").replace("name:", "layers:") + "}"  # one flow mapping
    result = cli("summary", "lenet5-digits", "--set", "model=" + value)
    assert_refused(result, "--set", "alias")


def test_small_bomb_under_the_limit_echoes_a_short_value(cli, tmp_path):
    path = write_config(tmp_path / "small.yaml", alias_bomb(5))  # 59,049 values: allowed, but not a string
    first = assert_refused(cli("summary", path), "name", "valid string", file=path)
    assert "..." in first


def test_recursive_alias_is_refused(cli, tmp_path):
    path = write_config(tmp_path / "loop.yaml", "name: &a [*a]\n")
    assert_refused(cli("summary", path), "recursive", "line 1", file=path)


def test_deep_nesting_is_refused_by_depth(cli, tmp_path):
    path = write_config(tmp_path / "deep.yaml", "model: {layers: " + "[" * 300 + "]" * 300 + "}\n")
    assert_refused(cli("summary", path), "nested more than", file=path)


def test_file_past_the_size_limit_is_refused_unread(cli, tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("seed: " + "1" * (MAX_YAML_BYTES + 10) + "\n")
    assert_refused(cli("summary", path), "larger than", file=path)


def test_huge_string_value_is_echoed_cut_short(cli, tmp_path):
    path = write_config(tmp_path / "long.yaml", "seed: '" + "x" * 900_000 + "'\n")
    first = assert_refused(cli("summary", path), "seed", "900,000 characters", file=path)
    assert len(first) < 400


def test_huge_set_value_is_echoed_cut_short(cli):
    first = assert_refused(cli("summary", "lenet5-digits", "--set", "seed=" + "x" * 1_000_000), "--set", "seed")
    assert "1,000,000 characters" in first and len(first) < 500


@pytest.mark.parametrize("where", ["file", "--set"])
def test_integer_past_pythons_digit_limit(cli, tmp_path, where):
    digits = "7" * 5000
    if where == "file":
        path = write_config(tmp_path / "digits.yaml", f"seed: {digits}\n")
        assert_refused(cli("summary", path), "5,000 digits", file=path)
    else:
        assert_refused(cli("summary", "lenet5-digits", "--set", f"seed={digits}"), "--set", "5,000 digits")


def test_huge_key_is_echoed_cut_short(cli, tmp_path):
    path = write_config(tmp_path / "key.yaml", "? " + "k" * 500_000 + "\n: 1\n")  # an explicit key: no length limit
    assert_refused(cli("summary", path), "unknown key", file=path)


# ---------------------------------------------------------------- duplicate keys


def test_duplicate_section_names_the_key_and_both_lines(cli, tmp_path):
    path = write_config(tmp_path / "dup.yaml", "model: {arch: lenet5}\nseed: 1\nmodel:\n  dropout: 0.1\n")
    assert_refused(cli("summary", path), "'model'", "line 1 and line 3", file=path)


def test_duplicate_nested_key_names_its_dotted_path(cli, tmp_path):
    path = write_config(tmp_path / "dup.yaml", "optimizer:\n  name: sgd\n  lr: 0.1\n  lr: 0.2\n")
    assert_refused(cli("summary", path), "'optimizer.lr'", "line 3 and line 4", file=path)


def test_duplicate_key_in_a_space_file(cli, tmp_path):
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: {loguniform: [0.001, 0.1]}\n"
                                                  "optimizer.lr: {loguniform: [0.01, 0.1]}\n")
    assert_refused(cli("tune", "lenet5-digits", "--space", space, "--out", tmp_path / "study"),
                   "'optimizer.lr'", "line 1 and line 2", file=space)
    assert not (tmp_path / "study").exists()


def test_merge_keys_may_be_overridden(tmp_path):
    path = write_config(tmp_path / "merge.yaml", "base: &b {lr: 0.1, name: sgd}\noptimizer:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(path)["optimizer"] == {"lr": 0.2, "name": "sgd"}


def test_bundled_configs_are_within_the_limits():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        assert isinstance(read_yaml(path), dict)
