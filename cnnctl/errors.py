"""The one exception type library code raises for bad input; only the CLI turns it into exit code 2."""

from __future__ import annotations


class CnnctlError(Exception):
    """Bad input: a config, file, checkpoint, image or argument. The message says what and how to mend it.

    ``exit_code`` is 2 for bad input; run-time failures (a non-finite loss, a failed write) use 1.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        prefix = ": ".join(p for p in (file, key) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(CnnctlError):
    """A config file that cannot be read or does not validate."""


class ShapeError(CnnctlError):
    """A network that cannot take the input its data gives it."""


class CheckpointError(CnnctlError):
    """A checkpoint that is missing, corrupt, unsafe, of a newer format or does not match."""


class DataError(CnnctlError):
    """A dataset, image or folder that cannot be read."""


class TrainingError(CnnctlError):
    """Training failed at run time (a non-finite loss, a write that failed): exit 1."""

    exit_code = 1
