"""``cnnctl export``: a checkpoint to ONNX or TorchScript, checked against PyTorch before it is written.

The exported file carries what a runtime needs besides the weights: the class names and the preprocessing
(channels, input size, per-channel mean and std). ONNX keeps them in ``metadata_props``, one JSON value per key;
TorchScript in the extra file ``cnnctl.json``. Both hold the same dict (see ``export_metadata``).

Every export runs the exported model and the PyTorch model on real test images (when the checkpoint's dataset
can be read here) and on random inputs, including a batch size other than the one exported with, and refuses to
write a file whose outputs differ by more than ``TOLERANCE``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnctl.errors import CnnctlError, ExportError, UsageError, first_line
from cnnctl.inference import onnxrt
from cnnctl.inference.onnxrt import INSTALL_HINT, Runner, run_batched, softmax
from cnnctl.io import writing

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
METADATA_FILE = "cnnctl.json"  # the TorchScript extra file
# Probabilities must agree to 1e-4 (what `cnnctl predict` shows); logits to 1e-4 of their scale, since float32
# kernels that fuse or reorder operations (onnxruntime folds batch norm into conv) differ by ~1e-7 relative.
TOLERANCE = 1e-4
EXPORT_BATCH = 2  # the example batch; torch.export specializes sizes 0 and 1, so a dynamic batch needs 2 or more
CHECK_IMAGES = 16
CHECK_BATCHES = (1, 3)  # random batches other than EXPORT_BATCH: they exercise the dynamic batch axis

__all__ = ["ExportError", "export", "export_metadata", "read_metadata", "real_images", "verify"]


# ---------------------------------------------------------------- export


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress notes (onnxscript's optimizer logs each pass at INFO) and their
    deprecation warnings (torch.jit, the TorchScript-based ONNX exporter); failures still raise."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export(checkpoint: str | Path, *, format: str = "onnx", output: str | Path | None = None,
           opset: int | None = None, dynamic_batch: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` (a file, or a run directory's ``best.pt``) and verify it against PyTorch.

    Args:
        format: ``onnx`` (torch.onnx's dynamo exporter, falling back to the TorchScript-based one) or
            ``torchscript`` (``torch.jit.trace``).
        output: the file to write, or a folder for it; default: beside the checkpoint, ``best.onnx`` or
            ``best.torchscript.pt``.
        opset: ONNX opset version (default: the exporter's).
        dynamic_batch: ONNX only: a batch axis of any size; otherwise the file takes batches of 2 only.
            A traced TorchScript module takes any batch size.

    Returns ``{"path", "format", "exporter", "max_abs_diff", "max_prob_diff", "top1_agree", "checked"}``.
    Raises CnnctlError (exit 2) for bad input or a missing extra, ExportError (exit 1) when export or
    verification fails; a file that fails verification is not written.
    """
    from cnnctl.inference.evaluate import load_model
    from cnnctl.training.checkpoint import atomic_write

    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if opset is not None:
        check_opset(opset, format)
    if format == "onnx":
        _require_onnx()
    source, ckpt, model = load_model(checkpoint, "cpu")
    target = _output_path(source, format, output)
    meta = export_metadata(ckpt)
    example = torch.randn(EXPORT_BATCH, meta["channels"], *meta["size"], generator=torch.Generator().manual_seed(0))

    if format == "onnx":
        data, exporter = _export_onnx(model, example, meta, opset=opset, dynamic_batch=dynamic_batch)
        run = _onnx_runner(data)
    else:
        data, exporter = _export_torchscript(model, example, meta), "torch.jit.trace"
        run = _torchscript_runner(data)
    log.info("exported %s with %s", source, exporter)

    batch = None if format == "torchscript" or dynamic_batch else EXPORT_BATCH
    report = verify(model, run, ckpt, str(source), batch=batch)
    if not report["ok"]:
        raise ExportError(
            f"the exported model does not compute what the PyTorch model does ({report['text']}); nothing was "
            f"written. Try another --opset{' or --format torchscript' if format == 'onnx' else ''}", file=str(source))
    with writing(target.parent, note="give -o a writable folder or file"):
        target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: f.write(data))
    log.info("wrote %s (%.1f MB)", target, len(data) / 1e6)
    return {"path": str(target), "format": format, "exporter": exporter, "max_abs_diff": report["max_abs_diff"],
            "max_prob_diff": report["max_prob_diff"], "top1_agree": report["top1_agree"], "checked": report["checked"]}


