"""One training step worked by hand, as study note 002 (section 2.1) works back-propagation: ``cnnctl step``.

A training step is four pieces of arithmetic. The *forward* pass carries one image through every layer to the
logits z; softmax turns them into probabilities p; the loss compares p with the target y (cross-entropy,
L = -sum_i y_i log p_i). The *backward* pass starts where softmax and cross-entropy meet, dL/dz = p - y, and
follows the chain rule down, layer by layer, to one weight: a linear layer's W[i, j] gets the gradient at its
output i times its input j; a convolution's W[o, c, u, v] gets that product summed over every output position,
since the same kernel is used at each (weight sharing); a bias gets the upstream gradient, summed the same way.
The *update* then moves the weight by the configured optimizer's rule.

Every number is worked twice: by hand here, in float64, from the layer inputs and output gradients that hooks
capture; and by PyTorch: autograd's ``param.grad``, and a real ``optimizer.step()`` on a deep copy of the model
and of the optimizer that ``cnnctl.training.optim`` builds from the config. The two are shown side by side with their
difference, so what is printed is what training does.

The loss's gradient at the logits is one function per loss name (``LOSSES``), and the update one function per
optimizer name (``UPDATES``): a new loss or optimizer is one new entry.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnctl.config import Config
from cnnctl.errors import CheckpointError, DataError, UsageError, first_line
from cnnctl.registry import Registry, did_you_mean
from cnnctl.training.losses import create_loss, smoothed_one_hot

FEW = 6  # values shown of each tensor
TINY = 64  # parameters: a network this small has every number shown
TERMS = 4  # terms shown of a sum over output positions
MAX_STEPS = 1000

# ---------------------------------------------------------------- losses: the start of the backward pass


@dataclass(frozen=True)
class LossRule:
    """A training loss as the step shows it, all in float64 from the logits ``z`` and the target ``y``.

    The criterion is training's own (``losses.create_loss``); ``target(label, classes, config)`` the vector y;
    ``value(z, y)`` the loss; ``logit_grad(z, y)`` dL/dz, where the backward pass begins."""

    name: str
    formula: str
    gradient: str
    target: Callable[[int, int, Config], torch.Tensor]
    value: Callable[[torch.Tensor, torch.Tensor], float]
    logit_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _smoothed_one_hot(label: int, classes: int, config: Config) -> torch.Tensor:
    """One-hot, or with ``train.label_smoothing`` e: (1 - e) on the true class plus e/C on every class (float64)."""
    return smoothed_one_hot(torch.tensor([label]), classes, config.train.label_smoothing, dtype=torch.float64)[0]


LOSSES = Registry("loss")
LOSSES.add("cross_entropy", LossRule(
    "cross_entropy", "L = -sum_i y_i * log p_i",
    "dL/dz_i = p_i - y_i (softmax and cross-entropy differentiated together)",
    _smoothed_one_hot,
    lambda z, y: float(-(y * torch.log_softmax(z, 0)).sum()),
    lambda z, y: torch.softmax(z, 0) - y,
))


def _mse_logit_grad(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/dz_j = sum_i 2 (p_i - y_i) dp_i/dz_j with dp_i/dz_j = p_i (delta_ij - p_j)."""
    p = torch.softmax(z, 0)
    return 2 * p * ((p - y) - (p * (p - y)).sum())


LOSSES.add("mse", LossRule(
    "mse", "L = sum_i (p_i - y_i)^2",
    "dL/dz_j = 2 p_j ((p_j - y_j) - sum_i p_i (p_i - y_i)) (the softmax's Jacobian times 2 (p - y): "
    "a factor p_j that vanishes where the softmax saturates)",
    _smoothed_one_hot,
    lambda z, y: float((torch.softmax(z, 0) - y).pow(2).sum()),
    _mse_logit_grad,
))


def loss_rule(config: Config) -> LossRule:
    """The rule for the config's loss (``train.loss``)."""
    return LOSSES.get(config.train.loss)


# ---------------------------------------------------------------- what one step needs


@dataclass
class Setup:
    """The network, optimizer and image of one step, built by the code training uses."""

    config: Config
    source: dict[str, str]  # kind (config or checkpoint), spec (as given) and path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    classes: list[str]
    spec: dict[str, Any]  # the input: channels, size, mean, std
    channels_last: bool
    images: torch.Tensor | None = None  # uint8 [1, C, H, W]
    label: int | None = None
    sample: str = ""
    notes: list[str] = field(default_factory=list)


