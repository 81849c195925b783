"""The update: each optimizer's rule worked on one weight, next to a real ``optimizer.step()``.

Part of ``cnnctl step``: see ``cnnctl/insight/step/__init__.py``.
"""


from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cnnctl.insight.step.inputs import Setup
from cnnctl.insight.step.weight import Choice
from cnnctl.registry import Registry


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


def number(v: float) -> str:
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
    lines.append(_line("d", "g + wd*w", f"{number(r.g)} + {number(wd)}*{number(r.w)}", d))
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
            lines.append(_line("b", f"{s} (the first step starts the buffer at the gradient)", number(d), b,
                               "momentum_buffer", r.after.get("momentum_buffer")))
        else:
            b = mu * prev + d
            lines.append(_line("b", f"momentum*b + {s}", f"{number(mu)}*{number(prev)} + {number(d)}", b, "momentum_buffer",
                               r.after.get("momentum_buffer")))
        step, t = b, "b"
        if nesterov:
            step, t = d + mu * b, "v"
            lines.append(_line("v", f"{s} + momentum*b (Nesterov: the gradient plus a look ahead along b)",
                               f"{number(d)} + {number(mu)}*{number(b)}", step))
    new = r.w - lr * step
    lines.append(_line("w_new", f"w - lr*{t}", f"{number(r.w)} - {number(lr)}*{number(step)}", new))
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
    lines.append(_line("s", f"s + {s}^2 (every squared gradient so far)", f"{number(prev)} + {number(d)}^2", total, "sum",
                       r.after["sum"]))
    new = r.w - lr * d / (math.sqrt(total) + eps)
    lines.append(_line("w_new", f"w - lr*{s}/(sqrt(s) + eps)", f"{number(r.w)} - {number(lr)}*{number(d)}/(sqrt({number(total)}) + "
                       f"{number(eps)})", new))
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
                       f"{number(alpha)}*{number(prev)} + {number(1 - alpha)}*{number(d)}^2", v, "square_avg", r.after["square_avg"]))
    step, numbers = d / (math.sqrt(v) + eps), f"{number(d)}/(sqrt({number(v)}) + {number(eps)})"
    t = f"{s}/(sqrt(v) + eps)"
    if mu:
        prev_b = r.before.get("momentum_buffer", 0.0)
        step = mu * prev_b + step
        lines.append(_line("b", f"momentum*b + {t}", f"{number(mu)}*{number(prev_b)} + {numbers}", step, "momentum_buffer",
                           r.after["momentum_buffer"]))
        t, numbers = "b", number(step)
    new = r.w - lr * step
    lines.append(_line("w_new", f"w - lr*{t}", f"{number(r.w)} - {number(lr)}*{numbers}", new))
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
                               f"{number(r.w)}*(1 - {number(lr)}*{number(wd)})", w))
    else:
        d, s = _decayed(lines, r, wd)
    m_prev, v_prev = r.before.get("exp_avg", 0.0), r.before.get("exp_avg_sq", 0.0)
    m, v = b1 * m_prev + (1 - b1) * d, b2 * v_prev + (1 - b2) * d * d
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    new = w - lr * m_hat / (math.sqrt(v_hat) + eps)
    lines += [
        _line("m", f"beta1*m + (1 - beta1)*{s} (the gradient's running mean)",
              f"{number(b1)}*{number(m_prev)} + {number(1 - b1)}*{number(d)}", m, "exp_avg", r.after["exp_avg"]),
        _line("v", f"beta2*v + (1 - beta2)*{s}^2 (its running mean square)",
              f"{number(b2)}*{number(v_prev)} + {number(1 - b2)}*{number(d)}^2", v, "exp_avg_sq", r.after["exp_avg_sq"]),
        _line("m_hat", f"m/(1 - beta1^t), t = {t} (bias correction: m and v start at 0)",
              f"{number(m)}/(1 - {number(b1)}^{t})", m_hat),
        _line("v_hat", "v/(1 - beta2^t)", f"{number(v)}/(1 - {number(b2)}^{t})", v_hat),
        _line("w_new", "w - lr*m_hat/(sqrt(v_hat) + eps)",
              f"{number(w)} - {number(lr)}*{number(m_hat)}/(sqrt({number(v_hat)}) + {number(eps)})", new),
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


def worked_update(setup: Setup, choice: Choice, records: list[StepRecord], group: dict[str, Any]) -> dict[str, Any]:
    name = setup.config.optimizer.name
    hyper, lines, by_formula = UPDATES.get(name)(group, records[-1])
    last = records[-1]
    return {"optimizer": name, "class": type(setup.optimizer).__name__,
            "param": choice.shown, "steps": len(records), "hyper": hyper, "lines": lines, "w": last.w,
            "g": last.g, "by_formula": by_formula, "new_value": last.new, "difference": by_formula - last.new,
            "config_lr": setup.config.optimizer.lr, "history": [asdict(r) for r in records]}


