"""Where and how a run computes: device, precision, memory format, seeds and RNG state, and the process-wide
tuning (threads, allocator, logging) that only the entry point may ask for (``configure_process``).

Torch is imported inside functions: the CLI calls ``configure_process`` before any command imports torch.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from typing import TYPE_CHECKING, Any

from cnnctl.errors import ConfigError

if TYPE_CHECKING:
    import torch

# glibc malloc may serve a block above its mmap threshold with a fresh mmap and hand freed heap back to the
# system, and PyTorch's CPU allocator does not cache: activations can then cost page faults at every step. Keeping
# them in the heap made CPU training 27-38% faster in a process that had trained before (scripts/bench_loop.py,
# lenet5; `cnnctl tune` runs its trials in one process); a fresh `cnnctl train` showed no difference this machine
# could resolve (scripts/bench_allocator.py). See README, Performance. The process keeps its peak heap instead of
# handing it back, the trade jemalloc and tcmalloc make. CNNCTL_DEFAULT_MALLOC=1 leaves glibc as it is.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_LIMIT = 1 << 30
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (Linux with glibc only); True when done."""
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("CNNCTL_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return _allocator_tuned
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_LIMIT)
                                and libc.mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_LIMIT))
    except (OSError, AttributeError):
        return False
    return _allocator_tuned


def configure_process(*, threads: int | str | None = None, allocator: bool = True, log_level: int = logging.INFO) -> None:
    """The process-wide settings a command runs with; called once, by the CLI entry point, never by the library.

    ``threads``: ``train.threads`` (an int sets torch's intra-op threads; ``auto``/None leaves torch's default).
    ``allocator``: ``tune_cpu_allocator``. Logging: the ``cnnctl`` messages as plain lines on stderr.
    """
    logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr)
    if allocator:
        tune_cpu_allocator()
    if isinstance(threads, int) and not isinstance(threads, bool):
        import torch

        torch.set_num_threads(threads)


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can get (Linux' MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def select_device(spec: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for a device that is not there is bad input."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: CUDA was asked for but torch sees no CUDA device; use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {spec} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps is not available on this machine; use device: cpu or auto")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto``: bf16 on CUDA that supports it, else fp32."""
    import torch

    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``fp32``, ``bfloat16`` or ``float16``: how summary.json and the log name the precision."""
    return "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    # Measured with scripts/bench_switches.py (README, Performance): on CPU channels_last trains resnet20 1.22x and
    # lenet5 1.07x faster than NCHW; on CUDA it is what tensor-core convolutions want.
    return device.type in ("cuda", "cpu") if setting == "auto" else bool(setting)


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and every CUDA device). Data order and augmentation are seeded apart."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python's, torch's CPU and every CUDA device's generator state, as plain data for a checkpoint."""
    import torch

    version, state, gauss = random.getstate()
    return {
        "python": [version, list(state), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
