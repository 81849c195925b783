"""TensorBoard: ``train.tensorboard: true`` writes scalars, histograms, HParams and images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.config import is_finite_number
from cnnctl.errors import ConfigError, WriteError
from cnnctl.io import check_writable, writing
from cnnctl.training.hooks.base import Hook

if TYPE_CHECKING:
    from cnnctl.training.state import Run


class TensorBoard(Hook):
    """``train.tensorboard: true``, under RUN/tensorboard (rank 0 only). Each epoch: the metrics row as scalars and a
    histogram of every weight. At the end of the run: the HParams tab's session (the flattened resolved config
    against the final metrics, so runs under one ``--logdir`` compare there) and two images, the test confusion
    matrix (confusion_matrix.png) and the first conv layer's filters."""

    def __init__(self, run_dir: Path) -> None:
        require_tensorboard()  # the install hint before anything is written
        self.run_dir = run_dir
        self.folder = run_dir / "tensorboard"
        self.writer: Any = None

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return writing(self.folder, note="train.tensorboard: true writes its event files there; make it a writable "
                                         "folder or set train.tensorboard: false")

    def _open(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        with self._writing():
            if self.folder.exists() and not self.folder.is_dir():
                raise WriteError(str(self.folder), "it is a file, not a folder", note="move the file away or set "
                                 "train.tensorboard: false")
            self.folder.mkdir(exist_ok=True)
            # The writer's own thread opens the event file: probed here, a failure is this run's error, not a
            # traceback from that thread.
            check_writable(self.folder)
            return SummaryWriter(log_dir=str(self.folder))

    def on_train_start(self, run: Run) -> None:
        self.writer = self._open()

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            if row.get(key) is not None:
                self.writer.add_scalar(key.replace("_", "/"), row[key], epoch)  # train/loss, ..., lr
        for name, param in run.model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
        with self._writing():  # a failed write of the writer's thread (a full disk) is raised here
            self.writer.flush()

    def on_train_end(self, run: Run) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._writing():
                writer.close()

    def on_run_end(self, run: Run, summary: dict[str, Any]) -> None:
        # A writer of its own (a second event file in the same folder, one TensorBoard run): the loop's writer is
        # closed in on_train_end, which also runs when training raises and this never comes.
        from torch.utils.tensorboard.summary import hparams

        writer = self._open()
        try:
            metrics = final_metrics(summary)
            file_writer = writer._get_file_writer()
            for proto in hparams(hparam_values(run.config.dump()), metrics):  # experiment, session start and end
                file_writer.add_summary(proto)
            for tag, value in metrics.items():  # the HParams tab reads each metric from a scalar of its tag
                writer.add_scalar(tag, value, run.epoch)
            confusion = self.run_dir / "confusion_matrix.png"
            if summary.get("test") and confusion.is_file():
                writer.add_image("confusion_matrix/test", _png_pixels(confusion), run.epoch, dataformats="HWC")
            filters = first_layer_filters(run.model)
            if filters is not None:
                writer.add_image("filters/" + filters[0], filters[1], run.epoch)
        finally:
            with self._writing():
                writer.close()


def hparam_values(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as HParams values: dotted keys; numbers and strings kept, the rest (null, true/false,
    lists such as model.layers) as their JSON text, which the HParams tab shows and filters as strings."""
    import json

    from cnnctl.config import flatten_keys

    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else json.dumps(v)
            for k, v in flatten_keys(config).items()}


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers runs are compared by in the HParams tab, under ``hparams/``: the best epoch's val metrics, the
    test metrics (with the weights summary.json names), the epoch count and wall time. Missing ones are left out."""
    best, test = summary.get("best") or {}, summary.get("test") or {}
    values = {"best_val_acc": best.get("val_acc"), "best_val_loss": best.get("val_loss"),
              "best_epoch": summary.get("best_epoch"), "test_accuracy": test.get("accuracy"),
              "test_loss": test.get("loss"), "test_top5": test.get("top5"), "epochs": summary.get("epochs"),
              "wall_seconds": summary.get("wall_seconds")}
    return {f"hparams/{k}": float(v) for k, v in values.items() if is_finite_number(v)}


def first_layer_filters(model: Any, limit: int = 64) -> tuple[str, Any] | None:
    """The first conv layer's name and its filters as one picture ``[3, H, W]`` in 0..1, each tile scaled to its own
    min..max as ``cnnctl visualize`` draws them (RGB filters in colour, other inputs one grey tile per channel, at
    most ``limit`` tiles), or None for a network without a conv layer.

    Drawn with torchvision's ``make_grid`` rather than visualize.py's tiles: visualize imports inference, which
    imports the loop and so this module.
    """
    import math

    import torch
    from torchvision.utils import make_grid

    conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        return None
    weight = conv[1].weight.detach().float().cpu()
    tiles = weight if weight.shape[1] in (1, 3) else weight.reshape(-1, 1, *weight.shape[2:])
    tiles = tiles[:limit]
    lo = tiles.amin(dim=(1, 2, 3), keepdim=True)
    span = tiles.amax(dim=(1, 2, 3), keepdim=True) - lo
    tiles = (tiles - lo) / span.clamp_min(1e-12)  # a flat tile is 0 - 0: black
    scale = max(1, 32 // max(tiles.shape[2:]))  # 5x5 kernels are a few pixels: enlarge, nearest-neighbour
    tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return conv[0], make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=1, pad_value=1.0)


def _png_pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
    except ImportError:
        raise ConfigError("train.tensorboard: true needs the tensorboard package: pip install 'cnnctl[tensorboard]' "
                          "(or set train.tensorboard: false)") from None
