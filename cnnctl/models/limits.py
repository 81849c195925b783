"""How large a network cnnctl builds: its parameters, and the activations one image makes, are counted before they
are allocated and checked against :data:`MAX_ELEMENTS` and the memory available, so that a network too large to
build is refused naming its largest layer and the figures, in milliseconds, instead of ending in the allocator's
traceback (LeNet-5 on 4096x4096 images built 2,001,500,426 parameters in 33 s and 10 GB before this check).

``arch: custom`` counts by arithmetic on its planned layers (:mod:`cnnctl.models.layers`). Every other network is
counted by building it on the meta device, where tensors have shapes and no storage, and by running a batch of
*zero* images through it, which computes every layer's output shape and allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnctl.errors import CnnctlError, ConfigError

# A billion float32 numbers is 3.7 GiB: as weights that is before their gradients and the optimizer's state (Adam
# keeps two more copies), as one image's activations before a batch of them. The largest networks cnnctl's users
# train are far below (VGG-19: 144M parameters, 15M activations per 224x224 image).
MAX_ELEMENTS = 1_000_000_000


@dataclass(frozen=True)
class LayerSize:
    """One layer's share of a network's size, for the check and its message."""

    where: str  # model.layers[3] (conv), classifier.0 (Linear)
    params: int
    formula: str  # how params is counted, ending in the total: "5*5*1*6 + 6 = 156"
    activations: int  # numbers it outputs per image
    output: str  # what it outputs: "6x28x28 map"


def shape_text(shape: Sequence[int]) -> str:
    """``(6, 28, 28)`` -> ``6x28x28 map``; ``(120,)`` -> ``120 features``."""
    return "x".join(map(str, shape)) + (" map" if len(shape) == 3 else " features")


def _gib(elements: int) -> str:
    return f"{elements * 4 / 2**30:,.1f} GiB"


def check_size(layers: Sequence[LayerSize], *, key: str, mend_params: str, mend_activations: str) -> None:
    """Refuse a network too large to allocate (ConfigError, exit 2), naming its largest layer."""
    params = sum(layer.params for layer in layers)
    activations = sum(layer.activations for layer in layers)
    from cnnctl.runtime import available_memory

    memory = available_memory()
    if params > MAX_ELEMENTS or (memory is not None and params * 4 > memory):
        big = max(layers, key=lambda layer: layer.params)
        limit = f"cnnctl's limit of {MAX_ELEMENTS:,} ({_gib(MAX_ELEMENTS)})"
        if params <= MAX_ELEMENTS and memory is not None:
            limit = f"the {memory / 2**30:,.1f} GiB of memory available"
        raise ConfigError(
            f"{key}: the network would have {params:,} parameters ({_gib(params)} of float32 weights, before "
            f"gradients and optimizer state), over {limit}; {big.where} alone has {big.formula}. {mend_params}"
        )
    if activations > MAX_ELEMENTS:
        big = max(layers, key=lambda layer: layer.activations)
        raise ConfigError(
            f"{key}: one image would make {activations:,} activations ({_gib(activations)} of float32), over "
            f"cnnctl's limit of {MAX_ELEMENTS:,}; {big.where} alone outputs {big.output} = {big.activations:,}. "
            f"{mend_activations}"
        )


# ---------------------------------------------------------------- counting a built network


class _NoFill(TorchFunctionMode):
    """Skips in-place operations on meta tensors (``nn.init``'s ``normal_``, ``uniform_``, ``zero_``...): they hold
    no values to fill, and torch's meta kernel for ``normal_`` alone imports sympy and its decompositions (1.6 s)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else next(iter(kwargs.values()), None)
        if name.endswith("_") and not name.endswith("__") and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def meta_network(build: Callable[[], nn.Module]) -> nn.Module | None:
    """``build()`` on the meta device (shapes, no storage, the random generators untouched), or None for a builder
    that computes with tensor values (torchvision's RegNets size their stages with ``torch.arange``)."""
    try:
        with torch.device("meta"), _NoFill():
            return build()
    except CnnctlError:
        raise  # the builder's own refusal (a shape that leaves no map): the same as a real build gives
    except Exception:
        return None


def param_formula(m: nn.Module) -> str | None:
    """How a conv, linear or batch-norm layer's parameters are counted, with its numbers and the total
    (``in*out + out = 120*84 + 84 = 10,164``); None for other modules."""
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        cin = m.in_channels // m.groups
        k = "k*k" if kh == kw else "kh*kw"
        c_in = "c_in" if m.groups == 1 else "(c_in/groups)"
        bias = m.out_channels if m.bias is not None else 0
        total = kh * kw * cin * m.out_channels + bias
        if bias:
            return f"{k}*{c_in}*c_out + c_out = {kh}*{kw}*{cin}*{m.out_channels} + {bias} = {total:,}"
        return f"{k}*{c_in}*c_out = {kh}*{kw}*{cin}*{m.out_channels} = {total:,}"
    if isinstance(m, nn.Linear):
        total = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        if m.bias is not None:
            return f"in*out + out = {m.in_features}*{m.out_features} + {m.out_features} = {total:,}"
        return f"in*out = {m.in_features}*{m.out_features} = {total:,}"
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
        return f"2*c = 2*{m.num_features} = {2 * m.num_features:,} (scale and shift; running statistics are buffers)"
    return None


def _formula(module: nn.Module, params: int) -> str:
    return param_formula(module) or f"{params:,}"


def parameter_sizes(model: nn.Module) -> list[LayerSize]:
    """The parameters of ``model`` by the module that holds them (``classifier.0 (Linear)``)."""
    sizes = []
    for name, module in model.named_modules():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if params:
            sizes.append(LayerSize(f"{name or 'the model'} ({type(module).__name__})", params,
                                   _formula(module, params), 0, ""))
    return sizes


def activation_sizes(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerSize] | None:
    """What each leaf module of ``model`` outputs for one ``input_shape`` image, found by running a batch of zero
    images (eval mode, no gradients: nothing is allocated, no statistic or random generator moves). None when the
    network cannot take the input: the shape check (``summary.check_input``) names the layer then."""
    sizes: list[LayerSize] = []

    def count(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shape = tuple(out.shape[1:])
                sizes.append(LayerSize(f"{name} ({type(module).__name__})", 0, "", math.prod(shape),
                                       shape_text(shape)))
        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules() if next(m.children(), None) is None]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(0, *input_shape))
    except Exception:  # a shape the network cannot take, or a model that needs a batch: the shape check reports it
        return None
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return sizes
