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


def yaml_refusal(tmp_path: Path, text: str) -> str:
    """read_yaml's refusal of a file holding ``text``, without the file's name in front (checked to be there)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    message = str(refused(lambda: read_yaml(path)))
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


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
    assert yaml_refusal(tmp_path, text) == message


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
    from cnnctl.config import clip as _cut

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


def test_an_installed_package_never_takes_the_configs_beside_it(tmp_path, monkeypatch):
    # site-packages/cnnctl without its configs, and someone else's site-packages/configs: not a checkout (no
    # pyproject.toml there), so the bundled folder is the package's own (missing), never the stranger's
    import importlib.resources

    site = tmp_path / "site-packages"
    (site / "cnnctl").mkdir(parents=True)
    (site / "configs").mkdir()
    (site / "configs" / "theirs.yaml").write_text("a: 1\n")
    monkeypatch.setattr(importlib.resources, "files", lambda package: site / "cnnctl")  # where the package is
    assert bundled_dir() == site / "cnnctl" / "configs"
    (site / "pyproject.toml").write_text("[project]\nname = 'cnnctl'\n")  # a source checkout: its top-level configs/
    assert bundled_dir() == site / "configs"


def test_a_config_that_is_neither_a_file_nor_a_bundled_name(tmp_path):
    from cnnctl.config import resolve_config_path

    error = refused(lambda: resolve_config_path(tmp_path))
    assert error.file == str(tmp_path)
    assert str(error) == f"{tmp_path}: is a directory, not a config file; give a .yaml file or a bundled config name"
    error = refused(lambda: resolve_config_path("lenet5-digit"))
    assert error.file == "lenet5-digit"
    assert str(error) == ("lenet5-digit: no such file, nor a bundled config of that name; did you mean "
                          "'lenet5-digits'? (`cnnctl configs` lists the bundled ones)")


def _alias_bomb(where: str) -> str:
    """Four levels of ten aliases each, and ``where`` holding ten of the last: 111,111 values once expanded."""
    text = "l0: &l0 [" + ", ".join(["1"] * 10) + "]\n"
    for level in range(1, 4):
        text += f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]\n"
    return text + where.replace("BOMB", "[" + ", ".join(["*l3"] * 10) + "]") + "\n"


@pytest.mark.parametrize("where, place, path", [
    ("x:\n  y: BOMB", "line 6, column 6", "x.y"),
    ("x:\n  - 0\n  - BOMB", "line 7, column 5", "x[1]"),
    ("x: {y: [0, {z: BOMB}]}", "line 5, column 16", "x.y[1].z"),
    (f"{'k' * 41}: BOMB", "line 5, column 44", f"{'k' * 40}... (41 characters)"),
    ("? [k]\n: BOMB", "line 6, column 3", "?"),  # a list as a key: no name to give
])
def test_an_expanded_alias_names_the_key_that_holds_it(tmp_path, where, place, path):
    assert yaml_refusal(tmp_path, _alias_bomb(where)) == (
        f"{place}: this value ({path}) holds 111,111 values once its aliases (*name) are expanded, more than a "
        "config may hold (100,000 values, 4,194,304 characters); write the values out instead of nesting aliases")


@pytest.mark.parametrize("text, message", [
    ("? [a, b]\n: 1\n", "line 1, column 3: found unhashable key"),  # a list as a key: refused, not a crash
    ("a: !x!y 1\n", "line 1, column 4: found undefined tag handle '!x!'"),  # a tag, but not a constructor's refusal
    ("a: 1\nb: \x01\n", "line 2, column 4: a control character (#x0001) that YAML does not allow; remove it"),
    ("a: \x7f\n", "line 1, column 4: a control character (#x007f) that YAML does not allow; remove it"),
])
def test_more_yaml_problems_read_well(tmp_path, text, message):
    assert yaml_refusal(tmp_path, text) == message


def test_several_merge_keys_in_one_mapping_all_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: *a\n  <<: *b\n  z: 3\n")
    assert read_yaml(path) == {"a": {"x": 1}, "b": {"y": 2}, "c": {"x": 1, "y": 2, "z": 3}}


def test_a_yaml_error_without_a_place_or_a_problem_still_reads_well():
    # PyYAML's own errors always carry both; these are the fallbacks for any other YAMLError
    import yaml

    from cnnctl.config.safe_yaml import yaml_problem as _yaml_problem

    assert _yaml_problem(yaml.MarkedYAMLError(problem="bad thing"), "") == "bad thing"
    assert _yaml_problem(yaml.MarkedYAMLError(context="while reading"), "") == "while reading"
    assert _yaml_problem(yaml.MarkedYAMLError(), "") == "invalid YAML"
    assert _yaml_problem(yaml.YAMLError("x" * 300), "") == f"invalid YAML: {'x' * 200!r}... (300 characters)"
    assert _yaml_problem(yaml.YAMLError("short"), "") == "invalid YAML: 'short'"


@pytest.mark.parametrize("model, message", [
    # an unknown key inside a residual branch, and one at a list item: the valid keys of the right layer kind
    ({"arch": "custom", "layers": [{"residual": [{"conv": {"out": 8, "kernel": 3, "x": 1}}, {"convv": 1}]}, "flatten",
                                   "linear"]},
     "model.layers[0].residual[0].conv.x: unknown key. Valid keys: out, kernel, stride, padding, bias\n"
     "{path}: model.layers[0].residual[1].convv: unknown key; did you mean 'conv'? Valid keys: conv, batchnorm, relu, "
     "leaky_relu, tanh, sigmoid, gelu, identity, maxpool, avgpool, sumpool, adaptive_avgpool, dropout, flatten, linear, "
     "residual"),
    ({"arch": "custom", "layers": [{"conv": {"kernel": 3}}, "flatten", "linear"]},
     "model.layers[0].conv.out: required key is missing"),
    ({"arch": "lenet5", "x" * 41: 1},
     "model.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (41 characters): unknown key. Valid keys: arch, stem, "
     "dropout, activation, pool, zero_init_residual, layers, pretrained, init_from"),
])
def test_model_errors_name_the_layer_and_its_keys(tmp_path, model, message):
    import yaml

    path = config_file(tmp_path, yaml.safe_dump({"data": {"dataset": "digits"}, "model": model}))
    assert str(refused(lambda: load_config(path))) == f"{path}: " + message.replace("{path}", str(path))


@pytest.mark.parametrize("normalize, message", [
    # a union (auto | none | a mapping): pydantic's member tags never show in the key path, and the member the
    # value's kind selects (a mapping: {mean, std}; a string: 'auto' or 'none') is the one reported
    ("{mean: [1], std: [1], x: 2}", "data.normalize.x: unknown key. Valid keys: mean, std"),
    ("{mean: [0.5], std: [0]}", "data.normalize.std[0]: Input should be greater than 0 (got 0)"),
    ("{mean: [0.5]}", "data.normalize.std: required key is missing"),
    ("{mean: [0.5], std: [1, 2]}", "data.normalize: mean has 1 values and std 2; give one of each per channel"),
    ("x", "data.normalize: Input should be 'auto' or 'none' (got 'x')"),
    # no member takes a number or a list: one line says what each would
    ("5", "data.normalize: Input should be 'auto' or 'none', or a mapping of mean, std (got 5)"),
    ("[1, 2]", "data.normalize: Input should be 'auto' or 'none', or a mapping of mean, std (got [1, 2])"),
])
def test_a_union_key_reads_as_one_path(tmp_path, normalize, message):
    path = config_file(tmp_path, f"data: {{dataset: digits, normalize: {normalize}}}\nmodel: {{arch: lenet5}}\n")
    assert str(refused(lambda: load_config(path))) == f"{path}: {message}"


@pytest.mark.parametrize("sets, message", [
    (["train.threads=0"], "train.threads: Input should be greater than or equal to 1 (got 0)"),
    (["train.threads=2.5"], "train.threads: Input should be a valid integer, got a number with a fractional part "
                            "(got 2.5)"),
    (["train.threads=many"], "train.threads: Input should be 'auto' (got 'many')"),
    (["data.workers=999"], "data.workers: Input should be less than or equal to 256 (got 999)"),
    (["train.channels_last=3"], "train.channels_last: Input should be 'auto', or a valid boolean, unable to interpret "
                                "input (got 3)"),
    (["train.early_stopping=5"], "train.early_stopping: Input should be a mapping of monitor, mode, patience, "
                                 "min_delta, restore_best (got 5)"),
])
def test_the_first_line_names_the_real_reason(cli, tmp_path, sets, message):
    """Issue 23: ``train.threads=0`` said "should be 'auto'" with the reason, behind pydantic's tag
    ``constrained-int``, on line 2. Each is one line, through the CLI, with no tag of pydantic's in it."""
    path = config_file(tmp_path)
    result = cli("summary", path, "--set", sets[0])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: --set {sets[0]}: {message}\n"
    for tag in ("constrained-", "literal[", "function-after", "instance of"):
        assert tag not in result.stderr


