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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnctl.errors import CnnctlError

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
METADATA_FILE = "cnnctl.json"  # the TorchScript extra file
METADATA_KEYS = ("cnnctl_version", "arch", "name", "classes", "channels", "size", "mean", "std", "input", "output",
                 "preprocess")
INSTALL_HINT = "pip install 'cnnctl[export]'"
# Probabilities must agree to 1e-4 (what `cnnctl predict` shows); logits to 1e-4 of their scale, since float32
# kernels that fuse or reorder operations (onnxruntime folds batch norm into conv) differ by ~1e-7 relative.
TOLERANCE = 1e-4
EXPORT_BATCH = 2  # the example batch; torch.export specializes sizes 0 and 1, so a dynamic batch needs 2 or more
CHECK_IMAGES = 16
CHECK_BATCHES = (1, 3)  # random batches other than EXPORT_BATCH: they exercise the dynamic batch axis

Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(CnnctlError):
    """The exporter failed, or the exported model does not compute what the PyTorch model does: exit 1."""

    exit_code = 1


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
    from cnnctl.checkpoint import atomic_write, load_checkpoint, run_checkpoint
    from cnnctl.inference import model_from_checkpoint

    if format not in FORMATS:
        raise CnnctlError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "onnx":
        _require_onnx()
    source = run_checkpoint(checkpoint, "best.pt")
    target = _output_path(source, format, output)
    ckpt = load_checkpoint(source)
    model = model_from_checkpoint(ckpt, str(source), torch.device("cpu"))
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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnctlError(f"cannot create the folder for it: {e.strerror or e}", file=str(target)) from None
    atomic_write(target, lambda f: f.write(data))
    log.info("wrote %s (%.1f MB)", target, len(data) / 1e6)
    return {"path": str(target), "format": format, "exporter": exporter, "max_abs_diff": report["max_abs_diff"],
            "max_prob_diff": report["max_prob_diff"], "top1_agree": report["top1_agree"], "checked": report["checked"]}


