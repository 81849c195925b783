"""``cnnctl predict``: images read with the checkpoint's (or ONNX file's) preprocessing, batched, top-k classes."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cnnctl.data.transforms import IMAGE_SUFFIXES, load_image
from cnnctl.errors import CnnctlError, DataError, UsageError

SHOWN_FAILURES = 3  # files named in the error line; the rest are counted


def _not_regular(path: str) -> str | None:
    """Why ``path`` cannot be read as an image file, or None: only regular files are read (opening a FIFO waits for
    a writer forever; a device never ends)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:  # a symlink loop (ELOOP), a dangling link, no permission
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    return f"not an image file: {kind}"


def _image_files(folder: str) -> Iterator[tuple[str, str | None]]:
    """Image files under ``folder``, recursively, each with why it cannot be read (or None): files named as images
    that are not regular files (a FIFO, a symlink loop) carry their reason. Symlinked folders are not followed.
    (os.scandir: a third of rglob's time on a folder of 1,000.)"""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _image_files(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    yield entry.path, _not_regular(entry.path)
                else:
                    yield entry.path, None


def find_images(inputs: list[str]) -> list[tuple[str, str | None]]:
    """Files in the order given, folders searched recursively for images; a path that is missing or not a regular
    file carries its error."""
    found: list[tuple[str, str | None]] = []
    for spec in inputs:
        path = Path(spec)
        if os.path.isdir(spec):
            try:
                files = sorted(_image_files(str(path)), key=lambda f: f[0].split(os.sep))  # as Paths sort
            except OSError as e:
                found.append((spec, f"cannot be read: {e.strerror or e}"))
                continue
            if not files:
                found.append((spec, "a folder with no images (png, jpg, bmp, gif, tif, webp) in it"))
            found += files
        elif os.path.lexists(spec):
            found.append((spec, _not_regular(spec)))
        else:
            found.append((spec, "no such file or folder"))
    return found


def predict(inputs: list[str], checkpoint: str | None = None, *, topk: int = 5, device: str = "cpu",
            batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-k predictions for each image; a file that cannot be read gets ``error`` instead of ``topk``.

    ``checkpoint``: a .pt file, a run directory (its best.pt), an exported .onnx file (run by onnxruntime with the
    preprocessing in its metadata), or None for best.pt of the newest run under ``runs/``.
    ``check_results(results)`` turns unreadable files into a DataError once the results are shown.
    """
    from cnnctl.data.base import to_model_input
    from cnnctl.inference import load_model, newest_best

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, not {topk}")
    if checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        return onnx_predict(checkpoint, inputs, topk=topk, batch_size=batch_size)
    _, ckpt, model = load_model(checkpoint or newest_best(), device)
    dev = next(model.parameters()).device
    spec, classes = ckpt["input"], ckpt["classes"]
    k = min(topk, len(classes))

    def classify(images: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        x = to_model_input(images, spec["mean"], spec["std"], dev)
        with torch.inference_mode():
            top = model(x).float().softmax(1).cpu().topk(k, dim=1)
        return top.values.tolist(), top.indices.tolist()

    return predict_files(inputs, classes, channels=spec["channels"], size=tuple(spec["size"]), batch_size=batch_size,
                         classify=classify)


def onnx_predict(model_path: str | Path, inputs: list[str], topk: int = 5, *,
                 batch_size: int = 256) -> list[dict[str, Any]]:
    """``cnnctl predict -c MODEL.onnx``: the results of ``predict``, computed by onnxruntime.

    Images are read and normalized as for a checkpoint (``load_image``, ``to_model_input``), with the classes and
    preprocessing stored in the file's metadata.
    """
    import numpy as np

    from cnnctl import onnxrt
    from cnnctl.data.base import to_model_input

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, not {topk}")
    path = Path(model_path)
    if not path.is_file():
        raise CnnctlError("no such file", file=str(path))
    session = onnxrt.session(path)
    meta = onnxrt.metadata(session, path)
    name, batch = session.get_inputs()[0].name, onnxrt.fixed_batch(session)
    classes = meta["classes"]
    k = min(topk, len(classes))

    def classify(images: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        x = to_model_input(images, meta["mean"], meta["std"], torch.device("cpu")).numpy()
        probs = onnxrt.softmax(onnxrt.run_batched(lambda b: session.run(None, {name: b})[0], x, batch))
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(probs, top, axis=1).tolist(), top.tolist()

    return predict_files(inputs, classes, channels=meta["channels"], size=tuple(meta["size"]), batch_size=batch_size,
                         classify=classify)


def predict_files(inputs: list[str], classes: list[str], *, channels: int, size: tuple[int, int], batch_size: int,
                  classify: Callable[[torch.Tensor], tuple[list[list[float]], list[list[int]]]]) -> list[dict[str, Any]]:
    """Read ``inputs`` batch by batch; ``classify(uint8 [B, C, H, W])`` gives each image's top-k (probs, indices).

    A file that cannot be read gets ``error`` in its entry and the others are still predicted.
    """
    results: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        probs, indices = classify(torch.stack([t for _, t in pending]))
        for (entry, _), p, i in zip(pending, probs, indices, strict=True):
            entry["topk"] = [{"class": classes[j], "index": j, "prob": q} for q, j in zip(p, i, strict=True)]
        pending.clear()

    for file, error in find_images(inputs):
        entry: dict[str, Any] = {"file": file}
        results.append(entry)
        if error:
            entry["error"] = error
            continue
        try:
            pending.append((entry, load_image(file, channels, size)))
        except CnnctlError as e:
            entry["error"] = str(e)
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def format_predictions(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['file']}: error: {r['error']}")
            continue
        best = ", ".join(f"{t['class']} {t['prob']:.2%}" for t in r["topk"])
        lines.append(f"{r['file']}: {best}")
    return "\n".join(lines)


def check_results(results: list[dict[str, Any]]) -> None:
    """DataError (exit 2) naming the files that could not be read (the first few), once the results are shown."""
    failed = [r["file"] for r in results if "error" in r]
    if not failed:
        return
    named = ", ".join(failed[:SHOWN_FAILURES]) + (f" and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else "")
    raise DataError(f"{len(failed)} of {len(results)} files could not be read: {named} (each error is shown above)")