def test_a_message_that_echoes_a_huge_value_is_cut_at_1000_characters(tmp_path):
    import yaml

    def message(argument: str) -> str:
        model = {"arch": "custom", "layers": [{"relu": argument}, "flatten", "linear"]}
        path = config_file(tmp_path, yaml.safe_dump({"data": {"dataset": "digits"}, "model": model}, width=10**6))
        return str(refused(lambda: load_config(path))).removeprefix(f"{path}: model.layers[0].relu: ")

    said = "takes no arguments; write the kind's name alone, not "
    fits = "x" * (1000 - len(said) - 2)  # its repr's quotes make the message exactly 1000 characters
    assert message(fits) == f"{said}{fits!r}"
    assert message(fits + "y") == f"{said}{fits!r}"[:-1] + "y... (1,001 characters)"
    assert message("x" * 5000) == f"{said}'{'x' * 946}... (5,055 characters)"


def test_finite_numbers_are_real_numbers_only():
    from cnnctl.config import is_finite_number

    assert [is_finite_number(x) for x in (0, -3, 1.5, 10**30)] == [True] * 4
    assert [is_finite_number(x) for x in (True, False, float("nan"), float("inf"), -float("inf"), "1", None)] == [
        False] * 7


def test_an_unknown_key_is_named_as_written_even_with_brackets(tmp_path):
    path = config_file(tmp_path, "data: {dataset: digits, normalize: {mean: [1], std: [1]}}\nmodel: {arch: lenet5}\n"
                                 "optimizer: {'lr[0]': 0.1}\n")
    assert str(refused(lambda: load_config(path))) == (
        f"{path}: optimizer.lr[0]: unknown key; did you mean 'lr'? Valid keys: name, lr, momentum, nesterov, "
        "weight_decay, decay_bias_and_norm, betas, alpha, eps")


