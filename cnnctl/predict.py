"""``cnnctl predict``: images read with the checkpoint's preprocessing, batched, top-k classes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cnnctl.data.transforms import IMAGE_SUFFIXES, load_image
from cnnctl.errors import CnnctlError


def _image_files(folder: str) -> Iterator[str]:
    """Image files under ``folder``, recursively (os.scandir: a third of rglob's time on a folder of 1,000)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _image_files(entry.path)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                yield entry.path


def find_images(inputs: list[str]) -> list[tuple[str, str | None]]:
    """Files in the order given, folders searched recursively for images; a missing path carries its error."""
    found: list[tuple[str, str | None]] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(_image_files(str(path)), key=lambda f: f.split(os.sep))  # folder by folder, as Paths sort
            if not files:
                found.append((spec, "a folder with no images (png, jpg, bmp, gif, tif, webp) in it"))
            found += [(f, None) for f in files]
        elif path.exists():
            found.append((spec, None))
        else:
            found.append((spec, "no such file or folder"))
    return found


def predict(inputs: list[str], checkpoint: str | None = None, *, topk: int = 5, device: str = "cpu",
            batch_size: int = 256) -> list[dict[str, Any]]:
    """Top-k predictions for each image; a file that cannot be read gets ``error`` instead of ``topk``."""
    from cnnctl.checkpoint import load_checkpoint, run_checkpoint
    from cnnctl.data.base import to_model_input
    from cnnctl.engine import select_device, tune_cpu_allocator
    from cnnctl.inference import model_from_checkpoint, newest_best

    if topk < 1:
        raise CnnctlError(f"--topk must be at least 1, not {topk}")
    if checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        from cnnctl.export import onnx_predict  # an exported file: onnxruntime with the preprocessing in its metadata

        return onnx_predict(checkpoint, inputs, topk=topk, batch_size=batch_size)
    path = run_checkpoint(checkpoint, "best.pt") if checkpoint else newest_best()
    tune_cpu_allocator()
    dev = select_device(device)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, str(path), dev)
    spec, classes = ckpt["input"], ckpt["classes"]
    size = tuple(spec["size"])
    k = min(topk, len(classes))

    def classify(images: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        x = to_model_input(images, spec["mean"], spec["std"], dev)
        with torch.inference_mode():
            top = model(x).float().softmax(1).cpu().topk(k, dim=1)
        return top.values.tolist(), top.indices.tolist()

    return predict_files(inputs, classes, channels=spec["channels"], size=size, batch_size=batch_size,
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
