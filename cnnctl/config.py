"""Typed, validated configs: one pydantic model per section, YAML loading, ``--set`` overrides, clear errors.

Nothing here imports torch: ``cnnctl --help`` and config errors stay fast.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import reprlib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnnctl.errors import ConfigError, UsageError
from cnnctl.models.specs import Layer
from cnnctl.registry import closest, did_you_mean


def bundled_dir(kind: Literal["configs", "spaces"] = "configs") -> Path:
    """The folder of the bundled configs (``kind="configs"``) or of the bundled ``cnnctl tune`` spaces (``"spaces"``).

    A wheel holds them inside the package as ``cnnctl/configs`` (setup.py maps the repository's top-level configs/
    there); a source checkout (PYTHONPATH, an editable install) keeps them in its top-level configs/. Never the
    working directory: a user's own configs/ there is theirs, named by path.
    """
    root = importlib.resources.files("cnnctl") / "configs"
    if not (isinstance(root, Path) and root.is_dir()):
        checkout = Path(__file__).resolve().parent.parent
        # pyproject.toml beside it tells a checkout from a site-packages whose configs/ belongs to someone else
        root = checkout / "configs" if (checkout / "pyproject.toml").is_file() else Path(root)
    return root / "spaces" if kind == "spaces" else root


CONFIGS_DIR = bundled_dir("configs")

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
        problem = _device_problem(device)
        if problem:
            raise ValueError(problem)
        return device


# ---------------------------------------------------------------- run names and devices

RUN_NAME_MAX = 100
# One folder name inside --out: nothing that could climb out of it (/, .., a leading .) or need quoting in a shell.
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RUN_NAME_RULE = (f"a run name is one folder name inside --out: letters, digits, '-', '_' and '.', starting with a "
                 f"letter, digit or '_', without '..', at most {RUN_NAME_MAX} characters (e.g. lenet5-lr0.1); "
                 "to put runs elsewhere, use --out DIR")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]{1,4})?")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"


def _run_name_problem(name: str) -> str | None:
    if _RUN_NAME.fullmatch(name) and ".." not in name and len(name) <= RUN_NAME_MAX:
        return None
    if "/" in name or "\\" in name:
        why = "holds a path separator"
    elif name.startswith(".") or ".." in name:
        why = "starts with '.' or holds '..'"
    elif name.startswith("-"):  # a folder name an option parser would take for an option
        why = "starts with '-'"
    elif len(name) > RUN_NAME_MAX:
        why = f"is {len(name):,} characters long"
    elif not name:
        why = "is empty"
    else:
        why = "holds characters other than letters, digits, '-', '_' and '.'"
    return f"run name {short_repr(name)} {why}; {RUN_NAME_RULE}"


def check_run_name(name: str, source: str) -> str:
    """``name`` when it is a valid run name, else a ConfigError naming ``source`` (``--name``, a file) and the rule."""
    problem = _run_name_problem(name)
    if problem:
        raise ConfigError(problem, file=source)
    return name


def safe_run_name(text: str) -> str:
    """A valid run name made from ``text`` (a config file's stem): ``my config`` -> ``my-config``.

    Each run of other characters becomes one '-', '..' becomes '.', '.' and '-' at either end go, and it is cut to
    RUN_NAME_MAX characters; ``run`` when nothing is left.
    """
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip(".-")[:RUN_NAME_MAX].rstrip(".-")
    return name or "run"


def _device_problem(spec: str) -> str | None:
    if _DEVICE.fullmatch(spec):
        return None
    return f"device {short_repr(spec)} is not one of {DEVICE_FORMS}"


def check_device(spec: str, source: str) -> str:
    """``spec`` when it is a device cnnctl understands, else a ConfigError naming ``source`` (``--device``).

    Only the form is checked (torch-free); whether the device exists is decided where torch picks it."""
    problem = _device_problem(spec)
    if problem:
        raise ConfigError(problem, file=source)
    return spec


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
        problem = None if name is None else _run_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data (lists, dicts, numbers, strings)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False)


# ---------------------------------------------------------------- loading


def bundled_configs() -> dict[str, Path]:
    """The bundled configs by name: the path under configs/ without ``.yaml``, e.g. ``lenet5-digits``,
    ``compare-optimizers/adam``."""
    if not CONFIGS_DIR.is_dir():
        return {}
    names = {p.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIGS_DIR.rglob("*.yaml"))}
    return {name: p for name, p in names.items() if not name.startswith("spaces/")}  # search spaces, not configs


def bundled_spaces() -> dict[str, Path]:
    """The bundled ``cnnctl tune`` search spaces by name (the file stem), e.g. ``lenet5-digits``."""
    spaces = bundled_dir("spaces")
    return {p.stem: p for p in sorted(spaces.glob("*.yaml"))} if spaces.is_dir() else {}


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
    raise ConfigError(f"no such file, nor a bundled config of that name{did_you_mean(str(spec), bundled)} "
                      "(`cnnctl configs` lists the bundled ones)", file=str(spec))


# Limits on a YAML file (config or tune space). The largest bundled config is a few hundred values; these leave
# room for any hand-written file while refusing the "billion laughs" alias bomb (536 bytes that expand to 387
# million values) before anything walks the expanded structure.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings, counting each alias as a copy of what it refers to
MAX_YAML_CHARS = 4 * MAX_YAML_BYTES  # characters of all scalars, aliases expanded
MAX_YAML_DEPTH = 100

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 60, 40, 60


def _cut(text: str, limit: int = 80) -> str:
    """``text``, or its first ``limit`` characters and its length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, never walking all of a huge value; a long string says its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class _LimitedLoader(yaml.SafeLoader):
    """The safe loader, plus what a config never needs refused while composing, before anything is built:
    alias expansion past MAX_YAML_VALUES / MAX_YAML_CHARS, nesting past MAX_YAML_DEPTH, recursive aliases and a key
    given twice in one mapping (where the last would silently win)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once aliases are expanded
        self._path: list[str] = []
        self._aliased = False  # whether an alias (*name) was met: a too-large value then says so

    def _refuse(self, problem: str, mark: Any) -> yaml.MarkedYAMLError:
        return yaml.composer.ComposerError(None, None, problem, mark)

    def _where(self) -> str:
        return ".".join(self._path[1:]).replace(".[", "[")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._aliased = True
            if id(node) not in self._expanded:
                raise self._refuse("this alias refers to a list or mapping that contains it (a recursive structure); "
                                   "a config is a tree: write the values out", mark)
            return node
        if isinstance(index, yaml.ScalarNode):  # the key of a mapping value; an int: the position in a list
            self._path.append(_cut(index.value, 40))
        else:
            self._path.append(f"[{index}]" if isinstance(index, int) else "?")
        if len(self._path) > MAX_YAML_DEPTH:
            raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep; a config is a shallow tree",
                               self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
            values, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            for child in children:
                v, c = self._expanded[id(child)]
                values, chars = values + v, chars + c
            if values > MAX_YAML_VALUES or chars > MAX_YAML_CHARS:
                size = f"{values:,} values" if values > MAX_YAML_VALUES else f"{chars:,} characters"
                where = f" ({self._where()})" if self._where() else ""
                aliases = " once its aliases (*name) are expanded" if self._aliased else ""
                mend = "; write the values out instead of nesting aliases" if self._aliased else ""
                raise self._refuse(f"this value{where} holds {size}{aliases}, more than a config may hold "
                                   f"({MAX_YAML_VALUES:,} values, {MAX_YAML_CHARS:,} characters){mend}",
                                   node.start_mark)
            self._expanded[id(node)] = (values, chars)
            return node
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], Any] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' merges may be overridden by the mapping's own keys: that is what they are for
            seen = first.setdefault((key.tag, key.value), key)
            if seen is not key:
                dotted = ".".join([*self._path[1:], _cut(key.value, 40)]).replace(".[", "[")
                same_line = seen.start_mark.line == key.start_mark.line
                at = [f"line {k.start_mark.line + 1}" + (f", column {k.start_mark.column + 1}" if same_line else "")
                      for k in (seen, key)]
                raise self._refuse(f"key {dotted!r} is given twice ({at[0]} and {at[1]}); the second would silently "
                                   "replace the first: keep one", key.start_mark)
        return node

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4300)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} digits is too long to be a config value",
                node.start_mark) from None


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


def _load_limited(text: str) -> Any:
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """A YAML error in ``text`` as 'line L, column C: problem'."""
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):  # a character YAML never allows
        before = text[:e.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        return (f"line {line}, column {column}: a control character (#x{e.character:04x}) that YAML does not allow; "
                "remove it")
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if isinstance(e, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (cnnctl loads YAML safely: tags such as !!python/object are refused; use plain values)"
        return where + problem
    return f"invalid YAML: {short_repr(str(e), 200)}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load one YAML mapping (a config or a tune space) within the limits above; errors carry line and column."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # read no more than the limit: the file may be huge, or endless
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=str(path)) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"larger than {MAX_YAML_BYTES:,} bytes, far more than any config or space file; "
                          "is this the right file?", file=str(path))
    try:
        data = _load_limited(text)
    except yaml.YAMLError as e:  # nesting too deep among them: refused at MAX_YAML_DEPTH, far from Python's limit
        raise ConfigError(_yaml_problem(e, text), file=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping (key: value), not a {type(data).__name__}", file=str(path))
    return data


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
        value = _load_limited(raw)  # an empty value is YAML's null
    except yaml.YAMLError as e:
        syntax = isinstance(e, (yaml.scanner.ScannerError, yaml.parser.ParserError))
        what, hint = ("is not valid YAML", "; quote a string that holds ':', '#', '[' or '{'") if syntax else ("is refused", "")
        raise ConfigError(f"{shown}: the value {what} ({_yaml_problem(e, raw)}){hint}") from None
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


MAX_MESSAGE = 1000  # characters of one problem's message; a validator that echoes a huge value is cut here


def _override_origin(dotted: str, source: str, overrides: dict[str, str]) -> str:
    """Where the value at ``dotted`` came from: the ``--set`` that gave it (or a section above it), else the file."""
    def shown(item: str) -> str:
        return f"--set {_cut(item)}"

    for key, item in overrides.items():
        if dotted == key or dotted.startswith((key + ".", key + "[")):
            return shown(item)
    below = [item for key, item in overrides.items() if not dotted or key.startswith(dotted + ".")]  # keys hold no [i]
    if below:  # a check over a whole section that an override changed: both had a hand in it
        return f"{source} with {shown(below[-1])}"
    return source


def _kinds(annotation: Any) -> list[Any]:
    """The kinds of value an annotation allows, without ``Annotated`` metadata and None: ``[X]`` for ``X | None``
    (an optional value is no union in pydantic's errors), ``[Literal['auto'], int]`` for ``'auto' | int``."""
    if typing.get_origin(annotation) is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for member in typing.get_args(annotation) if member is not type(None) for kind in _kinds(member)]
    return [annotation]


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section (pydantic model) a value of ``annotation`` is, if it is one: ``EarlyStoppingConfig | None`` too."""
    kinds = _kinds(annotation)
    return kinds[0] if len(kinds) == 1 and _is_model(kinds[0]) else None


def _inside(annotation: Any, part: Any) -> Any:
    """The annotation of ``part`` (a key or a list position) inside a value of ``annotation``; None where unknown."""
    model = _model_of(annotation)
    if model is not None:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    kind = _kinds(annotation)[0]
    args = typing.get_args(kind)
    if isinstance(part, int) and typing.get_origin(kind) is list:
        return args[0]
    if isinstance(part, int) and typing.get_origin(kind) is tuple and part < len(args):
        return args[part]
    return None


def _member(tag: str, kinds: list[Any]) -> Any:
    """The union member that pydantic's ``tag`` names: a model by its class name (``Normalize``,
    ``function-after[_same_length(), Normalize]``), a Literal by ``literal[...]``, else the one other member
    (``constrained-int``, ``bool``)."""
    for kind in kinds:
        if _is_model(kind) and re.search(rf"\b{kind.__name__}\b", tag):
            return kind
        if typing.get_origin(kind) is Literal and tag.startswith("literal["):
            return kind
    others = [k for k in kinds if not _is_model(k) and typing.get_origin(k) is not Literal]
    return others[0] if len(others) == 1 else None


@dataclass(frozen=True)
class _Problem:
    """One pydantic error, placed in the config's schema by walking its ``loc`` along the annotations."""

    error: dict[str, Any]
    keys: tuple[Any, ...]  # the user's path: keys and list positions, pydantic's tags of union members left out
    holder: Any  # the annotation of the value holding the last key (the model of an unknown key)
    at: Any  # the annotation at the error's place (the member's, in a union); None where the schema says nothing
    union: tuple[Any, ...] | None = None  # ``loc`` up to the innermost union member's tag, when inside one

    @classmethod
    def place(cls, error: dict[str, Any]) -> _Problem:
        loc = tuple(error["loc"])
        keys: list[Any] = []
        holder, at, union = None, Config, None
        for i, part in enumerate(loc):
            kinds = _kinds(at)
            if len(kinds) > 1 and isinstance(part, str):  # pydantic names the member it tried: a tag, not a key
                union, at = loc[:i + 1], _member(part, kinds)
                continue
            keys.append(part)
            holder, at = at, _inside(at, part)
        return cls(error, tuple(keys), holder, at, union)

    def took_the_value(self) -> bool:
        """Whether this union member accepted the kind of value given (a mapping for a model, a number for an int,
        a string for a Literal of strings), so that its problem is about the value's content, not its type."""
        err = self.error
        if len(err["loc"]) > len(self.union or ()):
            return True  # a problem inside the value: the member took its shape
        if err["type"] == "literal_error":
            words = typing.get_args(self.at) if typing.get_origin(self.at) is Literal else ()
            return any(type(word) is type(err.get("input")) for word in words)
        return not err["type"].endswith(("_type", "_parsing"))

    def message(self) -> str:
        """The problem in words, without the value."""
        kind = self.error["type"]
        if kind == "extra_forbidden":
            holder = _model_of(self.holder)
            valid = list(holder.model_fields) if holder else []
            hint = closest(str(self.keys[-1]), valid)
            return ("unknown key" + (f"; did you mean {hint!r}?" if hint else ".")
                    + (f" Valid keys: {', '.join(valid)}" if valid else ""))
        if kind == "missing":
            return "required key is missing"
        model = _model_of(self.at)
        if kind == "model_type" and model:  # not "a valid dictionary or instance of Normalize": a user writes a mapping
            return f"Input should be a mapping of {', '.join(model.model_fields)}"
        return self.error["msg"].removeprefix("Value error, ")