def export_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a runtime needs besides the weights: class names, preprocessing, provenance."""
    from cnnctl.version import __version__

    spec, config = ckpt["input"], ckpt["config"]
    size = [int(s) for s in spec["size"]]
    return {
        "cnnctl_version": __version__,
        "arch": config.get("model", {}).get("arch"),
        "name": config.get("name"),
        "classes": list(ckpt["classes"]),
        "channels": int(spec["channels"]),
        "size": size,
        "mean": [float(m) for m in spec["mean"]],
        "std": [float(s) for s in spec["std"]],
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "preprocess": f"{'RGB' if spec['channels'] == 3 else 'grayscale (ITU-R 601-2 luma)'} image resized to "
                      f"{size[0]}x{size[1]} (H x W, bilinear), float32 NCHW, (pixel / 255 - mean) / std per channel; "
                      "the output is logits: apply softmax for probabilities",
    }


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``export_metadata`` dict stored in an exported ONNX or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise CnnctlError("no such file", file=str(path))
    if path.suffix == ".onnx":
        return onnxrt.metadata(onnxrt.session(path), path)
    extra = {METADATA_FILE: ""}
    try:
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        raise CnnctlError(f"not a TorchScript file ({first_line(e)})", file=str(path)) from None
    if not extra[METADATA_FILE]:
        raise CnnctlError(f"has no {METADATA_FILE}: it was not written by cnnctl export", file=str(path))
    return json.loads(extra[METADATA_FILE])


def _output_path(source: Path, format: str, output: str | Path | None) -> Path:
    stem = source.name.removesuffix(source.suffix)
    default = f"{stem}{FORMATS[format]}"
    if output is None:
        target = source.with_name(default)
    else:
        target = Path(output)
        if target.is_dir():
            target = target / default
    if target.resolve() == source.resolve():
        raise CnnctlError("-o/--output is the checkpoint itself; give another file name", file=str(target))
    return target


def _require_onnx() -> None:
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as e:
            raise CnnctlError(f"ONNX export needs the packages onnx, onnxscript and onnxruntime, and {name} cannot be "
                              f"imported ({first_line(e)}); install them with: {INSTALL_HINT}") from None


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch.onnx can write (torch 2.14: 7 to 23)."""
    try:
        from torch.onnx import _constants

        return _constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET
    except (ImportError, AttributeError):  # a private module: the figures of torch 2.14
        return 7, 23


def check_opset(opset: int, format: str) -> None:
    """Refuse an opset torch.onnx cannot write, before anything is loaded or written."""
    if format != "onnx":
        raise UsageError(f"--opset {opset}: only --format onnx has opsets; leave --opset out for {format}")
    low, high = opset_range()
    if not low <= opset <= high:
        raise UsageError(f"--opset {opset}: torch.onnx {torch.__version__.split('+')[0]} writes opsets {low} to "
                         f"{high}; leave --opset out for its default")


def _opset_of(proto: Any) -> int | None:
    return next((i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")), None)


def _export_onnx(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], *, opset: int | None,
                 dynamic_batch: bool) -> tuple[bytes, str]:
    model = _onnx_friendly(model)
    try:
        proto, exporter = _dynamo_onnx(model, example, opset, dynamic_batch), "torch.onnx (dynamo)"
        if opset is not None and _opset_of(proto) != opset:
            # the dynamo exporter writes opset 18 and converts down on a best-effort basis; a failed conversion
            # leaves 18 with only a log line, so the TorchScript-based exporter gets its turn
            raise ExportError(f"it wrote opset {_opset_of(proto)}, not {opset}")
    except Exception as e:  # the dynamo exporter raises many types; the TorchScript-based one may still work
        log.warning("the dynamo ONNX exporter failed (%s); falling back to the TorchScript-based exporter",
                    first_line(e))
        try:
            proto, exporter = _torchscript_onnx(model, example, opset, dynamic_batch), "torch.onnx (torchscript)"
        except Exception as e2:
            raise ExportError(f"torch.onnx cannot export {meta['arch']}: the dynamo exporter failed with "
                              f"{first_line(e)!r}; the TorchScript-based one with {first_line(e2)!r}. "
                              "Try --format torchscript") from None
        if opset is not None and _opset_of(proto) != opset:
            raise ExportError(f"torch.onnx cannot write {meta['arch']} as opset {opset} (the dynamo exporter "
                              f"failed with {first_line(e)!r}; the TorchScript-based one wrote opset "
                              f"{_opset_of(proto)}); nothing was written. Try --opset 18 or leave it out") from None
    keys = set(meta)
    kept = [p for p in proto.metadata_props if p.key not in keys]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    proto.doc_string = f"cnnctl {meta['cnnctl_version']} export of {meta['arch']}: {meta['preprocess']}"
    return proto.SerializeToString(), exporter


class _DividedPool(nn.Module):
    """``nn.AvgPool2d`` with ``divisor_override`` (cnnctl's ``sumpool``) in operations ONNX has.

    Both torch.onnx exporters (torch 2.14) drop ``divisor_override`` and export the window mean: a 2x2 sumpool
    came out 4x too small (3.49 max error on random inputs). With ``count_include_pad`` and no ``ceil_mode`` every
    window holds ``kh * kw`` values, so the mean times ``kh * kw / divisor`` is what the module computes.
    """

    def __init__(self, pool: nn.AvgPool2d) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        kh, kw = (pool.kernel_size, pool.kernel_size) if isinstance(pool.kernel_size, int) else pool.kernel_size
        self.factor = kh * kw / pool.divisor_override

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return mean * self.factor


def _onnx_friendly(model: nn.Module) -> nn.Module:
    """``model``, or a copy with the modules torch.onnx exports wrongly replaced by equivalents."""
    def wrong(m: nn.Module) -> bool:
        return isinstance(m, nn.AvgPool2d) and bool(m.divisor_override) and not m.ceil_mode

    if not any(wrong(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if wrong(module):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, _DividedPool(module))
    return model


def _dynamo_onnx(model: nn.Module, example: torch.Tensor, opset: int | None, dynamic_batch: bool) -> Any:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], opset_version=opset, dynamic_shapes=shapes,
                                    external_data=False, verbose=False)
    return program.model_proto


