"""The chosen weight: its gradient worked as the sum of products the chain rule gives.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnctl.errors import UsageError
from cnnctl.insight.step.backward import Call, pair
from cnnctl.insight.step.limits import TERMS
from cnnctl.registry import did_you_mean


@dataclass(frozen=True)
class Choice:
    """The weight the chain rule is worked down to: ``layers.3.weight`` at ``index``, of ``calls[call]``."""

    name: str
    call: int
    attr: str
    index: tuple[int, ...]

    @property
    def shown(self) -> str:
        return f"{self.name}[{','.join(map(str, self.index))}]"


_PARAM = re.compile(r"(?P<name>[A-Za-z_][\w.]*)(?P<index>(?:\[[^\[\]]*\])*)")


def parse_param(spec: str) -> tuple[str, list[int] | None]:
    """``layers.3.weight[0,1]`` (or ``[0][1]``) -> ("layers.3.weight", [0, 1]); no brackets: no index."""
    found = _PARAM.fullmatch(spec.strip())
    groups = re.findall(r"\[([^\[\]]*)\]", found["index"]) if found else []
    parts = [part.strip() for group in groups for part in group.split(",")]
    if not found or not all(re.fullmatch(r"-?\d+", part) for part in parts):
        raise UsageError(f"--param {spec!r} is not LAYER.weight[I,J,...] or LAYER.bias[I] (e.g. "
                         "classifier.6.weight[2,0]); `cnnctl summary CONFIG` names the layers")
    return found["name"], [int(p) for p in parts] if parts else None


def _candidates(calls: list[Call]) -> dict[str, int]:
    """The weights and biases whose gradient is worked by hand (linear and conv layers called once), by name."""
    counts = Counter(c.name for c in calls)
    found = {}
    for k, call in enumerate(calls):
        if isinstance(call.module, (nn.Linear, nn.Conv2d)) and counts[call.name] == 1:
            for attr in ("weight", "bias"):
                if getattr(call.module, attr, None) is not None:
                    found[f"{call.name}.{attr}"] = k
    return found


def _listing(found: dict[str, int], calls: list[Call]) -> str:
    def shape(name: str) -> str:
        module = calls[found[name]].module
        return "x".join(map(str, getattr(module, name.rpartition(".")[2]).shape))

    names = list(found)
    more = f", ... ({len(names)} in all)" if len(names) > 30 else ""
    return ", ".join(f"{n} [{shape(n)}]" for n in names[:30]) + more


def choose_param(model: nn.Module, calls: list[Call], spec: str | None, label: int) -> Choice:
    """The weight named by ``--param``; by default the last linear layer's weight from hidden unit 0 to the true
    class (the note's w11 of layer 2), where p - y is negative and the update visible."""
    found = _candidates(calls)
    if not found:
        raise UsageError("this network has no linear or conv layer whose gradient can be worked by hand")
    if spec is None:
        linear = [n for n, k in found.items() if n.endswith(".weight") and isinstance(calls[k].module, nn.Linear)]
        name = (linear or [n for n in found if n.endswith(".weight")])[-1]
        shape = tuple(calls[found[name]].module.weight.shape)
        row = label if len(shape) == 2 and label < shape[0] else 0
        return Choice(name, found[name], "weight", (row,) + (0,) * (len(shape) - 1))
    name, index = parse_param(spec)
    if name not in found:
        params = dict(model.named_parameters())
        if name in params:
            owner = type(model.get_submodule(name.rpartition(".")[0])).__name__
            raise UsageError(f"--param {name}: a {owner} parameter; the gradient is worked by hand for linear and "
                             f"conv layers: {_listing(found, calls)}")
        raise UsageError(f"--param: unknown parameter {name!r}{did_you_mean(name, found) or '.'} Parameters whose "
                         f"gradient is worked by hand: {_listing(found, calls)}")
    attr = name.rpartition(".")[2]
    shape = tuple(getattr(calls[found[name]].module, attr).shape)
    return Choice(name, found[name], attr, _check_index(spec, name, index, shape))


def _check_index(spec: str, name: str, index: list[int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    shown = "x".join(map(str, shape))
    if index is None:
        return (0,) * len(shape)
    if len(index) != len(shape):
        raise UsageError(f"--param {spec}: {name} has {len(shape)} dimension(s) ({shown}); give {len(shape)} "
                         f"index(es), e.g. {name}[{','.join('0' * len(shape))}]")
    if any(not 0 <= i < n for i, n in zip(index, shape, strict=True)):
        ranges = ", ".join(f"0..{n - 1}" for n in shape)
        raise UsageError(f"--param {spec}: index [{','.join(map(str, index))}] is outside {name}, whose shape is "
                         f"{shown}; each index must be within {ranges}")
    return tuple(index)


def _term(at: list[int], upstream: float, x: float) -> dict[str, Any]:
    return {"at": at, "upstream": upstream, "input": x, "product": upstream * x}


def _shown_terms(products: torch.Tensor) -> list[list[int]]:
    """The positions of the terms shown of a sum: the first TERMS non-zero ones in order (a ReLU zeroes many),
    else the first TERMS."""
    where = [list(at) for at in itertools.product(*(range(n) for n in products.shape))]
    nonzero = [at for at in where if products[tuple(at)] != 0]
    return (nonzero or where)[:TERMS]


def _linear_weight(call: Call, index: tuple[int, ...]) -> dict[str, Any]:
    i, j = index
    g = call.grad.double().reshape(-1, call.module.out_features)[:, i]
    a = call.input.double().reshape(-1, call.module.in_features)[:, j]
    return {"formula": f"dL/dW[{i},{j}] = dL/dz_{i} * a_{j}: the gradient at output {i} of {call.name} times the "
                       f"input a_{j} that W[{i},{j}] multiplies (z_{i} = sum_j W[{i},j] a_j + b_{i})",
            "terms": [_term(at, float(g[at[0]]), float(a[at[0]])) for at in _shown_terms(g * a)],
            "at": ["sample"], "n_terms": len(g), "nonzero": int((g * a != 0).sum()), "by_hand": float((g * a).sum())}


def _padded(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # The padding Conv2d.forward applies itself (it covers padding="same" and every padding_mode).
    pad = m._reversed_padding_repeated_twice
    return F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)


def _conv_weight(call: Call, index: tuple[int, ...]) -> dict[str, Any]:
    m = call.module
    o, c, u, v = index
    cin = o // (m.out_channels // m.groups) * (m.in_channels // m.groups) + c  # the input channel, with groups
    (sh, sw), (dh, dw) = pair(m.stride), pair(m.dilation)
    g = call.grad.double()[:, o]  # [B, H_out, W_out]
    x = _padded(m, call.input.double())[:, cin]
    rows, cols = torch.arange(g.shape[1]) * sh + u * dh, torch.arange(g.shape[2]) * sw + v * dw
    patch = x[:, rows][:, :, cols]  # the input pixel W[o,c,u,v] meets at each output position
    products = g * patch
    padded = " zero-padded" if any(m._reversed_padding_repeated_twice) else ""
    return {"formula": f"dL/dW[{o},{c},{u},{v}] = sum over output positions (p, q) of dL/dz[{o},p,q] * "
                       f"x[{cin}, {_offset('p', sh, u * dh)}, {_offset('q', sw, v * dw)}], x the{padded} input of "
                       f"{call.name}: the same weight meets another input pixel at each of the "
                       f"{g.shape[1]}x{g.shape[2]} positions (weight sharing)",
            "terms": [_term(at, float(g[tuple(at)]), float(patch[tuple(at)])) for at in _shown_terms(products)],
            "at": ["sample", "p", "q"], "n_terms": products.numel(), "nonzero": int((products != 0).sum()),
            "by_hand": float(products.sum())}


def _offset(symbol: str, stride: int, shift: int) -> str:
    return (f"{stride}{symbol}" if stride != 1 else symbol) + (f"+{shift}" if shift else "")


def _bias(call: Call, index: tuple[int, ...]) -> dict[str, Any]:
    (o,) = index
    g = call.grad.double().movedim(1, 0)[o] if call.grad.ndim > 2 else call.grad.double()[:, o]
    kind = "every output position" if g.ndim > 1 else "the batch"
    return {"formula": f"dL/db[{o}] = sum over {kind} of dL/dz_{o}: the bias is added to output {o} with weight 1",
            "terms": [{"at": at, "upstream": float(g[tuple(at)])} for at in _shown_terms(g)],
            "at": ["sample", "p", "q"][:g.ndim], "n_terms": g.numel(), "nonzero": int((g != 0).sum()),
            "by_hand": float(g.sum())}


def param_gradient(choice: Choice, calls: list[Call]) -> dict[str, Any]:
    call = calls[choice.call]
    param = getattr(call.module, choice.attr)
    if choice.attr == "bias":
        worked = _bias(call, choice.index)
    elif isinstance(call.module, nn.Linear):
        worked = _linear_weight(call, choice.index)
    else:
        worked = _conv_weight(call, choice.index)
    autograd = float(param.grad[choice.index])
    return {"param": choice.name, "index": list(choice.index), "layer": call.name,
            "kind": type(call.module).__name__, "value": float(param.detach()[choice.index]), **worked,
            "autograd": autograd, "difference": worked["by_hand"] - autograd}


