"""SIGINT / SIGTERM in a command with nothing to save (``visualize``): noted when they arrive, acted on between steps.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. In a weakref callback or a
``__del__`` (a garbage collection in the middle of drawing) it can only print "Exception ignored in ...
KeyboardInterrupt" and go on, so the command finishes with exit 0; in Python code called back from C (matplotlib's
Agg resampler, an extension module being imported) the C code turns it into an error of its own ("ValueError:
Invalid affine transformation matrix", "ImportError: initialization failed") and a traceback; in the middle of
``import torch`` it can leave the interpreter to die at exit by SIGINT or abort. SIGTERM's default action kills the
process between a temporary file and its rename.

Under ``stop_on_signal()`` the handler only records the signal. The command calls ``check()`` between its steps
(each under a second or two); there ``Interrupted`` unwinds as an ordinary exception (a half-written file's
temporary removed) and the CLI exits 130 / 143. A signal during the last step is raised when the block ends. A
second signal quits at once (``second_signal``), as in training. Installed by the CLI entry point only: a library caller keeps
Python's own handling.

    with stop_on_signal():   # before the heavy imports: an import is a step too
        ...
        check()              # between steps; a no-op outside the block, or before any signal
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from cnnctl.errors import Interrupted

_received: list[int] = []  # the signal that arrived inside stop_on_signal(), not yet raised


def _raise_keyboard_interrupt(signum: int) -> None:
    raise KeyboardInterrupt


_on_second_signal: Callable[[int], None] = _raise_keyboard_interrupt


def on_second_signal(action: Callable[[int], None]) -> None:
    """What a second SIGINT/SIGTERM does while the first is being honoured (a run saving last.pt, a search
    recording its trial). The library raises ``KeyboardInterrupt`` where the main thread is, so a notebook's kernel
    survives a second Ctrl-C through the Python API; the CLI, which owns its process, sets an action that leaves at
    once (``os._exit(128 + signum)``)."""
    global _on_second_signal
    _on_second_signal = action


def second_signal(signum: int) -> None:
    """Called by every cnnctl signal handler when a signal arrives while an earlier one is still being honoured."""
    _on_second_signal(signum)


def install_handlers(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Send SIGINT and SIGTERM to ``handler``; returns the handlers it replaced, for ``restore_handlers``. Off the
    main thread, where Python allows no handler, nothing changes and nothing is returned."""
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers ``install_handlers`` replaced, and forget them."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    previous.clear()


def _note(signum: int, frame: Any) -> None:
    if _received:  # a second signal: the caller wants out now
        second_signal(signum)
        return
    _received.append(signum)


def check() -> None:
    """Raise ``Interrupted`` if SIGINT or SIGTERM arrived inside ``stop_on_signal()``."""
    if _received:
        raise Interrupted(_received.pop())


@contextlib.contextmanager
def stop_on_signal() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for ``check()`` while the block runs; the previous handlers come back after it."""
    previous = install_handlers(_note)
    try:
        yield
        check()
    finally:
        restore_handlers(previous)
        _received.clear()
