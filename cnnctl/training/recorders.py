"""Instruments that show why a network learns or does not: gradient flow per layer, dead and saturated units.

``GradientRecorder`` follows training: for every layer with parameters, in forward order, the gradient's L2 norm
and the update-to-weight ratio ``||w_after - w_before|| / ||w_before||`` (the step the optimizer really took,
momentum, Adam's scaling and weight decay included; about 1e-3 is the usual health mark, cs231n), sampled every
Nth step and averaged per epoch. ``activation_stats`` runs a model over a split and counts, per activation layer,
the units that were never positive (dead ReLUs) and the outputs that sit at a sigmoid's or tanh's bounds.

Where the loop calls the recorder (one optimizer step)::

    loss.backward()                                  # or scaler.scale(loss).backward()
    if scaler is not None and recorder.is_sampled(state.step):
        scaler.unscale_(optimizer)                   # grads are scaled until then; scaler.step won't unscale twice
    recorder.before_optimizer_step(state.step)       # before clip_grad_norm_: the raw gradient
    clip_grad_norm_(...)                             # (if any)
    optimizer.step()                                 # or scaler.step(optimizer); scaler.update()
    recorder.after_optimizer_step(state.step)
    ...
    rows = recorder.end_epoch(epoch)                 # once per epoch: the only host sync

``state.step`` is the step's index within its epoch, so the first step of every epoch is sampled and a resumed
epoch samples the same steps as an uninterrupted one.

The plots are drawn on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot: a notebook's backend and
open figures stay as they were.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

GRADIENT_COLUMNS = ["epoch", "layer", "grad_norm", "update_ratio", "weight_norm", "steps_sampled"]
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU)
# (low, high) bounds of the squashing activations; an output within SATURATION_TOL of either is saturated.
SQUASHERS: dict[type[nn.Module], tuple[float, float]] = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}
SATURATION_TOL = 0.02


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: through DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def layers_with_params(model: nn.Module, example: torch.Tensor | None = None, *,
                       include_frozen: bool = False) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters directly (``include_frozen``: or frozen ones), in forward order.

    Without ``example`` the order is registration order, which is the forward order of ``nn.Sequential`` stacks
    (custom nets, VGG, LeNet) and of torchvision's ResNets (``conv1, bn1, layer1..4, fc``; a block's downsample
    is registered, and runs, after its convolutions). With ``example`` the order is that of a real forward pass
    (eval mode, no grad), for nets whose ``forward`` calls modules in another order; modules the pass did not
    reach go last.
    """
    model = unwrap(model)
    found = [(name, m) for name, m in model.named_modules()
             if any(p.requires_grad or include_frozen for p in m.parameters(recurse=False))]
    if example is None:
        return found
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: seen.append(mod) if mod not in seen else None)
               for _, m in found]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    rank = {id(m): i for i, m in enumerate(seen)}
    return sorted(found, key=lambda item: rank.get(id(item[1]), len(seen)))


