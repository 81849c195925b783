"""The model registry. Names are declared here without importing torch; builders load on first use.

Every builder is a plain function taking keyword arguments (``num_classes``, ``in_channels`` and whichever of
``image_size``, ``stem``, ``dropout``, ``activation``, ``pool``, ``zero_init_residual``, ``layers`` it uses)
and returning a CPU ``nn.Module``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnnctl.errors import ConfigError
from cnnctl.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from cnnctl.config import ModelConfig

_VGG = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
_RESNET = [f"resnet{d}" for d in (18, 34, 50, 101, 152, 200)]
_CIFAR_RESNET = [f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)]

MODELS = Registry(
    "model",
    {
        "lenet5": "cnnctl.models.lenet:lenet5",
        "alexnet": "cnnctl.models.alexnet:alexnet",
        **{name: f"cnnctl.models.vgg:{name}" for name in _VGG},
        **{name: f"cnnctl.models.resnet:{name}" for name in _RESNET + _CIFAR_RESNET},
        "custom": "cnnctl.models.layers:custom",
    },
)
register = MODELS.register

# Options a config may set, with the value that means "not set".
_OPTIONS = {"stem": "auto", "dropout": 0.0, "activation": "auto", "pool": "auto", "zero_init_residual": False}


def create_model(cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Build the config's network for inputs of ``in_channels`` x ``image_size`` and ``num_classes`` outputs.

    A network too large to allocate is refused (ConfigError) before it is: its parameters are counted on the meta
    device first, its activations per image on a batch of zero images once it is built (``limits``).
    """
    from cnnctl.models import limits

    build = _builder(cfg, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    messages = _size_messages(cfg, in_channels, image_size)
    _check_parameters(build, messages)
    model = build()
    # counted again on the real network: a builder that cannot run on the meta device is checked here
    sizes = limits.parameter_sizes(model) + (limits.activation_sizes(model, (in_channels, *image_size)) or [])
    limits.check_size(sizes, **messages)
    return model


def check_model_size(cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int) -> None:
    """Refuse (ConfigError) a network with more parameters than cnnctl builds or the memory holds, allocating
    nothing: called before the data is loaded, it spares reading a dataset for a network that cannot be built."""
    build = _builder(cfg, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    _check_parameters(build, _size_messages(cfg, in_channels, image_size))


def _check_parameters(build: Callable[[], nn.Module], messages: dict[str, str]) -> None:
    from cnnctl.models import limits

    meta = limits.meta_network(build)
    if meta is not None:
        limits.check_size(limits.parameter_sizes(meta), **messages)


def _size_messages(cfg: ModelConfig, in_channels: int, image_size: tuple[int, int]) -> dict[str, str]:
    return {
        "key": f"model.arch {cfg.arch!r} on {in_channels}x{image_size[0]}x{image_size[1]} images",
        "mend_params": "Use a smaller data.image_size (a classifier on the flattened map grows with the image) or a "
                       "smaller arch",
        "mend_activations": "Use a smaller data.image_size or a shallower arch",
    }


def _builder(cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int) -> Callable[[], nn.Module]:
    """The config's builder with its arguments bound; ConfigError for an option the arch does not have."""
    if cfg.arch.startswith("torchvision."):
        from cnnctl.models.tv import torchvision_model

        builder = torchvision_model
        fixed: dict[str, Any] = {"name": cfg.arch.removeprefix("torchvision.")}
    else:
        builder = MODELS.get(cfg.arch)
        fixed = {}
    accepted = inspect.signature(builder).parameters
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, **fixed}
    if "image_size" in accepted:
        kwargs["image_size"] = image_size
    if "layers" in accepted:
        kwargs["layers"] = cfg.layers
    for key, unset in _OPTIONS.items():
        value = getattr(cfg, key)
        if key in accepted:
            kwargs[key] = value
        elif value != unset:
            raise ConfigError(f"model.{key}: arch {cfg.arch!r} has no such option; remove it (set it back to {unset!r})")
    if cfg.pretrained and kwargs.get("stem") == "auto":
        kwargs["stem"] = "imagenet"  # torchvision's weights fit its ImageNet stem and head, at any image size
    return functools.partial(builder, **kwargs)
