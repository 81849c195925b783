"""One writer per run directory: ``RUN_DIR/.lock``, held while the run is trained.

The lock is an OS file lock (``flock``) on ``.lock``, which holds the holder's pid as text. The kernel drops it when
the holding process dies, however it dies, so a SIGKILL never leaves a stale lock. The file itself stays: deleting a
lock file races with a process that has just opened it. Torch-free, so ``cnnctl runs`` can ask cheaply.

A run folder may come from someone else (shared, downloaded), so ``.lock`` is opened with ``O_NOFOLLOW`` and
``O_NONBLOCK`` and checked with ``fstat`` before a byte is written: only a regular file with one link is a lock. A
symlink or a second hard link would send the pid into a file outside the run; a FIFO would hang the open; a
directory or a device is no lock either. Each is refused (exit 2) naming it. The owner is not checked: in a team's
shared run folder the lock is rightly a colleague's file, and writing to it touches nothing outside the run.

    with RunLock(run_dir):   # a second holder gets UsageError (exit 2) naming the run and the pid holding it
        train(...)
    holder(run_dir)          # the pid training run_dir now, or None
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from cnnctl.errors import UsageError
from cnnctl.io import writing

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


# O_NOFOLLOW: a symlink fails to open (ELOOP) instead of being followed; O_NONBLOCK: a FIFO opens at once instead
# of waiting for a writer. Windows has neither; the lstat in _open_lock is its whole check there.
_OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    """What a file that is not a lock is, for the message."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: Path, what: str) -> UsageError:
    how = "rmdir it, or move it aside" if what == "a directory" else "remove it (rm; whatever it links to is left as it is)"
    return UsageError(f"the run lock is {what}, not the regular file cnnctl keeps its lock in, and cnnctl never "
                      f"writes through one (nothing was changed). To use this run folder, {how}, and run again: "
                      "cnnctl creates a new lock", file=str(path))


def _check_lock_file(path: Path, info: os.stat_result) -> None:
    """Refuse anything but a regular file with one link: a second link would carry the pid outside the run."""
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(path, _kind(info.st_mode))
    if info.st_nlink > 1:
        raise _refuse(path, f"a file with {info.st_nlink} hard links (its bytes are also another file's)")


def _open_lock(path: Path, flags: int) -> int:
    """Open (``O_CREAT`` in ``flags``: or create) ``path`` as a lock file, never following a link or blocking.

    The ``lstat`` refuses a FIFO or device before ``open`` could have an effect on it; the ``fstat`` of the opened
    file closes the race with a swap in between. Raises ``OSError`` as ``os.open`` does, ``UsageError`` for a file
    that is no lock.
    """
    with contextlib.suppress(FileNotFoundError):
        _check_lock_file(path, os.lstat(path))
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():  # EMLINK: O_NOFOLLOW on FreeBSD
            raise _refuse(path, "a symbolic link") from None
        raise
    try:
        _check_lock_file(path, os.fstat(fd))  # O_NONBLOCK may stay: flock takes LOCK_NB, and files never block
    except BaseException:
        os.close(fd)
        raise
    return fd


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
        with writing(self.path, note="the run directory must be writable"):
            fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)  # never O_TRUNC: the holder's pid is in it
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
        with writing(self.path):
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            except OSError:
                _unlock(fd)
                os.close(fd)
                raise
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
        fd = _open_lock(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except (OSError, UsageError):  # no .lock (never trained since locks came, or not a run directory), or no lock
        return None
    try:
        if _try_lock(fd, exclusive=False):
            _unlock(fd)
            return None
        return _read_pid(fd) or 0
    finally:
        os.close(fd)
