"""The text a learner reads: ``format_step``.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cnnctl.insight.step.updates import number


def _g(v: float) -> str:
    return f"{v:.6g}"


def _list(v: dict[str, Any]) -> str:
    more = f", ... ({v['numel']:,} values)" if v["numel"] > len(v["values"]) else ""
    return "[" + ", ".join(f"{x:.4g}" for x in v["values"]) + more + "]"


def _shape(v: dict[str, Any]) -> str:
    return "x".join(map(str, v["shape"]))


def _head(r: dict[str, Any]) -> list[str]:
    src, inp = r["source"], r["input"]
    path = Path(src["path"]).resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    lines = [f"one training step of {src['spec']} ({src['kind']} {shown}), worked by hand",
             f"input: {inp['from']}, true class {inp['label']['class']!r} (index {inp['label']['index']})",
             f"  {inp['preprocessing']}", f"  x {_shape(inp)} = {_list(inp)}"]
    return lines + [f"  {note}" for note in r["notes"]]


def _forward_text(r: dict[str, Any]) -> list[str]:
    rows = r["forward"]
    name_w = max(len(row["layer"]) for row in rows)
    kind_w = max(len(row["kind"]) for row in rows)
    lines = ["", "forward (the network in training mode, as a training step runs it): each layer's output"]
    lines += [f"  {row['layer']:<{name_w}}  {row['kind']:<{kind_w}}  {_shape(row):<12} {_list(row)}" for row in rows]
    out = r["output"]
    soft, y, grad = out["softmax"], out["target"], out["gradient"]
    label = r["input"]["label"]["index"]
    lines += ["", f"softmax and loss ({out['loss']['name']}): p_i = exp(z_i - max z) / sum_j exp(z_j - max z); "
              f"{out['loss']['formula']}",
              f"  {'class':<8} {'logit z':>10} {'p':>10} {'y':>6} {'dL/dz by hand':>14} {'autograd':>12}"]
    classes = out["classes"]
    for i in range(len(classes)):
        mark = "  <- true class" if i == label else ""
        lines.append(f"  {classes[i][:8]:<8} {soft['logits'][i]:>10.4f} {soft['probs'][i]:>10.4f} {y[i]:>6.3g} "
                     f"{grad['by_hand'][i]:>14.6f} {grad['autograd'][i]:>12.6f}{mark}")
    loss = out["loss"]
    lines.append(f"  L = {_g(loss['by_hand'])} by hand, {_g(loss['torch'])} by torch (difference "
                 f"{loss['difference']:.1e})")
    lines.append(f"  {grad['rule']}; largest |by hand - autograd| = {grad['max_abs_diff']:.1e}")
    return lines


def _backward_text(r: dict[str, Any]) -> list[str]:
    chain, p = r["backward"]["chain"], r["backward"]["param"]
    lines = ["", "backward: dL/d(output) of each layer, from the top down (autograd's, captured by a hook on each "
             "output; by hand from the layer above where its local rule is simple)"]
    for row in chain:
        lines.append(f"  {row['layer']} ({row['kind']}, {_shape(row['autograd'])}): autograd {_list(row['autograd'])}")
        if "rule" in row:
            via = "from the loss" if row["through"] == "loss" else f"through {row['through']}"
            lines.append(f"    by hand {via}: {row['rule']}")
            lines.append(f"      = {_list(row['by_hand'])}; largest |difference| {row['max_abs_diff']:.1e}")
        else:
            lines.append(f"    (autograd's only: {row['autograd_only']})")
    lines += ["", f"the gradient of {p['param']}[{','.join(map(str, p['index']))}] (now {_g(p['value'])}):",
              f"  {p['formula']}"]
    for t in p["terms"]:
        at = ", ".join(f"{n} {i}" for n, i in zip(p["at"], t["at"], strict=True))
        lines.append(f"  {at}: {_g(t['upstream'])} * {number(t['input'])} = {_g(t['product'])}" if "input" in t
                     else f"  {at}: {_g(t['upstream'])}")
    if p["n_terms"] > len(p["terms"]):
        lines.append(f"  ... {p['n_terms'] - len(p['terms'])} more terms ({p['n_terms']} in all, {p['nonzero']} of "
                     "them non-zero)")
    lines.append(f"  = {_g(p['by_hand'])} by hand; autograd's param.grad {_g(p['autograd'])}; difference "
                 f"{p['difference']:.1e}")
    return lines


def _update_text(r: dict[str, Any]) -> list[str]:
    u = r["update"]
    where = ", ".join(f"{h['symbol']} = {_g(h['value'])} ({h['key']})" for h in u["hyper"])
    lines = ["", f"update: {u['optimizer']} (torch.optim.{u['class']}), step {u['steps']} of {u['steps']} on this "
             f"image; the lr schedule is held where it is", f"  where {where}"]
    if u["hyper"][0]["value"] != u["config_lr"]:
        lines.append(f"  (lr is the schedule's, not optimizer.lr {_g(u['config_lr'])}: warmup or a checkpoint's decay)")
    if u["steps"] > 1:
        lines += _history_text(u["history"])
    lines.append(f"  w = {_g(u['w'])}, g = dL/dw = {_g(u['g'])}")
    width = max(len(line["symbol"]) for line in u["lines"])
    for line in u["lines"]:
        state = f"   torch's {line['state']}: {_g(line['torch'])}" if "state" in line else ""
        lines.append(f"  {line['symbol']:<{width}} = {line['formula']}")
        lines.append(f"  {'':<{width}} = {line['numbers']} = {_g(line['value'])}{state}")
    lines.append(f"  optimizer.step() gave {_g(u['new_value'])}; the formula gives {_g(u['by_formula'])} "
                 f"(difference {u['difference']:.1e})")
    return lines


def _history_text(history: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for h in history for k in h["after"]})
    lines = ["  " + f"{'step':>4} {'loss':>10} {'w before':>12} {'g':>12} {'w after':>12}"
             + "".join(f" {k:>14}" for k in keys)]
    for h in history:
        lines.append(f"  {h['step']:>4} {h['loss']:>10.5g} {h['w']:>12.6g} {h['g']:>12.6g} {h['new']:>12.6g}"
                     + "".join(f" {h['after'].get(k, math.nan):>14.6g}" for k in keys))
    return lines + [f"  the last step, worked by hand (state after step {len(history) - 1} going in):"]


def _network_text(r: dict[str, Any]) -> list[str]:
    if "network" not in r:
        return []
    steps = r["update"]["steps"]
    lines = ["", f"every weight: its value, its gradient in step 1, and its value after {steps} step(s)"]

    def rows(values: Any) -> str:
        if values is None:
            return "none (no gradient reached it)"
        if not isinstance(values, list):
            return f"{values:.4f}"
        return "[" + ", ".join(rows(v) for v in values) + "]"

    for p in r["network"]:
        lines.append(f"  {p['param']} ({'x'.join(map(str, p['shape']))})")
        lines += [f"    w      {rows(p['value'])}", f"    dL/dw  {rows(p['grad'])}", f"    after  {rows(p['after'])}"]
    return lines


def format_step(result: dict[str, Any]) -> str:
    """``cnnctl step``'s text: forward, softmax and loss, backward, the chosen weight's gradient, the update."""
    return "\n".join(_head(result) + _forward_text(result) + _backward_text(result) + _update_text(result)
                     + _network_text(result))
