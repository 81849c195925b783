"""Config loading and validation: every kind of bad config exits 2 with a message naming file and key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnctl.config import Config, apply_overrides, bundled_configs, load_config, parse_override, read_yaml
from cnnctl.errors import ConfigError
from tests.conftest import write_config

GOOD = """\
data: {dataset: digits}
model: {arch: lenet5}
optimizer: {name: sgd, lr: 0.1}
train: {epochs: 2}
"""

# (name, config text, words the message must contain)
BAD_CONFIGS = [
    ("yaml-syntax", "data:\n  dataset: digits\n   batch_size: 3\n", ["line 3", "column"]),
    ("yaml-unclosed", "data: {dataset: digits\n", ["line", "column"]),
    ("unknown-top-key", GOOD + "epochs: 3\n", ["epochs", "unknown key"]),
    ("unknown-data-key", "data: {dataset: digits, batchsize: 3}\n", ["data.batchsize", "did you mean 'batch_size'"]),
    ("unknown-model-key", "model: {arch: lenet5, dropuot: 0.1}\n", ["model.dropuot", "did you mean 'dropout'"]),
    ("unknown-optimizer-key", "optimizer: {lrr: 0.1}\n", ["optimizer.lrr", "did you mean 'lr'"]),
    ("unknown-scheduler-key", "scheduler: {name: step, step_sise: 3}\n", ["scheduler.step_sise", "step_size"]),
    ("unknown-train-key", "train: {epoch: 3}\n", ["train.epoch", "did you mean 'epochs'"]),
    ("unknown-nested-key", "train: {early_stopping: {patince: 3}}\n", ["train.early_stopping.patince", "patience"]),
    ("wrong-type", "data: {batch_size: many}\n", ["data.batch_size", "integer"]),
    ("negative-lr", "optimizer: {lr: -0.1}\n", ["optimizer.lr", "greater than 0"]),
    ("zero-epochs", "train: {epochs: 0}\n", ["train.epochs", "greater than or equal to 1"]),
    ("unknown-arch", "model: {arch: resnet19}\n", ["model.arch", "unknown model 'resnet19'", "resnet18"]),
    ("unknown-optimizer", "optimizer: {name: adamm}\n", ["optimizer.name", "did you mean 'adam'"]),
    ("unknown-scheduler", "scheduler: {name: cosin}\n", ["scheduler.name", "did you mean 'cosine'"]),
    ("unknown-dataset", "data: {dataset: mnits}\n", ["data.dataset", "did you mean 'mnist'"]),
    ("empty-custom", "model: {arch: custom, layers: []}\n", ["model", "non-empty 'layers'"]),
    ("nan", "optimizer: {lr: .nan}\n", ["optimizer.lr"]),
    ("huge-number", "optimizer: {lr: 1e999}\n", ["optimizer.lr"]),
    ("python-tag", "name: !!python/object/apply:os.system ['echo pwned']\n", ["!!python", "safely"]),
    ("not-a-mapping", "- 1\n- 2\n", ["mapping"]),
    ("bad-device", "train: {device: gpu}\n", ["train.device", "cuda:N"]),
    ("nesterov-without-momentum", "optimizer: {name: sgd, nesterov: true, momentum: 0}\n", ["nesterov", "momentum"]),
    ("normalize-mismatch", "data: {normalize: {mean: [0.5], std: [0.2, 0.3]}}\n", ["data.normalize", "one of each"]),
]


@pytest.mark.parametrize(("case", "text", "words"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_file_and_key(cli, tmp_path, case, text, words):
    path = write_config(tmp_path / f"{case}.yaml", text)
    result = cli("summary", path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(path) in result.stderr
    for word in words:
        assert word.lower() in result.stderr.lower(), (word, result.stderr)
    assert result.stdout == ""


def test_missing_file_suggests_bundled(cli, tmp_path):
    result = cli("summary", "lenet5-digit")
    assert result.exit_code == 2
    assert "lenet5-digit" in result.stderr and "did you mean 'lenet5-digits'" in result.stderr.lower()
    result = cli("summary", tmp_path)
    assert result.exit_code == 2 and "directory" in result.stderr


def test_python_tag_constructs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = write_config(tmp_path / "evil.yaml", f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_deeply_nested_yaml(cli, tmp_path):
    path = write_config(tmp_path / "deep.yaml", "data: " + "[" * 5000 + "]" * 5000 + "\n")
    result = cli("summary", path)
    assert result.exit_code == 2 and "Traceback" not in result.output and str(path) in result.stderr


def test_set_overrides_parse_yaml_values(tmp_path):
    path = write_config(tmp_path / "c.yaml", GOOD)
    cfg, _ = load_config(path, ["optimizer.lr=0.05", "train.early_stopping=null", "data.augment.hflip=true",
                                "model.arch=resnet20"])
    assert cfg.optimizer.lr == 0.05
    assert cfg.train.early_stopping is None
    assert cfg.data.augment.hflip is True
    assert cfg.model.arch == "resnet20"
    assert cfg.name == "c"


def test_set_error_names_the_override(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", GOOD)
    result = cli("summary", path, "--set", "optimizer.lrr=0.1")
    assert result.exit_code == 2
    assert "--set optimizer.lrr=0.1" in result.stderr and "did you mean 'lr'" in result.stderr
    result = cli("summary", path, "--set", "optimizer.lr")
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr


def test_parse_override_and_apply():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x", "d.e=3"]) == {"a": {"b": 1, "c": "x"}, "d": {"e": 3}}


def test_every_bundled_config_validates():
    bundled = bundled_configs()
    assert {"lenet5-digits", "lenet5-mnist", "lenet5-fashion", "resnet20-cifar10", "vgg11-cifar10",
            "resnet18-cifar10", "custom-example"} <= set(bundled)
    for name, path in bundled.items():
        cfg, source = load_config(name)
        assert source == path
        written = flatten(read_yaml(path))
        resolved = flatten(cfg.dump())
        assert written, name
        for key, value in written.items():  # every key the file sets is in the resolved config, with its value
            got = resolved[key]
            if isinstance(got, float) and isinstance(value, (str, int)):
                value = float(value)  # YAML reads 1e-3 as a string, pydantic as a float
            if key == "model.layers":  # shorthand (`conv: 16`, `relu`) is written out in full when typed
                value = Config.model_validate({"model": {"arch": "custom", "layers": value}}).dump()["model"]["layers"]
            assert got == value, (name, key, got, value)
        assert cfg.name == written.get("name", Path(name).name)  # a config without a name takes its file stem
        assert Config.model_validate(cfg.dump()).dump() == cfg.dump()


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def test_resolved_config_round_trips(tmp_path):
    cfg, _ = load_config("resnet20-cifar10")
    path = write_config(tmp_path / "resolved.yaml", cfg.to_yaml())
    again, _ = load_config(path)
    assert again.dump() == cfg.dump()


def test_help_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from cnnctl.cli import app
        try:
            app(["--help"])
        except SystemExit:
            pass
        try:
            app(["summary", "--help"])
        except SystemExit:
            pass
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_config_error_does_not_import_torch(tmp_path):
    path = write_config(tmp_path / "bad.yaml", "optimizer: {lrr: 1}\n")
    code = textwrap.dedent(f"""
        import sys
        from cnnctl.cli import app
        try:
            app(["summary", {str(path)!r}])
        except SystemExit as e:
            print(e.code, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "2 False"


def test_configs_lists_bundled(cli):
    result = cli("configs")
    assert result.exit_code == 0
    assert "lenet5-digits" in result.stdout and "LeNet-5" in result.stdout