def test_a_dumped_config_is_plain_json_data():
    import json

    from cnnctl.config import Config

    dumped = Config.model_validate({"data": {"dataset": "digits"}, "optimizer": {"name": "adam"}}).dump()
    assert dumped["optimizer"]["betas"] == [0.9, 0.999]  # a list, as JSON and YAML readers give it back, not a tuple
    assert json.loads(json.dumps(dumped)) == dumped


@pytest.mark.parametrize("text, message", [
    # a merge key first does not end the search for keys given twice
    ("a: &a {y: 1}\nc:\n  <<: *a\n  x: 1\n  x: 2\n",
     "line 5, column 3: key 'c.x' is given twice (line 4 and line 5); the second would silently replace the first: "
     "keep one"),
    (f"{'k' * 41}: 1\n{'k' * 41}: 2\n",
     f"line 2, column 1: key '{'k' * 40}... (41 characters)' is given twice (line 1 and line 2); the second would "
     "silently replace the first: keep one"),
    ("a: 1\nb: " + "7" * 5000 + "\n", "line 2, column 4: an integer of 5,000 digits is too long to be a config value"),
])
def test_keys_given_twice_and_huge_integers(tmp_path, text, message):
    assert yaml_refusal(tmp_path, text) == message


def _saved(**sets) -> dict:
    from cnnctl.config import resolve_run

    data = {"name": "first", "data": {"dataset": "digits"}, "model": {"arch": "lenet5"}, **sets}
    return {"config": resolve_run(data).config.dump()}


