"""Running an exported ONNX file with onnxruntime: the session, the cnnctl metadata it carries, batching for a
file exported with a fixed batch size, softmax. ``export`` verifies with it and ``predict -c MODEL.onnx`` runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnctl.errors import CnnctlError, first_line
from cnnctl.training.checkpoint import input_problem

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
    options.log_severity_level = 4  # fatal only: its failures are raised, and reported once, as CnnctlError
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
    """The ``export.export_metadata`` dict kept in the file's ``metadata_props``, checked before anything runs.

    The preprocessing (channels, size, mean, std) is checked as a checkpoint's ``input`` block is
    (``checkpoint.input_problem``: sizes up to data.image_size's bound, mean and std finite, one per channel, std
    positive), then against the graph: channels and size against its input shape, the classes against its output
    width, where the graph fixes them. Trusted as written, an edited file failed deep inside predict: 1 class for a
    10-way output in an IndexError, a 40000x40000 size allocated 6.4 GB per image, std 0 printed "nan%".
    """
    props = sess.get_modelmeta().custom_metadata_map
    missing = [k for k in ("classes", "channels", "size", "mean", "std") if k not in props]
    if missing:
        raise CnnctlError(f"has no cnnctl metadata ({', '.join(missing)} missing), so its classes and preprocessing "
                          "are unknown; export it with `cnnctl export CHECKPOINT`", file=str(path))
    try:
        meta = {k: json.loads(v) for k, v in props.items() if k in METADATA_KEYS}
    except json.JSONDecodeError as e:
        raise CnnctlError(f"its cnnctl metadata is not valid JSON ({e})", file=str(path)) from None
    problem = _graph_problem(sess)
    if problem:
        raise CnnctlError(f"{problem}, so it is not an image classifier cnnctl can run; export one with "
                          "`cnnctl export CHECKPOINT`", file=str(path))
    problem = metadata_problem(meta, sess.get_inputs()[0].shape, sess.get_outputs()[0].shape)
    if problem:
        raise CnnctlError(f"{problem}; the file's metadata was edited or damaged: export it again with "
                          "`cnnctl export CHECKPOINT`", file=str(path), key="metadata")
    return meta


def _graph_problem(sess: Any) -> str | None:
    """Why the graph cannot take float images ``[batch, C, H, W]`` and give logits ``[batch, classes]``, or None."""
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    if inp.type != "tensor(float)" or len(inp.shape) != 4:
        return f"its input {inp.name!r} is {inp.type} {inp.shape}, not float32 [batch, channels, height, width]"
    if len(out.shape) != 2:
        return f"its output {out.name!r} is {out.type} {out.shape}, not logits [batch, classes]"
    return None


def metadata_problem(meta: dict[str, Any], input_shape: list[Any], output_shape: list[Any]) -> str | None:
    """What is wrong with an exported file's metadata, naming the key, or None. ``input_shape`` and
    ``output_shape`` are the graph's, an int where it fixes an axis (a name or None where it does not)."""
    problem = input_problem(meta)
    if problem:
        return problem
    channels, size, classes = meta["channels"], list(meta["size"]), meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return f"classes must be a list of class names, got {str(classes)[:60]!r}"
    fixed = [d if isinstance(d, int) else None for d in input_shape[1:]]
    shown = "x".join(str(d) if d is not None else "?" for d in fixed)
    if fixed[0] is not None and fixed[0] != channels:
        return f"channels is {channels} but the graph takes {fixed[0]}-channel images ({shown})"
    if any(want != got for want, got in zip(size, fixed[1:], strict=True) if got is not None):
        return f"size is {size} but the graph takes {shown} images (channels x height x width)"
    width = output_shape[1]
    if isinstance(width, int) and width != len(classes):
        return f"classes names {len(classes)} class(es) but the graph gives {width} logits per image"
    return None


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