def _from_config(spec: str, overrides: Sequence[str]) -> Setup:
    """``run.assemble``'s seeded model and optimizer (the lr the schedule gives step 0) and the first training
    sample of the config's dataset, as training loads it."""
    from cnnctl.config import load_config
    from cnnctl.data.base import labels_of
    from cnnctl.inference.evaluate import split_images
    from cnnctl.training.distributed import DistContext
    from cnnctl.training.run import assemble

    config, path = load_config(spec, list(overrides))
    parts = assemble(config, dist=DistContext(), device="cpu")
    data = parts.data
    images = split_images(data.train, [0], data.channels, data.size)
    inputs = {"channels": data.channels, "size": list(data.size), "mean": list(data.mean), "std": list(data.std)}
    setup = Setup(config, {"kind": "config", "spec": spec, "path": str(path)}, parts.model, parts.optimizer,
                  list(data.classes), inputs, parts.channels_last, images, int(labels_of(data.train)[0]),
                  f"{data.dataset} train[0]")
    if config.data.augment.crop_padding or config.data.augment.hflip:
        setup.notes.append("data.augment is not applied: the step shows the image as the dataset holds it")
    return setup


def _from_checkpoint(spec: str, overrides: Sequence[str], *, need_sample: bool) -> Setup:
    """The checkpoint's network and, unless ``--set`` changed optimizer.*, its optimizer state: the step training
    would take next. A run directory means its last.pt."""
    from cnnctl.inference.evaluate import checkpoint_config, model_from_checkpoint, sample_images
    from cnnctl.training.checkpoint import load_checkpoint, run_checkpoint
    from cnnctl.training.optim import create_optimizer

    path = run_checkpoint(spec, "last.pt")
    ckpt = load_checkpoint(path)
    saved = checkpoint_config(ckpt, str(path))
    config = _override_checkpoint(saved, overrides, str(path))
    model = model_from_checkpoint(ckpt, str(path), torch.device("cpu"))
    optimizer = create_optimizer(model, config.optimizer)
    setup = Setup(config, {"kind": "checkpoint", "spec": spec, "path": str(path)}, model, optimizer,
                  [str(c) for c in ckpt["classes"]], dict(ckpt["input"]), False)
    if "optimizer" not in ckpt:
        setup.notes.append("optimizer: a fresh one (the checkpoint holds no optimizer state)")
    elif config.optimizer == saved.optimizer:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"its optimizer state does not fit its network ({first_line(e)}); use a "
                                  "checkpoint written by cnnctl train", file=str(path)) from None
        setup.notes.append("optimizer state and lr: the checkpoint's, as training left them")
    else:
        setup.notes.append("optimizer: a fresh one (--set changed optimizer.*, so the checkpoint's state does not "
                           "apply)")
    if need_sample:
        images, labels, where = sample_images(ckpt, str(path), 1, splits=("train",))
        setup.images, setup.label, setup.sample = images, int(labels[0]), f"{where}[0]"
    return setup


def _override_checkpoint(saved: Config, overrides: Sequence[str], source: str) -> Config:
    """The checkpoint's config with ``--set`` applied; only optimizer.* and train.* may change (the network and
    its data are what the checkpoint holds)."""
    if not overrides:
        return saved
    from cnnctl.config import apply_overrides, flatten_keys, validate_config

    config = validate_config(apply_overrides(saved.dump(), list(overrides)), f"{source} (its config)", list(overrides))
    before, after = flatten_keys(saved.dump()), flatten_keys(config.dump())
    fixed = sorted(k for k in set(before) | set(after)
                   if before.get(k) != after.get(k) and not k.startswith(("optimizer.", "train.")))
    if fixed:
        raise UsageError(f"--set {', '.join(fixed)}: a checkpoint's network and data are fixed; with a checkpoint "
                         "--set may change only optimizer.* and train.* keys (give a config to try other layers or "
                         "data)")
    return config


def label_index(text: str, classes: list[str]) -> int:
    """``--label``: a class name, or an index into the classes."""
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    shown = ", ".join(classes[:20]) + (f", ... ({len(classes)} classes)" if len(classes) > 20 else "")
    raise UsageError(f"--label {text!r} is not one of the classes{did_you_mean(text, classes) or '.'} Give a class "
                     f"name or an index 0..{len(classes) - 1}; the classes: {shown}")


