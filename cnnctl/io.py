"""Writing files and folders: the one place a failed folder creation or write becomes ``WriteError`` (exit 1,
``could not write PATH: REASON``), whatever the operating system's reason: permissions, a read-only file system, a
full disk, a regular file where a folder should be, a name too long for the file system (ENAMETOOLONG). And folders
made for a run that then failed are removed again: nothing is left behind outside what the run keeps."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnctl.errors import WriteError, first_line


@contextlib.contextmanager
def writing(path: str | Path, *, note: str = "") -> Iterator[None]:
    """Run the block that writes ``path``; an OSError it raises becomes ``WriteError(path, the system's reason)``.

    Checks such as ``path.exists()`` belong inside the block too: they raise for a name that is too long.
    """
    try:
        yield
    except OSError as e:
        raise WriteError(str(path), e.strerror or first_line(e), note=note) from None


def make_folders(path: Path) -> None:
    """``mkdir -p path``, all or nothing: when one folder of the chain cannot be made (a name too long, a read-only
    parent), those this call made are removed again, so a failed ``a/b/NAME`` leaves no ``a/b`` behind."""
    new = [p for p in (path, *path.parents) if _absent(p)]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        for folder in new:  # the deepest first; rmdir removes only what is still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def removing_new_folders(path: Path) -> Iterator[None]:
    """Run the block that fills ``path`` (a download); if it fails, remove the folders of ``path``'s chain that did
    not exist before it, with what the block wrote into them, and only those."""
    new = [p for p in (path, *path.parents) if _absent(p)]
    try:
        yield
    except BaseException:
        if new:
            shutil.rmtree(new[-1], ignore_errors=True)  # the topmost: every folder below it is new too
        raise


def _absent(path: Path) -> bool:
    """Known not to exist: any other failure to look (a permission, a name too long) counts as there."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words (``os.stat``'s ``st_mode``), for the messages of the
    commands that read regular files only (predict, visualize, runs): opening a FIFO waits for a writer forever."""
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def check_writable(folder: str | Path) -> None:
    """Create and remove a file in ``folder``, which must exist (an OSError when it cannot be written).

    For writers that write from a thread of their own (TensorBoard's): there a failure would surface late, as a
    traceback from that thread, instead of as this run's one error.
    """
    fd, name = tempfile.mkstemp(prefix=".cnnctl-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)
