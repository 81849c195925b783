"""Rebuilding a network from a checkpoint alone (``load_model``), images of a checkpoint's dataset
(``sample_images``), and ``cnnctl eval`` (single checkpoints and ensembles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnctl.config import Config, validate_config
from cnnctl.errors import CheckpointError, CnnctlError, DataError, UsageError
from cnnctl.insight.explain import confident_mistakes, confused_pairs
from cnnctl.runtime import select_device
from cnnctl.training.checkpoint import load_checkpoint, load_model_state, run_checkpoint
from cnnctl.training.engine import evaluate
from cnnctl.training.metrics import EvalAccumulator


def checkpoint_config(ckpt: dict[str, Any], source: str) -> Config:
    try:
        return validate_config(ckpt["config"], f"{source} (its config)")
    except CnnctlError as e:
        raise CheckpointError(f"its config no longer validates: {e}", file=source) from None


def model_from_checkpoint(ckpt: dict[str, Any], source: str, device: torch.device) -> nn.Module:
    """The checkpoint's network with its weights, in eval mode on ``device``."""
    from cnnctl.models.registry import create_model

    cfg = checkpoint_config(ckpt, source)
    spec = ckpt["input"]
    model = create_model(cfg.model, in_channels=spec["channels"], image_size=tuple(spec["size"]),
                         num_classes=len(ckpt["classes"]))
    load_model_state(model, ckpt["model"], source)
    return model.to(device).eval()


def load_model(spec: str | Path, device: str | torch.device = "cpu", *,
               default: str = "best.pt") -> tuple[Path, dict[str, Any], nn.Module]:
    """Checkpoint -> ready model: ``spec`` is a .pt file or a run directory (its ``default`` file). Returns the
    file, the checkpoint dict and its network with weights, in eval mode on ``device``."""
    path = run_checkpoint(spec, default)
    ckpt = load_checkpoint(path)
    dev = device if isinstance(device, torch.device) else select_device(device)
    return path, ckpt, model_from_checkpoint(ckpt, str(path), dev)