def test_a_resume_that_changes_several_keys_names_each_with_both_values(tmp_path):
    from cnnctl.config import RESUME_ALLOWED, resolve_run

    ckpt = _saved()
    error = refused(lambda: resolve_run(None, overrides=["seed=4", "optimizer.lr=0.5", "train.epochs=9"],
                                        resume_from=tmp_path / "last.pt", checkpoint=ckpt))
    assert str(error) == ("--resume: changing optimizer.lr (0.01 -> 0.5), seed (0 -> 4) would make this a different run; "
                          "resume with the config it was started with, or start a new run. Keys that may change on "
                          f"resume: {', '.join(RESUME_ALLOWED)}")
    assert RESUME_ALLOWED[:3] == ("name", "out", "train.epochs")


def test_a_resumed_configs_own_problem_names_the_checkpoint(tmp_path):
    from cnnctl.config import resolve_run

    ckpt = _saved()
    ckpt["config"]["optimizer"]["lrr"] = 1  # saved by another version of cnnctl, say
    error = refused(lambda: resolve_run(None, resume_from=tmp_path / "last.pt", checkpoint=ckpt))
    assert str(error).startswith(f"{tmp_path / 'last.pt'} (resumed config): optimizer.lrr: unknown key; did you mean "
                                 "'lr'?")
    error = refused(lambda: resolve_run({"data": {"dataset": "digits"}, "seed": -1}))
    assert str(error) == "config: seed: Input should be greater than or equal to 0 (got -1)"


def test_name_and_out_are_taken_as_written(tmp_path):
    from cnnctl.config import resolve_run

    run = resolve_run({"data": {"dataset": "digits"}}, name="007", out="null")
    assert (run.config.name, run.config.out) == ("007", "null")  # strings, not the YAML number 7 or null
    assert (resolve_run({"data": {"dataset": "digits"}}, out="o").config.name) == "run"
    assert resolve_run({"data": {"dataset": "digits"}, "name": "mine"}, out="o").config.name == "mine"


_SET_HELP = "--set takes KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.05"
_LIST_HELP = ("--set takes dotted keys (section.key), not list indexes; to change custom layers, give the whole list as "
              "YAML, e.g. --set 'model.layers=[{conv: {out: 8, kernel: 3}}, relu, flatten, linear]', or edit the layers in "
              "the config file")
_EMPTY_PART = "has an empty part (a leading, trailing or doubled '.'); write section.key, e.g. --set optimizer.lr=0.05"


