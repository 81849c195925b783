"""What a network is: per-layer output shapes, parameters and multiply-adds, its depth, the arithmetic behind
each size, the receptive field, and whether the network can take its input at all.

Depth is the number of weighted layers (convolutions and fully-connected layers) on the longest path from the
input to the output: the number in "ResNet-18" or "VGG-11" (batch norm, pooling and activations are not counted,
nor the 1x1 projections on a ResNet's shortcuts, which lie on a shorter path).

Multiply-adds (MACs) count convolutions and linear layers only: ``k_h*k_w*c_in/groups*c_out*H_out*W_out`` and
``in*out`` per position. Batch norm, pooling, activations and the residual additions count 0, the convention of
torchvision's model tables ("GFLOPS" there are these multiply-adds: ResNet-18 at 224x224 is 1.81 G).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnctl.errors import ShapeError
from cnnctl.models.limits import param_formula

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# Module names on a shortcut (torchvision's ResNets, cnnctl's residual blocks): not on the main path.
SHORTCUTS = ("downsample", "shortcut")

Hook = Callable[[str, nn.Module, tuple[Any, ...], Any], None]


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]


def _device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _shape(s: list[int] | tuple[int, ...] | torch.Size) -> str:
    return "x".join(map(str, s))


def _human(n: float) -> str:
    """1814073344 -> '1.81 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g}"


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _run_hooked(model: nn.Module, input_shape: tuple[int, ...], hook: Hook) -> Any:
    """One zero image through ``model`` in eval mode, ``hook(name, module, args, output)`` after each leaf; returns
    the model's output."""
    handles = [
        m.register_forward_hook(lambda m, args, out, name=name: hook(name, m, args, out)) for name, m in _leaves(model)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(torch.zeros(1, *input_shape, device=_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


# ---------------------------------------------------------------- depth

WEIGHTED = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
            F.bilinear}


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class LongestPath(TorchFunctionMode):
    """While active, every tensor made by a torch function carries the number of weighted ops (conv, linear) on
    the longest chain of ops that produced it: one more than its deepest input for a weighted op, else equal.

    It follows the data, not module names, so a residual addition takes the longer of its branch and shortcut, and
    parallel branches (Inception's) count once. Entries leave with their tensors (weakref) so ids are not reused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.depths: dict[int, int] = {}

    def depth(self, value: Any) -> int:
        return max((self.depths.get(id(t), 0) for t in _tensors(value)), default=0)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        depth = max(self.depth(args), self.depth(kwargs)) + (func in WEIGHTED)
        for tensor in _tensors(out):
            if id(tensor) not in self.depths:
                weakref.finalize(tensor, self.depths.pop, id(tensor), None)
            self.depths[id(tensor)] = depth
        return out


def depth(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Weighted layers (conv, linear) on the longest path from the input to the output, from one zero image."""
    with LongestPath() as path:
        return path.depth(_run_hooked(model, input_shape, lambda *_: None))


# ---------------------------------------------------------------- summary


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    per_image = out.numel() // out.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * kh * kw * (module.in_channels // module.groups)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def _weight_sharing(name: str, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    cin = conv.in_channels // conv.groups
    kh, kw = conv.kernel_size
    return {
        "layer": name,
        "input_shape": list(x.shape[1:]),
        "output_shape": list(out.shape[1:]),
        "dense_weights": x[0].numel() * out[0].numel(),
        "kernels": conv.out_channels,
        "kernel_shape": [cin, kh, kw],
        "shared_weights": conv.out_channels * cin * kh * kw,
        "biases": conv.out_channels if conv.bias is not None else 0,
    }


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """One row per call of a leaf layer (``name``, ``kind``, ``output_shape``, ``params``, ``macs``; ``p`` for
    dropout; ``frozen`` for a layer whose parameters all have ``requires_grad=False``, as ``train.freeze`` leaves
    them) and the totals (``depth``, ``params``, ``trainable_params``, ``frozen_params``, ``macs`` per image,
    ``size_mb`` of float32 weights), from a forward pass of one zero image. A layer called twice (a ResNet block's ``relu``) has two rows,
    its parameters on the first. Dropout at p = 0 does nothing and has no row.

    ``weight_sharing`` compares the first convolution with a fully-connected layer making the same output from the
    same input; ``unlisted_params`` are those in no row (a layer the forward pass never calls, or a parameter held
    by a container, such as a ViT's class token).
    """
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    sharing: dict[str, Any] = {}

    def hook(name: str, m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0:
            return  # kept by the zoo's builders so that layer indexes (state_dict keys) do not move; it does nothing
        params = 0 if id(m) in seen else sum(p.numel() for p in m.parameters())
        seen.add(id(m))
        shape = list(out.shape[1:])
        row = {"name": name, "kind": type(m).__name__, "output_shape": shape, "params": params, "macs": _macs(m, out)}
        if isinstance(m, nn.modules.dropout._DropoutNd):
            row["p"] = m.p
        if params and not any(p.requires_grad for p in m.parameters()):
            row["frozen"] = True
        rows.append(row)
        if isinstance(m, nn.Conv2d) and not sharing and args and isinstance(args[0], torch.Tensor):
            sharing.update(_weight_sharing(name, m, args[0], out))

    with LongestPath() as path:
        longest = path.depth(_run_hooked(model, input_shape, hook))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "input_shape": list(input_shape),
        "depth": longest,
        "params": params,
        "trainable_params": trainable,
        "frozen_params": params - trainable,
        "macs": sum(r["macs"] for r in rows),
        "size_mb": params * 4 / 2**20,
        "unlisted_params": params - sum(r["params"] for r in rows),
        "layers": rows,
        "weight_sharing": sharing or None,
    }


def plural(n: int, singular: str, many: str | None = None) -> str:
    """``1 kernel``, ``6 kernels``, ``1 bias``, ``0 biases``."""
    return f"{n:,} {singular if n == 1 else (many or singular + 's')}"


def weight_sharing_sentence(sharing: dict[str, Any], input_shape: list[int]) -> str:
    """The first convolution against a fully-connected layer making the same output, with the network's numbers."""
    name, n_in, n_out = sharing["layer"], math.prod(sharing["input_shape"]), math.prod(sharing["output_shape"])
    source = "the" if sharing["input_shape"] == list(input_shape) else "its"
    out = sharing["output_shape"]
    positions = f"{out[1]}x{out[2]} output positions" if len(out) == 3 else "output positions"
    ratio = sharing["dense_weights"] / max(sharing["shared_weights"], 1)
    return (
        f"Weight sharing: a fully-connected layer from {source} {_shape(sharing['input_shape'])} input to {name}'s "
        f"{_shape(out)} output would need {n_in}*{n_out} = {plural(sharing['dense_weights'], 'weight')}; {name} "
        f"shares {plural(sharing['kernels'], 'kernel')} of {_shape(sharing['kernel_shape'])} = "
        f"{plural(sharing['shared_weights'], 'weight')} (+{plural(sharing['biases'], 'bias', 'biases')}) across all "
        f"{positions}, {ratio:,.0f} times fewer."
    )


def format_summary(summary: dict[str, Any], *, title: str = "") -> str:
    """:func:`summarize`'s result as a table, its totals and the weight-sharing comparison."""
    rows = summary["layers"]
    kinds = [f"{r['kind']}(p={r['p']:g})" if "p" in r else r["kind"] for r in rows]
    w_name = max([5, *(len(r["name"]) for r in rows)])
    w_kind = max([4, *map(len, kinds)])
    w_out = max([6, *(len(_shape(r["output_shape"])) for r in rows)])
    header = f"{'layer':<{w_name}}  {'kind':<{w_kind}}  {'output':>{w_out}}  {'params':>12}  {'mult-adds':>15}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r, kind in zip(rows, kinds, strict=True):
        lines.append(
            f"{r['name']:<{w_name}}  {kind:<{w_kind}}  {_shape(r['output_shape']):>{w_out}}  "
            f"{r['params']:>12,}  {r['macs']:>15,}" + ("  frozen" if r.get("frozen") else "")
        )
    lines.append("-" * len(header))
    frozen = f", {summary['frozen_params']:,} frozen" if summary.get("frozen_params") else ""
    lines.append(
        f"input {_shape(summary['input_shape'])}: {summary['params']:,} parameters "
        f"({summary['trainable_params']:,} trainable{frozen}), {summary['macs']:,} multiply-adds per image "
        f"({_human(summary['macs'])}), {summary['size_mb']:.2f} MB of float32 weights"
    )
    if "depth" in summary:
        lines.append(
            f"depth {summary['depth']}: weighted layers (conv, linear) on the longest path from input to output, "
            "the number in a name like ResNet-18"
        )
    if summary.get("unlisted_params"):
        lines.append(f"({summary['unlisted_params']:,} parameters sit outside the layers listed, e.g. unused heads)")
    if summary.get("weight_sharing"):
        lines += ["", weight_sharing_sentence(summary["weight_sharing"], summary["input_shape"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- explain


def _size_arithmetic(module: nn.Module, size: int, axis: int) -> str:
    """``out = floor((in + 2*padding - kernel) / stride) + 1 = N`` for one axis of a conv or pool."""
    k = _pair(module.kernel_size)[axis]
    s = _pair(module.stride or module.kernel_size)[axis]
    d = _pair(getattr(module, "dilation", 1))[axis]
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):  # Conv2d(padding="same" | "valid")
        if padding == "same":
            return f"padding 'same' keeps the size: out = {size}"
        padding = 0
    p = _pair(padding)[axis]
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
                    k = _pair(m.kernel_size)[axis]
                    d = _pair(getattr(m, "dilation", 1))[axis]
                    rf[axis] += (k - 1) * d * jump[axis]
                    jump[axis] *= _pair(m.stride or m.kernel_size)[axis]
        elif isinstance(m, ADAPTIVE_POOLS) and len(in_shape) == 3 and len(out_shape) == 3:
            row["arithmetic"] = f"adaptive: {_shape(in_shape[1:])} -> {_shape(out_shape[1:])}"
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

    _run_hooked(model, input_shape, hook)
    return rows


def format_explain(rows: list[dict[str, Any]]) -> str:
    """:func:`explain`'s rows as text, one block per layer."""

    def square(v: int | list[int]) -> str:
        return f"{v}x{v}" if isinstance(v, int) else _shape(v)

    lines = [
        "Per layer: output size = floor((in + 2*padding - kernel) / stride) + 1; receptive field (RF) and "
        "cumulative stride (jump) in input pixels, along the main path; parameters with their formula.",
        "",
    ]
    for r in rows:
        head = f"{r['name']} ({r['kind']}): {_shape(r['input_shape'])} -> {_shape(r['output_shape'])}"
        if "receptive_field" in r:
            jump = r["jump"] if isinstance(r["jump"], int) else _shape(r["jump"])
            head += f"   RF {square(r['receptive_field'])}, jump {jump}"
        lines.append(head)
        if "arithmetic" in r:
            lines.append(f"    size:   {r['arithmetic']}")
        if "param_formula" in r:
            lines.append(f"    params: {r['param_formula']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- check_input


class _Failure(Exception):
    def __init__(self, name: str, module: nn.Module, shape: list[int] | None, reason: str) -> None:
        super().__init__(reason)
        self.name, self.module, self.shape, self.reason = name, module, shape, reason


def _probe(model: nn.Module, input_shape: tuple[int, ...]) -> _Failure | None:
    """Run one zero image; None when it passes, else the innermost module running when it failed."""
    stack: list[tuple[str, nn.Module, list[int] | None]] = []

    def pre(name: str, m: nn.Module, args: tuple[Any, ...]) -> None:
        shape = list(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else None
        stack.append((name, m, shape))

    def post(m: nn.Module) -> None:
        if stack and stack[-1][1] is m:
            stack.pop()

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda m, args, name=name: pre(name, m, args)))
        handles.append(m.register_forward_hook(lambda m, args, out: post(m)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=_device(model)))
    except Exception as e:  # whatever torch raises; the innermost running module says where
        name, module, shape = stack[-1] if stack else ("", model, list(input_shape))
        lines = str(e).strip().splitlines()
        return _Failure(name, module, shape, lines[0][:300] if lines else type(e).__name__)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return None


def _smallest_side(model: nn.Module, in_channels: int, side: int, limit: int = 512) -> int | None:
    """The smallest square input side the network takes (None above ``limit``): double, then bisect."""
    lo, hi = side, side * 2
    while hi <= limit and _probe(model, (in_channels, hi, hi)) is not None:
        lo, hi = hi, hi * 2
    if hi > limit:
        return None
    while hi - lo > 1:  # lo fails, hi passes
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _probe(model, (in_channels, mid, mid)) is None else (mid, hi)
    return hi


def check_input(model: nn.Module, *, arch: str, in_channels: int, image_size: tuple[int, int]) -> None:
    """Raise ShapeError when ``model`` cannot take ``in_channels`` x ``image_size`` images, naming the module that
    fails (qualified name and kind), the shape that reached it and the arithmetic, and saying how to mend it.

    The way out it gives is the smallest square input the network takes, found by trying sizes. (``model.stem:
    cifar`` rescues none of cnnctl's models: a ResNet takes any input with either stem, and VGG's stem is only its
    head, after the pools that fail.)

    It runs one real zero image rather than a "meta" tensor: the meta device's first use imports sympy and torch's
    Python decompositions (1.2 s here), more than one image through any network at the sizes cnnctl trains.
    """
    input_shape = (in_channels, *image_size)
    failure = _probe(model, input_shape)
    if failure is None:
        return
    where = f"{failure.name or 'the model'} ({type(failure.module).__name__})"
    if not failure.shape:
        reached = "its input"
    elif len(failure.shape) == 3:
        reached = f"the {_shape(failure.shape)} map that reaches it"
    else:
        reached = f"the {_shape(failure.shape)} input that reaches it"
    math_text = arithmetic(failure.module, failure.shape) if failure.shape else None
    because = f": {math_text}" if math_text else ""
    smallest = _smallest_side(model, in_channels, min(image_size))
    if smallest:
        needs = f"{arch} needs inputs of at least {smallest}x{smallest}: set data.image_size: {smallest} or more"
    else:  # e.g. a ViT, which takes one size only
        needs = "Set data.image_size to a size this model takes"
    raise ShapeError(
        f"model.arch {arch} cannot take a {_shape(input_shape)} input: {where} fails on {reached}{because} "
        f"(torch: {failure.reason}). {needs}"
    )


# ---------------------------------------------------------------- the command


def network_summary(cfg: Any, *, explain_layers: bool = False) -> tuple[dict[str, Any], str]:
    """``cnnctl summary``: the config's network on the data's input shape, as training starts it (at the image size
    pretrained weights bring, with ``train.freeze``'s layers frozen); returns (JSON document, text)."""
    from cnnctl.data.spec import input_spec
    from cnnctl.models.pretrained import apply_weight_defaults
    from cnnctl.models.registry import create_model
    from cnnctl.training.freeze import resolve_freeze, set_frozen

    cfg = apply_weight_defaults(cfg)
    channels, size, classes = input_spec(cfg.data)
    model = create_model(cfg.model, in_channels=channels, image_size=size, num_classes=classes)
    check_input(model, arch=cfg.model.arch, in_channels=channels, image_size=size)
    if cfg.train.freeze:
        set_frozen(model, resolve_freeze(model, cfg.train.freeze, cfg.model.arch), True)
    shape = (channels, *size)
    result = {"arch": cfg.model.arch, "num_classes": classes, **summarize(model, shape)}
    title = f"{cfg.model.arch} on {cfg.data.dataset} ({_shape(shape)} input, {classes} classes)"
    text = format_summary(result, title=title)
    if explain_layers:
        result["explain"] = explain(model, shape)
        result["training"] = training_notes(result["layers"], classes, cfg.train.label_smoothing, cfg.train.loss)
        text += "\n\n" + format_explain(result["explain"]) + "\n\n" + format_training_notes(result["training"])
    return result, text


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
