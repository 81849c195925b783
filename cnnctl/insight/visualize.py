"""``cnnctl visualize``: the first layer's filters, the feature maps of every conv/pool stage, the top-k prediction.

Feature maps are caught by forward hooks on the network's ``nn.Conv2d`` and pooling modules, in the order the
forward pass calls them. In a ResNet (top-level children ``layer1``, ``layer2``, ...) the convolutions inside the
residual stages are not drawn one by one (a ResNet-110 has 109 of them); each stage's output is drawn instead.

Every PNG has a fixed size in inches at ``plots.DPI``, so its pixel size is ``FIGSIZE[kind] * DPI``. Tiles are
composed into one picture (a mosaic) and drawn with a single ``imshow``: one axes instead of 64 keeps a grid
quick to draw.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnctl.errors import CnnctlError, DataError
from cnnctl.insight.plots import save_figure, subplots
from cnnctl.insight.stages import Stage, capture_stages, first_conv
from cnnctl.interrupts import check

log = logging.getLogger("cnnctl")

FIGSIZE = {"filters": (8.0, 8.0), "featuremaps": (9.0, 9.0), "overview": (12.0, 9.0), "prediction": (10.0, 4.0)}
MAX_TILES = 64  # channels (or filters) drawn per grid; more would make each tile too small to read
MAX_OVERVIEW = 35  # stages in overview.png, with the input a 6 x 6 grid
CMAP = "viridis"
_STAGE_FILE = re.compile(r"featuremaps_\d+_.+\.png")


# ---------------------------------------------------------------- tiles and grids


def normalize_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Scale each tile (the first dimension) to 0..1 by its own min and max; a flat tile becomes 0."""
    t = tiles.detach().float()
    dims = tuple(range(1, t.ndim))
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (t - lo) / span.clamp_min(torch.finfo(t.dtype).tiny), torch.zeros_like(t))