@pytest.mark.parametrize("item, message", [
    ("lr", f"--set 'lr': no '='; {_SET_HELP}"),
    (" =3", f"--set ' =3': nothing before '='; {_SET_HELP}"),
    ("model.layers[0].out=3", f"--set 'model.layers[0].out=3': {_LIST_HELP}"),
    ("model.layers.0=3", f"--set 'model.layers.0=3': {_LIST_HELP}"),
    ("a]=1", f"--set 'a]=1': {_LIST_HELP}"),
    ("a[=1", f"--set 'a[=1': {_LIST_HELP}"),
    ("a..b=1", f"--set 'a..b=1': the key 'a..b' {_EMPTY_PART}"),
    (".a=1", f"--set '.a=1': the key '.a' {_EMPTY_PART}"),
    ("a=[1,", "--set 'a=[1,': the value is not valid YAML (line 1, column 4: expected the node content, but found "
              "'<stream end>'); quote a string that holds ':', '#', '[' or '{'"),
    ("a=!!python/object:os.system x",
     "--set 'a=!!python/object:os.system x': the value is refused (line 1, column 1: could not determine a constructor "
     "for the tag 'tag:yaml.org,2002:python/object:os.system' (cnnctl loads YAML safely: tags such as !!python/object "
     "are refused; use plain values))"),
    ("a=x\x01", "--set 'a=x\\x01': the value is refused (line 1, column 2: a control character (#x0001) that YAML does "
                "not allow; remove it)"),
])
def test_set_refusals_word_for_word(item, message):
    from cnnctl.config import parse_override

    assert str(refused(lambda: parse_override(item))) == message


def test_set_values_are_yaml_and_an_empty_one_is_null():
    from cnnctl.config import parse_override

    assert parse_override("a=") == (["a"], None)
    assert parse_override(" a . b =  ") == (["a", "b"], None)
    assert parse_override("a=b: c") == (["a"], {"b": "c"})
    assert parse_override("a=[1, x]") == (["a"], [1, "x"])


@pytest.mark.parametrize("data, item, message", [
    ({"model": {"layers": [1]}}, "model.layers.x=1",
     "--set 'model.layers.x=1': model.layers is a list, and --set cannot reach inside one; give the whole list as YAML "
     "(--set 'model.layers=[...]') or edit the file"),
    ({"optimizer": {"lr": 0.1}}, "optimizer.lr.x.y=1",
     "--set 'optimizer.lr.x.y=1': optimizer.lr is a value, not a section, so it has no key 'x'"),
    ({"a": {"b": {"c": 1}}}, "a.b.c.d.e=2", "--set 'a.b.c.d.e=2': a.b.c is a value, not a section, so it has no key 'd'"),
])
def test_set_cannot_reach_into_a_value_or_a_list(data, item, message):
    from cnnctl.config import apply_overrides

    assert str(refused(lambda: apply_overrides(data, [item]))) == message


def test_set_leaves_its_input_alone_and_creates_missing_sections():
    from cnnctl.config import apply_overrides

    data = {"a": None, "b": {"c": {"d": 1}}}
    assert apply_overrides(data, ["a.x.y=1", "b.c.d=2", "b.c.e=3"]) == {"a": {"x": {"y": 1}},
                                                                        "b": {"c": {"d": 2, "e": 3}}}
    assert data == {"a": None, "b": {"c": {"d": 1}}}


_RULE = ("a run name is one folder name inside --out: letters, digits, '-', '_' and '.', starting with a letter, digit "
         "or '_', without '..', at most 100 characters (e.g. lenet5-lr0.1); to put runs elsewhere, use --out DIR")


@pytest.mark.parametrize("name, why", [
    ("a/b", "'a/b' holds a path separator"),
    ("a\\b", "'a\\\\b' holds a path separator"),
    (".hidden", "'.hidden' starts with '.' or holds '..'"),
    ("a..b", "'a..b' starts with '.' or holds '..'"),
    ("-a", "'-a' starts with '-'"),
    ("x" * 101, f"'{'x' * 80}'... (101 characters) is 101 characters long"),
    ("", "'' is empty"),
    ("a b", "'a b' holds characters other than letters, digits, '-', '_' and '.'"),
    ("a b" + "x" * 97, f"'a b{'x' * 77}'... (100 characters) holds characters other than letters, digits, '-', '_' "
                       "and '.'"),  # 100 characters: not the length at fault
    ("é", "'é' holds characters other than letters, digits, '-', '_' and '.'"),
])
def test_run_names_refused_word_for_word(name, why):
    from cnnctl.config import check_run_name

    error = refused(lambda: check_run_name(name, "--name"))
    assert str(error) == f"--name: run name {why}; {_RULE}"