def sample_images(ckpt: dict[str, Any], source: str, n: int, *,
                  splits: tuple[str, ...] = ("test", "val", "train")) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Up to ``n`` images of the checkpoint's dataset as uint8 ``[N, C, H, W]`` at the checkpoint's input size, their
    labels, and where they came from (``"digits test"``): the first of ``splits`` that has images. Never downloads
    and never computes normalization statistics (the checkpoint has them); DataError when it cannot be read here."""
    from cnnctl.data.base import load_data

    spec = ckpt["input"]
    channels, size = int(spec["channels"]), (int(spec["size"][0]), int(spec["size"][1]))
    cfg = checkpoint_config(ckpt, source)
    try:
        bundle = load_data(_reading(cfg.data, download=False), cfg.seed)
    except CnnctlError as e:
        raise DataError(f"the checkpoint's dataset {cfg.data.dataset!r} cannot be loaded here (nothing is "
                        f"downloaded for this): {e}", file=source) from None
    for name in splits:
        part = getattr(bundle, name)
        if part is not None and len(part) > 0:
            break
    else:
        raise DataError(f"dataset {cfg.data.dataset!r} has no {' or '.join(splits)} images", file=source)
    images = split_images(part, range(min(n, len(part))), channels, size)
    return images, torch.as_tensor(part.labels[:n]), f"{cfg.data.dataset} {name}"


def split_images(part: Any, index: Any, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """The images of a split at ``index`` as uint8 ``[N, C, H, W]`` at ``size``, as the network sees them before
    normalisation (in-memory splits resized, file splits decoded)."""
    from cnnctl.data.base import TensorSplit
    from cnnctl.data.transforms import load_image, resize

    rows = list(index)
    if not rows:
        return torch.zeros(0, channels, *size, dtype=torch.uint8)
    if isinstance(part, TensorSplit):
        images = part.images[rows]
        if tuple(images.shape[2:]) != size:
            images = torch.stack([resize(image, size) for image in images])
        return images
    return torch.stack([load_image(part.files[i], channels, size) for i in rows])


def check_classes(trained: Any, data: Any, source: str, data_root: str) -> None:
    """Refuse data whose classes are not the checkpoint's, in the same order: another count crashed the loss,
    the same count under other names reported silently under the wrong labels."""
    trained, data = [str(c) for c in trained], [str(c) for c in data]
    if trained != data:
        def shown(names: list[str]) -> str:
            return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")

        raise DataError(f"the data in {data_root} has {len(data)} classes ({shown(data)}), the checkpoint was trained "
                        f"on {len(trained)} ({shown(trained)}); evaluate it on data with the classes it was trained "
                        "on", file=source)


def _reading(data: Any, **update: Any) -> Any:
    """``data`` (a DataConfig) as a checkpoint's images are read for eval or a few samples: the checkpoint's mean and
    std normalize (no statistics of the training split), and an image folder is not decoded whole first (a split,
    or a few images, are read once)."""
    update = {"normalize": "none", **update}
    if data.dataset == "imagefolder":
        update["cache"] = "none"
    return data.model_copy(update=update)


def _split_for(cfg: Config, split: str, data_root: str | None, seed: int, cache: dict[str, Any]) -> tuple[Any, Any]:
    from cnnctl.data.base import load_data

    data_cfg = _reading(cfg.data, **({"root": data_root} if data_root else {}))
    key = json.dumps([data_cfg.model_dump(mode="json"), seed])
    if key not in cache:
        cache[key] = load_data(data_cfg, seed)
    bundle = cache[key]
    part = getattr(bundle, split)
    if part is None:
        other = "val" if split == "test" else "test"
        raise UsageError(f"--split {split}: dataset {cfg.data.dataset} has no {split} split here; try --split {other}")
    return bundle, part


MISTAKES = 32  # the most confidently wrong images listed and drawn


def evaluate_checkpoints(paths: list[str], *, split: str = "test", data_root: str | None = None,
                         device: str = "auto", batch_size: int | None = None,
                         plots: str | Path | None = None) -> dict[str, Any]:
    """Evaluate each checkpoint on ``split``; with several, also their ensemble (mean of softmax).

    The result (the ensemble's, with several) also lists its most confidently wrong images (``mistakes``: split
    index, true and predicted class, the predicted probability) and the most confused pairs of classes.
    ``plots``: a folder for confusion_matrix.png, per_class.png and mistakes.png (their paths in ``plots``).
    """
    from cnnctl.data.base import make_loader

    dev = select_device(device)
    cache: dict[str, Any] = {}
    members, probs, labels, classes = [], [], None, None
    for spec in paths:
        path, ckpt, model = load_model(spec, dev)
        cfg = checkpoint_config(ckpt, str(path))
        bundle, part = _split_for(cfg, split, data_root, cfg.seed, cache)
        check_classes(ckpt["classes"], bundle.classes, str(path), data_root or cfg.data.root)
        inp = ckpt["input"]
        loader = make_loader(part, batch_size=batch_size or 2 * cfg.data.batch_size, train=False, device=dev,
                             mean=inp["mean"], std=inp["std"], augment=None, seed=cfg.seed, workers=cfg.data.workers)
        acc, p = evaluate(model, loader.batches(0), len(ckpt["classes"]), dev, keep_probs=True)
        members.append({"checkpoint": str(path), "split": split, **acc.result(ckpt["classes"])})
        part_labels = torch.as_tensor(part.labels)
        if classes is None:
            classes, labels, first = ckpt["classes"], part_labels, (part, ckpt["input"])
        elif ckpt["classes"] != classes or not torch.equal(part_labels, labels):
            raise UsageError(f"{path}: cannot ensemble it with {members[0]['checkpoint']}: they were trained on "
                             "different classes or splits (dataset, seed or val_split differ)")
        probs.append(p)
    if len(paths) == 1:
        result = target = members[0]
        final = probs[0]
    else:
        final = torch.stack(probs).mean(0)
        acc = EvalAccumulator(len(classes), torch.device("cpu"))
        log_p = final.clamp_min(1e-12).log()
        acc.update(log_p, labels, nn.functional.nll_loss(log_p, labels, reduction="sum"))
        target = {"checkpoint": [m["checkpoint"] for m in members], "split": split, **acc.result(classes)}
        result = {"ensemble": target, "members": members}
    found = confident_mistakes(final, labels, limit=MISTAKES)
    target["mistakes"] = [{**m, "true": classes[m["true"]], "pred": classes[m["pred"]]} for m in found]
    target["confused_pairs"] = confused_pairs(target["confusion_matrix"], classes)
    if plots is not None:
        from cnnctl.insight.plots import eval_plots

        part, spec = first
        images = split_images(part, [m["index"] for m in found], int(spec["channels"]),
                              (int(spec["size"][0]), int(spec["size"][1])))
        result["plots"] = [str(p) for p in eval_plots(result, Path(plots), mistake_images=images)]
    return result


def format_report(result: dict[str, Any]) -> str:
    """The human eval report: headline numbers, per-class table, confusion matrix."""
    if "ensemble" in result:
        lines = [_headline("ensemble of " + str(len(result["members"])), result["ensemble"])]
        lines += [_headline(m["checkpoint"], m) for m in result["members"]]
        return "\n".join(lines) + "\n\n" + _details(result["ensemble"])
    return _headline(result["checkpoint"], result) + "\n\n" + _details(result)


def _confusions(r: dict[str, Any]) -> str:
    pairs = r.get("confused_pairs") or []
    if not pairs:
        return ""
    rows = ["\n\nmost confused (true -> predicted: images)"]
    rows += [f"  {p['true']} -> {p['pred']}: {p['count']}" for p in pairs]
    return "\n".join(rows)


def _headline(name: str, r: dict[str, Any]) -> str:
    top5 = f"  top-5 {r['top5']:.2%}" if r.get("top5") is not None else ""
    return f"{name} on {r['split']} (n={r['n']}): loss {r['loss']:.4f}  accuracy {r['accuracy']:.2%}{top5}"


def _details(r: dict[str, Any]) -> str:
    width = max(5, *(len(c["class"]) for c in r["per_class"]))
    rows = [f"{'class':<{width}}  precision  recall      f1  support"]
    for c in r["per_class"]:
        rows.append(f"{c['class']:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    cm = r["confusion_matrix"]
    cell = max(3, len(str(max(max(row) for row in cm))))
    rows.append("\nconfusion matrix (rows: true class, columns: predicted)")
    rows.append(" " * width + "  " + " ".join(f"{i:>{cell}}" for i in range(len(cm))))
    for c, row in zip(r["per_class"], cm, strict=True):
        rows.append(f"{c['class']:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(rows) + _confusions(r)


def newest_best(root: Path = Path("runs")) -> Path:
    """``best.pt`` of the newest run under ``root`` (used by ``cnnctl predict`` without ``-c``)."""
    found = sorted(root.glob("**/best.pt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not found:
        raise UsageError(f"no -c given and no {root}/*/best.pt found; train a model first or pass -c CKPT")
    return found[-1]
