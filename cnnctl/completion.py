"""What a shell's Tab offers for cnnctl's arguments: bundled config and space names, ``--set`` keys and the names a
registry knows (``--set model.arch=<Tab>``), run directories and checkpoints.

Each completer takes what has been typed so far and returns the candidates that start with it. They run on every
Tab, so they import no torch and read only directory listings and the (torch-free) registries.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

RUN_MARKER = "config.yaml"  # training writes it first: a folder holding it is a run directory
# A Tab opens at most this many single folders in a row (a chain of 600 would otherwise be walked whole); the next
# Tab goes on from there.
MAX_OPENED = 20


def _entries(incomplete: str, keep: typing.Callable[[Path], bool], leaf: typing.Callable[[Path], bool]) -> list[str]:
    """Paths that start with ``incomplete``: folders with a trailing ``/`` (to go on into), and the files ``keep``
    accepts and the folders ``leaf`` accepts as they are (a run directory is an answer, not only a way through)."""
    head, slash, prefix = incomplete.rpartition("/")
    try:
        children = sorted(_folder_of(incomplete).iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if not child.name.startswith(prefix) or (child.name.startswith(".") and not prefix.startswith(".")):
            continue
        if "\n" in child.name:  # the shell reads one candidate per line: such a name would become two
            continue
        text = head + slash + child.name
        try:
            if child.is_dir():
                found.append(text if leaf(child) else text + "/")
            elif keep(child):
                found.append(text)
        except OSError:
            continue
    return found


def _descend(incomplete: str, entries: typing.Callable[[str], list[str]]) -> list[str]:
    """``entries(incomplete)``, where a single folder is opened at once (the shell would otherwise end the word
    after it with a space), and so on down a chain of single folders: at most ``MAX_OPENED`` of them, and never one
    already opened (a symlink to ``.`` or a parent would loop)."""
    found = entries(incomplete)
    opened = {_identity(_folder_of(incomplete))}
    for _ in range(MAX_OPENED):
        if len(found) != 1 or not found[0].endswith("/"):
            break
        folder = _identity(Path(found[0]))
        if folder is None or folder in opened:
            break
        opened.add(folder)
        found = entries(found[0]) or found
    return found


def _folder_of(incomplete: str) -> Path:
    """The folder whose entries complete ``incomplete``: what comes before its last ``/``."""
    head, slash, _ = incomplete.rpartition("/")
    return Path(head + slash) if slash else Path(".")


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of ``folder``, whatever symlinks lead to it; None when it cannot be looked at."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_run_dir(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def _yaml_paths(incomplete: str) -> list[str]:
    return _descend(incomplete, lambda text: _entries(text, lambda p: p.suffix in (".yaml", ".yml"), lambda p: False))


def config_names(incomplete: str) -> list[str]:
    """Bundled config names, then YAML files and folders."""
    from cnnctl.config import bundled_configs

    return [n for n in bundled_configs() if n.startswith(incomplete)] + _yaml_paths(incomplete)


def space_names(incomplete: str) -> list[str]:
    """Bundled ``cnnctl tune`` space names, then YAML files and folders."""
    from cnnctl.config import bundled_spaces

    return [n for n in bundled_spaces() if n.startswith(incomplete)] + _yaml_paths(incomplete)


def run_dirs(incomplete: str) -> list[str]:
    """Run directories (complete as they are) and the folders that lead to them."""
    return _descend(incomplete, lambda text: _entries(text, lambda p: False, is_run_dir))


def checkpoints(incomplete: str) -> list[str]:
    """Run directories, and checkpoint files (``.pt``, ``.onnx``) inside any folder (a run's ``best.pt`` too)."""
    return _descend(incomplete, _checkpoint_entries)


def _checkpoint_entries(incomplete: str) -> list[str]:
    found = _entries(incomplete, lambda p: p.suffix in (".pt", ".onnx"), lambda p: False)
    runs = {f.rstrip("/") for f in found if f.endswith("/") and is_run_dir(Path(f))}
    return sorted(found + sorted(runs))


def devices(incomplete: str) -> list[str]:
    return [d for d in ("auto", "cpu", "cuda", "cuda:0", "mps") if d.startswith(incomplete)]


def _registry_names(dotted: str) -> list[str] | None:
    """The names a registry-backed key takes (``model.arch``: the architectures), or None for another key."""
    if dotted == "model.arch":
        from cnnctl.models.registry import MODELS

        return MODELS.names()
    if dotted == "data.dataset":
        from cnnctl.data.registry import DATASETS

        return DATASETS.names()
    if dotted in ("optimizer.name", "scheduler.name"):
        from cnnctl.training.optim import OPTIMIZERS, SCHEDULERS

        return (OPTIMIZERS if dotted == "optimizer.name" else SCHEDULERS).names()
    return None


def config_keys(fields: dict[str, FieldInfo] | None = None, prefix: str = "") -> dict[str, Any]:
    """Every dotted key a config has (``optimizer.lr``, ``train.early_stopping.patience``) with its annotation. A
    list (``model.layers``) is a leaf: ``--set`` gives a list whole and cannot reach inside it."""
    from cnnctl.config import Config, fields_of

    keys: dict[str, Any] = {}
    for name, field in (Config.model_fields if fields is None else fields).items():
        section = fields_of(field.annotation)
        if section:
            keys.update(config_keys(section, f"{prefix}{name}."))
        else:
            keys[prefix + name] = field.annotation
    return keys


def _choices(annotation: Any) -> list[str]:
    """The values a Literal or bool field can take, as YAML spells them."""
    options: list[str] = []
    for part in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(part) is Literal:
            options += [str(a).lower() if isinstance(a, bool) else str(a) for a in typing.get_args(part)]
        elif part is bool:
            options += ["true", "false"]
        elif part is type(None):
            options.append("null")
    return list(dict.fromkeys(options))


def set_values(incomplete: str) -> list[str]:
    """``--set``: the dotted keys as ``KEY=``; after the ``=``, the names or fixed values that key takes."""
    keys = config_keys()
    dotted, equals, value = incomplete.partition("=")
    if equals:
        names = _registry_names(dotted)
        options = names if names is not None else _choices(keys.get(dotted))
        return [f"{dotted}={o}" for o in options if o.startswith(value)]
    matches = [f"{k}=" for k in keys if k.startswith(incomplete)]
    if len(matches) == 1:  # one key left: offer its values, so the shell stops after '=' instead of adding a space
        return set_values(matches[0]) or matches
    return matches
