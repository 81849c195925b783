"""The text report of ``cnnctl optimizers``."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from cnnctl.insight.surfaces.limits import TOLERANCE

if TYPE_CHECKING:
    pass


def _number(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def format_rules(rules: dict[str, dict[str, Any]]) -> list[str]:
    text = ["Update rules, as torch.optim computes them (g: the gradient, t: the step from 1):"]
    for name, rule in rules.items():
        symbols = ", ".join(f"{key} = {s['symbol']} ({s['value']})" for key, s in rule["symbols"].items())
        text += ["", f"{name}:", *(f"    {line}" for line in rule["update"]),
                 *(line for head, body in (("config", symbols), ("idea", rule["idea"]),
                                           ("weakness (study notes)", rule["weakness"]))
                   for line in textwrap.wrap(f"{head}: {body}", 110, initial_indent="  ", subsequent_indent="    "))]
    return [*text, ""]


def format_table(surface: dict[str, Any], steps: int) -> list[str]:
    minima = " and ".join(f"({x:g}, {y:g})" for x, y in surface["global_minima"])
    head = (f"{surface['name']}: {surface['formula']}; start ({surface['start'][0]:g}, {surface['start'][1]:g}), "
            f"global minimum f* = {surface['f_min']:.6g} at {minima}; {steps} steps")
    rows = [("optimizer", "lr", "final loss", "distance", f"steps to f-f*<={TOLERANCE:g}", "ends in")]
    for r in surface["rows"]:
        reached = "never" if r["steps_to_tol"] is None else str(r["steps_to_tol"])
        rows.append((r["label"], f"{r['lr']:g}", "diverged" if r["diverged"] else _number(r["final_loss"], ".4g"),
                     _number(r["distance"]), reached, r["ends_in"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [head, *("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)]


def format_report(result: dict[str, Any]) -> str:
    """The text ``cnnctl optimizers`` prints: the rules with --explain, a table per surface, the files."""
    text = format_rules(result["rules"]) if "rules" in result else []
    for surface in result["surfaces"]:
        text += [*format_table(surface, result["steps"]), ""]
    text.append(f"wrote {result['png']}")
    text += [f"wrote {s['gif']} ({s['frames']} frames of {result['frame_ms']} ms, the last held "
             f"{result['hold_ms'] / 1000:g} s)" for s in result["surfaces"]]
    return "\n".join(text)
