"""``cnnctl predict``: images read with the checkpoint's (or ONNX file's) preprocessing, batched, top-k classes."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnctl.data.transforms import IMAGE_SUFFIXES, load_image
from cnnctl.errors import CnnctlError, DataError, UsageError, first_line
from cnnctl.io import file_kind

SHOWN_FAILURES = 3  # files named in the error line; the rest are counted


def not_regular(path: str) -> str | None:
    """Why ``path`` cannot be read as an image file, or None: only regular files are read (opening a FIFO waits for
    a writer forever; a device never ends)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:  # a symlink loop (ELOOP), a dangling link, no permission
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    return f"not an image file: {file_kind(mode)}"


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
                    yield entry.path, not_regular(entry.path)
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
            found.append((spec, not_regular(spec)))
        else:
            found.append((spec, "no such file or folder"))
    return found


def predict(inputs: list[str], checkpoint: str | Path | None = None, *, topk: int = 5, device: str = "cpu",
            batch_size: int = 256, explain: bool = False, label: str | None = None,
            labels_from_folders: bool = False) -> list[dict[str, Any]]:
    """Top-k predictions for each image; a file that cannot be read gets ``error`` instead of ``topk``.

    ``checkpoint``: a .pt file, a run directory (its best.pt), an exported .onnx file (run by onnxruntime with the
    preprocessing in its metadata), or None for best.pt of the newest run under ``runs/``.
    ``explain``: each entry also gets ``explain``: the preprocessing, the logits, the safe softmax step by step and,
    when the true class is known (``label`` for every image, or each image's folder name with
    ``labels_from_folders``), the image's cross-entropy loss (``cnnctl.insight.explain``).
    ``check_results(results)`` turns unreadable files into a DataError once the results are shown.
    """
    from cnnctl.data.base import to_model_input
    from cnnctl.inference.evaluate import load_model, newest_best

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, not {topk}")
    if (label is not None or labels_from_folders) and not explain:
        raise UsageError("--label and --labels-from-folders give the true class for --explain's loss; add --explain")
    if label is not None and labels_from_folders:
        raise UsageError("give --label CLASS or --labels-from-folders, not both")
    if checkpoint is not None and Path(checkpoint).suffix == ".onnx":
        return onnx_predict(checkpoint, inputs, topk=topk, batch_size=batch_size, explain=explain, label=label,
                            labels_from_folders=labels_from_folders)
    _, ckpt, model = load_model(checkpoint or newest_best(), device)
    dev = next(model.parameters()).device
    spec, classes = ckpt["input"], ckpt["classes"]

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        x = to_model_input(images, spec["mean"], spec["std"], dev)
        with torch.inference_mode():
            return model(x).float().cpu()

    return predict_files(inputs, classes, spec=spec, batch_size=batch_size, logits_of=logits_of, topk=topk,
                         explain=explain, label=label, labels_from_folders=labels_from_folders)


def onnx_predict(model_path: str | Path, inputs: list[str], topk: int = 5, *, batch_size: int = 256,
                 explain: bool = False, label: str | None = None, labels_from_folders: bool = False) -> list[dict[str, Any]]:
    """``cnnctl predict -c MODEL.onnx``: the results of ``predict``, computed by onnxruntime.

    Images are read and normalized as for a checkpoint (``load_image``, ``to_model_input``), with the classes and
    preprocessing stored in the file's metadata.
    """
    from cnnctl.data.base import to_model_input
    from cnnctl.inference import onnxrt

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, not {topk}")
    path = Path(model_path)
    if not path.is_file():
        raise CnnctlError("no such file", file=str(path))
    session = onnxrt.session(path)
    meta = onnxrt.metadata(session, path)
    name, batch = session.get_inputs()[0].name, onnxrt.fixed_batch(session)

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        x = to_model_input(images, meta["mean"], meta["std"], torch.device("cpu")).numpy()
        try:
            logits = onnxrt.run_batched(lambda b: session.run(None, {name: b})[0], x, batch)
        except Exception as e:  # onnxruntime's Fail/InvalidArgument/...: a graph that fails on the input it declared
            raise CnnctlError(f"onnxruntime cannot run it on {list(x.shape)} images ({first_line(e)[:200]})",
                              file=str(path)) from None
        if logits.shape[1:] != (len(meta["classes"]),):  # a graph with a free output width is checked here
            raise CnnctlError(f"classes names {len(meta['classes'])} class(es) but the graph gives "
                              f"{list(logits.shape[1:])} logits per image", file=str(path), key="metadata")
        return torch.from_numpy(logits).float()

    return predict_files(inputs, meta["classes"], spec=meta, batch_size=batch_size, logits_of=logits_of, topk=topk,
                         explain=explain, label=label, labels_from_folders=labels_from_folders)