@pytest.mark.parametrize("name", ["ok", "a.b", "_x", "0-9", "a.", "x" * 100])
def test_run_names_accepted(name):
    from cnnctl.config import check_run_name

    assert check_run_name(name, "--name") == name


@pytest.mark.parametrize("text, made", [
    ("my config", "my-config"), ("ABC def", "ABC-def"), ("..a..b..", "a.b"), ("-x-", "x"), ("ÄÖ", "run"), ("", "run"),
    ("Xray", "Xray"), ("runX", "runX"), ("a" * 99 + "-" + "b" * 5, "a" * 99), ("a" * 99 + ".X", "a" * 99),
])
def test_a_file_stem_becomes_a_safe_run_name(text, made):
    from cnnctl.config import check_run_name, safe_run_name

    assert safe_run_name(text) == made
    assert check_run_name(made, "--name") == made


def test_short_repr_keeps_messages_short():
    from cnnctl.config import short_repr

    assert short_repr("x" * 80) == "'" + "x" * 27 + "..." + "x" * 28 + "'"  # reprlib's own cut, in the middle
    assert short_repr("x" * 81) == repr("x" * 80) + "... (81 characters)"
    exact = [10**37, 10**37]  # a repr of exactly 80 characters
    assert short_repr(exact) == repr(exact)
    assert short_repr([*exact, 1]) == repr(exact)[:-1] + ",..."
    assert short_repr(["y" * 60] * 3) == "['" + "y" * 27 + "..." + "y" * 28 + "', '" + "y" * 16 + "..."
    assert short_repr(10**5000) == "<int>"  # past Python's 4300-digit limit on str(int)


def _chars_bomb(filler: int) -> str:
    """A mapping of 3 + 1000 * 4191 + ``filler`` characters once its 4190 aliases are expanded."""
    return f"a: &a {'s' * 1000}\nb: [{', '.join(['*a'] * 4190)}]\nc: {'f' * filler}\n"