def _torchscript_onnx(model: nn.Module, example: torch.Tensor, opset: int | None, dynamic_batch: bool) -> Any:
    import onnx

    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())


def _export_torchscript(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    # Tracing records the operations one forward pass runs, which for a feed-forward CNN is the whole network;
    # torch.jit.script cannot compile, for example, ResNet's loop over getattr(self, name). check_trace would run
    # the model twice more: `verify` below checks the result on more inputs than it does.
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
    except Exception as e:
        raise ExportError(f"torch.jit.trace cannot export {meta['arch']}: {first_line(e)}. Try --format onnx") from None
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


# ---------------------------------------------------------------- running exported files


def _onnx_runner(model: bytes) -> Runner:
    return onnxrt.runner(model)


def _torchscript_runner(data: bytes) -> Runner:
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return run


# ---------------------------------------------------------------- verification


def verify(model: nn.Module, run: Runner, ckpt: dict[str, Any], source: str, *,
           batch: int | None = None) -> dict[str, Any]:
    """Compare ``run`` (the exported model) with ``model`` on real test images and random inputs.

    ``batch`` is the fixed batch size of a static export (None: any). Logs one line per input set.
    """
    from cnnctl.data.base import to_model_input

    spec = ckpt["input"]
    sets: list[tuple[str, torch.Tensor]] = []
    images, where = real_images(ckpt, source)
    if images is None:
        log.info("verify: no real images (%s); checking random inputs only", where)
    else:
        sets.append((f"{len(images)} {where} images", to_model_input(images, spec["mean"], spec["std"],
                                                                     torch.device("cpu"))))
    generator = torch.Generator().manual_seed(1)
    for n in CHECK_BATCHES if batch is None else (batch,):
        sets.append((f"random batch of {n}", torch.randn(n, spec["channels"], *spec["size"], generator=generator)))

    worst_logit, worst_prob, agree, total, ok = 0.0, 0.0, 0, 0, True
    for name, x in sets:
        with torch.inference_mode():
            expected = model(x).double().numpy()
        if not np.isfinite(expected).all():  # nothing to compare against; max() of NaN differences would read 0
            raise ExportError(f"the PyTorch model itself gives non-finite logits on {name}, so the export cannot be "
                              "checked; an untrained very deep network can overflow float32 in eval mode (its batch "
                              "norms still hold their initial statistics): export a trained checkpoint", file=source)
        got = run_batched(run, x.numpy(), batch).astype(np.float64)
        if got.shape != expected.shape:
            raise ExportError(f"the exported model gives outputs of shape {list(got.shape)} for {name}, PyTorch "
                              f"{list(expected.shape)}", file=source)
        logit_diff = float(np.abs(got - expected).max())
        prob_diff = float(np.abs(softmax(got) - softmax(expected)).max())
        scale = float(np.abs(expected).max())
        same = int((got.argmax(1) == expected.argmax(1)).sum())
        good = bool(np.isfinite(got).all()) and logit_diff <= TOLERANCE * max(1.0, scale) and prob_diff <= TOLERANCE
        log.info("verify on %s: max |logit diff| %.2e (|logits| up to %.3g), max |prob diff| %.2e, top-1 agrees on "
                 "%d/%d%s", name, logit_diff, scale, prob_diff, same, len(x), "" if good else "  <- FAILED")
        worst_logit, worst_prob = max(worst_logit, logit_diff), max(worst_prob, prob_diff)
        agree, total, ok = agree + same, total + len(x), ok and good
    text = (f"max |logit diff| {worst_logit:.2e}, max |prob diff| {worst_prob:.2e}, top-1 agrees on "
            f"{agree}/{total} inputs; tolerance {TOLERANCE:g}")
    return {"ok": ok, "max_abs_diff": worst_logit, "max_prob_diff": worst_prob, "top1_agree": agree == total,
            "checked": [name for name, _ in sets], "text": text}


def real_images(ckpt: dict[str, Any], source: str, n: int = CHECK_IMAGES) -> tuple[torch.Tensor | None, str]:
    """Up to ``n`` uint8 images of the checkpoint's test split (else val, else train) and where they came from,
    or ``(None, why not)`` when its dataset cannot be read here. Never downloads."""
    from cnnctl.inference.evaluate import sample_images

    try:
        images, _, where = sample_images(ckpt, source, n)
    except Exception as e:  # a missing dataset only narrows the check; it must not stop the export
        return None, f"dataset cannot be read here: {first_line(e)[:200]}"
    spec = ckpt["input"]
    if tuple(images.shape[1:]) != (spec["channels"], *spec["size"]):
        return None, f"the dataset's images are {list(images.shape[1:])}, the checkpoint's input is {spec}"
    return images, where
