"""The config schema: one pydantic model per section, ``extra="forbid"``, ``allow_inf_nan=False``.

A section's validators check what relates its keys (nesterov needs sgd, ``layers`` needs ``arch: custom``); the
names of datasets, networks, optimizers and schedulers are checked against their registries, imported inside the
validators so that loading a config never imports torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnnctl.config.names import device_problem, run_name_problem
from cnnctl.models.specs import Layer

Metric = Literal["val_loss", "val_acc", "train_loss", "train_acc"]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


def is_finite_number(x: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite: the one finite check cnnctl uses."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Section(BaseModel):
    """A config section: an unknown key, NaN or infinity is an error, and defaults are validated too."""

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
    # disk: key the cache by each file's contents (read and hashed every run) instead of its size and mtime.
    cache_verify: bool = False

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
        if self.cache_verify and self.cache != "disk":
            raise ValueError(f"cache_verify checks the files of a cache: disk against their contents, but cache is "
                             f"{self.cache}; set cache: disk or remove cache_verify")
        return self


class ModelConfig(Section):
    arch: str = "lenet5"
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    dropout: Fraction = 0.0
    activation: Literal["auto", "relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = "auto"  # lenet5: auto = relu
    pool: Literal["auto", "max", "avg"] = "auto"  # lenet5: auto = max
    zero_init_residual: bool = False
    layers: list[Layer] = []  # arch custom: typed per kind (cnnctl.models.specs), checked here at load

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
        from cnnctl.training.optim import OPTIMIZERS

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
        from cnnctl.training.optim import SCHEDULERS

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
    # cross_entropy, or mse: the squared error of the softmax against the one-hot target (the classic comparison)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    label_smoothing: Fraction = 0.0
    grad_clip: PositiveFloat | None = None
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tensorboard: bool = False
    sync_bn: bool = False
    # gradients.csv/png: every Nth step of an epoch sampled (null: off); the default's cost is in the README
    record_gradients_every: Annotated[int, Field(ge=1, le=1_000_000)] | None = 20
    record_activations: bool = True  # activations.png: dead/saturated units over the val split, each epoch

    @field_validator("device")
    @classmethod
    def _device_form(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device


class Config(Section):
    name: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str = "runs"  # a folder, absolute or relative: only the run name must stay one path component

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str | None) -> str | None:
        problem = None if name is None else run_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data (lists, dicts, numbers, strings)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False)
