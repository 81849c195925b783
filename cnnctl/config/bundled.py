"""Where the bundled configs and ``cnnctl tune`` spaces are, and how a CONFIG argument names a file or one of them."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

from cnnctl.errors import ConfigError
from cnnctl.registry import did_you_mean


def bundled_dir(kind: Literal["configs", "spaces"] = "configs") -> Path:
    """The folder of the bundled configs (``kind="configs"``) or of the bundled ``cnnctl tune`` spaces (``"spaces"``).

    A wheel holds them inside the package as ``cnnctl/configs`` (setup.py maps the repository's top-level configs/
    there); a source checkout (PYTHONPATH, an editable install) keeps them in its top-level configs/, beside the
    package. Never the working directory: a user's own configs/ there is theirs, named by path.
    """
    package = importlib.resources.files("cnnctl")
    root = package / "configs"
    if not (isinstance(root, Path) and root.is_dir()):
        checkout = Path(str(package)).resolve().parent
        # pyproject.toml beside it tells a checkout from a site-packages whose configs/ belongs to someone else
        root = checkout / "configs" if (checkout / "pyproject.toml").is_file() else Path(str(root))
    return root / "spaces" if kind == "spaces" else root


CONFIGS_DIR = bundled_dir("configs")


def bundled_configs() -> dict[str, Path]:
    """The bundled configs by name: the path under configs/ without ``.yaml``, e.g. ``lenet5-digits``,
    ``compare-optimizers/adam``."""
    if not CONFIGS_DIR.is_dir():
        return {}
    names = {p.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIGS_DIR.rglob("*.yaml"))}
    return {name: p for name, p in names.items() if not name.startswith("spaces/")}  # search spaces, not configs


def bundled_spaces() -> dict[str, Path]:
    """The bundled ``cnnctl tune`` search spaces by name (the file stem), e.g. ``lenet5-digits``."""
    spaces = bundled_dir("spaces")
    return {p.stem: p for p in sorted(spaces.glob("*.yaml"))} if spaces.is_dir() else {}


def resolve_config_path(spec: str | Path) -> Path:
    """A config path, or the name of a bundled config."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_configs()
    if str(spec) in bundled:
        return bundled[str(spec)]
    if path.is_dir():
        raise ConfigError("is a directory, not a config file; give a .yaml file or a bundled config name", file=str(spec))
    raise ConfigError(f"no such file, nor a bundled config of that name{did_you_mean(str(spec), bundled)} "
                      "(`cnnctl configs` lists the bundled ones)", file=str(spec))