def _read_image(setup: Setup, image: str) -> None:
    """``--image``: read and resized exactly as ``cnnctl predict`` reads it (normalised later, the same way)."""
    from cnnctl.data.transforms import load_image

    if not Path(image).is_file():
        raise DataError("no such image file (--image takes one image file)", file=image)
    size = (int(setup.spec["size"][0]), int(setup.spec["size"][1]))
    setup.images = load_image(image, int(setup.spec["channels"]), size)[None]
    setup.sample = image


def _setup(source: str, overrides: Sequence[str], image: str | None, label: str | None) -> Setup:
    if image is not None and label is None:
        raise UsageError("--image needs --label CLASS: the loss, and so every gradient, depends on the true class")
    path = Path(source)
    if path.suffix == ".pt" or path.is_dir():
        setup = _from_checkpoint(source, overrides, need_sample=image is None)
    else:
        setup = _from_config(source, overrides)
    if image is not None:
        _read_image(setup, image)
    if label is not None:
        setup.label = label_index(label, setup.classes)
    return setup


# ---------------------------------------------------------------- the forward pass, recorded


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


def _values(t: torch.Tensor, every: bool) -> dict[str, Any]:
    """A tensor as the report shows it: its shape and its first FEW values (all of them in a tiny network)."""
    flat = t.detach().double().flatten() + 0.0  # + 0.0: no "-0" where a negative gradient met a zero
    return {"shape": list(t.shape), "values": (flat if every else flat[:FEW]).tolist(), "numel": flat.numel()}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ---------------------------------------------------------------- the backward pass, layer by layer


def _pair(v: Any) -> tuple[int, int]:
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
    k, s = _pair(m.kernel_size), _pair(m.stride)
    if k != s or _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode:
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


def _chain(model: nn.Module, calls: list[Call], stop: int, every: bool,
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
                               "autograd": _values(call.grad, every)}
        found, why = _by_hand(model, calls, k, counts, top)
        if found is not None:
            formula, hand = found
            row.update(through=calls[k + 1].name if k + 1 < len(calls) else "loss", rule=formula,
                       by_hand=_values(hand, every), max_abs_diff=_max_diff(hand, call.grad))
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


# ---------------------------------------------------------------- the chosen weight


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
    (sh, sw), (dh, dw) = _pair(m.stride), _pair(m.dilation)
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


def _param_gradient(choice: Choice, calls: list[Call]) -> dict[str, Any]:
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


# ---------------------------------------------------------------- the update


@dataclass
class StepRecord:
    """One real ``optimizer.step()``, seen from the chosen weight: before and after, and the optimizer's state for
    that weight (momentum_buffer, sum, square_avg, exp_avg, exp_avg_sq, step)."""

    step: int
    loss: float
    w: float
    g: float
    before: dict[str, float]
    after: dict[str, float]
    new: float
    clip: dict[str, float] | None


def _state_at(state: dict[str, Any], index: tuple[int, ...]) -> dict[str, float]:
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = float(value) if value.ndim == 0 else float(value[index])
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _clip(model: nn.Module, max_norm: float | None) -> dict[str, float] | None:
    """``train.grad_clip`` as the training loop applies it, before the optimizer step."""
    if max_norm is None:
        return None
    total = float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    return {"max_norm": max_norm, "total_norm": total, "scale": min(1.0, max_norm / (total + 1e-6))}


def real_steps(model: nn.Module, optimizer: torch.optim.Optimizer, step_loss: Callable[[nn.Module], torch.Tensor],
               choice: Choice, steps: int, first_loss: float,
               grad_clip: float | None) -> tuple[list[StepRecord], nn.Module, dict[str, Any]]:
    """``steps`` real optimizer steps on deep copies of ``model`` (its gradients already computed) and
    ``optimizer``, the first with those gradients, the others each after a new forward and backward pass on the
    same image. Returns what each step did to the chosen weight, the stepped copy and the weight's param group."""
    twin, opt = copy.deepcopy((model, optimizer))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()  # deepcopy leaves a Parameter's .grad behind
    param = twin.get_parameter(choice.name)
    group = next(g for g in opt.param_groups if any(q is param for q in g["params"]))
    records, loss = [], first_loss
    for step in range(1, steps + 1):
        if step > 1:
            opt.zero_grad(set_to_none=True)
            loss_t = step_loss(twin)
            loss_t.backward()
            loss = float(loss_t.detach())
        clip = _clip(twin, grad_clip)
        w, g = float(param.detach()[choice.index]), float(param.grad[choice.index])
        before = _state_at(opt.state.get(param, {}), choice.index)
        opt.step()
        records.append(StepRecord(step, loss, w, g, before, _state_at(opt.state[param], choice.index),
                                  float(param.detach()[choice.index]), clip))
    return records, twin, group