def _reported(problems: list[_Problem]) -> list[_Problem]:
    """The problems worth a line. Of a union's members (``'auto' | int``, ``'auto' | 'none' | {mean, std}``), only
    the one that took the kind of value given: ``threads: 0`` is "greater than or equal to 1", not "should be 'auto'";
    ``normalize: {std: [0]}`` is about std. When no member took it, one line says what each would take."""
    unions: dict[tuple[Any, ...], list[_Problem]] = {}
    for p in problems:
        if p.union is not None:
            unions.setdefault(p.union[:-1], []).append(p)
    reported: list[_Problem] = []
    for p in problems:
        if p.union is None:
            reported.append(p)
            continue
        members = unions.pop(p.union[:-1], [])  # empty: this union was reported with its first member
        took = {m.union for m in members if m.took_the_value()}
        if took:
            reported += [m for m in members if m.union in took]
        elif members:
            words = [m.message().removeprefix("Input should be ") for m in members]
            merged = {**p.error, "type": "union", "msg": "Input should be " + ", or ".join(words)}
            reported.append(_Problem(merged, p.keys, p.holder, p.at))
    return reported


def format_validation_error(error: ValidationError, source: str, overrides: list[str]) -> str:
    """One line per problem: ``file: section.key: message``, naming --set where a key came from one.

    Values are echoed cut short (``short_repr``): a huge or alias-expanded value never becomes a huge message."""
    override_keys = {".".join(parse_override(o)[0]): o for o in overrides}
    lines = []
    for problem in _reported([_Problem.place(e) for e in error.errors()]):
        err = problem.error
        parts = [f"[{p}]" if isinstance(p, int) else _cut(str(p), 40) for p in problem.keys]
        dotted = ".".join(parts).replace(".[", "[")
        origin = _override_origin(dotted, source, override_keys)
        msg = problem.message()
        if "input" in err and err["type"] not in ("extra_forbidden", "missing", "value_error"):
            msg += f" (got {short_repr(err['input'])})"  # cnnctl's own messages show the value where it helps
        if len(msg) > MAX_MESSAGE:
            msg = msg[:MAX_MESSAGE] + f"... ({len(msg):,} characters)"
        lines.append(f"{origin}: {dotted}: {msg}" if dotted else f"{origin}: {msg}")
    return "\n".join(lines)


