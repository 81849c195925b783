"""``--set KEY=VALUE``: dotted keys into a config's nested mappings, values read as YAML within the file limits."""

from __future__ import annotations

from typing import Any

import yaml

from cnnctl.config.safe_yaml import load_limited, yaml_problem
from cnnctl.config.text import short_repr
from cnnctl.errors import ConfigError

_SET_EXAMPLE = "e.g. --set optimizer.lr=0.05"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``optimizer.lr=0.05`` -> (["optimizer", "lr"], 0.05); the value is parsed as YAML, within read_yaml's limits."""
    shown = f"--set {short_repr(item)}"
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"{shown}: no '='; --set takes KEY=VALUE with a dotted key, {_SET_EXAMPLE}")
    if not key:
        raise ConfigError(f"{shown}: nothing before '='; --set takes KEY=VALUE with a dotted key, {_SET_EXAMPLE}")
    keys = [k.strip() for k in key.split(".")]
    if "[" in key or "]" in key or any(k.isdigit() for k in keys):
        raise ConfigError(f"{shown}: --set takes dotted keys (section.key), not list indexes; to change custom layers, "
                          "give the whole list as YAML, e.g. --set 'model.layers=[{conv: {out: 8, kernel: 3}}, relu, "
                          "flatten, linear]', or edit the layers in the config file")
    if not all(keys):
        raise ConfigError(f"{shown}: the key {short_repr(key)} has an empty part (a leading, trailing or doubled '.'); "
                          f"write section.key, {_SET_EXAMPLE}")
    try:
        value = load_limited(raw)  # an empty value is YAML's null
    except yaml.YAMLError as e:
        syntax = isinstance(e, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        what, hint = ("is not valid YAML", "; quote a string that holds ':', '#', '[' or '{'") if syntax else ("is refused", "")
        raise ConfigError(f"{shown}: the value {what} ({yaml_problem(e, raw)}){hint}") from None
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``--set KEY=VALUE`` applied (missing sections are created; the input is not changed).

    Only the mappings on an override's path are copied, so a config of any depth is never walked here."""
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for depth, k in enumerate(keys[:-1]):
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                dotted = ".".join(keys[: depth + 1])
                if isinstance(node[k], list):
                    raise ConfigError(f"--set {short_repr(item)}: {dotted} is a list, and --set cannot reach inside "
                                      f"one; give the whole list as YAML (--set '{dotted}=[...]') or edit the file")
                raise ConfigError(f"--set {short_repr(item)}: {dotted} is a value, not a section, so it has no key "
                                  f"{keys[depth + 1]!r}")
            node[k] = dict(node[k])  # a copy: the caller's mapping stays as it was
            node = node[k]
        node[keys[-1]] = value
    return data


def flatten_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a nested mapping by dotted keys (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_keys(v, key + "."))
        else:
            out[key] = v
    return out
