"""cnnctl.config.fields: the one walker of the schema's annotations, and the readers that agree through it."""

from __future__ import annotations

import pytest

from cnnctl.completion import config_keys
from cnnctl.config import Config, UnknownKey, annotation_at, field_at, fields_of
from cnnctl.config.schema import EarlyStoppingConfig, Normalize
from cnnctl.errors import ConfigError
from cnnctl.models.specs import ConvArgs, Layer, as_layers
from tests.conftest import write_config


def test_field_at_names_the_field_of_a_dotted_key():
    assert field_at(Config, "train.early_stopping.patience") is EarlyStoppingConfig.model_fields["patience"]
    assert field_at(Config, "seed") is Config.model_fields["seed"]
    assert field_at(Config, "data.normalize.std") is Normalize.model_fields["std"]  # a union with one section


@pytest.mark.parametrize(("key", "where", "part", "valid"), [
    ("optimizr", "", "optimizr", ("name", "seed", "data", "model", "optimizer", "scheduler", "train", "out")),
    ("optimizer.lrr", "optimizer", "lrr", tuple(Config.model_fields["optimizer"].annotation.model_fields)),
    ("optimizer.lr.x", "optimizer.lr", "x", None),  # a value, not a section
    ("model.layers.conv", "model.layers", "conv", None),  # a list is given whole: --set and a space cannot reach in
])
def test_field_at_says_where_a_key_leaves_the_schema(key, where, part, valid):
    with pytest.raises(UnknownKey) as caught:
        field_at(Config, key)
    assert (caught.value.where, caught.value.part, caught.value.valid) == (where, part, valid)
    assert str(caught.value) == key


def test_fields_of_a_section_an_optional_section_a_union_and_a_value():
    assert list(fields_of(Config.model_fields["train"].annotation)) == list(Config.model_fields["train"].annotation.model_fields)
    assert list(fields_of(Config.model_fields["train"].annotation.model_fields["early_stopping"].annotation)) == [
        "monitor", "mode", "patience", "min_delta", "restore_best"]
    assert list(fields_of(Config.model_fields["data"].annotation.model_fields["normalize"].annotation)) == ["mean", "std"]
    assert fields_of(Config.model_fields["model"].annotation.model_fields["layers"].annotation) == {}
    assert fields_of(int) == {} and fields_of(None) == {}


def test_annotation_at_follows_keys_and_list_positions():
    conv = annotation_at(Config, ("model", "layers", 0, "residual", 1, "conv"))
    assert list(fields_of(conv)) == list(ConvArgs.model_fields)
    assert annotation_at(Config, ("optimizer", "betas", 1)) is not None
    assert annotation_at(Config, ("optimizer", "betas", 2)) is None  # a pair has no third value
    assert annotation_at(Config, ("nothing", "below")) is None
    assert annotation_at(Layer, ()) is Layer


def test_completion_offers_the_keys_the_walker_knows():
    keys = config_keys()
    assert "model.layers" in keys and not any(k.startswith("model.layers.") for k in keys)
    assert {"data.normalize.mean", "data.normalize.std", "train.early_stopping.patience"} <= set(keys)
    for key in keys:
        field_at(Config, key)  # every key completion offers is one the walker finds


def test_a_misspelt_layer_argument_names_the_valid_ones_at_its_depth():
    with pytest.raises(ConfigError) as caught:
        as_layers([{"residual": [{"conv": {"out": 4, "kernel": 3, "strid": 2}}]}])
    assert str(caught.value) == "model.layers[0].residual[0].conv.strid: unknown key; did you mean 'stride'?"


def test_a_space_cannot_reach_inside_a_list(cli, tmp_path):
    base = write_config(tmp_path / "base.yaml", "data: {dataset: digits}\nmodel: {arch: lenet5}\ntrain: {epochs: 1}\n")
    space = write_config(tmp_path / "space.yaml", "model.layers.conv: [1, 2]\n")
    result = cli("tune", base, "--space", space, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {space}: model.layers.conv: model.layers is a value, not a section; it has no "
                             "key 'conv'\n")
    assert not (tmp_path / "out").exists()