def load_config(spec: str | Path, overrides: list[str] | None = None) -> tuple[Config, Path]:
    """Read, override and validate a config. Returns it and the file it came from."""
    overrides = list(overrides or [])
    path = resolve_config_path(spec)
    data = apply_overrides(read_yaml(path), overrides)
    if data.get("name") is None:
        data["name"] = safe_run_name(path.stem)  # the default run name: the config file's stem, made safe
    return validate_config(data, str(path), overrides), path


def validate_config(data: dict[str, Any], source: str, overrides: list[str] | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, overrides or [])) from None
    except RecursionError:
        raise ConfigError("config nested too deeply", file=source) from None


def is_finite_number(x: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite: the one finite check cnnctl uses."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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


# ---------------------------------------------------------------- resolving a run, once

# Keys that may change on --resume without changing what the run means (the README lists them).
RESUME_ALLOWED = (
    "name", "out", "train.epochs", "train.device", "train.threads", "train.compile", "train.tensorboard",
    "train.record_gradients_every", "train.record_activations",
    "train.early_stopping.patience", "train.early_stopping.min_delta", "train.early_stopping.restore_best",
    "train.checkpoint.save_every", "train.checkpoint.save_every_steps", "data.root", "data.download", "data.workers",
    "data.eval_batch_size", "data.cache", "data.cache_dir", "data.cache_verify",
)


@dataclass(frozen=True)
class ResolvedRun:
    """What ``cnnctl train`` runs: the validated config, and on resume the checkpoint it continues.

    ``checkpoint`` is the loaded checkpoint dict (``run.resolve`` loads it; this module reads only its config).
    ``overrides`` are the ``--set`` items, kept for the resume command an interruption prints.
    """

    config: Config
    resume_from: Path | None = None
    checkpoint: dict[str, Any] | None = field(default=None, repr=False)
    overrides: tuple[str, ...] = ()


def resolve_run(config: Config | dict[str, Any] | str | Path | None = None, *, overrides: Sequence[str] = (),
                name: str | None = None, out: str | None = None, resume_from: Path | None = None,
                checkpoint: dict[str, Any] | None = None) -> ResolvedRun:
    """The one place a run's config is decided: base + ``--set`` overrides + ``--name`` / ``--out``, validated once.

    The base is ``config`` (a Config, a plain dict, a file or a bundled config name) or, on resume, the checkpoint's
    config (``checkpoint``, loaded from ``resume_from``). ``--name`` and ``--out`` are overrides of ``name`` and
    ``out`` like any other. The run name is the given one, else the config's, else (a fresh run from a file) the
    file's stem. A resumed run stays where it is: it keeps its name and out (a config file's do not move it), and a
    ``--name`` / ``--out`` (or ``--set``) naming another place is refused (``_check_stays``). On resume every changed
    key must be one of ``RESUME_ALLOWED``. Torch-free.
    """
    overrides = list(overrides)
    extra = [f"{key}={_yaml_scalar(value)}" for key, value in (("name", name), ("out", out)) if value is not None]
    saved = None if checkpoint is None else checkpoint.get("config")
    if saved is not None and not isinstance(saved, dict):
        raise ConfigError("the checkpoint holds no config mapping; it was not written by cnnctl train",
                          file=str(resume_from))
    source = f"{resume_from} (resumed config)" if saved is not None else "config"
    default_name = "run"
    if isinstance(config, Config):
        data = config.dump()
    elif isinstance(config, dict):
        data = dict(config)  # only its top level (the name) changes here; apply_overrides copies what it changes
    elif config is not None:
        path = resolve_config_path(config)
        data, source, default_name = read_yaml(path), str(path), safe_run_name(path.stem)
    elif saved is not None:
        data = dict(saved)
    else:
        raise UsageError("give a CONFIG (a file or a bundled config name; `cnnctl configs` lists them) or --resume RUN")
    if saved is not None:
        # a resumed run keeps its name and out; a name saved before run names were checked is made safe, not refused
        saved = {**saved, "name": safe_run_name(str(saved.get("name") or "run"))}
        data.update(name=saved["name"], out=saved.get("out", Config.model_fields["out"].default))
    data = apply_overrides(data, overrides + extra)
    if data.get("name") is None:
        data["name"] = default_name
    resolved = validate_config(data, source, overrides + extra)
    if saved is not None:
        before = validate_config(saved, str(resume_from))
        _check_stays(before, resolved, Path(resume_from).parent, {"name": name, "out": out}, overrides)
        _check_resume(before, resolved)
    return ResolvedRun(resolved, resume_from if saved is not None else None, checkpoint, tuple(overrides))


def _yaml_scalar(value: str) -> str:
    # JSON strings are YAML: the value comes back from parse_override exactly as given (no number, no null).
    import json

    return json.dumps(str(value))


def _check_stays(saved: Config, new: Config, run_dir: Path, flags: dict[str, str | None],
                 overrides: list[str]) -> None:
    """Refuse a resume told to put the run elsewhere: ``--resume`` continues RUN_DIR where it is, so a new name or
    out would only make its config.yaml name a folder the run is not in. The run's own name or out (the saved one,
    or the folder it is in now, e.g. after it was moved) is accepted. ``flags``: the --name and --out given."""
    for key, here in (("name", run_dir.name), ("out", run_dir.parent)):
        value = getattr(new, key)
        if value == getattr(saved, key) or (value == here if key == "name" else _same_folder(value, here)):
            continue
        # resolve_run keeps the saved name and out, so only --name/--out or a --set (the last one wins) changed it
        flag = flags[key]
        shown = (f"--{key} {_cut(flag)}" if flag is not None
                 else f"--set {_cut([o for o in overrides if parse_override(o)[0] == [key]][-1])}")
        raise UsageError(f"{shown}: a resumed run stays in {run_dir} (--resume continues a run where it is; it does "
                         f"not move or rename it). Leave it out, or give the run's own {key} ({here}); to move a run, "
                         "move its folder and resume it there")


def _same_folder(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve() == folder.resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: not the folder the run is in
        return False


def _check_resume(saved: Config, new: Config) -> None:
    """Refuse a resume whose config differs from the saved one in a key that changes what the run means."""
    before, after = flatten_keys(saved.dump()), flatten_keys(new.dump())
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    refused = [k for k in changed if k not in RESUME_ALLOWED]  # each allowed key is a value, not a section
    if refused:
        detail = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in refused)
        raise ConfigError(f"--resume: changing {detail} would make this a different run; resume with the config it "
                          f"was started with, or start a new run. Keys that may change on resume: {', '.join(RESUME_ALLOWED)}")
