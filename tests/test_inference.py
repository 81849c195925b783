"""cnnctl.inference.evaluate through ``cnnctl eval`` and its public functions, on hand-made checkpoints (no training): the
report's text, the mistakes and confused pairs against numbers computed here, the refusals, sampling images of a
checkpoint's dataset, an ensemble's numbers, top-5 from five classes on. ``scripts/mutation.sh inference`` runs this file,
less its two tests of eval on other data (on the session's trained ``world`` run).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

from cnnctl.errors import CnnctlError, DataError, UsageError
from cnnctl.inference.evaluate import (
    MISTAKES,
    check_classes,
    evaluate_checkpoints,
    format_report,
    load_model,
    newest_best,
    sample_images,
    split_images,
)
from tests.checkpoints import digits_split, linear_checkpoint, softmax64
from tests.conftest import error_line


def expected_of(x, y, weight, bias):
    probs = softmax64(x, weight, bias)
    conf, pred = probs.max(1)
    return probs, conf, pred


def test_single_checkpoint_numbers_mistakes_and_pairs(members):
    path, weight, bias = members[1]  # the poor one: many mistakes
    x, y = digits_split("test")
    probs, conf, pred = expected_of(x, y, weight, bias)

    result = evaluate_checkpoints([str(path)])

    assert result["checkpoint"] == str(path) and result["split"] == "test" and result["n"] == 359
    assert result["accuracy"] == int((pred == y).sum()) / 359
    wrong = [i for i in range(359) if pred[i] != y[i]]
    wrong.sort(key=lambda i: (-float(conf[i]), i))
    assert len(wrong) > MISTAKES  # so the limit is what cuts the list
    mistakes = result["mistakes"]
    assert len(mistakes) == MISTAKES
    # float32 in the network, float64 here: near-equal confidences may swap places, so compare values, not places
    assert [m["prob"] for m in mistakes] == pytest.approx([float(conf[i]) for i in wrong[:MISTAKES]], abs=1e-5)
    assert [m["prob"] for m in mistakes] == sorted((m["prob"] for m in mistakes), reverse=True)
    assert all(pred[m["index"]] != y[m["index"]] for m in mistakes)
    first = mistakes[0]
    i = first["index"]
    assert first["true"] == str(int(y[i])) and first["pred"] == str(int(pred[i]))  # class names, not indices
    assert first["prob"] == pytest.approx(float(conf[i]), abs=1e-5)
    assert first["true_prob"] == pytest.approx(float(probs[i, y[i]]), abs=1e-5)

    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((y, pred), torch.ones(359, dtype=torch.int64), accumulate=True)
    assert result["confusion_matrix"] == confusion.tolist()
    cells = sorted(((int(confusion[t, p]), t, p) for t in range(10) for p in range(10) if t != p and confusion[t, p]),
                   key=lambda c: (-c[0], c[1], c[2]))
    assert result["confused_pairs"] == [{"true": str(t), "pred": str(p), "count": c} for c, t, p in cells[:5]]


def test_the_report_reads_as_documented(members):
    path = str(members[0][0])
    result = evaluate_checkpoints([path])
    text = format_report(result)
    lines = text.splitlines()
    assert lines[0] == (f"{path} on test (n=359): loss {result['loss']:.4f}  accuracy {result['accuracy']:.2%}"
                        f"  top-5 {result['top5']:.2%}")
    assert lines[1] == ""
    assert lines[2] == "class  precision  recall      f1  support"
    c0 = result["per_class"][0]
    assert lines[3] == f"0      {c0['precision']:9.4f}  {c0['recall']:6.4f}  {c0['f1']:6.4f}  {c0['support']:7d}"
    assert len(lines[3:13]) == 10
    at = lines.index("confusion matrix (rows: true class, columns: predicted)")
    assert lines[at - 1] == ""  # a blank line after the per-class table
    assert lines[at + 1] == "     " + "  " + " ".join(f"{i:>3}" for i in range(10))
    cm = result["confusion_matrix"]
    assert lines[at + 2] == "0      " + " ".join(f"{v:>3}" for v in cm[0])
    assert lines[at + 11] == "9      " + " ".join(f"{v:>3}" for v in cm[9])
    pairs = result["confused_pairs"]
    if pairs:
        assert lines[at + 12] == ""
        assert lines[at + 13] == "most confused (true -> predicted: images)"
        assert lines[at + 14] == f"  {pairs[0]['true']} -> {pairs[0]['pred']}: {pairs[0]['count']}"
        assert len(lines) == at + 14 + len(pairs)
    else:
        assert len(lines) == at + 12


def test_the_report_of_an_ensemble_heads_with_it_then_each_member(members):
    paths = [str(m[0]) for m in members]
    result = evaluate_checkpoints(paths)
    lines = format_report(result).splitlines()
    assert lines[0].startswith("ensemble of 2 on test (n=359): loss ")
    assert lines[1].startswith(f"{paths[0]} on test (n=359)") and lines[2].startswith(f"{paths[1]} on test (n=359)")
    assert lines[3] == "" and lines[4].startswith("class  precision")
    assert result["ensemble"]["checkpoint"] == paths and result["ensemble"]["split"] == "test"
    assert [m["checkpoint"] for m in result["members"]] == paths
    assert len(result["ensemble"]["mistakes"]) <= MISTAKES


def test_a_report_without_top5_or_confusions_says_neither():
    r = {"checkpoint": "c.pt", "split": "val", "n": 2, "loss": 0.5, "accuracy": 1.0, "top5": None,
         "per_class": [{"class": "cat", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                       {"class": "a-long-name", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}],
         "confusion_matrix": [[1, 0], [0, 1000]], "confused_pairs": []}
    text = format_report(r)
    assert text.splitlines()[0] == "c.pt on val (n=2): loss 0.5000  accuracy 100.00%"
    assert "top-5" not in text and "most confused" not in text
    lines = text.splitlines()
    assert lines[2] == "class        precision  recall      f1  support"  # width of the longest class name
    assert lines[-1] == "a-long-name     0 1000"  # cells as wide as the largest count
    assert lines[-3] == " " * 13 + "   0    1"


def test_the_val_split_is_evaluated_when_asked(members):
    path, weight, bias = members[0]
    x, y = digits_split("val")
    _, _, pred = expected_of(x, y, weight, bias)
    result = evaluate_checkpoints([str(path)], split="val", batch_size=7)
    assert result["split"] == "val" and result["n"] == len(y)
    assert result["accuracy"] == int((pred == y).sum()) / len(y)


def test_a_missing_split_says_which_to_try(tmp_path):
    data = {"dataset": "fake", "num_classes": 3, "num_samples": 30, "channels": 1, "image_size": 8, "val_split": 0}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(3, 64), torch.zeros(3), classes=["a", "b", "c"],
                             data=data)
    with pytest.raises(UsageError, match=r"--split val: dataset fake has no val split here; try --split test"):
        evaluate_checkpoints([str(path)], split="val")


def test_a_run_directory_evaluates_its_best(members, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.link(members[0][0], run / "best.pt")
    assert evaluate_checkpoints([str(run)])["checkpoint"] == str(run / "best.pt")
    path, ckpt, model = load_model(run)
    assert path == run / "best.pt" and not model.training and ckpt["classes"] == [str(i) for i in range(10)]


def test_members_of_other_classes_cannot_ensemble(members, tmp_path):
    # the same ten class names on other data: labels that are not the first member's
    other = linear_checkpoint(tmp_path / "other.pt", torch.zeros(10, 64), torch.zeros(10),
                              data={"dataset": "fake", "num_classes": 10, "num_samples": 100, "channels": 1,
                                    "image_size": 8})
    with pytest.raises(UsageError) as info:
        evaluate_checkpoints([str(members[0][0]), str(other)])
    assert str(info.value) == (f"{other}: cannot ensemble it with {members[0][0]}: they were trained on different "
                               "classes or splits (dataset, seed or val_split differ)")


def test_classes_must_match_in_order():
    check_classes(["a", "b"], ("a", "b"), "c.pt", "data/")
    check_classes([0, 1], ["0", "1"], "c.pt", "data/")
    with pytest.raises(DataError) as info:
        check_classes(["a", "b"], ["b", "a"], "c.pt", "data/")
    assert str(info.value) == ("c.pt: the data in data/ has 2 classes (b, a), the checkpoint was trained on 2 (a, b); "
                               "evaluate it on data with the classes it was trained on")
    many = [f"c{i}" for i in range(21)]
    with pytest.raises(DataError) as info:
        check_classes(many[:20], many, "c.pt", "d")
    assert f"has 21 classes ({', '.join(many[:20])}, ... (21 in all)), the checkpoint was trained on 20 " \
           f"({', '.join(many[:20])});" in str(info.value)


def test_sample_images_come_from_the_first_split_that_has_them(members):
    path = members[0][0]
    ckpt = torch.load(path, weights_only=True)
    x, y = digits_split("test")
    images, labels, source = sample_images(ckpt, str(path), 5)
    assert source == "digits test"
    assert torch.equal(images, x[:5]) and torch.equal(labels, y[:5])
    images, labels, source = sample_images(ckpt, str(path), 3, splits=("train",))
    tx, ty = digits_split("train")
    assert source == "digits train" and torch.equal(images, tx[:3]) and torch.equal(labels, ty[:3])
    big, _, _ = sample_images(ckpt, str(path), 10_000)
    assert len(big) == 359


def test_sample_images_say_when_no_split_has_any(tmp_path):
    data = {"dataset": "fake", "num_classes": 3, "num_samples": 30, "channels": 1, "image_size": 8, "val_split": 0}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(3, 64), torch.zeros(3), classes=["a", "b", "c"],
                             data=data)
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(DataError, match=re.escape("dataset 'fake' has no val images")):
        sample_images(ckpt, str(path), 2, splits=("val",))


def test_sample_images_of_unreadable_data_never_download(tmp_path):
    data = {"dataset": "mnist", "root": str(tmp_path / "nothing")}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(10, 784), torch.zeros(10), data=data, side=28)
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(DataError) as info:
        sample_images(ckpt, str(path), 2)
    assert "the checkpoint's dataset 'mnist' cannot be loaded here (nothing is downloaded for this)" in str(info.value)
    assert not any((tmp_path / "nothing").rglob("*.gz"))


def test_split_images_resize_in_memory_images():
    from cnnctl.data.base import TensorSplit

    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    part = TensorSplit(images, torch.tensor([0, 1]))
    assert torch.equal(split_images(part, [1], 1, (4, 4)), images[1:])
    assert split_images(part, [], 1, (6, 6)).shape == (0, 1, 6, 6)
    resized = split_images(part, [0, 1], 1, (8, 8))
    assert resized.shape == (2, 1, 8, 8) and resized.dtype == torch.uint8


def test_newest_best_is_the_latest_written(tmp_path):
    with pytest.raises(UsageError, match="no -c given"):
        newest_best(tmp_path / "runs")
    for i, name in enumerate(["b", "a", "c"]):
        f = tmp_path / "runs" / name / "best.pt"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        os.utime(f, (1_000_000 + i * 10, 1_000_000 + i * 10))
    assert newest_best(tmp_path / "runs") == tmp_path / "runs" / "c" / "best.pt"
    os.utime(tmp_path / "runs" / "a" / "best.pt", (2_000_000, 2_000_000))
    assert newest_best(tmp_path / "runs") == tmp_path / "runs" / "a" / "best.pt"


def test_eval_json_of_one_checkpoint_is_the_result(cli, members):
    result = cli("eval", members[0][0], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads(json.dumps(evaluate_checkpoints([str(members[0][0])])))


def test_a_checkpoint_whose_config_no_longer_validates_is_named(tmp_path, members):
    ckpt = torch.load(members[0][0], weights_only=True)
    ckpt["config"]["optimizer"]["name"] = "adamx"
    from cnnctl.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "edited.pt", ckpt)
    with pytest.raises(CnnctlError) as info:
        evaluate_checkpoints([str(tmp_path / "edited.pt")])
    assert str(info.value).startswith(f"{tmp_path / 'edited.pt'}: its config no longer validates: "
                                      f"{tmp_path / 'edited.pt'} (its config): ")
    assert info.value.exit_code == 2


def test_a_split_of_one_image_is_used(tmp_path):
    data = {"dataset": "fake", "num_classes": 3, "num_samples": 20, "channels": 1, "image_size": 8, "val_split": 0,
            "test_split": 0.05}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(3, 64), torch.zeros(3), classes=["0", "1", "2"],
                             data=data)
    images, labels, source = sample_images(torch.load(path, weights_only=True), str(path), 4)
    assert source == "fake test" and images.shape == (1, 1, 8, 8) and len(labels) == 1


def test_sample_images_come_at_the_checkpoints_input_size(members):
    path = members[0][0]
    ckpt = torch.load(path, weights_only=True)
    ckpt["input"]["size"] = [6, 10]  # not square, not the data's 8x8: resized, height first
    images, _, _ = sample_images(ckpt, str(path), 3)
    assert images.shape == (3, 1, 6, 10) and images.dtype == torch.uint8


def test_sample_images_name_the_checkpoint_when_its_config_is_broken(members):
    path = members[0][0]
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["model"]["arch"] = "lenet55"
    with pytest.raises(CnnctlError) as info:
        sample_images(ckpt, "from/here.pt", 2)
    assert info.value.file == "from/here.pt"


def test_sample_images_of_a_split_that_is_not_there_name_the_checkpoint(tmp_path):
    data = {"dataset": "fake", "num_classes": 3, "num_samples": 30, "channels": 1, "image_size": 8, "val_split": 0}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(3, 64), torch.zeros(3), classes=["a", "b", "c"],
                             data=data)
    with pytest.raises(DataError) as info:
        sample_images(torch.load(path, weights_only=True), "ck.pt", 2, splits=("val",))
    assert info.value.file == "ck.pt"


def test_sample_images_never_download_and_say_so(tmp_path, monkeypatch):
    import torchvision

    calls = []
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: calls.append(self))
    data = {"dataset": "mnist", "root": str(tmp_path / "nothing")}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(10, 784), torch.zeros(10), data=data, side=28)
    with pytest.raises(DataError) as info:
        sample_images(torch.load(path, weights_only=True), "ck.pt", 2)
    assert calls == []
    assert info.value.file == "ck.pt"
    assert "data.download is false" in str(info.value)


def test_sample_images_of_a_folder_decode_only_those_images(tmp_path, monkeypatch):
    """An imagefolder checkpoint: the images come from the files (split_images decodes them), and only the few
    asked for are decoded, whatever data.cache the run used; no normalization statistics are computed."""
    import numpy as np

    import cnnctl.data.base as base
    import cnnctl.data.transforms as transforms
    from tests.datafiles import write_image_folder

    root = tmp_path / "folder"
    write_image_folder(root, {"a": 6, "b": 6}, channels=1, size=(8, 8))
    data = {"dataset": "imagefolder", "root": str(root), "channels": 1, "image_size": 8, "cache": "memory",
            "normalize": "auto"}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(2, 64), torch.zeros(2), classes=["a", "b"], data=data)
    ckpt = torch.load(path, weights_only=True)
    decoded = []
    real = transforms.load_image

    def counting(file, channels, size=None):
        decoded.append(file)
        return real(file, channels, size)

    monkeypatch.setattr(transforms, "load_image", counting)
    monkeypatch.setattr(base, "channel_stats", lambda *a, **k: pytest.fail("normalization statistics computed"))
    images, labels, source = sample_images(ckpt, str(path), 2)
    assert len(decoded) == 2
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8
    from PIL import Image

    for image, file in zip(images, decoded, strict=True):
        assert np.array_equal(image[0].numpy(), np.asarray(Image.open(file).convert("L")))


def folder_checkpoint(tmp_path, per_class, *, name="best.pt", classes=("a", "b")):
    from tests.datafiles import write_image_folder

    root = tmp_path / f"folder-{name}"
    write_image_folder(root, per_class, channels=1, size=(8, 8))
    data = {"dataset": "imagefolder", "root": str(root), "channels": 1, "image_size": 8, "cache": "memory",
            "val_split": 0, "test_split": 0.5}
    g = torch.Generator().manual_seed(1)
    path = linear_checkpoint(tmp_path / name, torch.randn(len(classes), 64, generator=g), torch.zeros(len(classes)),
                             classes=list(classes), data=data)
    return path, root


def test_eval_on_another_folder_reads_that_folder_and_decodes_only_its_split(tmp_path, monkeypatch):
    import cnnctl.data.transforms as transforms
    from tests.datafiles import write_image_folder

    path, _ = folder_checkpoint(tmp_path, {"a": 4, "b": 4})
    other = tmp_path / "other"
    write_image_folder(other, {"a": 10, "b": 10}, channels=1, size=(8, 8), seed=7)
    decoded = []
    real = transforms.load_image
    monkeypatch.setattr(transforms, "load_image", lambda f, c, s=None: decoded.append(f) or real(f, c, s))

    result = evaluate_checkpoints([str(path)], data_root=str(other))

    assert result["n"] == 10  # half of the other folder's 20 images, not half of the checkpoint's 8
    assert len(decoded) == 10 and all(str(f).startswith(str(other)) for f in decoded)  # cache: none for one split


def test_eval_on_a_folder_of_other_classes_names_both(tmp_path):
    from tests.datafiles import write_image_folder

    path, _ = folder_checkpoint(tmp_path, {"a": 4, "b": 4})
    other = tmp_path / "other"
    write_image_folder(other, {"a": 2, "c": 2}, channels=1, size=(8, 8))
    with pytest.raises(DataError) as info:
        evaluate_checkpoints([str(path)], data_root=str(other))
    assert str(info.value) == (f"{path}: the data in {other} has 2 classes (a, c), the checkpoint was trained on 2 "
                               "(a, b); evaluate it on data with the classes it was trained on")


def test_a_missing_test_split_suggests_val(tmp_path):
    data = {"dataset": "fake", "num_classes": 3, "num_samples": 30, "channels": 1, "image_size": 8, "val_split": 0.2,
            "test_split": 0}
    path = linear_checkpoint(tmp_path / "best.pt", torch.zeros(3, 64), torch.zeros(3), classes=["0", "1", "2"],
                             data=data)
    with pytest.raises(UsageError) as info:
        evaluate_checkpoints([str(path)])
    assert str(info.value) == "--split test: dataset fake has no test split here; try --split val"


def test_eval_plots_are_drawn_with_the_mistakes_images(members, tmp_path, monkeypatch):
    from pathlib import Path

    import cnnctl.insight.plots as plots

    seen = {}
    real = plots.eval_plots

    def spy(result, folder, *, mistake_images):
        seen.update(result=result, folder=folder, images=mistake_images)
        return real(result, folder, mistake_images=mistake_images)

    monkeypatch.setattr(plots, "eval_plots", spy)
    result = evaluate_checkpoints([str(members[1][0])], plots=tmp_path / "plots")
    assert sorted(Path(p).name for p in result["plots"]) == ["confusion_matrix.png", "mistakes.png", "per_class.png"]
    assert all(Path(p).is_file() and Path(p).parent == tmp_path / "plots" for p in result["plots"])
    x, _ = digits_split("test")
    assert seen["result"] is result and seen["folder"] == tmp_path / "plots"
    assert torch.equal(seen["images"], x[[m["index"] for m in result["mistakes"]]])


def test_weights_that_do_not_fit_name_the_checkpoint(members, tmp_path):
    from cnnctl.training.checkpoint import save_checkpoint

    ckpt = torch.load(members[0][0], weights_only=True)
    ckpt["model"] = {k: v[:, :10] if v.ndim == 2 else v for k, v in ckpt["model"].items()}
    save_checkpoint(tmp_path / "cut.pt", ckpt)
    with pytest.raises(CnnctlError) as info:
        load_model(tmp_path / "cut.pt")
    assert str(info.value).startswith(f"{tmp_path / 'cut.pt'}: its weights do not match the network")


# ---------------------------------------------------------------- an ensemble's numbers are those of the mean of its members' softmax


def test_ensemble_accuracy_is_that_of_the_mean_of_softmax(cli, members):
    x, y = digits_split("test")
    probs = [softmax64(x, w, b) for _, w, b in members]
    mean = torch.stack(probs).mean(0)
    top2 = mean.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-5  # no near-tie that float32 could decide otherwise
    expected = int((mean.argmax(1) == y).sum()) / len(y)
    alone = [int((p.argmax(1) == y).sum()) / len(y) for p in probs]
    assert expected not in alone  # the ensemble's number is its own: a member alone would not give it

    result = cli("eval", members[0][0], members[1][0], "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ensemble = report["ensemble"]
    assert ensemble["n"] == len(y) == 359
    assert ensemble["accuracy"] == expected
    assert [m["accuracy"] for m in report["members"]] == alone
    assert ensemble["loss"] == pytest.approx(float(-mean[torch.arange(len(y)), y].log().mean()), rel=1e-5)
    top5 = int((mean.topk(5, dim=1).indices == y[:, None]).any(1).sum()) / len(y)
    assert ensemble["top5"] == pytest.approx(top5, abs=1e-12)
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((y, mean.argmax(1)), torch.ones(len(y), dtype=torch.int64), accumulate=True)
    assert ensemble["confusion_matrix"] == confusion.tolist()


# ---------------------------------------------------------------- top-5 needs at least 5 classes


@pytest.mark.parametrize("classes", [4, 5, 6])
def test_top5_is_reported_from_five_classes_on(cli, tmp_path, classes):
    data = {"dataset": "fake", "num_classes": classes, "num_samples": 40, "channels": 1, "image_size": 8}
    g = torch.Generator().manual_seed(classes)
    path = linear_checkpoint(tmp_path / "best.pt", torch.randn(classes, 64, generator=g), torch.zeros(classes),
                             classes=[str(i) for i in range(classes)], data=data)

    result = cli("eval", path, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    if classes < 5:
        assert report["top5"] is None
        assert "top-5" not in cli("eval", path).stdout
    else:
        assert report["top5"] is not None
        if classes == 5:
            assert report["top5"] == 1.0  # five guesses out of five classes always hold the label
        assert "top-5" in cli("eval", path).stdout


# ---------------------------------------------------------------- eval on other data


@pytest.mark.parametrize("other, listed", [("fruit", "2 classes (apple, banana)"), ("three", "3 classes (a, b, c)")])
def test_eval_on_data_of_other_classes_is_refused(world, cli, other, listed):
    result = cli("eval", world / "runs" / "pets", "--data-root", world / other)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: {world / 'runs' / 'pets' / 'best.pt'}: the data in {world / other} has "
                                  f"{listed}, the checkpoint was trained on 2 (cat, dog); evaluate it on data with the "
                                  "classes it was trained on")


def test_eval_on_data_of_the_same_classes_elsewhere_works(world, cli, tmp_path):
    shutil.copytree(world / "pets", tmp_path / "pets")
    result = cli("eval", world / "runs" / "pets", "--data-root", tmp_path / "pets")
    assert result.exit_code == 0, result.output
