"""Property-based tests (Hypothesis) where the input space is large and the rule is simple: conv/pool output sizes
against a real forward pass, ``--set`` parsing round trips, the stratified split's per-class counts, and the
confusion matrix and metrics against references. Deterministic (derandomize) and kept small."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cnnctl.config import ModelConfig, apply_overrides, parse_override
from cnnctl.data.base import stratified_indices
from cnnctl.errors import CnnctlError
from cnnctl.training.metrics import EvalAccumulator, confusion_matrix

FEW = settings(max_examples=40, derandomize=True, deadline=None)


# ---------------------------------------------------------------- conv / pool output size


@FEW
@given(kind=st.sampled_from(["conv", "maxpool", "avgpool", "sumpool"]), height=st.integers(1, 20),
       width=st.integers(1, 20), kernel=st.integers(1, 7), stride=st.integers(1, 3), padding=st.integers(0, 3))
def test_layer_output_size_is_the_formula_and_what_torch_computes(kind, height, width, kernel, stride, padding):
    from cnnctl.models.registry import create_model

    args = {"kernel": kernel, "stride": stride, "padding": padding}
    if kind == "conv":
        args["out"] = 3
    layers = [{kind: args}, "flatten", "linear"]
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    if kind != "conv" and padding > kernel // 2:  # a pool whose padding exceeds half its kernel: refused at load
        with pytest.raises(ValidationError, match="padding .* must be at most half the kernel"):
            ModelConfig(arch="custom", layers=layers)
        return
    cfg = ModelConfig(arch="custom", layers=layers)
    if out_h < 1 or out_w < 1:
        with pytest.raises(CnnctlError):  # named and explained, never a torch traceback
            create_model(cfg, in_channels=2, image_size=(height, width), num_classes=4)
        return
    model = create_model(cfg, in_channels=2, image_size=(height, width), num_classes=4).eval()
    channels = 3 if kind == "conv" else 2
    [linear] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear.in_features == channels * out_h * out_w
    seen = []
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d)))
    first.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    with torch.no_grad():
        assert model(torch.zeros(2, 2, height, width)).shape == (2, 4)
    assert seen == [(2, channels, out_h, out_w)]


# ---------------------------------------------------------------- --set parsing

# a key part that is all digits reads as a list index, which --set refuses with its own message (tested elsewhere)
KEY_PART = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8).filter(
    lambda part: not part.isdigit())
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def render(value) -> str:
    """A value as one line of YAML, as a person would type it after ``--set KEY=``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...")


@FEW
@given(keys=st.lists(KEY_PART, min_size=1, max_size=4), value=VALUES)
def test_set_round_trips_any_key_and_yaml_value(keys, value):
    item = ".".join(keys) + "=" + render(value)
    assert parse_override(item) == (keys, value)
    node = apply_overrides({}, [item])
    for key in keys[:-1]:
        node = node[key]
    assert node == {keys[-1]: value}


@FEW
@given(value=st.text(alphabet="ab=/ .:", min_size=1, max_size=12).filter(lambda t: t.strip() == t and "=" in t))
def test_set_splits_at_the_first_equals_sign(value):
    keys, parsed = parse_override(f"data.root={render(value)}")
    assert keys == ["data", "root"] and parsed == value


# ---------------------------------------------------------------- stratified split


@FEW
@given(counts=st.lists(st.integers(2, 30), min_size=2, max_size=6), fraction=st.floats(0.05, 0.4),
       seed=st.integers(0, 2**31))
def test_stratified_split_per_class_counts(counts, fraction, seed):
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    n = len(labels)
    n_held = min(n - 1, max(1, round(n * fraction)))
    exact = [Fraction(c * n_held, n) for c in counts]
    assume(all(math.ceil(e) <= c - 1 for e, c in zip(exact, counts, strict=True)))  # every class keeps one

    kept, held = stratified_indices(labels, fraction, seed)

    assert torch.equal(kept, kept.sort().values) and torch.equal(held, held.sort().values)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(n))
    got = torch.bincount(labels[held], minlength=len(counts)).tolist()
    assert sum(got) == n_held
    for g, e in zip(got, exact, strict=True):
        assert math.floor(e) <= g <= math.floor(e) + 1  # each class gives its share, rounded
    up = [e % 1 for g, e in zip(got, exact, strict=True) if g > math.floor(e)]
    down = [e % 1 for g, e in zip(got, exact, strict=True) if g == math.floor(e)]
    assert not up or not down or min(up) >= max(down)  # leftover places go to the largest remainders
    assert torch.equal(held, stratified_indices(labels, fraction, seed)[1])  # seeded


# ---------------------------------------------------------------- confusion matrix and metrics


@FEW
@given(data=st.data(), num_classes=st.integers(1, 8))
def test_confusion_matrix_matches_sklearn(data, num_classes):
    n = data.draw(st.integers(1, 60))
    targets = data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    preds = data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    cm = confusion_matrix(torch.tensor(preds), torch.tensor(targets), num_classes)
    assert cm.dtype == torch.int64
    assert cm.tolist() == sk_confusion_matrix(targets, preds, labels=list(range(num_classes))).tolist()


@FEW
@given(num_classes=st.integers(2, 8), n=st.integers(1, 80), flush_rows=st.integers(1, 100), chunk=st.integers(1, 30),
       seed=st.integers(0, 1000))
def test_accumulated_metrics_match_a_direct_computation(num_classes, n, flush_rows, chunk, seed):
    """Buffered batches (any flush size, any batch size) give the numbers of one pass over all the logits."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=g) * 3
    targets = torch.randint(0, num_classes, (n,), generator=g)
    acc = EvalAccumulator(num_classes, torch.device("cpu"), flush_rows=flush_rows)
    for start in range(0, n, chunk):
        acc.update(logits[start: start + chunk], targets[start: start + chunk])
    result = acc.result([str(i) for i in range(num_classes)])
    preds = logits.argmax(1)
    assert result["n"] == n
    assert result["confusion_matrix"] == sk_confusion_matrix(targets, preds, labels=list(range(num_classes))).tolist()
    assert result["accuracy"] == pytest.approx(float((preds == targets).double().mean()), abs=1e-12)
    assert result["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5)
    if num_classes >= 5:
        top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(1).double().mean()
        assert result["top5"] == pytest.approx(float(top5), abs=1e-12)
    else:
        assert result["top5"] is None
    supports = torch.bincount(targets, minlength=num_classes).tolist()
    assert [row["support"] for row in result["per_class"]] == supports
