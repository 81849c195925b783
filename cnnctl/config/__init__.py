"""Typed, validated configs: the schema, safe YAML, ``--set`` overrides, clear errors, and a run resolved once.

One module a job, as the flow goes (each imports only those above it):

- ``text``: ``clip`` and ``short_repr``, the one way a message cuts text and shows a value;
- ``fields``: the one walker of pydantic annotations ("the field at this dotted key");
- ``names``: the run-name and device rules; ``schema``: one pydantic model per section, and ``Config``;
- ``bundled``: the bundled configs and spaces; ``safe_yaml``: ``read_yaml`` within size, alias and depth limits;
- ``overrides``: ``--set``; ``messages``: validation errors in words; ``load``: ``load_config``;
- ``resolve``: ``resolve_run``, the one place a run's config is decided, and the resume policy.

Every name is importable from ``cnnctl.config``. Nothing here imports torch: ``cnnctl --help`` and config errors
stay fast.
"""

from __future__ import annotations

from cnnctl.config.bundled import CONFIGS_DIR, bundled_configs, bundled_dir, bundled_spaces, resolve_config_path
from cnnctl.config.fields import UnknownKey, annotation_at, field_at, fields_of
from cnnctl.config.load import load_config, validate_config
from cnnctl.config.messages import MAX_MESSAGE, format_validation_error
from cnnctl.config.names import (
    DEVICE_FORMS,
    RUN_NAME_MAX,
    RUN_NAME_RULE,
    check_device,
    check_run_name,
    safe_run_name,
)
from cnnctl.config.overrides import apply_overrides, flatten_keys, parse_override
from cnnctl.config.resolve import RESUME_ALLOWED, ResolvedRun, resolve_run
from cnnctl.config.safe_yaml import MAX_YAML_BYTES, MAX_YAML_CHARS, MAX_YAML_DEPTH, MAX_YAML_VALUES, read_yaml
from cnnctl.config.schema import (
    Augment,
    CheckpointConfig,
    Config,
    DataConfig,
    EarlyStoppingConfig,
    Fraction,
    Metric,
    ModelConfig,
    NonNegFloat,
    Normalize,
    OptimizerConfig,
    PositiveFloat,
    PositiveInt,
    SchedulerConfig,
    Section,
    TrainConfig,
    is_finite_number,
)
from cnnctl.config.text import clip, short_repr

__all__ = [
    "CONFIGS_DIR", "DEVICE_FORMS", "MAX_MESSAGE", "MAX_YAML_BYTES", "MAX_YAML_CHARS", "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES", "RESUME_ALLOWED", "RUN_NAME_MAX", "RUN_NAME_RULE", "Augment", "CheckpointConfig", "Config",
    "DataConfig", "EarlyStoppingConfig", "Fraction", "Metric", "ModelConfig", "NonNegFloat", "Normalize",
    "OptimizerConfig", "PositiveFloat", "PositiveInt", "ResolvedRun", "SchedulerConfig", "Section", "TrainConfig",
    "UnknownKey", "annotation_at", "apply_overrides", "bundled_configs", "bundled_dir", "bundled_spaces",
    "check_device", "check_run_name", "clip", "field_at", "fields_of", "flatten_keys", "format_validation_error",
    "is_finite_number", "load_config", "parse_override", "read_yaml", "resolve_config_path", "resolve_run",
    "safe_run_name", "short_repr", "validate_config",
]
