"""Typed, validated configs: one pydantic model per section, YAML loading, ``--set`` overrides, clear errors.

Nothing here imports torch: ``cnnctl --help`` and config errors stay fast.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnnctl.errors import ConfigError
from cnnctl.registry import closest

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

Metric = Literal["val_loss", "val_acc", "train_loss", "train_acc"]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class Normalize(Section):
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)
    std: list[PositiveFloat] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give one of each per channel")
        return self


class Augment(Section):
    crop_padding: Annotated[int, Field(ge=0, le=64)] = 0
    hflip: bool = False


class DataConfig(Section):
    dataset: str = "digits"
    root: str = "data"
    download: bool = True
    val_split: Fraction = 0.1
    test_split: Fraction = 0.2  # digits, fake and a one-folder imagefolder: no official test split
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 128
    eval_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None  # default: 2 x batch_size
    image_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    channels: Literal[1, 3] | None = None
    num_classes: Annotated[int, Field(ge=2, le=100_000)] | None = None
    num_samples: Annotated[int, Field(ge=10, le=10_000_000)] | None = None  # fake only
    normalize: Literal["auto", "none"] | Normalize = "auto"
    augment: Augment = Field(default_factory=Augment)
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = "auto"
    # imagefolder: decode every image once into memory (memory), and keep that on disk (disk), or stream (none);
    # auto: memory when it fits (cnnctl/data/cache.py). cache_dir: where disk keeps it (default ROOT/.cnnctl-cache).
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    cache_dir: str | None = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from cnnctl.data.registry import DATASETS

        if name not in DATASETS:
            raise ValueError(DATASETS.unknown(name))
        return name

    @model_validator(mode="after")
    def _fake_only(self) -> DataConfig:
        if self.dataset != "fake":
            for key in ("num_classes", "num_samples"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for dataset 'fake' only; {self.dataset} knows its own; remove it")
        if self.channels is not None and self.dataset not in ("fake", "imagefolder"):
            raise ValueError(f"channels is for 'imagefolder' and 'fake' only; {self.dataset} has its own; remove it")
        if self.cache not in ("auto", "memory") and self.dataset != "imagefolder":
            raise ValueError(f"cache: {self.cache} is for 'imagefolder' only; {self.dataset} is always held in memory; "
                             "remove it")
        if self.cache_dir is not None and self.cache != "disk":
            raise ValueError(f"cache_dir is where cache: disk keeps decoded images, but cache is {self.cache}; set "
                             "cache: disk or remove cache_dir")
        return self


class ModelConfig(Section):
    arch: str = "lenet5"
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    dropout: Fraction = 0.0
    activation: Literal["auto", "relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = "auto"  # lenet5: auto = relu
    pool: Literal["auto", "max", "avg"] = "auto"  # lenet5: auto = max
    zero_init_residual: bool = False
    layers: list[str | dict[str, Any]] = []

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        from cnnctl.models.registry import MODELS

        if name not in MODELS and not name.startswith("torchvision."):
            raise ValueError(MODELS.unknown(name) + " Or torchvision.NAME for any model of torchvision's zoo.")
        return name

    @model_validator(mode="after")
    def _layers_for_custom(self) -> ModelConfig:
        if self.arch == "custom" and not self.layers:
            raise ValueError("arch 'custom' needs a non-empty 'layers' list, e.g. layers: [{conv: {out: 8, kernel: 3}}, relu, flatten, linear]")
        if self.arch != "custom" and self.layers:
            raise ValueError(f"'layers' is for arch 'custom' only; arch {self.arch!r} is fixed. Set arch: custom or remove layers")
        return self


class OptimizerConfig(Section):
    name: str = "sgd"
    lr: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 0.01
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] = 0.0
    decay_bias_and_norm: bool = True  # false: no weight decay on biases and norm weights
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)  # adam/adamw
    alpha: Fraction = 0.99  # rmsprop smoothing constant
    eps: PositiveFloat = 1e-8

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from cnnctl.optim import OPTIMIZERS

        if name not in OPTIMIZERS:
            raise ValueError(OPTIMIZERS.unknown(name))
        return name

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd and momentum > 0 (e.g. momentum: 0.9)")
        return self


class SchedulerConfig(Section):
    name: str = "none"
    warmup_epochs: Annotated[float, Field(ge=0.0, le=10_000, allow_inf_nan=False)] = 0.0
    warmup_start_factor: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.01
    step_size: PositiveInt = 30  # step: epochs between decays
    milestones: list[PositiveInt] = [30, 60, 90]  # multistep: epochs
    gamma: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.1  # step/multistep/exponential
    min_lr: NonNegFloat = 0.0  # cosine
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.3  # onecycle
    monitor: Metric = "val_loss"  # plateau
    patience: Annotated[int, Field(ge=0)] = 10  # plateau
    factor: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.1  # plateau

    @field_validator("name")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        from cnnctl.optim import SCHEDULERS

        if name not in SCHEDULERS:
            raise ValueError(SCHEDULERS.unknown(name))
        return name

    @model_validator(mode="after")
    def _onecycle_warms_up_itself(self) -> SchedulerConfig:
        if self.name == "onecycle" and self.warmup_epochs > 0:
            raise ValueError("onecycle warms up by itself (pct_start); set warmup_epochs: 0")
        return self


class EarlyStoppingConfig(Section):
    monitor: Metric = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"
    patience: PositiveInt = 5
    min_delta: NonNegFloat = 0.0
    restore_best: bool = True


class CheckpointConfig(Section):
    monitor: Metric = "val_acc"
    save_every: PositiveInt = 1  # epochs between last.pt saves
    save_every_steps: PositiveInt | None = None  # also save last.pt every N optimizer steps (mid-epoch)


class TrainConfig(Section):
    epochs: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    label_smoothing: Fraction = 0.0
    grad_clip: PositiveFloat | None = None
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tensorboard: bool = False
    sync_bn: bool = False

    @field_validator("device")
    @classmethod
    def _device_form(cls, device: str) -> str:
        base, _, index = device.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N (e.g. cuda:0), mps")
        return device


class Config(Section):
    name: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str = "runs"

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data (lists, dicts, numbers, strings)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False)


# ---------------------------------------------------------------- loading


def bundled_configs() -> dict[str, Path]:
    """The bundled configs by name (the file stem), e.g. ``lenet5-digits``."""
    if not CONFIGS_DIR.is_dir():
        return {}
    return {p.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIGS_DIR.rglob("*.yaml"))
            if p.parent.name != "spaces"}  # configs/spaces/ holds search spaces for `cnnctl tune`, not configs


def resolve_config_path(spec: str | Path) -> Path:
    """A config path, or the name of a bundled config."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if str(spec) in bundled:
        return bundled[str(spec)]
    if path.is_dir():
        raise ConfigError("is a directory, not a config file; give a .yaml file or a bundled config name", file=str(spec))
    hint = closest(str(spec), bundled)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    raise ConfigError(
        f"no such file, nor a bundled config of that name.{did_you_mean} `cnnctl configs` lists the bundled ones",
        file=str(spec),
    )


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load one YAML mapping; syntax errors carry line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if isinstance(e, yaml.constructor.ConstructorError):
            problem += " (cnnctl loads YAML safely: tags such as !!python/object are refused; use plain values)"
        raise ConfigError(f"{where}{problem}", file=str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=str(path)) from None
    except RecursionError:
        raise ConfigError("YAML nested too deeply to be a config", file=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping (key: value), not a {type(data).__name__}", file=str(path))
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``optimizer.lr=0.05`` -> (["optimizer", "lr"], 0.05); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return [k.strip() for k in keys], value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {} if node.get(k) is None else node[k]
            if not isinstance(node[k], dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section, so it has no key {keys[-1]!r}")
            node = node[k]
        node[keys[-1]] = value
    return data


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the key at ``loc`` (for 'did you mean' on unknown keys)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def format_validation_error(error: ValidationError, source: str, overrides: list[str]) -> str:
    """One line per problem: ``file: section.key: message``, naming --set where a key came from one."""
    override_keys = {parse_override(o)[0] and ".".join(parse_override(o)[0]): o for o in overrides}
    lines = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"literal", "function-after"})))
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        origin = next((f"--set {o}" for k, o in override_keys.items() if dotted == k or dotted.startswith(k + ".")), source)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = list(model.model_fields) if model else []
            hint = closest(str(loc[-1]), valid)
            msg = "unknown key" + (f"; did you mean {hint!r}?" if hint else "") + (f" Valid keys: {', '.join(valid)}" if valid else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error", "assertion_error"):
            msg += f" (got {err['input']!r})"
        lines.append(f"{origin}: {dotted}: {msg}" if dotted else f"{origin}: {msg}")
    return "\n".join(lines)


def load_config(spec: str | Path, overrides: list[str] | None = None) -> tuple[Config, Path]:
    """Read, override and validate a config. Returns it and the file it came from."""
    overrides = list(overrides or [])
    path = resolve_config_path(spec)
    data = apply_overrides(read_yaml(path), overrides)
    config = validate_config(data, str(path), overrides)
    if config.name is None:
        config = config.model_copy(update={"name": path.stem})
    return config, path


def validate_config(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, overrides or [])) from None
    except RecursionError:
        raise ConfigError("config nested too deeply", file=source) from None


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
