"""Every error kind cnnctl raises, torch-free. Library code raises these; only ``cli.py`` turns them into exit codes.

| kind | exit code | meaning |
|---|---|---|
| ``CnnctlError`` and its bad-input kinds | 2 | a config, file, checkpoint, image, argument or path the user gave is wrong |
| ``TrainingError`` | 1 | training failed at run time (a non-finite loss) |
| ``WriteError`` | 1 | a file could not be written (full disk, permissions); names the file and the reason |
| ``ExportError`` | 1 | an exporter failed, or the exported model does not compute what the PyTorch model does |
| ``Interrupted`` | 128 + signal | SIGINT (130) or SIGTERM (143) stopped training after saving ``last.pt`` |
"""

from __future__ import annotations

import signal


class CnnctlError(Exception):
    """Bad input: a config, file, checkpoint, image or argument. The message says what and how to mend it.

    ``exit_code`` is 2 for bad input; the run-time kinds below override it.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        prefix = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(CnnctlError):
    """A config file (or tune space, or ``--set``) that cannot be read or does not validate."""


class ShapeError(CnnctlError):
    """A network that cannot take the input its data gives it."""


class CheckpointError(CnnctlError):
    """A checkpoint that is missing, corrupt, unsafe, of a newer format or does not match."""


class DataError(CnnctlError):
    """A dataset, image or folder that cannot be read."""


class UsageError(CnnctlError):
    """A command-line argument or API argument that is out of range or contradicts another."""


class TrainingError(CnnctlError):
    """Training failed at run time (a non-finite loss): exit 1."""

    exit_code = 1


class WriteError(CnnctlError):
    """A file that could not be written (full disk, read-only folder, permissions): exit 1.

    ``path`` is the file (or folder) that failed and ``reason`` the operating system's words for why.
    """

    exit_code = 1

    def __init__(self, path: str, reason: str, *, note: str = "") -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"could not write {path}: {reason}" + (f"; {note}" if note else ""))


class ExportError(CnnctlError):
    """The exporter failed, or the exported model does not compute what the PyTorch model does: exit 1."""

    exit_code = 1


class Interrupted(CnnctlError):
    """Training stopped on a signal after saving ``last.pt`` (or ``cnnctl tune`` after saving its study: ``saved``
    says what was kept); ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, resume_command: str | None = None, *, saved: str = "last.pt saved") -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        message = f"interrupted by {name}"
        if resume_command:
            message += f"; {saved}. Resume with:\n  {resume_command}"
        super().__init__(message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors can be long); the class name when it is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
