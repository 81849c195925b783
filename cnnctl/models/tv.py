"""Any classifier of torchvision's zoo as ``torchvision.NAME``; weights are never downloaded."""

from __future__ import annotations

import difflib

from torch import nn

from cnnctl.errors import ConfigError


def torchvision_model(*, name: str, num_classes: int, in_channels: int) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes)``.

    For ``in_channels`` other than 3 the first convolution that takes the 3-channel image is rebuilt with the same
    arguments and ``in_channels`` (freshly initialised, as every layer is without weights).
    """
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(f'torchvision.{c}' for c in close)}?" if close else ""
        raise ConfigError(
            f"model.arch: torchvision has no classifier {name!r}.{hint} "
            "`python -c 'import torchvision; print(torchvision.models.list_models(torchvision.models))'` lists them"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, name, in_channels)
    return model


def _replace_first_conv(model: nn.Module, name: str, in_channels: int) -> None:
    # The first Conv2d registered is the one the image meets in torchvision's classifiers (their stems are
    # registered first); one that does not take 3 channels means the image goes elsewhere first.
    qualified, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    # A depthwise first conv (groups = 3) stays depthwise when its outputs divide among the new inputs.
    groups = in_channels if conv is not None and conv.groups == 3 else 1
    if conv is None or conv.in_channels != 3 or conv.groups not in (1, 3) or conv.out_channels % groups:
        raise ConfigError(
            f"model.arch: cannot give torchvision.{name} {in_channels} input channels: its first convolution does "
            "not take the 3-channel image in a form cnnctl can rebuild; use 3-channel data (data.channels: 3)"
        )
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent_name, _, attr = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, replacement)
