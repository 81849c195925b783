"""Metrics agree with an independent computation (scikit-learn)."""

from __future__ import annotations

import torch
from sklearn.metrics import confusion_matrix as sk_cm
from sklearn.metrics import precision_recall_fscore_support, top_k_accuracy_score

from cnnctl.training.metrics import EvalAccumulator, confusion_matrix


def test_against_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g)
    targets = torch.randint(0, 7, (500,), generator=g)
    targets[:3] = 6  # make sure class 6 exists; class 5 may be rarely predicted
    acc = EvalAccumulator(7, torch.device("cpu"))
    for chunk in range(0, 500, 128):
        lg, t = logits[chunk: chunk + 128], targets[chunk: chunk + 128]
        acc.update(lg, t, torch.nn.functional.cross_entropy(lg, t, reduction="sum"))
    r = acc.result([str(i) for i in range(7)])
    preds = logits.argmax(1)
    assert r["n"] == 500
    assert r["confusion_matrix"] == sk_cm(targets, preds, labels=list(range(7))).tolist()
    assert abs(r["accuracy"] - float((preds == targets).double().mean())) < 1e-12
    assert abs(r["top5"] - top_k_accuracy_score(targets, logits.numpy(), k=5, labels=list(range(7)))) < 1e-12
    assert abs(r["loss"] - float(torch.nn.functional.cross_entropy(logits, targets))) < 1e-6
    p, rec, f, s = precision_recall_fscore_support(targets, preds, labels=list(range(7)), zero_division=0)
    for i, row in enumerate(r["per_class"]):
        assert abs(row["precision"] - p[i]) < 1e-12 and abs(row["recall"] - rec[i]) < 1e-12
        assert abs(row["f1"] - f[i]) < 1e-12 and row["support"] == s[i]


def test_no_top5_below_five_classes_and_unpredicted_class():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    acc = EvalAccumulator(3, torch.device("cpu"))
    acc.update(torch.eye(3)[[0, 0, 1]], torch.tensor([0, 2, 1]), torch.tensor(0.0))
    r = acc.result(["a", "b", "c"])
    assert r["top5"] is None
    assert r["per_class"][2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_the_result_is_json_with_integer_counts():
    """eval --json prints this: counts stay integers (a float confusion matrix printed 3.0), rates are floats."""
    import json

    acc = EvalAccumulator(3, torch.device("cpu"), flush_rows=4)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0], [0, 3.0, 0]])
    acc.update(logits, torch.tensor([0, 1, 2, 1, 1]))
    result = json.loads(json.dumps(acc.result(["a", "b", "c"])))
    assert result["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 0, 1]]
    assert all(type(v) is int for row in result["confusion_matrix"] for v in row)
    assert type(result["n"]) is int and result["n"] == 5
    assert all(type(c["support"]) is int for c in result["per_class"])
    assert [c["support"] for c in result["per_class"]] == [1, 3, 1]
    assert result["accuracy"] == 0.8 and result["top5"] is None


def test_a_class_predicted_or_present_once_counts_in_full():
    from cnnctl.training.metrics import per_class_report

    # class 0: present once, predicted once, right; class 1: present once, predicted once, wrong; class 2: twice each
    cm = confusion_matrix(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 1, 2, 2]), 3)
    rows = per_class_report(cm, ["a", "b", "c"])
    assert [(r["precision"], r["recall"], r["f1"], r["support"]) for r in rows] == [
        (1.0, 1.0, 1.0, 1), (0.0, 0.0, 0.0, 1), (0.5, 0.5, 0.5, 2)]
    never = per_class_report(torch.tensor([[2, 0], [1, 0]]), ["x", "y"])  # y never predicted, x never wrong
    assert [(r["precision"], r["recall"], r["f1"]) for r in never] == [(2 / 3, 1.0, 0.8), (0.0, 0.0, 0.0)]


def test_the_loss_sum_keeps_double_precision():
    acc = EvalAccumulator(3, torch.device("cpu"))
    logits, targets = torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)
    acc.update(logits, targets, loss_sum=torch.tensor(1e8))  # a long evaluation's sum, then one more loss
    acc.update(logits, targets, loss_sum=torch.tensor(1.0))
    assert acc.result(["a", "b", "c"])["loss"] == 50_000_000.5  # a float32 sum would give 5e7
