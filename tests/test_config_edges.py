"""Config reading's exact words at its edges (mutation survivors of ``config``): the size limit to the byte,
unreadable files, duplicate keys and YAML errors with their line and column, validation errors with the key path
and the ``--set`` item that caused them, and where the bundled configs are found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnctl.config import MAX_YAML_BYTES, bundled_dir, load_config, read_yaml
from cnnctl.errors import ConfigError


def refused(call) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.exit_code == 2
    return info.value


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", "line 3, column 1: key 'a' is given twice (line 1 and line 3); the second would silently "
                           "replace the first: keep one"),
    ("a: [1, 2\nb: 3\n", "line 2, column 2: expected ',' or ']', but got ':'"),
    ("- 1\n- 2\n", "the top level must be a mapping (key: value), not a list"),
    ("a:\n\tb: 1\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column 103: nested more than 100 levels deep; a config is a "
                                             "shallow tree"),
])
def test_yaml_problems_name_the_file_and_the_place(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    error = refused(lambda: read_yaml(path))
    assert error.file == str(path)
    assert str(error) == f"{path}: {message}"


def test_the_size_limit_is_exact_to_the_byte(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * MAX_YAML_BYTES)
    assert read_yaml(path) == {}
    path.write_bytes(b"#" * (MAX_YAML_BYTES + 1))
    error = refused(lambda: read_yaml(path))
    assert str(error) == (f"{path}: larger than 1,048,576 bytes, far more than any config or space file; is this the "
                          "right file?")
    assert error.file == str(path)


def test_unreadable_files_say_why(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: \xff\xfe\n")
    error = refused(lambda: read_yaml(path))
    assert str(error) == f"{path}: cannot read: 'utf-8' codec can't decode byte 0xff in position 3: invalid start byte"
    assert error.file == str(path)
    error = refused(lambda: read_yaml(tmp_path))
    assert str(error) == f"{tmp_path}: cannot read: [Errno 21] Is a directory: '{tmp_path}'"


def config_file(tmp_path: Path, text: str = "data: {dataset: digits}\nmodel: {arch: lenet5}\n") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("data: {dataset: digits}\nmodel: {arch: lenet5}\noptimzer: {name: sgd}\n",
     "optimzer: unknown key; did you mean 'optimizer'? Valid keys: name, seed, data, model, optimizer, scheduler, "
     "train, out"),
    ("data: {dataset: digits}\nmodel: {arch: custom, layers: [flatten, {linear: {out: -3}}]}\n",
     "model.layers[1].linear.out: Input should be greater than or equal to 1 (got -3)"),
    ("data: {dataset: digits}\nmodel: {arch: lenet5}\noptimizer: {name: sgd, nesterov: true, momentum: 0}\n",
     "optimizer: nesterov needs name: sgd and momentum > 0 (e.g. momentum: 0.9)"),
    ("data: {dataset: digits, batch_size: x}\nmodel: {arch: lenet5}\n",
     "data.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'x')"),
])
def test_validation_errors_give_the_key_path(tmp_path, text, message):
    path = config_file(tmp_path, text)
    assert str(refused(lambda: load_config(path))) == f"{path}: {message}"


@pytest.mark.parametrize("sets, message", [
    (["optimizer.lr=-1"], "--set optimizer.lr=-1: optimizer.lr: Input should be greater than 0 (got -1)"),
    (["optimizer={name: sgd, lr: -1}"],
     "--set optimizer={name: sgd, lr: -1}: optimizer.lr: Input should be greater than 0 (got -1)"),
    (["optimizer.name=sgd", "optimizer.momentum=2", "optimizer.lr=0.1"],
     "--set optimizer.momentum=2: optimizer.momentum: Input should be less than 1 (got 2)"),
    (["model.arch=custom", "model.layers=[flatten, {linear: {out: 0}}]"],
     "--set model.layers=[flatten, {linear: {out: 0}}]: model.layers[1].linear.out: Input should be greater than or "
     "equal to 1 (got 0)"),
])
def test_an_error_from_a_set_names_that_set(tmp_path, sets, message):
    path = config_file(tmp_path)
    assert str(refused(lambda: load_config(path, sets))) == message


def test_an_error_in_a_section_names_the_last_set_below_it(tmp_path):
    path = config_file(tmp_path)
    sets = ["optimizer.name=sgd", "optimizer.nesterov=true", "optimizer.momentum=0", "seed=3"]
    assert str(refused(lambda: load_config(path, sets))) == (
        f"{path} with --set optimizer.momentum=0: optimizer: nesterov needs name: sgd and momentum > 0 "
        "(e.g. momentum: 0.9)")


def test_the_bundled_configs_and_spaces_are_found():
    configs = bundled_dir()
    assert configs == bundled_dir("configs")
    assert (configs / "lenet5-digits.yaml").is_file()
    assert bundled_dir("spaces") == configs / "spaces"
    assert any(bundled_dir("spaces").glob("*.yaml"))


def test_a_wheel_keeps_its_configs_inside_the_package(tmp_path, monkeypatch):
    import importlib.resources

    (tmp_path / "configs" / "spaces").mkdir(parents=True)
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    assert bundled_dir() == tmp_path / "configs"
    assert bundled_dir("spaces") == tmp_path / "configs" / "spaces"


@pytest.mark.parametrize("text, message", [
    ("a: {b: 1, b: 2}\n", "line 1, column 11: key 'a.b' is given twice (line 1, column 5 and line 1, column 11); the "
                          "second would silently replace the first: keep one"),
    ("model:\n  layers:\n    - conv: {out: 3}\n    - {x: 1, x: 2}\n",
     "line 4, column 14: key 'model.layers[1].x' is given twice (line 4, column 8 and line 4, column 14); the second "
     "would silently replace the first: keep one"),
    ("a: !!python/object:os.system x\n",
     "line 1, column 4: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system' "
     "(cnnctl loads YAML safely: tags such as !!python/object are refused; use plain values)"),
])
def test_duplicate_keys_and_tags_are_placed_exactly(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert str(refused(lambda: read_yaml(path))) == f"{path}: {message}"


def test_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n")
    assert read_yaml(path) == {"base": {"x": 1}, "c": {"x": 2}}


def test_run_names_and_devices_are_checked_with_their_source():
    from cnnctl.config import check_device, check_run_name

    assert check_run_name("ok-name", "--name") == "ok-name"
    error = refused(lambda: check_run_name("../up", "--name"))
    assert error.file == "--name"
    assert str(error).startswith("--name: run name '../up' holds a path separator; a run name is one folder name")
    assert check_device("cuda:0", "--device") == "cuda:0"
    error = refused(lambda: check_device("gpu", "--device"))
    assert str(error) == "--device: device 'gpu' is not one of auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"
    assert error.file == "--device"


def test_long_values_are_cut_after_80_characters():
    from cnnctl.config import _cut

    assert _cut("x" * 80) == "x" * 80
    assert _cut("x" * 81) == "x" * 80 + "... (81 characters)"


def test_the_bundled_spaces_are_listed_by_name():
    from cnnctl.config import bundled_spaces

    spaces = bundled_spaces()
    assert "lenet5-digits" in spaces and spaces["lenet5-digits"] == bundled_dir("spaces") / "lenet5-digits.yaml"
    assert list(spaces) == sorted(spaces)


def test_a_config_is_written_in_its_schemas_order():
    from cnnctl.config import Config

    text = Config.model_validate({"data": {"dataset": "digits"}, "model": {"arch": "lenet5"}}).to_yaml()
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == [
        "name", "seed", "data", "model", "optimizer", "scheduler", "train", "out"]