def preprocessing(spec: dict[str, Any]) -> str:
    """What is done to a file before the network sees it, in words (``predict --explain``)."""
    h, w = (int(v) for v in spec["size"])
    mode = "grayscale (1 channel)" if int(spec["channels"]) == 1 else "RGB (3 channels)"
    mean = ", ".join(f"{m:.4g}" for m in spec["mean"])
    std = ", ".join(f"{s:.4g}" for s in spec["std"])
    return (f"read as {mode}, resized to {h}x{w}, pixels scaled to [0, 1] (/255), then normalised per channel: "
            f"(x - mean) / std with mean [{mean}], std [{std}]")


def label_index(text: str, classes: list[str], *, of: str = "the checkpoint's classes") -> int:
    """``--label`` (predict, step): a class name, or an index into ``classes`` when no class has that name."""
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    from cnnctl.registry import did_you_mean

    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} classes)" if len(classes) > 20 else "")
    raise UsageError(f"--label {text!r} is not one of {of}{did_you_mean(text, classes) or '.'} Give a class name or "
                     f"an index 0..{len(classes) - 1}; the classes: {shown}")


def predict_files(inputs: list[str], classes: list[str], *, spec: dict[str, Any], batch_size: int,
                  logits_of: Callable[[torch.Tensor], torch.Tensor], topk: int = 5, explain: bool = False,
                  label: str | None = None, labels_from_folders: bool = False) -> list[dict[str, Any]]:
    """Read ``inputs`` batch by batch; ``logits_of(uint8 [B, C, H, W])`` gives the network's logits ``[B, classes]``.

    A file that cannot be read gets ``error`` in its entry and the others are still predicted. The network runs
    on one batch in a second thread while this one decodes the next: decoding is Python-bound (PIL's parsing holds
    the GIL) and the forward pass is not (torch and onnxruntime release it), so the two overlap.
    """
    from concurrent.futures import ThreadPoolExecutor

    fill = _Filler(classes, min(topk, len(classes)), explain=explain, labels_from_folders=labels_from_folders,
                   fixed=label_index(label, classes) if label is not None else None,
                   steps=preprocessing(spec) if explain else "")
    results: list[dict[str, Any]] = []
    running = None  # the batch in the network: its entries and the future of its logits
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnctl-predict") as pool:
        for entries, batch in _batches(inputs, spec, batch_size, results):
            future = pool.submit(logits_of, batch)
            if running is not None:
                fill(*running)  # the batch before this one, while this one runs
            running = (entries, future)
        if running is not None:
            fill(*running)
    return results


def _batches(inputs: list[str], spec: dict[str, Any], batch_size: int,
             results: list[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], torch.Tensor]]:
    """Decode ``inputs`` into batches of up to ``batch_size`` images, appending every file's entry to ``results``
    (an unreadable one with its ``error``) in the order given."""
    channels, size = int(spec["channels"]), (int(spec["size"][0]), int(spec["size"][1]))
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []
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
            yield [e for e, _ in pending], torch.stack([t for _, t in pending])
            pending = []
    if pending:
        yield [e for e, _ in pending], torch.stack([t for _, t in pending])


@dataclass(frozen=True)
class _Filler:
    """Fills a batch's entries once its logits are back: the top ``k`` classes, and with ``explain`` the
    arithmetic from logits to probabilities (and the loss, when the true class is known)."""

    classes: list[str]
    k: int
    explain: bool
    labels_from_folders: bool
    fixed: int | None
    steps: str

    def __call__(self, entries: list[dict[str, Any]], future: Future) -> None:
        from cnnctl.insight.explain import explain_logits

        logits = future.result()
        top = logits.softmax(1).topk(self.k, dim=1)
        for entry, z, p, i in zip(entries, logits, top.values.tolist(), top.indices.tolist(), strict=True):
            entry["topk"] = [{"class": self.classes[j], "index": j, "prob": q} for q, j in zip(p, i, strict=True)]
            if self.explain:
                entry["explain"] = {"preprocessing": self.steps, **explain_logits(z, self.classes, self._truth(entry))}

    def _truth(self, entry: dict[str, Any]) -> int | None:
        if not self.labels_from_folders:
            return self.fixed
        folder = Path(entry["file"]).parent.name
        if folder not in self.classes:
            entry["label_note"] = f"folder {folder!r} is not one of the classes; no loss shown"
            return None
        return self.classes.index(folder)


def format_predictions(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['file']}: error: {r['error']}")
            continue
        best = ", ".join(f"{t['class']} {t['prob']:.2%}" for t in r["topk"])
        lines.append(f"{r['file']}: {best}")
        if "explain" in r:
            from cnnctl.insight.explain import format_explanation

            ex = r["explain"]
            if "label_note" in r:
                lines.append(f"  ({r['label_note']})")
            lines.append(format_explanation(ex, ex["classes"], ex["preprocessing"]))
    return "\n".join(lines)


def check_results(results: list[dict[str, Any]]) -> None:
    """DataError (exit 2) naming the files that could not be read (the first few), once the results are shown."""
    failed = [r["file"] for r in results if "error" in r]
    if not failed:
        return
    named = ", ".join(failed[:SHOWN_FAILURES]) + (f" and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else "")
    raise DataError(f"{len(failed)} of {len(results)} files could not be read: {named} (each error is shown above)")
