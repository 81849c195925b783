"""The rules for a run name (one folder inside ``--out``) and a device string, shared by the schema and the CLI.

Torch-free: only the form of a device is checked here; whether it exists is decided where torch picks it.
"""

from __future__ import annotations

import re

from cnnctl.config.text import short_repr
from cnnctl.errors import ConfigError

RUN_NAME_MAX = 100
# One folder name inside --out: nothing that could climb out of it (/, .., a leading .) or need quoting in a shell.
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
RUN_NAME_RULE = (f"a run name is one folder name inside --out: letters, digits, '-', '_' and '.', starting with a "
                 f"letter, digit or '_', without '..', at most {RUN_NAME_MAX} characters (e.g. lenet5-lr0.1); "
                 "to put runs elsewhere, use --out DIR")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::[0-9]{1,4})?")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps"


def run_name_problem(name: str) -> str | None:
    """Why ``name`` is no valid run name, in words that end with the rule; None when it is one."""
    if _RUN_NAME.fullmatch(name) and ".." not in name and len(name) <= RUN_NAME_MAX:
        return None
    if "/" in name or "\\" in name:
        why = "holds a path separator"
    elif name.startswith(".") or ".." in name:
        why = "starts with '.' or holds '..'"
    elif name.startswith("-"):  # a folder name an option parser would take for an option
        why = "starts with '-'"
    elif len(name) > RUN_NAME_MAX:
        why = f"is {len(name):,} characters long"
    elif not name:
        why = "is empty"
    else:
        why = "holds characters other than letters, digits, '-', '_' and '.'"
    return f"run name {short_repr(name)} {why}; {RUN_NAME_RULE}"


def check_run_name(name: str, source: str) -> str:
    """``name`` when it is a valid run name, else a ConfigError naming ``source`` (``--name``, a file) and the rule."""
    problem = run_name_problem(name)
    if problem:
        raise ConfigError(problem, file=source)
    return name


def safe_run_name(text: str) -> str:
    """A valid run name made from ``text`` (a config file's stem): ``my config`` -> ``my-config``.

    Each run of other characters becomes one '-', '..' becomes '.', '.' and '-' at either end go, and it is cut to
    RUN_NAME_MAX characters; ``run`` when nothing is left.
    """
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip(".-")[:RUN_NAME_MAX].rstrip(".-")
    return name or "run"


def device_problem(spec: str) -> str | None:
    """Why ``spec`` is no device string cnnctl understands; None when it is one."""
    if _DEVICE.fullmatch(spec):
        return None
    return f"device {short_repr(spec)} is not one of {DEVICE_FORMS}"


def check_device(spec: str, source: str) -> str:
    """``spec`` when it is a device cnnctl understands, else a ConfigError naming ``source`` (``--device``).

    Only the form is checked (torch-free); whether the device exists is decided where torch picks it."""
    problem = device_problem(spec)
    if problem:
        raise ConfigError(problem, file=source)
    return spec
