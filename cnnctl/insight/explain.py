"""From logits to probabilities to loss, one image at a time, with every step shown (``predict --explain``).

The network's last layer gives one number per class, its *logits* z. Softmax turns them into probabilities,
p_i = exp(z_i) / sum_j exp(z_j), and the training loss is the cross-entropy of the true class t,
-log p_t = -(z_t - logsumexp(z)): log-softmax followed by the negative log-likelihood, which is what
``torch.nn.CrossEntropyLoss`` computes. An untrained network that spreads its bets evenly gives p_t = 1/C,
hence a first loss near ln C (2.30 for 10 classes).

exp(1000) overflows a float64 (the largest is about 1.8e308 = exp(709.8)), so softmax is computed the safe way:
subtract the largest logit first. The shift changes nothing (it cancels between numerator and denominator),
every exponent is then <= 0, each exp lies in (0, 1], and the sum is at least 1 (the largest term is exp(0)),
so nothing overflows and nothing divides by zero.

Information theory names the same numbers. The entropy of the prediction, H(p) = -sum_i p_i log p_i, measures its
uncertainty: 0 for a network certain of one class, ln C when it spreads its bets evenly. The cross-entropy of the
target y against the prediction splits as H(y, p) = H(y) + KL(y || p): the target's own entropy plus how far the
prediction is from it. A one-hot target has H(y) = 0, so the training loss is exactly the KL divergence, and it is
0 only when p puts everything on the true class.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def softmax_steps(logits: list[float] | torch.Tensor) -> dict[str, Any]:
    """The numerically safe softmax of one image's logits, step by step, in float64.

    Returns ``{"logits", "max_logit", "shifted", "exp", "sum_exp", "log_sum_exp", "probs"}``: ``shifted`` is
    logits - max, ``exp`` its exponentials, ``probs`` = exp / sum_exp, ``log_sum_exp`` = max + log(sum_exp).
    """
    z = torch.as_tensor(logits, dtype=torch.float64).flatten()
    if z.numel() == 0:
        raise ValueError("softmax of no logits")
    top = z.max()
    shifted = z - top
    e = shifted.exp()
    total = e.sum()
    return {
        "logits": z.tolist(),
        "max_logit": float(top),
        "shifted": shifted.tolist(),
        "exp": e.tolist(),
        "sum_exp": float(total),
        "log_sum_exp": float(top + total.log()),
        "probs": (e / total).tolist(),
    }


def cross_entropy(steps: dict[str, Any], label: int) -> float:
    """-log p(label) computed as logsumexp(z) - z_label: exact where p underflows to 0 (loss in the thousands)."""
    return steps["log_sum_exp"] - steps["logits"][label]


def entropy(steps: dict[str, Any]) -> float:
    """H(p) = -sum_i p_i log p_i in nats, with log p_i = z_i - logsumexp(z) (exact where p_i underflows; 0 log 0 = 0)."""
    lse = steps["log_sum_exp"]
    return -sum(p * (z - lse) for p, z in zip(steps["probs"], steps["logits"], strict=True) if p > 0)


def information(steps: dict[str, Any], label: int) -> dict[str, float]:
    """The identity H(y, p) = H(y) + KL(y || p) with its numbers, for the one-hot target y of ``label``: each term
    summed over the classes as written (0 log 0 = 0), not taken from the others."""
    lse = steps["log_sum_exp"]
    log_p = [z - lse for z in steps["logits"]]
    y = [1.0 if i == label else 0.0 for i in range(len(log_p))]
    target_entropy = 0.0 - sum(t * math.log(t) for t in y if t > 0)  # 0.0 - : never "-0.0000"
    kl = sum(t * (math.log(t) - lp) for t, lp in zip(y, log_p, strict=True) if t > 0)
    cross = -sum(t * lp for t, lp in zip(y, log_p, strict=True) if t > 0)
    return {"target_entropy": target_entropy, "kl_divergence": kl, "cross_entropy": cross}


def explain_logits(logits: list[float] | torch.Tensor, classes: list[str], label: int | None = None) -> dict[str, Any]:
    """What ``predict --explain`` reports for one image: the softmax steps, the prediction's entropy and, with a known
    label, its loss and the identity cross-entropy = entropy of the target + KL divergence."""
    steps = softmax_steps(logits)
    out: dict[str, Any] = {"classes": list(classes), **steps, "uniform_loss": math.log(len(classes)),
                           "entropy": entropy(steps)}
    if label is not None:
        out["label"] = {"class": classes[label], "index": label}
        out["loss"] = cross_entropy(steps, label)
        out["information"] = information(steps, label)
    return out


def format_explanation(explanation: dict[str, Any], classes: list[str], preprocessing: str) -> str:
    """The text a learner reads: preprocessing, logits, the safe softmax, the loss when the true class is known."""
    z, shifted, e, p = explanation["logits"], explanation["shifted"], explanation["exp"], explanation["probs"]
    width = max(len(c) for c in classes)
    lines = [f"  preprocessing: {preprocessing}",
             f"  softmax, the safe way: subtract the largest logit ({explanation['max_logit']:.4g}) so every exponent "
             "is <= 0 and nothing overflows; then p = exp / sum",
             f"  {'class':<{width}}  {'logit z':>10}  {'z - max':>10}  {'exp':>10}  {'p':>8}"]
    for i in sorted(range(len(classes)), key=lambda i: -p[i]):
        lines.append(f"  {classes[i]:<{width}}  {z[i]:>10.4f}  {shifted[i]:>10.4f}  {e[i]:>10.4g}  {p[i]:>8.2%}")
    lines.append(f"  sum of exp = {explanation['sum_exp']:.6g}; log-sum-exp = {explanation['log_sum_exp']:.6g}")
    n = len(classes)
    lines.append(f"  entropy of the prediction H(p) = -sum p log p = {explanation['entropy']:.4f} nats (0: certain of "
                 f"one class; ln {n} = {explanation['uniform_loss']:.4f}: even bets)")
    if "loss" in explanation:
        label = explanation["label"]
        lines.append(f"  cross-entropy loss for true class {label['class']!r}: -log p = logsumexp(z) - z_true = "
                     f"{explanation['loss']:.4f} (an untrained network that spreads its bets evenly over {n} classes "
                     f"scores ln {n} = {explanation['uniform_loss']:.4f})")
        info = explanation["information"]
        lines.append(f"  as information: cross-entropy H(y, p) = H(y) + KL(y || p) = {info['target_entropy']:.4f} + "
                     f"{info['kl_divergence']:.4f} = {info['cross_entropy']:.4f} (a one-hot target has no entropy of "
                     "its own: the whole loss is the KL divergence, 0 only when p puts everything on the true class)")
    else:
        lines.append(f"  (give --label CLASS or --labels-from-folders for this image's cross-entropy loss; an untrained "
                     f"network's is about ln {n} = {explanation['uniform_loss']:.4f})")
    return "\n".join(lines)


def confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, limit: int = 32) -> list[dict[str, Any]]:
    """The most confidently wrong predictions, most confident first: index, true, predicted and its probability."""
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    # stable order: by confidence, then by index, so ties come out the same on every run
    order = sorted(wrong.tolist(), key=lambda i: (-float(conf[i]), i))[:limit]
    return [{"index": i, "true": int(labels[i]), "pred": int(pred[i]), "prob": float(conf[i]),
             "true_prob": float(probs[i, labels[i]])} for i in order]


def confused_pairs(confusion: list[list[int]], classes: list[str], limit: int = 5) -> list[dict[str, Any]]:
    """The off-diagonal cells of a confusion matrix (rows true, columns predicted) with the most images."""
    cells = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[t], "pred": classes[p], "count": count} for count, t, p in cells[:limit]]