def export_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a runtime needs besides the weights: class names, preprocessing, provenance."""
    from cnnctl import __version__

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
        return _onnx_metadata(_onnx_session(path), path)
    extra = {METADATA_FILE: ""}
    try:
        with _quiet():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        raise CnnctlError(f"not a TorchScript file ({_first_line(e)})", file=str(path)) from None
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def _require_onnx() -> None:
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as e:
            raise CnnctlError(f"ONNX export needs the packages onnx, onnxscript and onnxruntime, and {name} cannot be "
                              f"imported ({_first_line(e)}); install them with: {INSTALL_HINT}") from None


def _export_onnx(model: nn.Module, example: torch.Tensor, meta: dict[str, Any], *, opset: int | None,
                 dynamic_batch: bool) -> tuple[bytes, str]:
    model = _onnx_friendly(model)
    try:
        proto, exporter = _dynamo_onnx(model, example, opset, dynamic_batch), "torch.onnx (dynamo)"
    except Exception as e:  # the dynamo exporter raises many types; the TorchScript-based one may still work
        log.warning("the dynamo ONNX exporter failed (%s); falling back to the TorchScript-based exporter",
                    _first_line(e))
        try:
            proto, exporter = _torchscript_onnx(model, example, opset, dynamic_batch), "torch.onnx (torchscript)"
        except Exception as e2:
            raise ExportError(f"torch.onnx cannot export {meta['arch']}: the dynamo exporter failed with "
                              f"{_first_line(e)!r}; the TorchScript-based one with {_first_line(e2)!r}. "
                              "Try --format torchscript") from None
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
        raise ExportError(f"torch.jit.trace cannot export {meta['arch']}: {_first_line(e)}. Try --format onnx") from None
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


# ---------------------------------------------------------------- running exported files


def _onnx_session(model: str | Path | bytes) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise CnnctlError(f"running an ONNX model needs onnxruntime, which cannot be imported ({_first_line(e)}); "
                          f"install it with: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on the providers it did not pick
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        where = None if isinstance(model, bytes) else str(model)
        raise CnnctlError(f"onnxruntime cannot load it as an ONNX model ({_first_line(e)})", file=where) from None


def _onnx_runner(model: str | Path | bytes) -> Runner:
    session = _onnx_session(model)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _torchscript_runner(data: bytes) -> Runner:
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return run


def _onnx_metadata(session: Any, path: Path) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ("classes", "channels", "size", "mean", "std") if k not in props]
    if missing:
        raise CnnctlError(f"has no cnnctl metadata ({', '.join(missing)} missing), so its classes and preprocessing "
                          "are unknown; export it with `cnnctl export CHECKPOINT`", file=str(path))
    try:
        return {k: json.loads(v) for k, v in props.items() if k in METADATA_KEYS}
    except json.JSONDecodeError as e:
        raise CnnctlError(f"its cnnctl metadata is not valid JSON ({e})", file=str(path)) from None



def _run_batched(run: Runner, x: np.ndarray, batch: int | None) -> np.ndarray:
    """``run`` over ``x``; a file exported with a fixed batch size gets exactly that many, zero-padded."""
    if batch is None:
        return run(x)
    outputs = []
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        pad = batch - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), dtype=part.dtype)])
        outputs.append(run(part)[:batch - pad])
    return np.concatenate(outputs)


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
        got = _run_batched(run, x.numpy(), batch).astype(np.float64)
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
    from cnnctl.data.base import TensorSplit, load_data
    from cnnctl.data.transforms import load_image
    from cnnctl.inference import checkpoint_config

    spec = ckpt["input"]
    try:
        cfg = checkpoint_config(ckpt, source)
        # The checkpoint already holds mean and std: skip computing them, and never reach for the network.
        data_cfg = cfg.data.model_copy(update={"download": False, "normalize": "none"})
        bundle = load_data(data_cfg, cfg.seed)
        name, part = next((s, getattr(bundle, s)) for s in ("test", "val", "train") if getattr(bundle, s) is not None)
        if isinstance(part, TensorSplit):
            images = part.images[:n]
        else:
            images = torch.stack([load_image(f, spec["channels"], tuple(spec["size"])) for f in part.files[:n]])
    except Exception as e:  # a missing dataset only narrows the check; it must not stop the export
        return None, f"dataset cannot be read here: {_first_line(e)}"
    if tuple(images.shape[1:]) != (spec["channels"], *spec["size"]):
        return None, f"the dataset's images are {list(images.shape[1:])}, the checkpoint's input is {spec}"
    return images, f"{cfg.data.dataset} {name}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- predict with an ONNX file


def onnx_predict(model_path: str | Path, inputs: list[str], topk: int = 5, *,
                 batch_size: int = 256) -> list[dict[str, Any]]:
    """``cnnctl predict -c MODEL.onnx``: the results of ``cnnctl.predict.predict``, computed by onnxruntime.

    Images are read and normalized as for a checkpoint (``load_image``, ``to_model_input``), with the classes and
    preprocessing stored in the file's metadata.
    """
    from cnnctl.data.base import to_model_input
    from cnnctl.predict import predict_files

    if topk < 1:
        raise CnnctlError(f"--topk must be at least 1, not {topk}")
    path = Path(model_path)
    if not path.is_file():
        raise CnnctlError("no such file", file=str(path))
    session = _onnx_session(path)
    meta = _onnx_metadata(session, path)
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) and fixed > 0 else None

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    classes = meta["classes"]
    k = min(topk, len(classes))

    def classify(images: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        x = to_model_input(images, meta["mean"], meta["std"], torch.device("cpu"))
        probs = softmax(_run_batched(run, x.numpy(), batch))
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(probs, top, axis=1).tolist(), top.tolist()

    return predict_files(inputs, classes, channels=meta["channels"], size=tuple(meta["size"]), batch_size=batch_size,
                         classify=classify)
