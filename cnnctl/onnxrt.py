"""Running an exported ONNX file with onnxruntime: the session, the cnnctl metadata it carries, batching for a
file exported with a fixed batch size, softmax. ``export`` verifies with it and ``predict -c MODEL.onnx`` runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.errors import CnnctlError, first_line

INSTALL_HINT = "pip install 'cnnctl[export]'"
METADATA_KEYS = ("cnnctl_version", "arch", "name", "classes", "channels", "size", "mean", "std", "input", "output",
                 "preprocess")

Runner = Callable[[np.ndarray], np.ndarray]


def session(model: str | Path | bytes) -> Any:
    """An onnxruntime CPU session for a file or serialized model; CnnctlError when it cannot be loaded."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise CnnctlError(f"running an ONNX model needs onnxruntime, which cannot be imported ({first_line(e)[:200]}); "
                          f"install it with: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on the providers it did not pick
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        where = None if isinstance(model, bytes) else str(model)
        raise CnnctlError(f"onnxruntime cannot load it as an ONNX model ({first_line(e)[:200]})", file=where) from None


def runner(model: str | Path | bytes) -> Runner:
    """``run(x)``: the model's first output for a float32 NCHW batch."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def metadata(sess: Any, path: Path) -> dict[str, Any]:
    """The ``export.export_metadata`` dict kept in the file's ``metadata_props``."""
    props = sess.get_modelmeta().custom_metadata_map
    missing = [k for k in ("classes", "channels", "size", "mean", "std") if k not in props]
    if missing:
        raise CnnctlError(f"has no cnnctl metadata ({', '.join(missing)} missing), so its classes and preprocessing "
                          "are unknown; export it with `cnnctl export CHECKPOINT`", file=str(path))
    try:
        return {k: json.loads(v) for k, v in props.items() if k in METADATA_KEYS}
    except json.JSONDecodeError as e:
        raise CnnctlError(f"its cnnctl metadata is not valid JSON ({e})", file=str(path)) from None


def fixed_batch(sess: Any) -> int | None:
    """The batch size a static export takes, or None for a dynamic batch axis."""
    size = sess.get_inputs()[0].shape[0]
    return size if isinstance(size, int) and size > 0 else None


def run_batched(run: Runner, x: np.ndarray, batch: int | None) -> np.ndarray:
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
