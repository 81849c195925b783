"""The Python API: ``train``, ``evaluate``, ``predict``, ``summary``, ``load_config``, re-exported by ``cnnctl``.

The CLI's train/eval/predict/summary commands are thin layers over exactly these functions. Each raises the
``cnnctl.errors`` kinds (``ConfigError``, ``CheckpointError``, ``DataError``, ``UsageError``, ``TrainingError``,
``WriteError``, ``Interrupted``), never ``SystemExit``; an argument of the wrong type is a ``UsageError`` naming it,
before anything runs. Each leaves the process as it found it: no logging handlers, no allocator tuning, no
matplotlib backend; ``train`` sets ``train.threads`` and the seeds for the run only and puts the caller's thread
count and random state back afterwards.

Torch is imported inside the functions, so ``import cnnctl`` stays quick and torch-free.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import Config, check_device, check_run_name, resolve_run, short_repr
from cnnctl.errors import UsageError

if TYPE_CHECKING:
    from cnnctl.training.hooks import Hook

PathLike = str | os.PathLike[str]
PATH = "a path (str or os.PathLike)"
DEVICE = "a device name (str): auto, cpu, cuda, cuda:N or mps"
ConfigLike = Config | Mapping[str, Any] | PathLike

__all__ = ["RunResult", "Summary", "evaluate", "load_config", "predict", "summary", "train"]


@dataclass(frozen=True)
class RunResult:
    """What ``cnnctl.train`` returns: where the run is and what it measured.

    ``summary`` is summary.json's content (best epoch and its metrics under ``best``, ``test`` metrics, wall time,
    images/s, stop reason); ``metrics`` the rows of metrics.csv (``epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``lr``, ``epoch_seconds``; None where a value is missing); ``config`` the resolved
    config the run used (config.yaml).
    """

    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(repr=False)
    config: Config = field(repr=False)
    best_checkpoint: Path | None = None  # RUN/best.pt, None when no epoch was ever best (e.g. val_acc NaN)
    last_checkpoint: Path | None = None  # RUN/last.pt


class Summary(dict):
    """``cnnctl.summary``'s result: the ``cnnctl summary --json`` document (a dict), and ``.text``, the table the
    command prints."""

    text: str = ""


def _arg(name: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    """``value`` when it is one of ``kinds``, else a UsageError naming the argument and what it takes: the API's one
    type check, made before anything runs, so a wrong type is a sentence, not a TypeError from deep inside (or, for
    ``out=b"runs"``, a folder named ``b'runs'``). A bool is not taken for an int: ``topk=True`` is a slip, not 1."""
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return value
    raise UsageError(f"{name} must be {what}, not {type(value).__name__} {short_repr(value)}")


def _path(name: str, value: PathLike | None) -> str | None:
    """An optional path argument as a str (an ``os.PathLike`` may give bytes: refused like bytes themselves)."""
    if value is None:
        return None
    return _arg(name, os.fspath(_arg(name, value, (str, os.PathLike), PATH)), (str,), PATH)


def _paths(name: str, items: PathLike | Sequence[PathLike]) -> list[str]:
    """One path or a list of them, as strings (a str is one path, not a sequence of characters)."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    many = _arg(name, items, (list, tuple), f"{PATH} or a list of paths")
    if not many:
        raise UsageError(f"{name}: give at least one path")
    return [_path(f"{name}[{i}]", item) for i, item in enumerate(many)]


def _overrides(overrides: Sequence[str] | None) -> list[str]:
    """``--set`` items as a list of str. A single str is refused, not taken as one override: whatever iterates it
    sees one-letter items (``load_config(cfg, "train.epochs=3")`` once said ``--set 't': no '='``), and
    ``"a=1 b=2"`` may as well mean two overrides as one; a list says which."""
    if overrides is None:
        return []
    one = f" (one override is a list of one: [{short_repr(overrides)}])" if isinstance(overrides, str) else ""
    items = _arg("overrides", overrides, (list, tuple), "a list of KEY=VALUE strings" + one)
    return [_arg(f"overrides[{i}]", item, (str,), "a KEY=VALUE string") for i, item in enumerate(items)]


def _hooks(hooks: Sequence[Hook]) -> list[Hook]:
    from cnnctl.training.hooks import Hook

    items = _arg("hooks", hooks, (list, tuple), "a list of cnnctl.training.hooks.Hook objects")
    return [_arg(f"hooks[{i}]", hook, (Hook,), "a cnnctl.training.hooks.Hook (subclass it, override the events you need)")
            for i, hook in enumerate(items)]


def _config_source(config: ConfigLike | None) -> Config | dict[str, Any] | str | None:
    what = "a path, a bundled config name, a dict or a cnnctl Config"
    config = _arg("config", config, (Config, Mapping, str, os.PathLike, type(None)), what)
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return dict(config)
    return _path("config", config)


def load_config(config: ConfigLike, overrides: Sequence[str] | None = None) -> Config:
    """A validated ``Config`` from a YAML path, a bundled config name (``"lenet5-digits"``), a dict or a Config,
    with ``overrides`` (a list such as ``["optimizer.lr=0.05"]``, values parsed as YAML; a single str is refused:
    pass a list of one) applied. ConfigError when it is wrong, UsageError for an argument of the wrong type."""
    return resolve_run(_config_source(config), overrides=_overrides(overrides)).config


@contextlib.contextmanager
def _run_scope(threads: int | str) -> Iterator[None]:
    """``train.threads`` and the run's seeds for the duration of a run; the caller's settings afterwards."""
    import torch

    from cnnctl.runtime import rng_state, set_rng_state

    saved_threads, saved_rng = torch.get_num_threads(), rng_state()
    if isinstance(threads, int) and not isinstance(threads, bool):
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        set_rng_state(saved_rng)


