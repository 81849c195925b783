"""Where the network looks: Grad-CAM, occlusion sensitivity and gradient saliency, computed with Captum.

Captum (PyTorch's attribution library, the ``[explain]`` extra) does the arithmetic; this module picks the layer,
runs each method for one image and one class, and draws the maps over the image.

- Grad-CAM (Selvaraju et al. 2017): the last conv stage's feature maps weighted by the mean gradient of the class
  score over each map, summed, ReLU'd and upsampled to the image. Coarse (the stage's resolution) but
  class-specific.
- Occlusion (Zeiler and Fergus 2014): slide a patch of the data's mean colour (grey for natural images) over the
  image and watch the class *probability* fall;
  a pixel's value is the mean fall over the patches that covered it. Model-agnostic and slow (one forward pass
  per patch position), so the patch is a fraction of the image.
- Saliency (Simonyan et al. 2014): |d score / d pixel|, the largest over the colour channels. Fine-grained and
  noisy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnctl.errors import CnnctlError, UsageError
from cnnctl.registry import did_you_mean

METHODS = ("gradcam", "occlusion", "saliency")
_STAGE = re.compile(r"layer\d+")


def require_captum() -> Any:
    try:
        import captum.attr as attr
    except ImportError:
        raise CnnctlError("attribution maps (Grad-CAM, occlusion, saliency) need Captum: pip install 'cnnctl[explain]' "
                          "(or pip install captum)") from None
    return attr


def without_inplace(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose activations do not overwrite their input: an in-place ReLU right after the layer
    Captum hooks would change the saved feature maps before their gradient is read."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


def conv_layers_in_call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the ``nn.Conv2d`` modules (and ResNet-style ``layerN`` stages) in the order a forward pass calls
    them; registration order can differ from call order in a hand-written ``forward``."""
    stages = {name for name, _ in model.named_children() if _STAGE.fullmatch(name)}
    called: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) or name in stages:
            handles.append(module.register_forward_hook(lambda _m, _i, _o, name=name: called.append(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return called


def conv_stages(model: nn.Module) -> list[str]:
    """The layers Grad-CAM may read: every ``nn.Conv2d`` and ResNet-style ``layerN`` stage, as registered."""
    return [n for n, m in model.named_modules() if n and (isinstance(m, nn.Conv2d) or _STAGE.fullmatch(n))]


def named_layer(model: nn.Module, name: str, source: str = "") -> nn.Module:
    """The conv stage ``--layer`` names; ``UsageError`` listing the valid ones for any other name: Grad-CAM weighs
    a layer's feature maps, and a linear layer, an activation or a whole block has none of its own to weigh."""
    modules = dict(model.named_modules())
    valid = conv_stages(model)
    if name in valid:
        return modules[name]
    listed = f"Conv stages: {', '.join(valid) or 'none'}"
    if name not in modules or name == "":
        raise UsageError(f"--layer {name!r}: no such layer in the network{did_you_mean(name, valid) or '.'} {listed}",
                         file=source or None)
    raise UsageError(f"--layer {name!r}: a {type(modules[name]).__name__}, not a conv stage; Grad-CAM reads the "
                     f"feature maps of a convolution (or a ResNet's layerN stage). {listed}", file=source or None)


def find_layer(model: nn.Module, x: torch.Tensor, name: str | None = None, source: str = "") -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads: ``name`` when given (a conv stage, see ``named_layer``), else the last conv stage
    the forward pass calls (a ResNet's last ``layerN``, otherwise the last ``nn.Conv2d``)."""
    if name is not None:
        return name, named_layer(model, name, source)
    called = conv_layers_in_call_order(model, x)
    if not called:
        raise CnnctlError("the network has no convolutional layer, so there is no conv stage for Grad-CAM; occlusion "
                          "and saliency need none", file=source or None)
    stages = [n for n in called if _STAGE.fullmatch(n)]
    chosen = stages[-1] if stages else called[-1]
    return chosen, dict(model.named_modules())[chosen]


def attribution_maps(model: nn.Module, x: torch.Tensor, target: int, *, layer: str | None = None,
                     grey: torch.Tensor | float = 0.0, patch: int | None = None, source: str = "",
                     methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """Grad-CAM, occlusion and saliency for one image ``x`` ([1, C, H, W], already normalised) and class ``target``.

    ``grey`` is the occluding patch's value in the network's input space, per channel (0: the training set's mean
    colour after normalisation). Returns ``{"layer", "maps": {method: [H, W] float array}}``; maps are raw (not rescaled): Grad-CAM
    and saliency >= 0, occlusion the fall of the class probability (negative where hiding a patch helps the class).
    """
    attr = require_captum()
    model = without_inplace(model).eval()
    x = x.detach().float()
    _, c, h, w = x.shape
    maps: dict[str, Any] = {}
    layer_name = None
    if "gradcam" in methods:
        layer_name, module = find_layer(model, x, layer, source)
        cam = attr.LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        cam = attr.LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")
        maps["gradcam"] = cam[0].sum(0).detach().numpy()
    if "occlusion" in methods:
        # a patch of about a quarter of the side, moved by half a patch: 7x7 positions on any image size
        size = patch or max(1, round(min(h, w) / 4))
        stride = max(1, size // 2)
        base = torch.as_tensor(grey, dtype=x.dtype).reshape(1, -1, 1, 1).expand(1, c, 1, 1)
        baseline = base.expand_as(x).contiguous()

        def probability(inputs: torch.Tensor) -> torch.Tensor:
            return model(inputs).float().softmax(1)

        occ = attr.Occlusion(probability).attribute(x, sliding_window_shapes=(c, size, size), strides=(c, stride, stride),
                                                    target=target, baselines=baseline)
        maps["occlusion"] = occ[0].mean(0).detach().numpy()
    if "saliency" in methods:
        sal = attr.Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True)
        maps["saliency"] = sal[0].max(0).values.detach().numpy()
    return {"layer": layer_name, "maps": maps}


TITLES = {
    "gradcam": "Grad-CAM on {layer}: where this layer's evidence for {cls!r} is",
    "occlusion": "Occlusion: how much hiding this patch (mean colour) lowers p({cls!r})",
    "saliency": "Saliency: |d score({cls!r}) / d pixel|",
}


FIGSIZE = (9.0, 4.2)


def plot_attribution(image: np.ndarray, heat: np.ndarray, method: str, cls: str, path: Path, *,
                     layer: str | None = None) -> Path:
    """The image beside the map laid over it, with a colour bar in the map's own units. ``image``: [H, W] or
    [H, W, 3] in [0, 1]."""
    from cnnctl.insight.plots import save_figure, subplots

    fig, (left, right) = subplots(1, 2, figsize=FIGSIZE)
    gray = image.ndim == 2
    for ax in (left, right):
        ax.imshow(image, cmap="gray" if gray else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    left.set_title("input")
    if method == "occlusion":  # signed: red lowers the probability when hidden, blue raises it
        limit = float(np.abs(heat).max()) or 1.0
        shown = right.imshow(heat, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.6)
    else:
        shown = right.imshow(heat, cmap="jet", alpha=0.5)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    right.set_title(TITLES[method].format(layer=layer, cls=cls), fontsize=9, wrap=True)
    return save_figure(fig, path)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's largest value."""
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(r), int(c)

