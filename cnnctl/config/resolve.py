"""Resolving a run, once: the config a ``cnnctl train`` (fresh or resumed) runs, and the resume policy.

Torch-free: on resume the caller loads the checkpoint; only its config is read here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnctl.config.bundled import resolve_config_path
from cnnctl.config.load import validate_config
from cnnctl.config.names import safe_run_name
from cnnctl.config.overrides import apply_overrides, flatten_keys, parse_override
from cnnctl.config.safe_yaml import read_yaml
from cnnctl.config.schema import Config
from cnnctl.config.text import clip
from cnnctl.errors import ConfigError, UsageError

# Keys that may change on --resume without changing what the run means (the README lists them).
RESUME_ALLOWED = (
    "name", "out", "train.epochs", "train.device", "train.threads", "train.compile", "train.tensorboard",
    "train.record_gradients_every", "train.record_activations", "train.cache_features",
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
    key must be one of ``RESUME_ALLOWED``. ``model.pretrained``'s weights fill in what the config leaves open
    (``models.pretrained.apply_weight_defaults``). Torch-free, but for a config that names pretrained weights.
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
    if resolved.model.pretrained:  # torchvision is imported here only for a config that names its weights
        from cnnctl.models.pretrained import apply_weight_defaults

        resolved = apply_weight_defaults(resolved, source)
    if saved is not None:
        before = validate_config(saved, str(resume_from))
        _check_stays(before, resolved, Path(resume_from).parent, {"name": name, "out": out}, overrides)
        _check_resume(before, resolved)
    return ResolvedRun(resolved, resume_from if saved is not None else None, checkpoint, tuple(overrides))


def _yaml_scalar(value: str) -> str:
    # JSON strings are YAML: the value comes back from parse_override exactly as given (no number, no null).
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
        shown = (f"--{key} {clip(flag)}" if flag is not None
                 else f"--set {clip([o for o in overrides if parse_override(o)[0] == [key]][-1])}")
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
