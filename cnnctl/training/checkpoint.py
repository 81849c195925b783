"""Checkpoints: plain dicts written atomically and loaded with ``weights_only=True``.

A save goes to a temporary file in the same folder, is flushed and fsynced, then ``os.replace``d over the old
file, so a kill or a full disk during a save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnctl.errors import CheckpointError, first_line
from cnnctl.io import writing

FORMAT = 1
REQUIRED_KEYS = ("format", "config", "classes", "input", "model")


def current_umask() -> int:
    """The process's umask, read without changing it: Linux reports it in /proc/self/status (since 4.7).

    Elsewhere the only way is to set it and set it back at once (a file another thread creates in that instant
    would get the temporary mask), so that path is the fallback only.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Write ``path`` through ``write(fileobj)`` atomically; a failure leaves the old file and raises WriteError."""
    path = Path(path)
    tmp = None
    with writing(path, note="the previous file, if any, is intact"):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets what open() would give it
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # an OSError too: writing() makes it a WriteError once the temporary file is gone
            if tmp is not None:
                _remove_quietly(tmp)
            raise
    _fsync_dir(path.parent)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    import torch

    # Serialize to memory first: a failure while pickling never touches the disk.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a cnnctl checkpoint; every failure is a one-line CheckpointError."""
    path = Path(path)
    data = read_torch_file(path)
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
        raise CheckpointError(
            f"not a cnnctl checkpoint (missing {', '.join(missing)}); a bare state_dict cannot say which network "
            "and data it belongs to", file=str(path))
    fmt = data["format"]
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointError(
            f"written by a newer cnnctl (checkpoint format {fmt}; this cnnctl reads up to {FORMAT}); upgrade cnnctl",
            file=str(path))
    problem = input_problem(data["input"])
    if problem:
        raise CheckpointError(f"{problem}; the checkpoint was edited or damaged, use one written by `cnnctl train`",
                              file=str(path), key="input")
    problem = weights_problem(data["model"])
    if problem:
        raise CheckpointError(problem, file=str(path), key="model")
    return data


def read_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing, empty, unsafe or corrupt file is a one-line
    CheckpointError naming it. What the file holds is the caller's to check."""
    import torch

    if path.is_dir():
        raise CheckpointError("is a directory; give a .pt file such as best.pt or last.pt", file=str(path))
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError("no such file", file=str(path)) from None
    except OSError as e:  # a parent that is a file, a folder without permission, a name too long
        raise CheckpointError(f"cannot read: {e.strerror}", file=str(path)) from None
    if size == 0:
        raise CheckpointError("empty file (0 bytes): not a checkpoint; a save may have been interrupted", file=str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text and ("GLOBAL" in text or "global" in text):
            raise CheckpointError(
                "refused: it carries pickled Python objects (code) that torch.load(weights_only=True) will not run; "
                "only load checkpoints you trust, and re-save them as plain tensors", file=str(path)) from None
        raise CheckpointError("not a PyTorch checkpoint (unreadable pickle data)", file=str(path)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                "not a PyTorch checkpoint, or truncated: it is not the zip archive torch.save writes",
                file=str(path)) from None
        raise CheckpointError(f"truncated or corrupt checkpoint ({first_line(e)[:160]})", file=str(path)) from None
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The largest side an input may have: data.image_size's bound in cnnctl/config/schema.py. A 40000x40000 size in an exported
# file's metadata made predict allocate 6.4 GB per image.
MAX_SIDE = 4096


def input_problem(spec: Any) -> str | None:
    """What is wrong with a checkpoint's ``input`` block (channels, size [H, W], mean, std), or None.

    Every command normalizes with it: a 0 in std made every prediction NaN, a bad size failed deep in the model.
    """
    if not isinstance(spec, dict):
        return f"expected a mapping with channels, size, mean and std, got {type(spec).__name__}"
    missing = [k for k in ("channels", "size", "mean", "std") if k not in spec]
    if missing:
        return f"missing {', '.join(missing)}"
    channels, size = spec["channels"], spec["size"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        return f"channels must be a positive integer, got {str(channels)[:40]!r}"
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        return f"size must be [height, width] of positive integers, got {str(size)[:40]!r}"
    if max(size) > MAX_SIDE:
        return f"size {list(size)} is larger than {MAX_SIDE} pixels a side, the most data.image_size allows"
    for key in ("mean", "std"):
        values = spec[key]
        if (not isinstance(values, (list, tuple)) or len(values) != channels
                or not all(_is_number(v) for v in values)):
            return f"{key} must be {channels} finite number(s), one per channel, got {str(values)[:60]!r}"
    if any(v <= 0 for v in spec["std"]):
        return f"std must be positive (images are divided by it), got {list(spec['std'])}"
    return None


def weights_problem(state: Any) -> str | None:
    """What is wrong with a checkpoint's ``model`` weights, or None: they must be tensors by name, and every
    floating-point one finite.

    A NaN or infinite weight makes every output NaN, and eval reported "loss nan accuracy 10.03%" (the argmax of NaN
    logits is class 0) with exit 0. Training checks its losses before each save and stops on a non-finite one, so a
    diverged run's last.pt holds the last finite weights; only a step whose finite loss overflowed the weights
    could save non-finite ones.
    """
    import torch

    if not isinstance(state, dict):
        return f"expected a mapping of weight names to tensors, got {type(state).__name__}"
    for name, tensor in state.items():
        shown = repr(str(name)[:80])
        if not isinstance(tensor, torch.Tensor):
            return f"weight {shown} is a {type(tensor).__name__}, not a tensor; the checkpoint was edited or damaged"
        if tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                nan = int(torch.isnan(tensor).sum())
                kinds = " and ".join(k for k, n in (("NaN", nan), ("infinite", int((~finite).sum()) - nan)) if n)
                return (f"weight {shown} holds {int((~finite).sum()):,} {kinds} value(s) of {tensor.numel():,}: a "
                        "network with non-finite weights outputs NaN for every image. Training stops before it saves "
                        "once its loss turns non-finite, so the file was edited or damaged, or its run diverged in the "
                        "very step it was saved: use another checkpoint of the run (best.pt), or train again with a "
                        "lower optimizer.lr or train.grad_clip")
    return None


def load_model_state(model: Any, state: dict[str, Any], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a readable message when they do not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                         f"{list(own[k].shape)} in the network)")
        raise CheckpointError("its weights do not match the network its config describes: " + "; ".join(parts)
                              + ". Was the config edited? Use the checkpoint written with it", file=source)
    # load_state_dict would cast integer weights to float without a word
    retyped = [k for k in own if own[k].is_floating_point() and not state[k].is_floating_point()]
    if retyped:
        k = retyped[0]
        raise CheckpointError(f"weight {k!r} holds {str(state[k].dtype).removeprefix('torch.')} values where the "
                              f"network has {str(own[k].dtype).removeprefix('torch.')} ({len(retyped)} such weight(s)); "
                              "the checkpoint was edited or damaged, use one written by `cnnctl train`",
                              file=source, key="model")
    model.load_state_dict(state, strict=True)


def run_checkpoint(spec: str | Path, default: str) -> Path:
    """A checkpoint file, or ``default`` (``best.pt`` / ``last.pt``) inside a run directory."""
    path = Path(spec)
    if path.is_dir():
        candidate = path / default
        if not candidate.exists():
            raise CheckpointError(f"is a run directory without {default}; it holds no finished epoch yet", file=str(path))
        return candidate
    return path