def _n(v: float) -> str:
    text = f"{v:.6g}"
    return f"({text})" if v < 0 else text


def _line(symbol: str, formula: str, numbers: str, value: float, state: str | None = None,
          torch_value: float | None = None) -> dict[str, Any]:
    """One line of an update rule: ``symbol = formula = numbers = value``; ``state`` names the optimizer's state
    entry that holds the same number after torch's step (``torch_value``)."""
    line = {"symbol": symbol, "formula": formula, "numbers": numbers, "value": value}
    if state is not None:
        line.update(state=state, torch=torch_value)
    return line


def _hyper(symbol: str, value: Any, key: str) -> dict[str, Any]:
    return {"symbol": symbol, "value": value, "key": key}


# What an update rule works out: the hyper-parameters (symbol, value, config key), the lines of the formula, the new
# value of the weight.
Worked = tuple[list[dict[str, Any]], list[dict[str, Any]], float]


def _decayed(lines: list[dict[str, Any]], r: StepRecord, wd: float) -> tuple[float, str]:
    """The gradient with L2 weight decay added, as SGD, Adagrad, RMSprop and Adam apply it: (value, symbol)."""
    if wd == 0:
        return r.g, "g"
    d = r.g + wd * r.w
    lines.append(_line("d", "g + wd*w", f"{_n(r.g)} + {_n(wd)}*{_n(r.w)}", d))
    return d, "d"


def _sgd(group: dict[str, Any], r: StepRecord) -> Worked:
    lr, mu, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
    hyper = [_hyper("lr", lr, "optimizer.lr"), _hyper("momentum", mu, "optimizer.momentum"),
             _hyper("wd", wd, "optimizer.weight_decay")]
    lines: list[dict[str, Any]] = []
    d, s = _decayed(lines, r, wd)
    step, t = d, s
    if mu:
        prev = r.before.get("momentum_buffer")
        if prev is None:
            b = d
            lines.append(_line("b", f"{s} (the first step starts the buffer at the gradient)", _n(d), b,
                               "momentum_buffer", r.after.get("momentum_buffer")))
        else:
            b = mu * prev + d
            lines.append(_line("b", f"momentum*b + {s}", f"{_n(mu)}*{_n(prev)} + {_n(d)}", b, "momentum_buffer",
                               r.after.get("momentum_buffer")))
        step, t = b, "b"
        if nesterov:
            step, t = d + mu * b, "v"
            lines.append(_line("v", f"{s} + momentum*b (Nesterov: the gradient plus a look ahead along b)",
                               f"{_n(d)} + {_n(mu)}*{_n(b)}", step))
    new = r.w - lr * step
    lines.append(_line("w_new", f"w - lr*{t}", f"{_n(r.w)} - {_n(lr)}*{_n(step)}", new))
    return hyper, lines, new


def _adagrad(group: dict[str, Any], r: StepRecord) -> Worked:
    lr, wd, eps, decay = group["lr"], group["weight_decay"], group["eps"], group["lr_decay"]
    hyper = [_hyper("lr", lr, "optimizer.lr"), _hyper("eps", eps, "optimizer.eps"),
             _hyper("wd", wd, "optimizer.weight_decay")]
    lines: list[dict[str, Any]] = []
    t = int(r.after["step"])
    if decay:
        lr = lr / (1 + (t - 1) * decay)
    d, s = _decayed(lines, r, wd)
    prev = r.before.get("sum", group["initial_accumulator_value"])
    total = prev + d * d
    lines.append(_line("s", f"s + {s}^2 (every squared gradient so far)", f"{_n(prev)} + {_n(d)}^2", total, "sum",
                       r.after["sum"]))
    new = r.w - lr * d / (math.sqrt(total) + eps)
    lines.append(_line("w_new", f"w - lr*{s}/(sqrt(s) + eps)", f"{_n(r.w)} - {_n(lr)}*{_n(d)}/(sqrt({_n(total)}) + "
                       f"{_n(eps)})", new))
    return hyper, lines, new


