"""A network's stages as ``cnnctl visualize`` draws them: its first convolution, and the output of each conv
stage (a conv with its norm and activation, a pool, a residual stage) captured by forward hooks on one image."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnctl.errors import CnnctlError

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
_RESIDUAL_STAGE = re.compile(r"layer\d+")


@dataclass(eq=False)
class Stage:
    """One conv/pool (or residual) stage's output for the first image of the batch."""

    name: str
    description: str
    output: torch.Tensor  # [C, H, W], float32, on the CPU


def first_conv(model: nn.Module, source: str = "") -> tuple[str, nn.Conv2d]:
    """The qualified name and module of the network's first ``nn.Conv2d``; CnnctlError when it has none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise CnnctlError(
        f"the network ({type(model).__name__}) has no convolutional layer (nn.Conv2d), so there are no filters or "
        "feature maps to draw. `cnnctl visualize` shows what a CNN's conv layers see; a stack of linear layers "
        "looks at the image as one flat vector. Add a conv layer to the model, or use `cnnctl summary` to see "
        "this network", file=source or None)


def stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are drawn: every conv and pooling layer, and ResNet's ``layerN`` stages as a whole."""
    residual = {name for name, _ in model.named_children() if _RESIDUAL_STAGE.fullmatch(name)}
    chosen = []
    for name, module in model.named_modules():
        top = name.split(".")[0]
        if top in residual:
            if name == top:
                chosen.append((name, module))
        elif isinstance(module, (nn.Conv2d, *POOLS)):
            chosen.append((name, module))
    return chosen


def describe(module: nn.Module) -> str:
    """A short description of a stage's module, e.g. ``Conv2d 1→6, 5x5, stride 1, padding 2``."""
    kind = type(module).__name__
    if isinstance(module, nn.Conv2d):
        text = (f"{kind} {module.in_channels}→{module.out_channels}, {_kernel(module.kernel_size)}, "
                f"stride {_pair(module.stride)}, padding {_pair(module.padding)}")
        return text + (f", groups {module.groups}" if module.groups > 1 else "")
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return f"{kind} to {_pair(module.output_size)}"
    if isinstance(module, nn.LPPool2d):
        return f"{kind} p={module.norm_type:g}, {_kernel(module.kernel_size)}, stride {_pair(module.stride)}"
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        return f"{kind} {_kernel(module.kernel_size)}, stride {_pair(module.stride)}"
    if isinstance(module, nn.Sequential):
        return f"residual stage of {len(module)} block{'s' if len(module) != 1 else ''}"
    return kind


def _kernel(value: Any) -> str:
    h, w = value if isinstance(value, tuple | list) else (value, value)
    return f"{h}x{w}"


def _pair(value: Any) -> str:
    if isinstance(value, tuple | list):
        return str(value[0]) if len(set(value)) == 1 else "x".join(str(v) for v in value)
    return str(value)


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh)


_PASS_THROUGH = (nn.BatchNorm2d, nn.GroupNorm, nn.Identity)  # between a conv and its activation


def capture_stages(model: nn.Module, x: torch.Tensor) -> tuple[list[Stage], torch.Tensor]:
    """Run ``model`` on ``x`` with forward hooks on ``stage_modules``; the stages (first image) and the logits.

    Stages come in the order the forward pass reaches them; a module called twice gives two stages (``name#2``).
    An activation module called right after a conv (a batch norm may sit between) is a stage too, so a conv's
    maps can be seen before and after it (ReLU sets the negatives to zero).
    """
    stages: list[Stage] = []
    calls: dict[str, int] = {}
    after_conv: list[str | None] = [None]  # the label of the conv whose output the next activation would take

    def hook_for(name: str, module: nn.Module) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output  # MaxPool2d(return_indices=True)
            if not isinstance(out, torch.Tensor) or out.ndim != 4:
                return
            if isinstance(module, _PASS_THROUGH):
                return
            if isinstance(module, ACTIVATIONS):
                conv, after_conv[0] = after_conv[0], None
                if conv is None:
                    return
                description = f"{type(module).__name__} after {conv}"
            else:
                description = describe(module)
            calls[name] = calls.get(name, 0) + 1
            label = name if calls[name] == 1 else f"{name}#{calls[name]}"
            # Cloned: an in-place ReLU right after a conv (VGG, AlexNet) would overwrite the tensor we keep.
            stages.append(Stage(label, description, out[0].detach().float().cpu().clone()))
            if not isinstance(module, ACTIVATIONS):
                after_conv[0] = label if isinstance(module, nn.Conv2d) else None

        return hook

    hooked = stage_modules(model)
    inside = {name for name, _ in hooked}
    residual = {name for name, _ in model.named_children() if _RESIDUAL_STAGE.fullmatch(name)}
    extra = [(name, m) for name, m in model.named_modules() if isinstance(m, ACTIVATIONS + _PASS_THROUGH)
             and name not in inside and name.split(".")[0] not in residual]
    handles = [module.register_forward_hook(hook_for(name, module)) for name, module in hooked + extra]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return stages, logits.detach().float().cpu()