class GradientRecorder:
    """Per-layer gradient norm and update-to-weight ratio, sampled every ``every_n_steps`` steps, per epoch.

    A layer is a module owning trainable parameters directly (a conv's weight and bias together); its norms are
    over all of them, as one vector. Frozen parameters are left out, unless ``include_frozen`` (a training run,
    where ``train.freeze`` may release them later): then a layer whose parameters are all frozen at the end of an
    epoch is marked ``frozen`` in its row, so a plot tells it from a vanishing gradient. A parameter whose
    ``grad`` is None on a sampled step adds nothing, and a layer with no gradient at all that step is not
    counted in its mean.

    Cost: nothing on steps that are not sampled. On a sampled step, one norm per parameter tensor (fused),
    a copy of the weights between the two calls, and a few small device ops; the sums stay on the device and are
    read once, in ``end_epoch``.
    """

    def __init__(self, model: nn.Module, every_n_steps: int = 10, *, example: torch.Tensor | None = None,
                 include_frozen: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, not {every_n_steps}")
        self.every_n_steps = every_n_steps
        layers = layers_with_params(model, example, include_frozen=include_frozen)
        self.layer_names = [name or type(m).__name__ for name, m in layers]
        self.params: list[nn.Parameter] = []
        owner: list[int] = []
        for i, (_, m) in enumerate(layers):
            for p in m.parameters(recurse=False):
                if p.requires_grad or include_frozen:
                    self.params.append(p)
                    owner.append(i)
        self._owner = owner
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._index_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        self._mask_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        self._before: list[torch.Tensor] | None = None
        self._counted: torch.Tensor | None = None  # layers this sampled step counts for (on the device)
        self.rows: list[dict[str, Any]] = []
        self._reset()

    # ------------------------------------------------------------ per step

    def is_sampled(self, step: int) -> bool:
        """Whether the step with index ``step`` within its epoch is recorded."""
        return step % self.every_n_steps == 0

    def before_optimizer_step(self, step: int) -> None:
        """Read the gradients (unscaled: see the module docstring) and keep a copy of the weights."""
        if not self.is_sampled(step) or not self.params:
            return
        with torch.no_grad():
            has = [p.grad is not None for p in self.params]
            grads = [p.grad for p in self.params if p.grad is not None]
            layer_has = [False] * len(self.layer_names)
            for i, h in zip(self._owner, has, strict=True):
                layer_has[i] = layer_has[i] or h
            if grads:
                squares = torch.stack(torch._foreach_norm(grads)).float().square()
                grad_norm = self._by_layer(squares, tuple(has)).sqrt()
            else:
                grad_norm = torch.zeros(len(self.layer_names), device=self.device)
            # A layer without gradient this step, or with a non-finite one (a step GradScaler skips), is left out
            # of the means; decided on the device, so no sync.
            counted = self._mask(tuple(layer_has)) & torch.isfinite(grad_norm)
            self._sums[0] += torch.where(counted, grad_norm, torch.zeros_like(grad_norm))
            self._sums[3] += counted.float()
            self._counted = counted
            self._before = [p.detach().clone() for p in self.params]

    def after_optimizer_step(self, step: int) -> None:
        """Measure the step the optimizer took against the weights it started from."""
        if self._before is None or not self.is_sampled(step):
            return
        with torch.no_grad():
            after = [p.detach() for p in self.params]
            delta = torch._foreach_sub(after, self._before)
            everything = (True,) * len(self.params)
            moved = self._by_layer(torch.stack(torch._foreach_norm(delta)).float().square(), everything).sqrt()
            weight = self._by_layer(torch.stack(torch._foreach_norm(self._before)).float().square(), everything).sqrt()
            # A layer whose weights are all zero has no ratio to speak of: count 0 for it, not inf.
            ratio = torch.where(weight > 0, moved / weight.clamp_min(torch.finfo(torch.float32).tiny),
                                torch.zeros_like(weight))
            self._sums[1] += torch.where(self._counted, ratio, torch.zeros_like(ratio))
            self._sums[2] += torch.where(self._counted, weight, torch.zeros_like(weight))
        self._before = None
        self._counted = None

    def _mask(self, layer_has: tuple[bool, ...]) -> torch.Tensor:
        mask = self._mask_cache.get(layer_has)
        if mask is None:
            mask = self._mask_cache[layer_has] = torch.tensor(layer_has, device=self.device)
        return mask

    def _by_layer(self, per_param: torch.Tensor, has: tuple[bool, ...]) -> torch.Tensor:
        index = self._index_cache.get(has)
        if index is None:  # built once per pattern of present grads, so no host-to-device copy per step
            index = torch.tensor([o for o, h in zip(self._owner, has, strict=True) if h], device=self.device)
            self._index_cache[has] = index
        return torch.zeros(len(self.layer_names), device=self.device).index_add_(0, index, per_param)

    # ------------------------------------------------------------ per epoch

    def end_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """The epoch's rows (one per layer, forward order; means over the sampled steps) and a fresh start.

        ``epoch`` is 1-based, as in metrics.csv. A layer with no sampled gradient gets None values.
        """
        sums = self._sums.cpu().tolist()  # the one host sync of the epoch
        trains = [False] * len(self.layer_names)
        for i, p in zip(self._owner, self.params, strict=True):
            trains[i] = trains[i] or p.requires_grad
        rows = []
        for i, name in enumerate(self.layer_names):
            n = int(sums[3][i])
            rows.append({"epoch": epoch, "layer": name,
                         "grad_norm": sums[0][i] / n if n else None,
                         "update_ratio": sums[1][i] / n if n else None,
                         "weight_norm": sums[2][i] / n if n else None,
                         "steps_sampled": n, "frozen": not trains[i]})
        self.rows.extend(rows)
        self._reset()
        return rows

    def _reset(self) -> None:
        # rows: sums of grad_norm, update_ratio, weight_norm over the counted steps, and their count
        self._sums = torch.zeros(4, len(self.layer_names), device=self.device)

    # ------------------------------------------------------------ state and output

    def state_dict(self) -> dict[str, Any]:
        """The epoch's partial sums (as saved, so a resumed epoch ends with the same figures) and past rows."""
        return {"every_n_steps": self.every_n_steps, "layers": list(self.layer_names), "sums": self._sums.cpu(),
                "rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["layers"]) != self.layer_names:
            raise ValueError(f"the saved gradient record has layers {state['layers']}, this model "
                             f"{self.layer_names}; it belongs to another model")
        self._sums = state["sums"].to(self.device, torch.float32).clone()
        self.rows = [dict(r) for r in state.get("rows", [])]

    def write_csv(self, path: str | Path) -> Path:
        """``gradients.csv``: one row per epoch and layer, columns ``GRADIENT_COLUMNS`` (and ``frozen``, 0 or 1, when
        a layer was frozen: ``train.freeze``), written atomically."""
        from cnnctl.training.checkpoint import write_text

        columns = GRADIENT_COLUMNS + (["frozen"] if any(r.get("frozen") for r in self.rows) else [])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
        write_text(path, buffer.getvalue())
        return Path(path)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return repr(value) if isinstance(value, float) else value


def read_gradients(path: str | Path) -> list[dict[str, Any]]:
    """A gradients.csv back as rows (floats, None where empty), for plots of finished runs."""
    with Path(path).open(newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            row: dict[str, Any] = {"epoch": int(r["epoch"]), "layer": r["layer"], "steps_sampled": int(r["steps_sampled"])}
            row.update({k: float(r[k]) if r[k] else None for k in ("grad_norm", "update_ratio", "weight_norm")})
            row["frozen"] = r.get("frozen") == "1"
            rows.append(row)
    return rows


def gradient_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """For summary.json: the last epoch's gradient norm of the first and last layer and their ratio (the
    vanishing-gradient figure: orders of magnitude below 1 when the gradient fades toward the input)."""
    if not rows:
        return None
    last_epoch = max(r["epoch"] for r in rows)
    layers = [r for r in rows if r["epoch"] == last_epoch and r["grad_norm"] is not None]
    if not layers:
        return None
    first, last = layers[0], layers[-1]
    ratio = first["grad_norm"] / last["grad_norm"] if last["grad_norm"] else None
    return {"epoch": last_epoch, "first_layer": first["layer"], "last_layer": last["layer"],
            "first_grad_norm": first["grad_norm"], "last_grad_norm": last["grad_norm"], "first_over_last": ratio}


def tensorboard_scalars(gradient_rows: Sequence[dict[str, Any]] = (),
                        activation_rows: Sequence[dict[str, Any]] = ()) -> list[tuple[str, float]]:
    """``(tag, value)`` pairs for one epoch's ``writer.add_scalar(tag, value, epoch)``: ``grad_norm/LAYER``,
    ``update_ratio/LAYER``, ``dead_fraction/LAYER``, ``saturated_fraction/LAYER`` (None values left out)."""
    pairs = [(f"{key}/{r['layer']}", float(r[key])) for r in gradient_rows for key in ("grad_norm", "update_ratio")
             if r.get(key) is not None]
    pairs += [(f"{key}/{r['layer']}", float(r[key])) for r in activation_rows
              for key in ("dead_fraction", "saturated_fraction") if r.get(key) is not None]
    return pairs


# ---------------------------------------------------------------- activations


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, RECTIFIERS):
        return "rectifier"
    if type(module) in SQUASHERS:
        return "squasher"
    return None


def activation_stats(model: nn.Module, batches: Iterable[Any], *, tol: float = SATURATION_TOL) -> list[dict[str, Any]]:
    """Per activation layer, over every batch of ``batches`` (``(x, y)`` pairs or plain inputs), in eval mode:

    - rectifiers (ReLU, LeakyReLU, GELU, ...): ``dead`` units, those never positive for any image. A unit is a
      channel of a feature map (``[N, C, H, W]``: never positive at any position) and a feature of a vector.
      A channel, not a channel at one position, because the filter is what lives or dies: its weights get no
      gradient over the split exactly when the channel is positive nowhere, while one position can be negative
      everywhere for reasons of the data alone (a digit's empty corners after zero padding).
      ``dead_units`` lists their indices (channels), which ``visualize`` can name; ``active_fraction`` is the
      share of all outputs that are positive. (A LeakyReLU or GELU unit that is
      never positive still passes a small gradient: it is inactive rather than dead.)
    - sigmoid and tanh: ``saturated_fraction``, the share of outputs within ``tol`` of the bounds, where the
      local gradient is below 0.02 (sigmoid) or 0.04 (tanh).

    A module called several times in one forward (torchvision's BasicBlock reuses its ReLU) gets one entry per
    call, the later ones named ``NAME#2``, ``NAME#3``. Rows come in the order of the first forward.
    """
    model = unwrap(model)
    watched = [(name or type(m).__name__, m) for name, m in model.named_modules() if _kind(m) is not None]
    stats: dict[str, dict[str, Any]] = {}
    calls: dict[int, int] = {}

    def hook(name: str, module: nn.Module, out: torch.Tensor) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        key = name if calls[id(module)] == 1 else f"{name}#{calls[id(module)]}"
        _accumulate(stats, key, module, out.detach(), tol)

    handles = [m.register_forward_hook(lambda mod, _i, out, name=name: hook(name, mod, out)) for name, m in watched]
    pre = model.register_forward_pre_hook(lambda *_: calls.clear())
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                model(batch[0] if isinstance(batch, tuple | list) else batch)
    finally:
        model.train(was_training)
        pre.remove()
        for h in handles:
            h.remove()
    return [_row(s) for s in stats.values()]  # one sync per layer, after the pass


def _accumulate(stats: dict[str, dict[str, Any]], key: str, module: nn.Module, out: torch.Tensor, tol: float) -> None:
    """Add one call's output to the running sums of layer ``key`` (on the output's device: no sync per batch)."""
    kind = _kind(module)
    s = stats.get(key)
    if s is None:
        units = out.shape[1] if out.dim() >= 2 else 1
        s = stats[key] = {"layer": key, "type": type(module).__name__, "units": units, "values": 0,
                          "_alive": torch.zeros(units, dtype=torch.bool, device=out.device),
                          "_positive": torch.zeros((), dtype=torch.int64, device=out.device),
                          "_saturated": torch.zeros((), dtype=torch.int64, device=out.device), "_kind": kind}
    s["values"] += out.numel()
    if kind == "rectifier":
        positive = out > 0
        per_unit = positive.transpose(0, 1).reshape(s["units"], -1) if out.dim() >= 2 else positive.reshape(1, -1)
        s["_alive"] |= per_unit.any(dim=1)
        s["_positive"] += positive.sum()
    else:
        low, high = SQUASHERS[type(module)]
        s["_saturated"] += ((out <= low + tol) | (out >= high - tol)).sum()


def _row(s: dict[str, Any]) -> dict[str, Any]:
    """A layer's running sums as its row of statistics."""
    row = {k: v for k, v in s.items() if not k.startswith("_")}
    if s["_kind"] == "rectifier":
        dead_units = torch.nonzero(~s["_alive"]).flatten().tolist()
        row.update(dead=len(dead_units), dead_fraction=len(dead_units) / s["units"], dead_units=dead_units,
                   active_fraction=int(s["_positive"]) / max(s["values"], 1), saturated_fraction=None)
    else:
        row.update(dead=None, dead_fraction=None, dead_units=None, active_fraction=None,
                   saturated_fraction=int(s["_saturated"]) / max(s["values"], 1))
    return row
