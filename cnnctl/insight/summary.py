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
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnctl.errors import ShapeError
from cnnctl.insight.arithmetic import (
    arithmetic,
    device_of,
    explain,
    format_explain,
    format_training_notes,
    run_hooked,
    shape_text,
    training_notes,
)


def _human(n: float) -> str:
    """1814073344 -> '1.81 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g}"


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
        return path.depth(run_hooked(model, input_shape, lambda *_: None))


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
        longest = path.depth(run_hooked(model, input_shape, hook))
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
        f"Weight sharing: a fully-connected layer from {source} {shape_text(sharing['input_shape'])} input to {name}'s "
        f"{shape_text(out)} output would need {n_in}*{n_out} = {plural(sharing['dense_weights'], 'weight')}; {name} "
        f"shares {plural(sharing['kernels'], 'kernel')} of {shape_text(sharing['kernel_shape'])} = "
        f"{plural(sharing['shared_weights'], 'weight')} (+{plural(sharing['biases'], 'bias', 'biases')}) across all "
        f"{positions}, {ratio:,.0f} times fewer."
    )


def format_summary(summary: dict[str, Any], *, title: str = "") -> str:
    """:func:`summarize`'s result as a table, its totals and the weight-sharing comparison."""
    rows = summary["layers"]
    kinds = [f"{r['kind']}(p={r['p']:g})" if "p" in r else r["kind"] for r in rows]
    w_name = max([5, *(len(r["name"]) for r in rows)])
    w_kind = max([4, *map(len, kinds)])
    w_out = max([6, *(len(shape_text(r["output_shape"])) for r in rows)])
    header = f"{'layer':<{w_name}}  {'kind':<{w_kind}}  {'output':>{w_out}}  {'params':>12}  {'mult-adds':>15}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r, kind in zip(rows, kinds, strict=True):
        lines.append(
            f"{r['name']:<{w_name}}  {kind:<{w_kind}}  {shape_text(r['output_shape']):>{w_out}}  "
            f"{r['params']:>12,}  {r['macs']:>15,}" + ("  frozen" if r.get("frozen") else "")
        )
    lines.append("-" * len(header))
    frozen = f", {summary['frozen_params']:,} frozen" if summary.get("frozen_params") else ""
    lines.append(
        f"input {shape_text(summary['input_shape'])}: {summary['params']:,} parameters "
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
            model(torch.zeros(1, *input_shape, device=device_of(model)))
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
        reached = f"the {shape_text(failure.shape)} map that reaches it"
    else:
        reached = f"the {shape_text(failure.shape)} input that reaches it"
    math_text = arithmetic(failure.module, failure.shape) if failure.shape else None
    because = f": {math_text}" if math_text else ""
    smallest = _smallest_side(model, in_channels, min(image_size))
    if smallest:
        needs = f"{arch} needs inputs of at least {smallest}x{smallest}: set data.image_size: {smallest} or more"
    else:  # e.g. a ViT, which takes one size only
        needs = "Set data.image_size to a size this model takes"
    raise ShapeError(
        f"model.arch {arch} cannot take a {shape_text(input_shape)} input: {where} fails on {reached}{because} "
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
    title = f"{cfg.model.arch} on {cfg.data.dataset} ({shape_text(shape)} input, {classes} classes)"
    text = format_summary(result, title=title)
    if explain_layers:
        result["explain"] = explain(model, shape)
        result["training"] = training_notes(result["layers"], classes, cfg.train.label_smoothing, cfg.train.loss)
        text += "\n\n" + format_explain(result["explain"]) + "\n\n" + format_training_notes(result["training"])
    return result, text
