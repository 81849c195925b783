"""The forward pass recorded, and the backward pass worked layer by layer from the layers' local derivatives.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnctl.insight.step.limits import FEW


@dataclass
class Call:
    """One leaf layer's call in the forward pass: copies of its input and output and, after backward,
    dL/d(output)."""

    name: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor
    grad: torch.Tensor | None = None


@contextlib.contextmanager
def record_calls(model: nn.Module) -> Iterator[list[Call]]:
    """Every leaf layer's call inside the block, in order. Inputs and outputs are copied when the layer runs, before
    an in-place layer after it (``ReLU(inplace=True)``) can change them; dL/d(output) comes from a hook on the
    output tensor, which autograd calls with the gradient of the value before any in-place change."""
    calls: list[Call] = []

    def hook_for(name: str) -> Callable[..., None]:
        def capture(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            call = Call(name, module, None if first is None else first.detach().clone(), output.detach().clone())
            calls.append(call)
            if output.requires_grad:
                output.register_hook(lambda grad: setattr(call, "grad", grad.detach().clone()))

        return capture

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules()
               if n and next(m.children(), None) is None]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def shown_values(t: torch.Tensor, every: bool) -> dict[str, Any]:
    """A tensor as the report shows it: its shape and its first FEW values (all of them in a tiny network)."""
    flat = t.detach().double().flatten() + 0.0  # + 0.0: no "-0" where a negative gradient met a zero
    return {"shape": list(t.shape), "values": (flat if every else flat[:FEW]).tolist(), "numel": flat.numel()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ---------------------------------------------------------------- the backward pass, layer by layer


def pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _through_linear(call: Call) -> tuple[str, torch.Tensor]:
    w = call.module.weight.detach().double()
    formula = f"g @ {call.name}.weight: each input gathers the gradients of the outputs it feeds, times the weights"
    return formula, call.grad.double().reshape(-1, w.shape[0]) @ w


def _through_conv(call: Call) -> tuple[str, torch.Tensor] | None:
    m = call.module
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        return None
    g = torch.nn.grad.conv2d_input(call.input.shape, m.weight.detach().double(), call.grad.double(), m.stride,
                                   m.padding, m.dilation, m.groups)
    formula = (f"the transposed convolution of g with {call.name}'s kernel: each input pixel gathers the gradients "
               "of the outputs whose windows held it")
    return formula, g


def _through_maxpool(call: Call) -> tuple[str, torch.Tensor] | None:
    m = call.module
    k, s = pair(m.kernel_size), pair(m.stride)
    if k != s or pair(m.padding) != (0, 0) or pair(m.dilation) != (1, 1) or m.ceil_mode:
        return None  # overlapping or padded windows: a pixel may win several of them
    _, where = F.max_pool2d(call.input.double(), k, s, return_indices=True)
    g = F.max_unpool2d(call.grad.double(), where, k, s, output_size=call.input.shape[-2:])
    return "g goes to the largest input of each window, 0 to the others", g


def _elementwise(formula: str, local: Callable[[Call], torch.Tensor]) -> Callable[[Call], tuple[str, torch.Tensor]]:
    def through(call: Call) -> tuple[str, torch.Tensor]:
        return formula, call.grad.double() * local(call)

    return through


def _reshaped(call: Call) -> tuple[str, torch.Tensor] | None:
    if isinstance(call.module, nn.Dropout) and call.module.p > 0:
        return None  # the mask is random, and a zero input cannot be told from a dropped one
    formula = "g, reshaped to the input" if isinstance(call.module, nn.Flatten) else "g (passes unchanged)"
    return formula, call.grad.double().reshape(call.input.shape)


# A layer's gradient at its input from the gradient g at its output, by the layer's local derivative. An output of
# an in-place layer is its input overwritten, so the activations' rules read the output.
INPUT_GRADIENTS: dict[type[nn.Module], Callable[[Call], tuple[str, torch.Tensor] | None]] = {
    nn.Linear: _through_linear,
    nn.Conv2d: _through_conv,
    nn.MaxPool2d: _through_maxpool,
    nn.ReLU: _elementwise("g * (1 if out > 0 else 0)", lambda c: (c.output > 0).double()),
    nn.LeakyReLU: _elementwise("g * (1 if out > 0 else slope)",
                               lambda c: torch.where(c.output > 0, 1.0, c.module.negative_slope).double()),
    nn.Sigmoid: _elementwise("g * s * (1 - s), s the sigmoid's output", lambda c: (c.output * (1 - c.output)).double()),
    nn.Tanh: _elementwise("g * (1 - t^2), t the tanh's output", lambda c: (1 - c.output.double() ** 2)),
    nn.Flatten: _reshaped,
    nn.Identity: _reshaped,
    nn.Dropout: _reshaped,
}


def _feeds(model: nn.Module, a: Call, b: Call, counts: Counter[str]) -> bool:
    """Whether ``a``'s output is ``b``'s input and nothing else's: consecutive children of one nn.Sequential, each
    called once (a functional op between two modules, such as torch.flatten or a residual sum, breaks the link)."""
    parent, _, child_a = a.name.rpartition(".")
    parent_b, _, child_b = b.name.rpartition(".")
    if parent != parent_b or counts[a.name] != 1 or counts[b.name] != 1:
        return False
    container = model.get_submodule(parent) if parent else model
    if not isinstance(container, nn.Sequential):
        return False
    names = [n for n, _ in container.named_children()]
    return names.index(child_b) == names.index(child_a) + 1


def chain(model: nn.Module, calls: list[Call], stop: int, every: bool,
           top: tuple[torch.Tensor, torch.Tensor, str]) -> list[dict[str, Any]]:
    """dL/d(output) of each layer from the top down to call ``stop``: autograd's (the output hooks'), and by hand
    where the layer above feeds on this one alone and has a local rule (``INPUT_GRADIENTS``). ``top``: the logits,
    the loss's gradient at them worked by hand, and its rule."""
    counts = Counter(c.name for c in calls)
    rows = []
    for k in range(len(calls) - 1, stop - 1, -1):
        call = calls[k]
        if call.grad is None:  # below every weight: nothing needs this gradient
            continue
        row: dict[str, Any] = {"layer": call.name, "kind": type(call.module).__name__,
                               "autograd": shown_values(call.grad, every)}
        found, why = _by_hand(model, calls, k, counts, top)
        if found is not None:
            formula, hand = found
            row.update(through=calls[k + 1].name if k + 1 < len(calls) else "loss", rule=formula,
                       by_hand=shown_values(hand, every), max_abs_diff=max_diff(hand, call.grad))
        else:
            row["autograd_only"] = why
        rows.append(row)
    return rows


def _by_hand(model: nn.Module, calls: list[Call], k: int, counts: Counter[str],
             top: tuple[torch.Tensor, torch.Tensor, str]) -> tuple[tuple[str, torch.Tensor] | None, str]:
    """Call ``k``'s dL/d(output) worked from the layer above (or the loss), or None and why not."""
    call = calls[k]
    logits, logit_grad, rule = top
    if k == len(calls) - 1 and torch.equal(call.output, logits):
        return (f"the loss's gradient at the logits, {rule}", logit_grad.reshape(call.grad.shape)), ""
    if k + 1 == len(calls) or not _feeds(model, call, calls[k + 1], counts):
        return None, ("its output reaches the layer above through the model's own forward code (torch.flatten, a "
                      "residual sum, ...), not a plain nn.Sequential")
    above = calls[k + 1]
    rule = INPUT_GRADIENTS.get(type(above.module))
    found = rule(above) if rule is not None else None
    return found, "" if found else f"no simple local rule for {type(above.module).__name__} {above.name} here"