def train(config: ConfigLike | None = None, *, overrides: Sequence[str] | None = None, name: str | None = None,
          out: PathLike | None = None, resume: PathLike | None = None, device: str | None = None,
          hooks: Sequence[Hook] = ()) -> RunResult:
    """Train a network: ``cnnctl train``. Writes ``OUT/NAME/`` (config.yaml, metrics.csv, best.pt, last.pt,
    summary.json, curves.png, ...) and returns a :class:`RunResult`.

    ``config``: a YAML path, a bundled config name, a dict or a Config; None with ``resume``.
    ``overrides``: ``--set`` items such as ``"train.epochs=3"``. ``name``/``out``: the run name and the folder of
    run directories (default: the config's). ``resume``: a run directory or checkpoint to continue.
    ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (default: ``train.device``).
    ``hooks``: your own ``cnnctl.training.hooks.Hook`` objects, called at the loop's events.

    Raises ConfigError (and the other bad-input kinds) before anything is written, TrainingError for a non-finite
    loss, Interrupted after a SIGINT/SIGTERM (Jupyter's interrupt) once last.pt is saved.
    """
    from cnnctl.insight.plots import read_metrics
    from cnnctl.training.run import resolve, train_resolved

    source, sets, hooks = _config_source(config), _overrides(overrides), _hooks(hooks)
    out, resume = _path("out", out), _path("resume", resume)
    if _arg("name", name, (str, type(None)), "a run name (str)") is not None:
        check_run_name(name, "name")
    if _arg("device", device, (str, type(None)), DEVICE) is not None:
        check_device(device, "device")
    resolved = resolve(source, overrides=sets, name=name, out=out, resume=resume)
    with _run_scope(resolved.config.train.threads):
        summary = train_resolved(resolved, device=device, hooks=hooks)
    run_dir = Path(summary["run_dir"])
    try:
        rows = read_metrics(run_dir)
    except Exception:  # another rank's machine under torchrun: rank 0 writes metrics.csv
        rows = []
    metrics = [{**r, "epoch": int(r["epoch"])} if r.get("epoch") is not None else r for r in rows]
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    return RunResult(run_dir, summary, metrics, resolved.config, best if best.is_file() else None,
                     last if last.is_file() else None)


def evaluate(checkpoints: PathLike | Sequence[PathLike], *, split: str = "test", data_root: PathLike | None = None,
             device: str = "auto", plots: PathLike | None = None) -> dict[str, Any]:
    """Evaluate checkpoints (files or run directories, whose best.pt is used): ``cnnctl eval --json``'s document.

    One checkpoint: ``{"checkpoint", "split", "n", "loss", "accuracy", "top5", "per_class", "confusion_matrix"}``;
    several: ``{"ensemble": {...}, "members": [...]}`` (the ensemble is the mean of their softmax).
    ``split``: ``test`` or ``val``; ``data_root``: where the dataset is now, if not where it was trained.
    The result also lists the most confidently wrong images (``mistakes``) and the most confused pairs
    (``confused_pairs``). ``plots``: a folder for confusion_matrix.png, per_class.png and mistakes.png (their
    paths in ``plots``).
    """
    from cnnctl.inference.evaluate import evaluate_checkpoints

    paths = _paths("checkpoints", checkpoints)
    if split not in ("test", "val"):
        raise UsageError(f"split must be 'test' or 'val', not {short_repr(split)}")
    check_device(_arg("device", device, (str,), DEVICE), "device")
    return evaluate_checkpoints(paths, split=split, data_root=_path("data_root", data_root), device=device,
                                plots=_path("plots", plots))


def predict(images: PathLike | Sequence[PathLike], checkpoint: PathLike | None = None, *, topk: int = 5,
            device: str = "cpu", explain: bool = False, label: str | None = None,
            labels_from_folders: bool = False) -> list[dict[str, Any]]:
    """Top-k classes of image files or folders (searched recursively): ``cnnctl predict --json``'s document,
    ``[{"file", "topk": [{"class", "index", "prob"}]}]``; a file that cannot be read has ``"error"`` instead of
    ``"topk"`` (the others are still predicted).

    ``checkpoint``: a .pt file, a run directory (its best.pt), an exported .onnx file, or None for best.pt of the
    newest run under ``runs/``. ``explain``: each entry also gets ``explain`` (preprocessing, logits, the safe
    softmax step by step, and with ``label`` or ``labels_from_folders`` the image's cross-entropy loss).
    """
    from cnnctl.inference.predict import predict as predict_images

    paths, model = _paths("images", images), _path("checkpoint", checkpoint)
    _arg("topk", topk, (int,), "an int (how many classes to show)")
    check_device(_arg("device", device, (str,), DEVICE), "device")
    _arg("explain", explain, (bool,), "True or False")
    _arg("label", label, (str, type(None)), "a class name (str) or None")
    _arg("labels_from_folders", labels_from_folders, (bool,), "True or False")
    return predict_images(paths, model, topk=topk, device=device, explain=explain, label=label,
                          labels_from_folders=labels_from_folders)


def summary(config: ConfigLike, *, overrides: Sequence[str] | None = None, explain: bool = False) -> Summary:
    """The network a config builds, on its data's input shape: ``cnnctl summary --json``'s document (layers with
    output shapes, parameters and multiply-adds, totals, depth); with ``explain``, per-layer size arithmetic,
    receptive fields and parameter formulas too. ``.text`` is the table ``cnnctl summary`` prints."""
    _arg("explain", explain, (bool,), "True or False")
    cfg = load_config(config, overrides)  # first: a bad config is reported without importing torch
    from cnnctl.insight.summary import network_summary

    result, text = network_summary(cfg, explain_layers=explain)
    out = Summary(result)
    out.text = text
    return out
