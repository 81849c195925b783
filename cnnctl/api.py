"""The Python API: ``train``, ``evaluate``, ``predict``, ``summary``, ``load_config``, re-exported by ``cnnctl``.

The CLI's train/eval/predict/summary commands are thin layers over exactly these functions. Each raises the
``cnnctl.errors`` kinds (``ConfigError``, ``CheckpointError``, ``DataError``, ``UsageError``, ``TrainingError``,
``WriteError``, ``Interrupted``), never ``SystemExit``, and leaves the process as it found it: no logging handlers,
no allocator tuning, no matplotlib backend; ``train`` sets ``train.threads`` and the seeds for the run only and
puts the caller's thread count and random state back afterwards.

Torch is imported inside the functions, so ``import cnnctl`` stays quick and torch-free.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import Config, check_device, check_run_name, resolve_run
from cnnctl.errors import UsageError

if TYPE_CHECKING:
    from cnnctl.hooks import Hook

PathLike = str | os.PathLike[str]
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


def _path(value: PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)


def _config_source(config: ConfigLike | None) -> Config | dict[str, Any] | str | None:
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        return os.fspath(config)
    raise UsageError(f"config must be a path, a bundled config name, a dict or a cnnctl Config, not "
                     f"{type(config).__name__}")


def _paths(items: PathLike | Sequence[PathLike], what: str) -> list[str]:
    """One path or several, as strings (a str is one path, not a sequence of characters)."""
    many = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    if not many:
        raise UsageError(f"give at least one {what}")
    for item in many:
        if not isinstance(item, (str, os.PathLike)):
            raise UsageError(f"each {what} must be a path, not {type(item).__name__}")
    return [os.fspath(p) for p in many]


def load_config(config: ConfigLike, overrides: Sequence[str] | None = None) -> Config:
    """A validated ``Config`` from a YAML path, a bundled config name (``"lenet5-digits"``), a dict or a Config,
    with ``overrides`` (``["optimizer.lr=0.05"]``, values parsed as YAML) applied. ConfigError when it is wrong."""
    return resolve_run(_config_source(config), overrides=list(overrides or [])).config


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
    ``hooks``: your own ``cnnctl.hooks.Hook`` objects, called at the loop's events.

    Raises ConfigError (and the other bad-input kinds) before anything is written, TrainingError for a non-finite
    loss, Interrupted after a SIGINT/SIGTERM (Jupyter's interrupt) once last.pt is saved.
    """
    from cnnctl.plots import read_metrics
    from cnnctl.run import resolve, train_resolved

    if name is not None:
        check_run_name(name, "name")
    if device is not None:
        check_device(device, "device")
    resolved = resolve(_config_source(config), overrides=overrides, name=name, out=_path(out),
                       resume=_path(resume))
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
    from cnnctl.inference import evaluate_checkpoints

    if split not in ("test", "val"):
        raise UsageError(f"split must be 'test' or 'val', not {split!r}")
    check_device(device, "device")
    return evaluate_checkpoints(_paths(checkpoints, "checkpoint"), split=split, data_root=_path(data_root),
                                device=device, plots=_path(plots))


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
    from cnnctl.predict import predict as predict_images

    check_device(device, "device")
    return predict_images(_paths(images, "image"), _path(checkpoint), topk=topk, device=device, explain=explain,
                          label=label, labels_from_folders=labels_from_folders)


def summary(config: ConfigLike, *, overrides: Sequence[str] | None = None, explain: bool = False) -> Summary:
    """The network a config builds, on its data's input shape: ``cnnctl summary --json``'s document (layers with
    output shapes, parameters and multiply-adds, totals, depth); with ``explain``, per-layer size arithmetic,
    receptive fields and parameter formulas too. ``.text`` is the table ``cnnctl summary`` prints."""
    cfg = load_config(config, overrides)  # first: a bad config is reported without importing torch
    from cnnctl.models.summary import network_summary

    result, text = network_summary(cfg, explain_layers=explain)
    out = Summary(result)
    out.text = text
    return out
