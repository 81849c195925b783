"""Each optimizer's update rule as torch.optim computes it, its symbols and the notes' words on it (``--explain``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Rule:
    """An optimizer's update as ``torch.optim`` computes it (g is the gradient, t the step, from 1), which config
    key is which symbol, the idea in a sentence, and the weakness the study notes name."""

    update: tuple[str, ...]
    symbols: tuple[tuple[str, str], ...]
    idea: str
    weakness: str


RULES: dict[str, Rule] = {
    "sgd": Rule(("g = ∇f(θ) + λθ", "b = μ·b + g            (b = g at t = 1)",
                 "θ ← θ − η·b            (nesterov: θ ← θ − η·(g + μ·b))"),
                (("lr", "η"), ("momentum", "μ"), ("weight_decay", "λ"), ("nesterov", "the bracketed rule")),
                "a step down the gradient; with μ > 0 the step is a decaying sum of past gradients (momentum), "
                "which keeps going where the gradients agree and cancels where they alternate.",
                "plain SGD (μ = 0) is pushed about by noisy samples and can get stuck in a local minimum; "
                "momentum damps the noise."),
    "adagrad": Rule(("g = ∇f(θ) + λθ", "s = s + g²", "θ ← θ − η·g / (√s + ε)"),
                    (("lr", "η"), ("weight_decay", "λ"), ("eps", "ε")),
                    "a rate of its own for each parameter, η/√s: smaller where the gradients have been large.",
                    "s only grows, so the rate only falls, and it can fall so fast that learning stops before "
                    "the minimum is reached."),
    "rmsprop": Rule(("g = ∇f(θ) + λθ", "v = α·v + (1 − α)·g²", "b = μ·b + g / (√v + ε)",
                     "θ ← θ − η·b            (μ = 0: θ ← θ − η·g / (√v + ε))"),
                    (("lr", "η"), ("alpha", "α"), ("momentum", "μ"), ("weight_decay", "λ"), ("eps", "ε")),
                    "Adagrad with its sum replaced by a moving average that forgets at the rate α, so the rate "
                    "can rise again.",
                    "the notes name none: the decay coefficient α is their answer to Adagrad's."),
    "adam": Rule(("g = ∇f(θ) + λθ", "m = β₁·m + (1 − β₁)·g", "v = β₂·v + (1 − β₂)·g²",
                  "m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)", "θ ← θ − η·m̂ / (√v̂ + ε)"),
                 (("lr", "η"), ("betas", "(β₁, β₂)"), ("weight_decay", "λ"), ("eps", "ε")),
                 "momentum (m) and RMSProp's average (v) together; the bias corrections undo their start at 0, "
                 "so the first steps are not too small.",
                 "the notes name none."),
    "adamw": Rule(("θ ← θ·(1 − ηλ)", "g = ∇f(θ)", "m, v, m̂, v̂ as Adam", "θ ← θ − η·m̂ / (√v̂ + ε)"),
                  (("lr", "η"), ("betas", "(β₁, β₂)"), ("weight_decay", "λ"), ("eps", "ε")),
                  "Adam with the weight decay taken out of the gradient, so that √v̂ does not divide it; with "
                  "weight_decay 0 it is Adam, step for step.",
                  "not in the notes."),
}