def test_the_value_and_character_limits_are_exact(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("x: [" + "0, " * 99_997 + "]\n")  # the mapping, its key, the list and 99,997 items: 100,000 values
    assert len(read_yaml(path)["x"]) == 99_997
    path.write_text("x: [" + "0, " * 99_998 + "]\n")
    assert str(refused(lambda: read_yaml(path))) == (
        f"{path}: line 1, column 1: this value holds 100,001 values, more than a config may hold (100,000 values, "
        "4,194,304 characters)")
    path.write_text(_chars_bomb(3301))
    assert len(read_yaml(path)["b"]) == 4190
    path.write_text(_chars_bomb(3302))
    assert str(refused(lambda: read_yaml(path))) == (
        f"{path}: line 1, column 1: this value holds 4,194,305 characters once its aliases (*name) are expanded, more "
        "than a config may hold (100,000 values, 4,194,304 characters); write the values out instead of nesting aliases")


def test_a_recursive_alias_is_refused_where_it_is(tmp_path):
    assert yaml_refusal(tmp_path, "a: 1\nb: &b [1, {c: *b}]\n") == (
        "line 2, column 15: this alias refers to a list or mapping that contains it (a recursive structure); a "
        "config is a tree: write the values out")


@pytest.mark.parametrize("text, place", [
    ("\n\na: 1\nb: \x01\n", "line 4, column 4"),  # after several lines: counted from the last newline
    ("\n\x01", "line 2, column 1"),  # a newline first
])
def test_a_control_character_is_placed_after_any_newlines(tmp_path, text, place):
    assert yaml_refusal(tmp_path, text) == (
        f"{place}: a control character (#x0001) that YAML does not allow; remove it")


def test_resolve_run_refusals_word_for_word(tmp_path):
    from cnnctl.config import resolve_run
    from cnnctl.errors import UsageError

    with pytest.raises(UsageError) as info:
        resolve_run(None)
    assert str(info.value) == ("give a CONFIG (a file or a bundled config name; `cnnctl configs` lists them) or "
                               "--resume RUN")
    error = refused(lambda: resolve_run(None, resume_from=tmp_path / "last.pt", checkpoint={"config": [1]}))
    assert str(error) == f"{tmp_path / 'last.pt'}: the checkpoint holds no config mapping; it was not written by cnnctl train"
    deep: object = 1
    for _ in range(3000):
        deep = [deep]
    error = refused(lambda: resolve_run({"data": {"dataset": "digits"}, "model": {"arch": "custom", "layers": deep}}))
    assert str(error) == "config: config nested too deeply"


def test_resume_details_the_checkpoint_does_not_settle(tmp_path):
    from cnnctl.config import resolve_run

    last = tmp_path / "last.pt"
    unnamed = _saved()
    unnamed["config"]["name"] = None  # saved before runs were always named
    assert resolve_run(None, resume_from=last, checkpoint=unnamed).config.name == "run"
    # the saved config itself no longer validates (an older cnnctl, say) while the resumed one does
    old = _saved()
    old["config"]["train"]["epochs"] = 0
    assert str(refused(lambda: resolve_run(None, overrides=["train.epochs=3"], resume_from=last, checkpoint=old))) == (
        f"{last}: train.epochs: Input should be greater than or equal to 1 (got 0)")
    # turning early stopping on: keys the saved config does not have at all
    error = refused(lambda: resolve_run(None, overrides=["train.early_stopping.patience=3"], resume_from=last,
                                        checkpoint=_saved(train={"early_stopping": None})))
    assert str(error).startswith("--resume: changing train.early_stopping.mode (None -> 'auto'), "
                                 "train.early_stopping.monitor (None -> 'val_loss') would make this a different run")
    # a resume path without a checkpoint is no resume
    assert resolve_run({"data": {"dataset": "digits"}}, resume_from=last).resume_from is None
    # the caller's dict is left as it was
    given = {"data": {"dataset": "digits"}, "optimizer": {"lr": 0.5}}
    resolve_run(given, overrides=["optimizer.lr=0.1", "data.batch_size=8"], name="n")
    assert given == {"data": {"dataset": "digits"}, "optimizer": {"lr": 0.5}}


def test_a_resumed_run_keeps_its_place_unless_told_its_own(tmp_path, monkeypatch):
    """``--resume`` continues RUN where it is: a config file's name and out do not move it, --name/--out/--set
    naming another place are refused (through the CLI in test_resume.py), and the run's own place is accepted and
    recorded: the saved name and out, or the folder a moved run is in now."""
    import yaml

    from cnnctl.config import resolve_run
    from cnnctl.errors import UsageError

    monkeypatch.chdir(tmp_path)
    ckpt = _saved(out="runs")
    run = tmp_path / "runs" / "first"
    resume = {"resume_from": run / "last.pt", "checkpoint": ckpt}
    other = config_file(tmp_path, yaml.safe_dump({**ckpt["config"], "name": "other", "out": "elsewhere"}))
    kept = resolve_run(other, **resume).config
    assert (kept.name, kept.out) == ("first", "runs")
    assert resolve_run(None, name="first", out=str(tmp_path / "runs"), **resume).config.out == str(tmp_path / "runs")
    moved = tmp_path / "moved" / "renamed" / "last.pt"
    placed = resolve_run(None, overrides=["name=renamed", f"out={moved.parent.parent}"], resume_from=moved,
                         checkpoint=ckpt).config
    assert (placed.name, placed.out) == ("renamed", str(moved.parent.parent))
    for given in ({"name": "renamed"}, {"out": "elsewhere"}, {"overrides": ["out=elsewhere"]}):
        with pytest.raises(UsageError, match=f"a resumed run stays in {run} "):
            resolve_run(None, **given, **resume)
