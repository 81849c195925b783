"""One step: the forward pass, the backward pass and the update, each worked by hand and by PyTorch.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cnnctl.config import Config
from cnnctl.errors import UsageError, first_line
from cnnctl.insight.step.backward import chain, max_diff, record_calls, shown_values
from cnnctl.insight.step.inputs import Setup, make_setup
from cnnctl.insight.step.limits import MAX_STEPS, TINY
from cnnctl.insight.step.loss_rules import LossRule, loss_rule
from cnnctl.insight.step.updates import real_steps, worked_update
from cnnctl.insight.step.weight import choose_param, param_gradient
from cnnctl.training.losses import create_loss


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
        return _step(make_setup(source, list(overrides or []), image, label), param, steps)
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
                  "preprocessing": preprocessing(setup.spec), **shown_values(x, every)},
        "forward": [{"layer": c.name, "kind": type(c.module).__name__, **shown_values(c.output, every)} for c in calls],
        "output": output,
        "backward": {"chain": chain(model, calls, 0 if every else choice.call, every,
                                     (logits.detach(), torch.tensor(output["gradient"]["by_hand"]), rule.gradient)),
                     "param": param_gradient(choice, calls)},
        "update": worked_update(setup, choice, records, group),
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
                         "max_abs_diff": max_diff(hand, autograd[0])}}


def _network(model: nn.Module, twin: nn.Module) -> list[dict[str, Any]]:
    """Every parameter of a tiny network: its value, autograd's gradient and its value after the steps."""
    after = dict(twin.named_parameters())
    return [{"param": name, "shape": list(p.shape), "value": p.detach().double().tolist(),
             "grad": p.grad.double().tolist() if p.grad is not None else None,
             "after": after[name].detach().double().tolist()} for name, p in model.named_parameters()]