def _rmsprop(group: dict[str, Any], r: StepRecord) -> Worked:
    lr, alpha, eps, wd, mu = group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
    hyper = [_hyper("lr", lr, "optimizer.lr"), _hyper("alpha", alpha, "optimizer.alpha"),
             _hyper("eps", eps, "optimizer.eps"), _hyper("momentum", mu, "optimizer.momentum"),
             _hyper("wd", wd, "optimizer.weight_decay")]
    lines: list[dict[str, Any]] = []
    d, s = _decayed(lines, r, wd)
    prev = r.before.get("square_avg", 0.0)
    v = alpha * prev + (1 - alpha) * d * d
    lines.append(_line("v", f"alpha*v + (1 - alpha)*{s}^2 (a running average of squared gradients)",
                       f"{_n(alpha)}*{_n(prev)} + {_n(1 - alpha)}*{_n(d)}^2", v, "square_avg", r.after["square_avg"]))
    step, numbers = d / (math.sqrt(v) + eps), f"{_n(d)}/(sqrt({_n(v)}) + {_n(eps)})"
    t = f"{s}/(sqrt(v) + eps)"
    if mu:
        prev_b = r.before.get("momentum_buffer", 0.0)
        step = mu * prev_b + step
        lines.append(_line("b", f"momentum*b + {t}", f"{_n(mu)}*{_n(prev_b)} + {numbers}", step, "momentum_buffer",
                           r.after["momentum_buffer"]))
        t, numbers = "b", _n(step)
    new = r.w - lr * step
    lines.append(_line("w_new", f"w - lr*{t}", f"{_n(r.w)} - {_n(lr)}*{numbers}", new))
    return hyper, lines, new


def _adam(group: dict[str, Any], r: StepRecord, *, decoupled: bool) -> Worked:
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    hyper = [_hyper("lr", lr, "optimizer.lr"), _hyper("beta1", b1, "optimizer.betas[0]"),
             _hyper("beta2", b2, "optimizer.betas[1]"), _hyper("eps", eps, "optimizer.eps"),
             _hyper("wd", wd, "optimizer.weight_decay")]
    lines: list[dict[str, Any]] = []
    t, w = int(r.after["step"]), r.w
    if decoupled:
        d, s = r.g, "g"
        if wd:
            w = r.w * (1 - lr * wd)
            lines.append(_line("w", "w*(1 - lr*wd) (decoupled weight decay, before the step)",
                               f"{_n(r.w)}*(1 - {_n(lr)}*{_n(wd)})", w))
    else:
        d, s = _decayed(lines, r, wd)
    m_prev, v_prev = r.before.get("exp_avg", 0.0), r.before.get("exp_avg_sq", 0.0)
    m, v = b1 * m_prev + (1 - b1) * d, b2 * v_prev + (1 - b2) * d * d
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    new = w - lr * m_hat / (math.sqrt(v_hat) + eps)
    lines += [
        _line("m", f"beta1*m + (1 - beta1)*{s} (the gradient's running mean)",
              f"{_n(b1)}*{_n(m_prev)} + {_n(1 - b1)}*{_n(d)}", m, "exp_avg", r.after["exp_avg"]),
        _line("v", f"beta2*v + (1 - beta2)*{s}^2 (its running mean square)",
              f"{_n(b2)}*{_n(v_prev)} + {_n(1 - b2)}*{_n(d)}^2", v, "exp_avg_sq", r.after["exp_avg_sq"]),
        _line("m_hat", f"m/(1 - beta1^t), t = {t} (bias correction: m and v start at 0)",
              f"{_n(m)}/(1 - {_n(b1)}^{t})", m_hat),
        _line("v_hat", "v/(1 - beta2^t)", f"{_n(v)}/(1 - {_n(b2)}^{t})", v_hat),
        _line("w_new", "w - lr*m_hat/(sqrt(v_hat) + eps)",
              f"{_n(w)} - {_n(lr)}*{_n(m_hat)}/(sqrt({_n(v_hat)}) + {_n(eps)})", new),
    ]
    return hyper, lines, new


# An optimizer's update of one weight, worked from its param group's hyper-parameters, the gradient and the state
# before the step: ``(group, record) -> (hyper-parameters, lines, new value)``.
UPDATES = Registry("optimizer update rule")
UPDATES.add("sgd", _sgd)
UPDATES.add("adagrad", _adagrad)
UPDATES.add("rmsprop", _rmsprop)
UPDATES.add("adam", lambda group, record: _adam(group, record, decoupled=False))
UPDATES.add("adamw", lambda group, record: _adam(group, record, decoupled=True))


