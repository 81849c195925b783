"""The arithmetic ``cnnctl summary --explain`` shows: each layer's output size worked from its formula, and the notes
on the loss (its formula and its value for a network that knows nothing yet); with the layer helpers summary shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnctl.models.limits import param_formula

POOLS = (nn.MaxPool2d, nn.AvgPool2d)


ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# Module names on a shortcut (torchvision's ResNets, cnnctl's residual blocks): not on the main path.
SHORTCUTS = ("downsample", "shortcut")


Hook = Callable[[str, nn.Module, tuple[Any, ...], Any], None]


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]


def device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def shape_text(s: list[int] | tuple[int, ...] | torch.Size) -> str:
    return "x".join(map(str, s))


def pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def run_hooked(model: nn.Module, input_shape: tuple[int, ...], hook: Hook) -> Any:
    """One zero image through ``model`` in eval mode, ``hook(name, module, args, output)`` after each leaf; returns
    the model's output."""
    handles = [
        m.register_forward_hook(lambda m, args, out, name=name: hook(name, m, args, out)) for name, m in leaves(model)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(torch.zeros(1, *input_shape, device=device_of(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _size_arithmetic(module: nn.Module, size: int, axis: int) -> str:
    """``out = floor((in + 2*padding - kernel) / stride) + 1 = N`` for one axis of a conv or pool."""
    k = pair(module.kernel_size)[axis]
    s = pair(module.stride or module.kernel_size)[axis]
    d = pair(getattr(module, "dilation", 1))[axis]
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):  # Conv2d(padding="same" | "valid")
        if padding == "same":
            return f"padding 'same' keeps the size: out = {size}"
        padding = 0
    p = pair(padding)[axis]
    kernel, effective = (f"({d}*({k} - 1) + 1)", d * (k - 1) + 1) if d != 1 else (f"{k}", k)
    numerator = size + 2 * p - effective
    if getattr(module, "ceil_mode", False):
        out = -(-numerator // s) + 1
        if (out - 1) * s >= size + p:  # torch's rule: the last window must start inside the image or left padding
            out -= 1
        op = "ceil"
    else:
        out, op = numerator // s + 1, "floor"
    return f"out = {op}(({size} + 2*{p} - {kernel}) / {s}) + 1 = {out}"


def arithmetic(module: nn.Module, in_shape: list[int] | tuple[int, ...]) -> str | None:
    """The output-size arithmetic of a conv or pool for a (C, H, W) input; both axes when they differ."""
    if not isinstance(module, (nn.Conv2d, *POOLS)) or len(in_shape) != 3:
        return None
    h, w = _size_arithmetic(module, in_shape[1], 0), _size_arithmetic(module, in_shape[2], 1)
    return h if h == w else f"H: {h}; W: {w}"


def explain(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per conv, pool, flatten, linear and norm layer, in the order they run: the input and output shapes, the
    output-size arithmetic with real numbers, the receptive field and cumulative stride (jump) in input pixels, and
    the parameter count with its formula.

    Receptive field recurrence along the layers as they run: ``rf += (k - 1) * dilation * jump``, ``jump *= stride``
    (an adaptive pool counts as a kernel of ceil(in / out) and a stride of in // out). Shortcut projections
    (``downsample``, ``shortcut``) are off the main path and leave it unchanged; so through a residual block the
    receptive field is its main branch's, and in networks with parallel branches (Inception) it is only an estimate.
    ``receptive_field`` and ``jump`` are one number when height and width agree, else [height, width].
    """
    rows: list[dict[str, Any]] = []
    rf, jump = [1, 1], [1, 1]

    def hook(name: str, m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not (args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)):
            return
        x = args[0]
        in_shape, out_shape = list(x.shape[1:]), list(out.shape[1:])
        row: dict[str, Any] = {"name": name, "kind": type(m).__name__, "input_shape": in_shape}
        row["output_shape"] = out_shape
        main_path = not any(part in SHORTCUTS for part in name.split("."))
        text = arithmetic(m, in_shape)
        if text is not None:
            row["arithmetic"] = text
            if main_path:
                for axis in (0, 1):
                    k = pair(m.kernel_size)[axis]
                    d = pair(getattr(m, "dilation", 1))[axis]
                    rf[axis] += (k - 1) * d * jump[axis]
                    jump[axis] *= pair(m.stride or m.kernel_size)[axis]
        elif isinstance(m, ADAPTIVE_POOLS) and len(in_shape) == 3 and len(out_shape) == 3:
            row["arithmetic"] = f"adaptive: {shape_text(in_shape[1:])} -> {shape_text(out_shape[1:])}"
            if main_path:
                for axis in (0, 1):
                    size, side = in_shape[1 + axis], out_shape[1 + axis]
                    rf[axis] += (math.ceil(size / side) - 1) * jump[axis]
                    jump[axis] *= max(size // side, 1)
        elif isinstance(m, nn.Flatten):
            row["arithmetic"] = f"flatten: {'*'.join(map(str, in_shape))} = {math.prod(in_shape):,}"
        formula = param_formula(m)
        if formula is not None:
            row["params"] = sum(p.numel() for p in m.parameters())
            row["param_formula"] = formula
        if len(out_shape) == 3:
            row["receptive_field"] = rf[0] if rf[0] == rf[1] else list(rf)
            row["jump"] = jump[0] if jump[0] == jump[1] else list(jump)
        if "arithmetic" in row or "param_formula" in row:
            rows.append(row)

    run_hooked(model, input_shape, hook)
    return rows


def format_explain(rows: list[dict[str, Any]]) -> str:
    """:func:`explain`'s rows as text, one block per layer."""

    def square(v: int | list[int]) -> str:
        return f"{v}x{v}" if isinstance(v, int) else shape_text(v)

    lines = [
        "Per layer: output size = floor((in + 2*padding - kernel) / stride) + 1; receptive field (RF) and "
        "cumulative stride (jump) in input pixels, along the main path; parameters with their formula.",
        "",
    ]
    for r in rows:
        head = f"{r['name']} ({r['kind']}): {shape_text(r['input_shape'])} -> {shape_text(r['output_shape'])}"
        if "receptive_field" in r:
            jump = r["jump"] if isinstance(r["jump"], int) else shape_text(r["jump"])
            head += f"   RF {square(r['receptive_field'])}, jump {jump}"
        lines.append(head)
        if "arithmetic" in r:
            lines.append(f"    size:   {r['arithmetic']}")
        if "param_formula" in r:
            lines.append(f"    params: {r['param_formula']}")
    return "\n".join(lines)


LOSS_FORMULAS = {
    "cross_entropy": "loss = -log softmax(z)[y] = -z_y + log(sum_j exp(z_j))",
    "mse": "loss = sum_i (softmax(z)_i - onehot(y)_i)^2",
}


def training_notes(rows: list[dict[str, Any]], classes: int, label_smoothing: float = 0.0,
                   loss: str = "cross_entropy") -> dict[str, Any]:
    """What training does beyond the layers: the dropout layers (p and the 1/(1-p) scale of the survivors) and the
    loss (``train.loss``), with the value an untrained network starts at: ln(C) for cross-entropy, 1 - 1/C for the
    squared error ((1 - 1/C)^2 on the true class + (C - 1)/C^2 on the others)."""
    return {
        "dropout": [{"layer": r["name"], "p": r["p"], "scale": 1 / (1 - r["p"])} for r in rows if "p" in r],
        "loss": {
            "name": loss,
            "formula": LOSS_FORMULAS[loss],
            "classes": classes,
            "initial_loss": math.log(classes) if loss == "cross_entropy" else 1 - 1 / classes,
            "label_smoothing": label_smoothing,
        },
    }


def _cross_entropy_lines(loss: dict[str, Any], c: int) -> list[str]:
    return [
        "Loss: cross-entropy = log-softmax + negative log-likelihood. For the logits z and the true class y, "
        f"{loss['formula']} (torch's nn.CrossEntropyLoss, averaged over the batch).",
        f"An untrained network gives nearly equal logits, so softmax is about 1/{c} for every class and the first "
        f"loss is about -log(1/{c}) = ln({c}) = {loss['initial_loss']:.2f}; a first loss far above it means large "
        "initial logits (a bad initialisation or unnormalised inputs).",
    ]


def _mse_lines(loss: dict[str, Any], c: int) -> list[str]:
    return [
        "Loss: mean squared error of the softmax against the one-hot target (train.loss: mse). For the logits z "
        f"and the true class y, {loss['formula']}, averaged over the batch.",
        f"An untrained network gives softmax about 1/{c} everywhere: the first loss is about (1 - 1/{c})^2 + "
        f"({c} - 1)/{c}^2 = 1 - 1/{c} = {loss['initial_loss']:.3f}. Its gradient at the logits, "
        "dL/dz_j = 2 p_j ((p_j - y_j) - sum_i p_i (p_i - y_i)), has a factor p_j: on an image the network gets "
        "confidently wrong (p_y near 0) it nearly vanishes, where cross-entropy's p - y stays near 1. That is why "
        "classifiers are trained with cross-entropy (train.loss: cross_entropy, the default).",
    ]


def format_training_notes(notes: dict[str, Any]) -> str:
    """:func:`training_notes` as sentences for a learner."""
    lines = []
    if notes["dropout"]:
        lines.append(
            "Dropout, in training only: each activation is zeroed with probability p and the ones kept are multiplied "
            "by 1/(1-p) (inverted dropout), so each activation's expected value is unchanged: (1-p) * x/(1-p) = x. "
            "In evaluation (validation, eval, predict: model.eval()) dropout passes everything through, unscaled, "
            "so nothing needs rescaling at test time."
        )
        for d in notes["dropout"]:
            lines.append(f"    {d['layer']}: p = {d['p']:g}, the kept activations are scaled by {d['scale']:.4g}")
    else:
        lines.append("Dropout: none in this network (or p = 0), so training and evaluation compute the same layers.")
    loss = notes["loss"]
    c = loss["classes"]
    lines += ["", *(_cross_entropy_lines if loss["name"] == "cross_entropy" else _mse_lines)(loss, c)]
    if loss["label_smoothing"]:
        eps = loss["label_smoothing"]
        lines.append(
            f"With train.label_smoothing {eps:g} the target puts {1 - eps + eps / c:.4g} on the true class and "
            f"{eps / c:.3g} on each other one; the untrained loss is still ln({c}), but even a perfect network's "
            "loss stays above 0."
        )
    return "\n".join(lines)
