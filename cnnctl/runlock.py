"""One writer per run directory: ``RUN_DIR/.lock``, held while the run is trained.

The lock is an OS file lock (``flock``) on ``.lock``, which holds the holder's pid as text. The kernel drops it when
the holding process dies, however it dies, so a SIGKILL never leaves a stale lock. The file itself stays: deleting a
lock file races with a process that has just opened it. Torch-free, so ``cnnctl runs`` can ask cheaply.

    with RunLock(run_dir):   # a second holder gets UsageError (exit 2) naming the run and the pid holding it
        train(...)
    holder(run_dir)          # the pid training run_dir now, or None
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from cnnctl.errors import UsageError, WriteError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

log = logging.getLogger("cnnctl")

LOCK_NAME = ".lock"
# holder() takes the lock shared for an instant to ask; a writer that meets that retries this long before refusing
RETRY_SECONDS = 0.25
# Windows locks are mandatory (a locked byte cannot be read), so the lock sits on a byte far past the pid's text;
# LockFile allows regions beyond the end of the file.
_WINDOWS_LOCK_OFFSET = 1 << 30


def _try_lock(fd: int, *, exclusive: bool) -> bool:
    """Take the lock without waiting; False when another open file holds it (shared only ever meets exclusive)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:  # no shared locks: holder() briefly takes the exclusive one
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class RunLock:
    """Hold ``run_dir/.lock`` for as long as ``run_dir`` is being written (a context manager, or acquire/release).

    A second holder, in another process or this one, gets a ``UsageError`` (exit 2) naming the run directory and
    the holder's pid. Where the OS offers no file lock at all, training goes on unlocked after a warning.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        if fcntl is None and msvcrt is None:
            log.warning("%s: this system offers no file lock; nothing stops a second process writing this run",
                        self.run_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never O_TRUNC: the holder's pid is in it
        except OSError as e:
            raise WriteError(str(self.path), e.strerror or str(e), note="the run directory must be writable") from None
        deadline = time.monotonic() + RETRY_SECONDS
        while not _try_lock(fd, exclusive=True):
            if time.monotonic() >= deadline:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"pid {pid}" if pid is not None else "a process that is starting"
                raise UsageError(
                    f"another cnnctl process ({who}) is training this run directory; two writers would mix its "
                    "checkpoints and metrics. Wait for it to finish (`cnnctl runs` shows it as running), stop it, or "
                    "start a new run (--name)", file=str(self.run_dir))
            time.sleep(0.01)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as e:
            _unlock(fd)
            os.close(fd)
            raise WriteError(str(self.path), e.strerror or str(e)) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with contextlib.suppress(OSError):  # the pid leaves with the lock; a read-only remount must not matter
                os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def holder(run_dir: str | Path) -> int | None:
    """The pid of the process training ``run_dir`` now, or None when nobody holds its lock.

    Asks without taking the lock for more than an instant (a writer starting then retries). A lock held by a process
    that has not yet written its pid reads as 0.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no .lock: never trained since locks came, or not a run directory
        return None
    try:
        if _try_lock(fd, exclusive=False):
            _unlock(fd)
            return None
        return _read_pid(fd) or 0
    finally:
        os.close(fd)