def _update(setup: Setup, choice: Choice, records: list[StepRecord], group: dict[str, Any]) -> dict[str, Any]:
    name = setup.config.optimizer.name
    hyper, lines, by_formula = UPDATES.get(name)(group, records[-1])
    last = records[-1]
    return {"optimizer": name, "class": type(setup.optimizer).__name__,
            "param": choice.shown, "steps": len(records), "hyper": hyper, "lines": lines, "w": last.w,
            "g": last.g, "by_formula": by_formula, "new_value": last.new, "difference": by_formula - last.new,
            "config_lr": setup.config.optimizer.lr, "history": [asdict(r) for r in records]}


# ---------------------------------------------------------------- one step


def run_step(source: str, *, image: str | None = None, label: str | None = None, param: str | None = None,
             steps: int = 1, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """One training step worked by hand: ``cnnctl step --json``'s document.

    ``source``: a config (file or bundled name; the seeded initial network) or a checkpoint / run directory (its
    last.pt: the network and optimizer state training would continue from). ``image`` and ``label``: an image file
    (read as ``cnnctl predict`` reads it) and its class name or index; by default the dataset's first training
    sample. ``param``: ``LAYER.weight[I,J,...]`` or ``LAYER.bias[I]`` (default: the last linear layer's weight
    from hidden unit 0 to the true class). ``steps``: optimizer steps on the same image (the state after them
    shows momentum and Adam's moments at work). ``overrides``: ``--set`` items.

    The caller's random state is left as it was. UsageError, ConfigError, DataError, CheckpointError for bad input.
    """
    from cnnctl.runtime import rng_state, set_rng_state

    if not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps must be within 1..{MAX_STEPS}, not {steps}")
    saved = rng_state()
    try:
        return _step(_setup(source, list(overrides or []), image, label), param, steps)
    finally:
        set_rng_state(saved)


def _step(setup: Setup, param: str | None, steps: int) -> dict[str, Any]:
    from cnnctl.data.base import to_model_input
    from cnnctl.inference.predict import preprocessing

    config, model = setup.config, setup.model.train()  # a training step: dropout and batch statistics on
    rule = loss_rule(config)
    criterion = create_loss(config.train.loss, config.train.label_smoothing)
    x = to_model_input(setup.images, setup.spec["mean"], setup.spec["std"], torch.device("cpu"),
                       channels_last=setup.channels_last)
    y = torch.tensor([setup.label])
    setup.optimizer.zero_grad(set_to_none=True)
    with record_calls(model) as calls:
        try:
            logits = model(x)
        except ValueError as e:
            if "more than 1 value per channel" not in str(e):
                raise
            # batch norm over a vector (or a 1x1 map) has one value per channel when the batch is one image
            raise UsageError(f"this network cannot take a training step on a single image: {first_line(e)}; a "
                             "batchnorm on a vector or a 1x1 map needs a batch of more than one") from None
    at_logits: list[torch.Tensor] = []
    logits.register_hook(lambda g: at_logits.append(g.detach().clone()))
    loss = criterion(logits, y)
    loss.backward()
    choice = choose_param(model, calls, param, setup.label)
    every = sum(p.numel() for p in model.parameters()) <= TINY
    records, twin, group = real_steps(model, setup.optimizer, lambda m: criterion(m(x), y), choice, steps,
                                      float(loss.detach()), config.train.grad_clip)
    output = _output(rule, config, logits, setup.label, float(loss.detach()), at_logits[0], setup.classes)
    result = {
        "source": setup.source, "notes": setup.notes, "tiny": every,
        "input": {"from": setup.sample, "label": {"class": setup.classes[setup.label], "index": setup.label},
                  "preprocessing": preprocessing(setup.spec), **_values(x, every)},
        "forward": [{"layer": c.name, "kind": type(c.module).__name__, **_values(c.output, every)} for c in calls],
        "output": output,
        "backward": {"chain": _chain(model, calls, 0 if every else choice.call, every,
                                     (logits.detach(), torch.tensor(output["gradient"]["by_hand"]), rule.gradient)),
                     "param": _param_gradient(choice, calls)},
        "update": _update(setup, choice, records, group),
    }
    if every:
        result["network"] = _network(model, twin)
    return result


def _output(rule: LossRule, config: Config, logits: torch.Tensor, label: int, loss: float, autograd: torch.Tensor,
            classes: list[str]) -> dict[str, Any]:
    """Logits, softmax, target, loss and dL/dz, each by hand (float64) next to torch's."""
    from cnnctl.insight.explain import softmax_steps

    z = logits.detach().double()[0]
    y = rule.target(label, len(classes), config)
    hand = rule.logit_grad(z, y)
    value = rule.value(z, y)
    return {"classes": classes, "softmax": softmax_steps(z), "target": y.tolist(),
            "loss": {"name": rule.name, "formula": rule.formula, "by_hand": value, "torch": loss,
                     "difference": value - loss},
            "gradient": {"rule": rule.gradient, "by_hand": hand.tolist(), "autograd": autograd.double()[0].tolist(),
                         "max_abs_diff": _max_diff(hand, autograd[0])}}


def _network(model: nn.Module, twin: nn.Module) -> list[dict[str, Any]]:
    """Every parameter of a tiny network: its value, autograd's gradient and its value after the steps."""
    after = dict(twin.named_parameters())
    return [{"param": name, "shape": list(p.shape), "value": p.detach().double().tolist(),
             "grad": p.grad.double().tolist() if p.grad is not None else None,
             "after": after[name].detach().double().tolist()} for name, p in model.named_parameters()]


# ---------------------------------------------------------------- the text a learner reads


def _g(v: float) -> str:
    return f"{v:.6g}"


def _list(v: dict[str, Any]) -> str:
    more = f", ... ({v['numel']:,} values)" if v["numel"] > len(v["values"]) else ""
    return "[" + ", ".join(f"{x:.4g}" for x in v["values"]) + more + "]"


def _shape(v: dict[str, Any]) -> str:
    return "x".join(map(str, v["shape"]))


def _head(r: dict[str, Any]) -> list[str]:
    src, inp = r["source"], r["input"]
    path = Path(src["path"]).resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    lines = [f"one training step of {src['spec']} ({src['kind']} {shown}), worked by hand",
             f"input: {inp['from']}, true class {inp['label']['class']!r} (index {inp['label']['index']})",
             f"  {inp['preprocessing']}", f"  x {_shape(inp)} = {_list(inp)}"]
    return lines + [f"  {note}" for note in r["notes"]]


def _forward_text(r: dict[str, Any]) -> list[str]:
    rows = r["forward"]
    name_w = max(len(row["layer"]) for row in rows)
    kind_w = max(len(row["kind"]) for row in rows)
    lines = ["", "forward (the network in training mode, as a training step runs it): each layer's output"]
    lines += [f"  {row['layer']:<{name_w}}  {row['kind']:<{kind_w}}  {_shape(row):<12} {_list(row)}" for row in rows]
    out = r["output"]
    soft, y, grad = out["softmax"], out["target"], out["gradient"]
    label = r["input"]["label"]["index"]
    lines += ["", f"softmax and loss ({out['loss']['name']}): p_i = exp(z_i - max z) / sum_j exp(z_j - max z); "
              f"{out['loss']['formula']}",
              f"  {'class':<8} {'logit z':>10} {'p':>10} {'y':>6} {'dL/dz by hand':>14} {'autograd':>12}"]
    classes = out["classes"]
    for i in range(len(classes)):
        mark = "  <- true class" if i == label else ""
        lines.append(f"  {classes[i][:8]:<8} {soft['logits'][i]:>10.4f} {soft['probs'][i]:>10.4f} {y[i]:>6.3g} "
                     f"{grad['by_hand'][i]:>14.6f} {grad['autograd'][i]:>12.6f}{mark}")
    loss = out["loss"]
    lines.append(f"  L = {_g(loss['by_hand'])} by hand, {_g(loss['torch'])} by torch (difference "
                 f"{loss['difference']:.1e})")
    lines.append(f"  {grad['rule']}; largest |by hand - autograd| = {grad['max_abs_diff']:.1e}")
    return lines


def _backward_text(r: dict[str, Any]) -> list[str]:
    chain, p = r["backward"]["chain"], r["backward"]["param"]
    lines = ["", "backward: dL/d(output) of each layer, from the top down (autograd's, captured by a hook on each "
             "output; by hand from the layer above where its local rule is simple)"]
    for row in chain:
        lines.append(f"  {row['layer']} ({row['kind']}, {_shape(row['autograd'])}): autograd {_list(row['autograd'])}")
        if "rule" in row:
            via = "from the loss" if row["through"] == "loss" else f"through {row['through']}"
            lines.append(f"    by hand {via}: {row['rule']}")
            lines.append(f"      = {_list(row['by_hand'])}; largest |difference| {row['max_abs_diff']:.1e}")
        else:
            lines.append(f"    (autograd's only: {row['autograd_only']})")
    lines += ["", f"the gradient of {p['param']}[{','.join(map(str, p['index']))}] (now {_g(p['value'])}):",
              f"  {p['formula']}"]
    for t in p["terms"]:
        at = ", ".join(f"{n} {i}" for n, i in zip(p["at"], t["at"], strict=True))
        lines.append(f"  {at}: {_g(t['upstream'])} * {_n(t['input'])} = {_g(t['product'])}" if "input" in t
                     else f"  {at}: {_g(t['upstream'])}")
    if p["n_terms"] > len(p["terms"]):
        lines.append(f"  ... {p['n_terms'] - len(p['terms'])} more terms ({p['n_terms']} in all, {p['nonzero']} of "
                     "them non-zero)")
    lines.append(f"  = {_g(p['by_hand'])} by hand; autograd's param.grad {_g(p['autograd'])}; difference "
                 f"{p['difference']:.1e}")
    return lines


def _update_text(r: dict[str, Any]) -> list[str]:
    u = r["update"]
    where = ", ".join(f"{h['symbol']} = {_g(h['value'])} ({h['key']})" for h in u["hyper"])
    lines = ["", f"update: {u['optimizer']} (torch.optim.{u['class']}), step {u['steps']} of {u['steps']} on this "
             f"image; the lr schedule is held where it is", f"  where {where}"]
    if u["hyper"][0]["value"] != u["config_lr"]:
        lines.append(f"  (lr is the schedule's, not optimizer.lr {_g(u['config_lr'])}: warmup or a checkpoint's decay)")
    if u["steps"] > 1:
        lines += _history_text(u["history"])
    lines.append(f"  w = {_g(u['w'])}, g = dL/dw = {_g(u['g'])}")
    width = max(len(line["symbol"]) for line in u["lines"])
    for line in u["lines"]:
        state = f"   torch's {line['state']}: {_g(line['torch'])}" if "state" in line else ""
        lines.append(f"  {line['symbol']:<{width}} = {line['formula']}")
        lines.append(f"  {'':<{width}} = {line['numbers']} = {_g(line['value'])}{state}")
    lines.append(f"  optimizer.step() gave {_g(u['new_value'])}; the formula gives {_g(u['by_formula'])} "
                 f"(difference {u['difference']:.1e})")
    return lines


def _history_text(history: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for h in history for k in h["after"]})
    lines = ["  " + f"{'step':>4} {'loss':>10} {'w before':>12} {'g':>12} {'w after':>12}"
             + "".join(f" {k:>14}" for k in keys)]
    for h in history:
        lines.append(f"  {h['step']:>4} {h['loss']:>10.5g} {h['w']:>12.6g} {h['g']:>12.6g} {h['new']:>12.6g}"
                     + "".join(f" {h['after'].get(k, math.nan):>14.6g}" for k in keys))
    return lines + [f"  the last step, worked by hand (state after step {len(history) - 1} going in):"]


def _network_text(r: dict[str, Any]) -> list[str]:
    if "network" not in r:
        return []
    steps = r["update"]["steps"]
    lines = ["", f"every weight: its value, its gradient in step 1, and its value after {steps} step(s)"]

    def rows(values: Any) -> str:
        if values is None:
            return "none (no gradient reached it)"
        if not isinstance(values, list):
            return f"{values:.4f}"
        return "[" + ", ".join(rows(v) for v in values) + "]"

    for p in r["network"]:
        lines.append(f"  {p['param']} ({'x'.join(map(str, p['shape']))})")
        lines += [f"    w      {rows(p['value'])}", f"    dL/dw  {rows(p['grad'])}", f"    after  {rows(p['after'])}"]
    return lines


def format_step(result: dict[str, Any]) -> str:
    """``cnnctl step``'s text: forward, softmax and loss, backward, the chosen weight's gradient, the update."""
    return "\n".join(_head(result) + _forward_text(result) + _backward_text(result) + _update_text(result)
                     + _network_text(result))
