"""Loading a config: a file or a bundled name -> safe YAML -> ``--set`` overrides -> one validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cnnctl.config.bundled import resolve_config_path
from cnnctl.config.messages import format_validation_error
from cnnctl.config.names import safe_run_name
from cnnctl.config.overrides import apply_overrides
from cnnctl.config.safe_yaml import read_yaml
from cnnctl.config.schema import Config
from cnnctl.errors import ConfigError


def load_config(spec: str | Path, overrides: list[str] | None = None) -> tuple[Config, Path]:
    """Read, override and validate a config. Returns it and the file it came from."""
    overrides = list(overrides or [])
    path = resolve_config_path(spec)
    data = apply_overrides(read_yaml(path), overrides)
    if data.get("name") is None:
        data["name"] = safe_run_name(path.stem)  # the default run name: the config file's stem, made safe
    return validate_config(data, str(path), overrides), path


def validate_config(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> Config:
    """``data`` as a Config, or a ConfigError with one line per problem naming ``source`` (or the ``--set`` that
    gave a key)."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, overrides or [])) from None
    except RecursionError:
        raise ConfigError("config nested too deeply", file=source) from None
