"""The command: ``cnnctl optimizers`` checks its arguments, descends every surface and writes the pictures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnctl.errors import UsageError, WriteError
from cnnctl.insight.surfaces.descent import (
    Line,
    check_overrides,
    descend,
    lines_for,
    optimizer_config,
    plain,
    summarize,
)
from cnnctl.insight.surfaces.functions import SURFACES
from cnnctl.insight.surfaces.limits import FRAME_MS, HOLD_MS, MAX_STEPS, PNG_NAME, STEPS, TOLERANCE
from cnnctl.insight.surfaces.pictures import animate_paths, plot_paths
from cnnctl.insight.surfaces.rules import RULES
from cnnctl.training.optim import OPTIMIZERS

if TYPE_CHECKING:
    pass


def _check_names(surfaces: Sequence[str], optimizers: Sequence[str], steps: int) -> None:
    """Every argument checked before anything runs or is written."""
    for name in surfaces:
        if name not in SURFACES:
            raise UsageError(f"--surface: {SURFACES.unknown(name)}")
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise UsageError(f"--optimizer: {OPTIMIZERS.unknown(name)}")
    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS:,}, not {steps}")


def _make_folder(out: Path) -> None:
    from cnnctl.io import make_folders, writing

    with writing(out, note="give -o a writable folder"):
        if out.exists() and not out.is_dir():
            raise WriteError(str(out), "it is a file, not a folder", note="give -o a folder for the pictures")
        make_folders(out)



def explain_rules(names: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Each named optimizer's update rule, its symbols with the values the config gives them (the lr is the
    surface's unless ``--set optimizer.lr`` gives one), the idea and the weakness the notes name."""
    from cnnctl.config import parse_override

    lr_set = any(parse_override(item)[0] == ["optimizer", "lr"] for item in overrides)
    rules = {}
    for name in names:
        rule = RULES[name]
        cfg = optimizer_config(Line(name, name), 1.0, overrides)
        symbols = {key: {"symbol": symbol, "value": plain(getattr(cfg, key))} for key, symbol in rule.symbols}
        if not lr_set:
            symbols["lr"]["value"] = "per surface"
        rules[name] = {"update": list(rule.update), "symbols": symbols, "idea": rule.idea, "weakness": rule.weakness}
    return rules


def optimizers_on_surfaces(surfaces: Sequence[str] = (), optimizers: Sequence[str] = (), *, steps: int = STEPS,
                           overrides: Sequence[str] = (), out: str | Path = "optimizer-paths",
                           explain: bool = False) -> dict[str, Any]:
    """Descend every chosen surface (default: all) with every chosen optimizer (default: the registry's), draw
    ``OUT/optimizer-paths.png`` and ``OUT/optimizer-paths-SURFACE.gif``; returns the table and the files."""
    surfaces = list(dict.fromkeys(surfaces)) or SURFACES.names()
    _check_names(surfaces, optimizers, steps)
    check_overrides(overrides)
    names = [name for name in OPTIMIZERS.names() if name in optimizers or not optimizers]  # the registry's order
    lines = lines_for(names)
    configs = {s: [optimizer_config(line, SURFACES.get(s).lrs[line.key], overrides) for line in lines]
               for s in surfaces}  # every config validated before the first step
    rules = explain_rules(names, overrides) if explain else None
    out = Path(out)
    _make_folder(out)
    runs = [(SURFACES.get(s), [descend(SURFACES.get(s), cfg, steps) for cfg in configs[s]]) for s in surfaces]
    report = []
    for surface, descents in runs:
        gif = out / f"optimizer-paths-{surface.name}.gif"
        report.append({"name": surface.name, "formula": surface.formula, "start": list(surface.start),
                       "global_minima": [list(m) for m in surface.global_minima], "f_min": surface.f_min,
                       "gif": str(gif), "frames": animate_paths(surface, descents, steps, gif),
                       "rows": [summarize(surface, d) for d in descents]})
    png = plot_paths(runs, steps, out / PNG_NAME)
    return {"steps": steps, "tolerance": TOLERANCE, "png": str(png), "frame_ms": FRAME_MS, "hold_ms": HOLD_MS,
            "surfaces": report, **({"rules": rules} if rules is not None else {})}