def filter_tiles(weight: torch.Tensor, limit: int = MAX_TILES) -> tuple[np.ndarray, list[str]]:
    """A conv weight ``[out, in, kh, kw]`` as RGB tiles ``[N, kh, kw, 3]`` in 0..1 and their labels.

    Each filter is scaled to its own min..max. With 3 input channels a filter is one colour tile (its RGB
    weights); otherwise each input channel's slice is a grey tile (one per filter for 1-channel nets), labelled
    ``filter:channel``. At most ``limit`` tiles, whole filters first.
    """
    out_channels, in_channels = weight.shape[:2]
    norm = normalize_tiles(weight)
    if in_channels == 3:
        tiles = norm.permute(0, 2, 3, 1)[:limit]
        labels = [str(i) for i in range(len(tiles))]
    else:
        keep = max(1, limit // in_channels)
        grey = norm[:keep].reshape(-1, *weight.shape[2:])
        tiles = grey[..., None].expand(*grey.shape, 3)
        labels = [str(o) if in_channels == 1 else f"{o}:{c}" for o in range(min(keep, out_channels))
                  for c in range(in_channels)]
    return tiles.numpy().copy(), labels


def feature_tiles(maps: torch.Tensor, limit: int = MAX_TILES) -> tuple[np.ndarray, list[str]]:
    """Feature maps ``[C, H, W]`` as RGB tiles ``[N, H, W, 3]`` (each channel scaled to its own min..max, then
    coloured with ``CMAP``) and their labels: the channel index and its value range (``lo..hi``, what the colours
    span), or ``inactive`` and the value for a map that is constant for this image (one image cannot tell a dead
    unit from one this image does not excite)."""
    from matplotlib import colormaps

    shown = maps[:limit].float()
    rgb = colormaps[CMAP](normalize_tiles(shown).numpy())[..., :3]
    labels = []
    for c, channel in enumerate(shown):
        lo, hi = float(channel.min()), float(channel.max())
        labels.append(f"{c}: {lo:.2g}..{hi:.2g}" if hi > lo else f"{c} inactive {lo:.2g}")
    return rgb, labels


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid for ``n`` tiles, wider than tall."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def mosaic(tiles: np.ndarray, cols: int, pad: int = 1) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tiles ``[N, h, w, 3]`` laid out row by row, ``cols`` wide, on white with ``pad`` pixels between them.

    Returns the picture and each tile's top-left (row, column) pixel in it.
    """
    n, h, w = tiles.shape[:3]
    rows = max(1, math.ceil(n / cols))
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float64)
    origins = []
    for i, tile in enumerate(tiles):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        canvas[y:y + h, x:x + w] = tile
        origins.append((y, x))
    return canvas, origins


def _draw_grid(tiles: np.ndarray, labels: list[str], title: str, path: Path, figsize: tuple[float, float]) -> Path:
    _, cols = grid_shape(len(tiles))
    h, w = tiles.shape[1:3]
    picture, origins = mosaic(tiles, cols, pad=max(1, min(h, w) // 8))
    fig, ax = subplots(figsize=figsize, layout="constrained")
    ax.imshow(picture, interpolation="nearest")
    size = 9 if cols <= 4 else 7 if cols <= 8 else 5
    for (y, x), label in zip(origins, labels, strict=True):
        ax.text(x - 0.5, y - 0.5, label, ha="left", va="top", fontsize=size, color="white",
                bbox={"facecolor": "black", "alpha": 0.55, "pad": 1, "linewidth": 0})
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def _show_image(ax: Any, image: torch.Tensor) -> None:
    """A uint8 ``[C, H, W]`` image on ``ax``, as its pixels (grey for one channel)."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- the figures


def plot_filters(name: str, conv: nn.Conv2d, path: Path) -> Path:
    """filters.png: the first conv layer's filters, each scaled to its own min..max, one labelled tile each."""
    weight = conv.weight.detach().cpu()
    tiles, labels = filter_tiles(weight)
    out_channels, in_channels, kh, kw = weight.shape
    total = out_channels if in_channels in (1, 3) else out_channels * in_channels
    how = ("in colour (RGB weights)" if in_channels == 3 else "in grey" if in_channels == 1
           else "one grey tile per input channel, labelled filter:channel")
    shown = f"; first {len(tiles)} of {total} tiles shown" if len(tiles) < total else ""
    title = (f"first conv layer {name}: weight {out_channels}x{in_channels}x{kh}x{kw} (out x in x kh x kw)\n"
             f"{out_channels} filters {how}, each scaled to its own min..max (dark: low, bright: high){shown}")
    return _draw_grid(tiles, labels, title, path, FIGSIZE["filters"])


def plot_stage(stage: Stage, path: Path) -> Path:
    """featuremaps_NN_<name>.png: one stage's channels as labelled tiles."""
    channels, h, w = stage.output.shape
    tiles, labels = feature_tiles(stage.output)
    shown = f"; channels 0-{len(tiles) - 1} of {channels} shown" if len(tiles) < channels else ""
    title = (f"{stage.name} ({stage.description}): output {channels}x{h}x{w}{shown}\n"
             f"each channel scaled to its own min..max, written in its label ({CMAP}: dark low, yellow high); "
             "'inactive': constant for this image")
    return _draw_grid(tiles, labels, title, path, FIGSIZE["featuremaps"])


def plot_overview(image: torch.Tensor, stages: list[Stage], caption: str, path: Path) -> Path:
    """overview.png: the input, then each stage's mean over its channels, showing the maps shrink and deepen."""
    picked = stages
    if len(stages) > MAX_OVERVIEW:
        index = np.linspace(0, len(stages) - 1, MAX_OVERVIEW).round().astype(int)
        picked = [stages[i] for i in sorted(set(index.tolist()))]
    rows, cols = grid_shape(len(picked) + 1)
    fig, axes = subplots(rows, cols, figsize=FIGSIZE["overview"], layout="constrained", squeeze=False)
    flat = axes.ravel()
    _show_image(flat[0], image)
    flat[0].set_title(f"input {'x'.join(map(str, image.shape))}", fontsize=8)
    for ax, stage in zip(flat[1:], picked, strict=False):
        ax.imshow(stage.output.mean(0).numpy(), cmap=CMAP, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        kind = stage.description.split(",")[0]
        ax.set_title(f"{stage.name} ({kind})\n{'x'.join(map(str, stage.output.shape))}", fontsize=8)
    for ax in flat[len(picked) + 1:]:
        ax.set_axis_off()
    note = f"; {len(picked)} of {len(stages)} stages shown" if len(picked) < len(stages) else ""
    fig.suptitle(f"{caption}: the input, then each stage's mean over its channels (C x H x W){note}", fontsize=10)
    return save_figure(fig, path)


def plot_prediction(image: torch.Tensor, probs: torch.Tensor, classes: list[str], caption: str, path: Path,
                    true_class: str | None = None) -> Path:
    """prediction.png: the input beside a bar chart of the top-k (k = min(5, classes)) class probabilities."""
    k = min(5, len(classes))
    top = probs.topk(k)
    names = [classes[int(i)] for i in top.indices]
    values = [float(v) for v in top.values]
    fig, (ax_image, ax_bars) = subplots(1, 2, figsize=FIGSIZE["prediction"], layout="constrained",
                                            gridspec_kw={"width_ratios": [1, 2]})
    _show_image(ax_image, image)
    ax_image.set_title(caption if true_class is None else f"{caption}\ntrue class: {true_class}", fontsize=9)
    colors = ["tab:green" if true_class is not None and n == true_class else "tab:blue" for n in names]
    ax_bars.barh(range(k), values, color=colors)
    ax_bars.set_yticks(range(k), names)
    ax_bars.invert_yaxis()
    ax_bars.set_xlim(0, 1.1)
    ax_bars.set_xlabel("probability (softmax of the logits)")
    for i, v in enumerate(values):
        ax_bars.text(v + 0.01, i, _percent(v), va="center", fontsize=9)
    ax_bars.set_title(f"top {k} of {len(classes)} classes: {names[0]} ({_percent(values[0])})", fontsize=10)
    ax_bars.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def _percent(p: float) -> str:
    return f"{p:.1%}" if p >= 0.001 or p == 0 else f"{p:.1e}"


# ---------------------------------------------------------------- the command


def input_image(ckpt: dict[str, Any], source: str, image: str | Path | None) -> tuple[torch.Tensor, str, str | None]:
    """The uint8 ``[C, H, W]`` image to look at, a caption, and its true class when it comes from the dataset.

    ``image``: read with the checkpoint's channels and size, a regular file only (as predict reads: a FIFO would
    wait for a writer forever). None: the first image of the checkpoint's test split (val when there is none),
    loaded without downloading anything.
    """
    from cnnctl.data.transforms import load_image
    from cnnctl.inference.evaluate import sample_images
    from cnnctl.inference.predict import not_regular

    spec = ckpt["input"]
    if image is not None:
        problem = not_regular(str(image))
        if problem:
            raise DataError(f"{problem}; give an image file (PNG, JPEG, ...)", file=str(image), key="--image")
        size = (int(spec["size"][0]), int(spec["size"][1]))
        return load_image(image, int(spec["channels"]), size), Path(image).name, None
    try:
        images, labels, where = sample_images(ckpt, source, 1, splits=("test", "val"))
    except DataError as e:
        raise DataError(f"no --image given, and {e}; pass --image IMG to look at an image of your own") from None
    label = int(labels[0])
    classes = ckpt["classes"]
    true_class = classes[label] if 0 <= label < len(classes) else None
    dataset, _, split_name = where.rpartition(" ")
    return images[0], f"{split_name} image 0 of {dataset}", true_class


def attribution_pngs(model: nn.Module, x: torch.Tensor, picture: torch.Tensor, ckpt: dict[str, Any], target: int,
                     folder: Path, *, layer: str | None = None, source: str = "") -> list[Path]:
    """gradcam.png, occlusion.png and saliency.png for class ``target``: where the network looks (Captum).

    Without Captum installed they are skipped with a note (``pip install 'cnnctl[explain]'``); ``visualize`` has
    refused a ``layer`` then, before writing anything (``check_layer``).
    """
    import importlib.util

    if importlib.util.find_spec("captum") is None:
        log.info("attribution maps skipped: they need Captum (pip install 'cnnctl[explain]')")
        return []
    from cnnctl.insight.attribution import attribution_maps, plot_attribution

    # The occluding patch is the training set's mean colour (0 after normalisation): on a dark-background digit a
    # mid-grey patch adds a stroke where there was none, and its biggest effect fell on the blank border (measured on
    # lenet5-digits: the peak sat on a 0-valued pixel; with the mean patch it sits on the strokes).
    found = attribution_maps(model, x, target, layer=layer, grey=0.0, source=source)
    shown = picture.float().div(255)
    shown = shown[0].numpy() if shown.shape[0] == 1 else shown.permute(1, 2, 0).numpy()
    cls = ckpt["classes"][target]
    written = []
    for method, heat in found["maps"].items():
        check()
        written.append(plot_attribution(shown, heat, method, cls, folder / f"{method}.png", layer=found["layer"]))
    return written


def check_layer(model: nn.Module, layer: str | None, source: str) -> None:
    """``--layer``, before any PNG is written: a conv stage of this network (exit 2 listing them), and Captum
    installed to compute Grad-CAM on it."""
    if layer is None:
        return
    from cnnctl.insight.attribution import named_layer, require_captum

    named_layer(model, layer, source)
    require_captum()


def visualize(checkpoint: str | Path, *, image: str | Path | None = None, output: Path | None = None,
              layer: str | None = None) -> list[Path]:
    """Draw filters.png, featuremaps_NN_<stage>.png, overview.png, prediction.png and the attribution maps
    (gradcam.png, occlusion.png, saliency.png for the true class when known, else the predicted one; Grad-CAM on
    ``layer`` or the last conv stage); return their paths.

    ``checkpoint`` is a ``.pt`` file or a run directory (its ``best.pt``). ``image`` defaults to the first test
    image of the checkpoint's dataset; ``output`` to ``visualize/`` beside the checkpoint. Feature-map PNGs left
    there by an earlier call that this one did not write (another network's stages) are removed. Between steps it
    stops with ``Interrupted`` if the CLI's ``interrupts.stop_on_signal`` noted a signal.
    """
    from cnnctl.data.base import to_model_input
    from cnnctl.inference.evaluate import load_model

    cpu = torch.device("cpu")
    path, ckpt, model = load_model(checkpoint, cpu)
    conv_name, conv = first_conv(model, str(path))
    check_layer(model, layer, str(path))
    folder = Path(output) if output is not None else path.parent / "visualize"
    if folder.exists() and not folder.is_dir():
        raise CnnctlError("-o must be a folder for the PNGs, and this is a file", file=str(folder))
    picture, caption, true_class = input_image(ckpt, str(path), image)
    spec = ckpt["input"]
    x = to_model_input(picture[None], spec["mean"], spec["std"], cpu)
    check()
    stages, logits = capture_stages(model, x)
    drawable = [s for s in stages if s.output.shape[-2:].numel() > 1]  # a 1x1 map is a single number per channel

    written = [plot_filters(conv_name, conv, folder / "filters.png")]
    width = max(2, len(str(len(drawable))))
    for i, stage in enumerate(drawable, 1):
        check()
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stage.name)
        written.append(plot_stage(stage, folder / f"featuremaps_{i:0{width}d}_{safe}.png"))
    written.append(plot_overview(picture, drawable, caption, folder / "overview.png"))
    probs = logits[0].softmax(0)
    written.append(plot_prediction(picture, probs, list(ckpt["classes"]), caption, folder / "prediction.png",
                                   true_class=true_class))
    classes = list(ckpt["classes"])
    target = classes.index(true_class) if true_class in classes else int(probs.argmax())
    check()
    written += attribution_pngs(model, x, picture, ckpt, target, folder, layer=layer, source=str(path))
    for stale in folder.glob("featuremaps_*.png"):
        if _STAGE_FILE.fullmatch(stale.name) and stale not in written:
            stale.unlink(missing_ok=True)
    skipped = [s.name for s in stages if s.output.shape[-2:].numel() <= 1]
    if skipped:
        log.info("not drawn, their maps are 1x1 (one number per channel): %s", ", ".join(skipped))
    dead = dead_channels(path.parent / "summary.json")
    if dead:
        log.info("%s", dead)
    return written


def dead_channels(summary_path: Path) -> str | None:
    """From a run's summary.json (``train.record_activations``), the sentence naming the units never positive
    for any validation image, per activation layer; None when the run has no activation statistics."""
    try:
        stats = json.loads(summary_path.read_text()).get("activations") or {}
    except (OSError, ValueError):
        return None
    layers = [r for r in stats.get("layers", []) if r.get("dead_units") is not None]
    if not layers:
        return None
    named = [f"{r['layer']} {', '.join(map(str, r['dead_units']))}" for r in layers if r["dead_units"]]
    where = f"over the validation split after epoch {stats.get('epoch')} (summary.json)"
    return (f"dead units {where}: " + "; ".join(named) if named
            else f"no dead units {where} in {', '.join(r['layer'] for r in layers)}")
