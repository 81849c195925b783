"""The config schema: one pydantic model per section, ``extra="forbid"``, ``allow_inf_nan=False``.

A section's validators check what relates its keys (nesterov needs sgd, ``layers`` needs ``arch: custom``); the
names of datasets, networks, optimizers and schedulers are checked against their registries, imported inside the
validators so that loading a config never imports torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

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
    """A config section: an unknown key, NaN or infinity is an error, and defaults are validated too. The docstring
    under each field is its description: what docs/reference/config.md says the key means (scripts/gen_docs.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True, use_attribute_docstrings=True)


class Normalize(Section):
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1)
    """Per-channel mean subtracted from each pixel (pixels scaled to 0..1), one value per channel."""
    std: list[PositiveFloat] = Field(min_length=1)
    """Per-channel standard deviation each pixel is divided by, one value per channel, each above 0."""

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}; give one of each per channel")
        return self


class Augment(Section):
    crop_padding: Annotated[int, Field(ge=0, le=64)] = 0
    """Random shifts: pad each side by this many pixels, then crop back to size at a random offset (training split only,
    per batch on the device); 0: off."""
    hflip: bool = False
    """Flip half of the training images left to right."""


class DataConfig(Section):
    dataset: str = "digits"
    """The dataset: digits (offline, ships with scikit-learn), mnist, fashion_mnist, kmnist, cifar10, cifar100,
    imagefolder (your own class folders) or fake."""
    root: str = "data"
    """Where datasets are found or downloaded to; imagefolder: the folder of class folders."""
    download: bool = True
    """Download a built-in dataset into root when it is missing."""
    val_split: Fraction = 0.1
    """The fraction of the training images held out for validation (seeded, stratified by class)."""
    test_split: Fraction = 0.2
    """The fraction held out for testing where the data has no test split of its own (digits, fake, an imagefolder
    without test/)."""
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 128
    """Images per optimizer step: the global batch, split across ranks under torchrun."""
    eval_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Images per batch for validation and test; null: 2 x batch_size."""
    image_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Resize every image to this side (square); null keeps the native size (imagefolder: the first training
    image's)."""
    channels: Literal[1, 3] | None = None
    """imagefolder and fake: 1 (grayscale) or 3 (RGB); null: 3."""
    num_classes: Annotated[int, Field(ge=2, le=100_000)] | None = None
    """fake only: the number of classes (null: 10)."""
    num_samples: Annotated[int, Field(ge=10, le=10_000_000)] | None = None
    """fake only: the number of images (null: 1000)."""
    normalize: Literal["auto", "none"] | Normalize = "auto"
    """auto: subtract the training split's per-channel mean and divide by its std; none: pixels in 0..1; or {mean, std}
    given."""
    augment: Augment = Field(default_factory=Augment)
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = "auto"
    """imagefolder: DataLoader worker processes; auto: chosen from the CPUs available."""
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    """imagefolder: memory (decode every image once), disk (and keep the decoded tensor on disk), none (stream: decode
    every epoch) or auto (memory when it fits)."""
    cache_dir: str | None = None
    """cache: disk only: where the decoded tensor is kept; null: ROOT/.cnnctl-cache/."""
    cache_verify: bool = False
    """cache: disk only: key the cache by each file's contents (read every run) instead of its size and modification
    time."""

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
    """The network: a zoo name (lenet5, alexnet, vgg11 to vgg19 and _bn, resnet18 to resnet200, resnet20 to resnet1202),
    custom, or torchvision.NAME."""
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    """resnet and vgg: cifar (a 3x3 first conv, no max-pool) or imagenet (7x7 conv and max-pool); auto: by the image
    size."""
    dropout: Fraction = 0.0
    """Dropout probability in the classifier head (0: none); arch custom places dropout as layers."""
    activation: Literal["auto", "relu", "tanh", "sigmoid", "gelu", "leaky_relu"] = "auto"
    """lenet5: relu (auto), tanh, sigmoid, gelu or leaky_relu."""
    pool: Literal["auto", "max", "avg"] = "auto"
    """lenet5: max (auto) or avg pooling."""
    zero_init_residual: bool = False
    """resnet: start each residual block's last batch norm at zero, so every block begins as the identity."""
    layers: list[Layer] = []
    """arch custom only: the list of layers, each a name or {name: args} (see models and layers)."""
    pretrained: bool | str = False
    """Start from torchvision's ImageNet weights: true (its DEFAULT) or a weights name such as IMAGENET1K_V1;
    alexnet, vgg*, resnet18 to resnet152 and torchvision.NAME. They bring their mean/std and image size."""
    init_from: str | None = None
    """Start from another run's weights: a checkpoint, a run directory (its best.pt) or a state_dict file; tensors are
    matched by name and shape (init.json lists what was loaded)."""

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        from cnnctl.models.registry import MODELS

        if name not in MODELS and not name.startswith("torchvision."):
            raise ValueError(MODELS.unknown(name) + " Or torchvision.NAME for any model of torchvision's zoo.")
        return name

    @field_validator("pretrained")
    @classmethod
    def _has_weights(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        if value is False:
            return value
        from cnnctl.models.pretrained import has_weights, no_weights_message

        if isinstance(value, str) and not value.strip():
            raise ValueError("give true (torchvision's DEFAULT weights) or a weights name such as IMAGENET1K_V1")
        arch = info.data.get("arch")
        if arch is not None and not has_weights(arch):
            raise ValueError(no_weights_message(arch))
        if info.data.get("stem") == "cifar":
            raise ValueError("torchvision's weights have the ImageNet stem and head, which stem cifar replaces; set "
                             "model.stem to auto (or imagenet), or remove model.pretrained")
        return value

    @field_validator("init_from")
    @classmethod
    def _one_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("give a checkpoint, run directory or state_dict file, or remove init_from")
        if value is not None and info.data.get("pretrained"):
            raise ValueError("model.pretrained and model.init_from both name the first weights; keep one")
        return value

    @model_validator(mode="after")
    def _layers_for_custom(self) -> ModelConfig:
        if self.arch == "custom" and not self.layers:
            raise ValueError("arch 'custom' needs a non-empty 'layers' list, e.g. layers: [{conv: {out: 8, kernel: 3}}, relu, flatten, linear]")
        if self.arch != "custom" and self.layers:
            raise ValueError(f"'layers' is for arch 'custom' only; arch {self.arch!r} is fixed. Set arch: custom or remove layers")
        return self


class OptimizerConfig(Section):
    name: str = "sgd"
    """sgd, adagrad, rmsprop, adam or adamw."""
    lr: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 0.01
    """The learning rate (the peak of a schedule)."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.9
    """sgd and rmsprop: the momentum."""
    nesterov: bool = False
    """sgd: Nesterov momentum (needs momentum above 0)."""
    weight_decay: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] = 0.0
    """The L2 penalty on the weights (adamw: decoupled weight decay)."""
    decay_bias_and_norm: bool = True
    """false: no weight decay on biases and normalization weights."""
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """adam and adamw: the decay rates of the running averages of the gradient and of its square."""
    alpha: Fraction = 0.99
    """rmsprop: the smoothing constant of the running average of the squared gradient."""
    eps: PositiveFloat = 1e-8
    """Added to the denominator for numerical stability (adagrad, rmsprop, adam, adamw)."""

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
    """The learning-rate schedule: none, step, multistep, exponential, cosine, onecycle or plateau."""
    warmup_epochs: Annotated[float, Field(ge=0.0, le=10_000, allow_inf_nan=False)] = 0.0
    """A linear warmup from warmup_start_factor x lr over this many epochs (may be fractional); not with onecycle."""
    warmup_start_factor: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.01
    """The warmup's first learning rate, as a fraction of lr."""
    step_size: PositiveInt = 30
    """step: epochs between decays."""
    milestones: list[PositiveInt] = [30, 60, 90]
    """multistep: the epochs at which the learning rate is multiplied by gamma."""
    gamma: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.1
    """step, multistep and exponential: the factor the learning rate is multiplied by at each decay (exponential: each
    epoch)."""
    min_lr: NonNegFloat = 0.0
    """cosine: the learning rate at the end."""
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.3
    """onecycle: the fraction of the steps spent raising the learning rate."""
    monitor: Metric = "val_loss"
    """plateau: the metric watched."""
    patience: Annotated[int, Field(ge=0)] = 10
    """plateau: epochs without improvement before the learning rate is cut."""
    factor: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.1
    """plateau: the factor the learning rate is multiplied by when it is cut."""

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
    """The metric watched."""
    mode: Literal["auto", "min", "max"] = "auto"
    """min or max: whether lower or higher is better; auto: min for losses, max for accuracies."""
    patience: PositiveInt = 5
    """Epochs without an improvement larger than min_delta before training stops."""
    min_delta: NonNegFloat = 0.0
    """The smallest change of the metric that counts as an improvement."""
    restore_best: bool = True
    """At the end, test with the best epoch's weights (best.pt) rather than the last epoch's."""


class CheckpointConfig(Section):
    monitor: Metric = "val_acc"
    """best.pt is saved whenever this metric improves."""
    save_every: PositiveInt = 1
    """Epochs between last.pt saves."""
    save_every_steps: PositiveInt | None = None
    """Also save last.pt every N optimizer steps, mid-epoch, so a kill loses at most N steps; null: off."""


class TrainConfig(Section):
    epochs: Annotated[int, Field(ge=1, le=1_000_000)] = 10
    """How many epochs to train."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """fp32, bf16 or fp16 autocast (fp16 with a gradient scaler); auto: bf16 on CUDA that supports it, fp32
    otherwise."""
    channels_last: Literal["auto"] | bool = "auto"
    """The channels-last memory format; auto: on for CPU and CUDA (measured faster on both)."""
    compile: bool = False
    """torch.compile the model; its compile time is paid on every start."""
    threads: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    """CPU threads for this run (torch.set_num_threads); auto: torch's default."""
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    """cross_entropy, or mse: the squared error of the softmax against the one-hot target (the classic comparison)."""
    label_smoothing: Fraction = 0.0
    """Cross-entropy label smoothing: this share of each target spread evenly over all classes."""
    grad_clip: PositiveFloat | None = None
    """Clip the gradients' total norm to this value; null: off."""
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    """Stop when the monitored metric stops improving; null: train every epoch."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tensorboard: bool = False
    """Write TensorBoard events to RUN/tensorboard/."""
    sync_bn: bool = False
    """torchrun only: batch-norm statistics over all ranks (SyncBatchNorm)."""
    record_gradients_every: Annotated[int, Field(ge=1, le=1_000_000)] | None = 20
    """gradients.csv and gradients.png: sample every Nth step of each epoch (about 1% of the time on lenet5); null:
    off."""
    record_activations: bool = True
    """activations.png: dead and saturated units over the validation split after each epoch."""
    freeze: Literal["body"] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    """Layers whose weights stay fixed (BatchNorm keeps its running statistics, dropout is off): body (all but the
    classifier head, the last linear layer) or a list of layer names or prefixes (conv1, layer1, features.0); null:
    every layer trains."""
    freeze_epochs: PositiveInt | None = None
    """Release train.freeze after this many epochs, then every layer trains (fastai's fine_tune); null: frozen for the
    whole run."""
    frozen_lr_factor: Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)] = 1.0
    """After freeze_epochs, the frozen layers train at this times optimizer.lr (e.g. 0.1: pretrained layers move less
    than the new head); metrics.csv's lr_frozen column shows it."""
    cache_features: bool = True
    """While every layer before the head is frozen and data.augment is off, compute the body's output once and train
    the head on it (same weights, an epoch in a fraction of the time)."""

    @field_validator("device")
    @classmethod
    def _device_form(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device

    @field_validator("freeze", mode="before")
    @classmethod
    def _freeze_form(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "body":
            raise ValueError(f"give body or a list of layer names or prefixes (e.g. [conv1, layer1]), not "
                             f"{value!r}")
        return value

    @model_validator(mode="after")
    def _freeze_schedule(self) -> TrainConfig:
        if self.freeze_epochs is not None and self.freeze is None:
            raise ValueError("freeze_epochs releases train.freeze after N epochs and needs train.freeze (body, or "
                             "layer names); set freeze or remove freeze_epochs")
        if self.frozen_lr_factor != 1.0 and self.freeze_epochs is None:
            raise ValueError("frozen_lr_factor is the frozen layers' lr multiplier once they train, and needs "
                             "train.freeze_epochs (without it they never train); set freeze_epochs or remove "
                             "frozen_lr_factor")
        return self


class Config(Section):
    name: str | None = None
    """The run's folder name inside out; null: the config file's stem, made safe."""
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    """Fixes the initial weights, data order, augmentation and dropout (bit-exact on CPU)."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out: str = "runs"
    """The folder the run folders go into, absolute or relative."""

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
