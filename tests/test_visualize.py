"""``cnnctl visualize``: the PNGs it writes, their sizes, and that the numbers drawn are the network's own."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnctl.insight.attribution import named_layer
from cnnctl.insight.plots import DPI
from cnnctl.insight.stages import capture_stages, first_conv, stage_modules
from cnnctl.insight.visualize import FIGSIZE, MAX_TILES, feature_tiles, filter_tiles, grid_shape, mosaic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose best.pt holds a seeded LeNet-5 for digits, written as ``cnnctl train`` writes it."""
    from cnnctl.config import validate_config
    from cnnctl.models.registry import create_model
    from cnnctl.training.checkpoint import FORMAT, save_checkpoint

    run = tmp_path_factory.mktemp("vis") / "tiny"
    run.mkdir()
    cfg = validate_config({"name": "tiny", "data": {"dataset": "digits"}, "model": {"arch": "lenet5"}}, "tiny.yaml")
    torch.manual_seed(0)
    model = create_model(cfg.model, in_channels=1, image_size=(8, 8), num_classes=10)
    save_checkpoint(run / "best.pt", {
        "format": FORMAT, "config": cfg.dump(), "classes": [str(i) for i in range(10)],
        "input": {"channels": 1, "size": [8, 8], "mean": [0.3], "std": [0.4]}, "model": model.state_dict()})
    return run


def pixel_size(kind: str) -> tuple[int, int]:
    width, height = FIGSIZE[kind]
    return round(width * DPI), round(height * DPI)


def assert_png(path: Path, kind: str) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == pixel_size(kind), path.name
        im.verify()


def loaded(run_dir: Path) -> tuple[dict, nn.Module]:
    from cnnctl.inference.evaluate import model_from_checkpoint
    from cnnctl.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "best.pt")
    return ckpt, model_from_checkpoint(ckpt, "best.pt", torch.device("cpu"))


def model_input(ckpt: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from cnnctl.data.base import to_model_input
    from cnnctl.insight.visualize import input_image

    picture, _, _ = input_image(ckpt, "best.pt", None)
    spec = ckpt["input"]
    return picture, to_model_input(picture[None], spec["mean"], spec["std"], torch.device("cpu"))


def write_png(path: Path, size: tuple[int, int] = (20, 20), mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


# ---------------------------------------------------------------- through the command line


def test_default_run_writes_every_png_at_its_size(cli, run_dir):
    result = cli("visualize", run_dir)
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.strip().splitlines()]
    folder = run_dir / "visualize"
    assert all(p.parent == folder and p.is_file() for p in paths)
    names = [p.name for p in paths]
    attribution = ["gradcam.png", "occlusion.png", "saliency.png"]
    assert names[0] == "filters.png" and names[-5:] == ["overview.png", "prediction.png", *attribution]
    stage_files = names[1:-5]
    assert stage_files and stage_files == sorted(stage_files)
    assert all(n.startswith(f"featuremaps_{i:02d}_") for i, n in enumerate(stage_files, 1))
    kinds = ["filters"] + ["featuremaps"] * len(stage_files) + ["overview", "prediction"]
    for path, kind in zip(paths, kinds, strict=False):
        assert_png(path, kind)
    from cnnctl.insight.attribution import FIGSIZE as ATTRIBUTION

    for path in paths[-3:]:
        with Image.open(path) as im:
            assert im.size == (round(ATTRIBUTION[0] * DPI), round(ATTRIBUTION[1] * DPI))
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))
    # The same call again gives the same files in the same order.
    again = cli("visualize", run_dir / "best.pt")
    assert again.exit_code == 0 and again.stdout == result.stdout


def test_one_png_per_conv_and_pool_stage_bigger_than_1x1(cli, run_dir):
    ckpt, model = loaded(run_dir)
    _, x = model_input(ckpt)
    stages, _ = capture_stages(model, x)
    expected = [s.name for s in stages if s.output.shape[-1] * s.output.shape[-2] > 1]
    result = cli("visualize", run_dir)
    assert result.exit_code == 0, result.output
    drawn = [Path(line).name for line in result.stdout.split() if "featuremaps_" in line]
    assert [n.split("_", 2)[2].removesuffix(".png") for n in drawn] == [n.replace(".", "_") for n in expected]


def test_image_option_and_stale_stage_files(cli, run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "featuremaps_42_old_network.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("kept")
    result = cli("visualize", run_dir, "--image", write_png(tmp_path / "photo.png", (37, 23), "RGB"), "-o", out)
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.strip().splitlines()]
    assert all(p.parent == out for p in paths)
    assert_png(out / "prediction.png", "prediction")
    assert not (out / "featuremaps_42_old_network.png").exists()
    assert (out / "notes.txt").read_text() == "kept"


def test_unreadable_image_exits_2(cli, run_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a picture")
    result = cli("visualize", run_dir, "--image", bad, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "bad.png" in result.stderr and "not an image" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_exits_2(cli, run_dir, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = cli("visualize", run_dir, "-o", target)
    assert result.exit_code == 2 and "folder" in result.stderr


def rewritten_checkpoint(run_dir: Path, path: Path, **config_changes: dict) -> Path:
    """best.pt with parts of its config replaced; a changed model section gets a fresh model of that config."""
    from cnnctl.config import validate_config
    from cnnctl.models.registry import create_model
    from cnnctl.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_dir / "best.pt")
    for section, value in config_changes.items():
        ckpt["config"][section] = value
    if "model" in config_changes:
        cfg = validate_config(ckpt["config"], str(path))
        spec = ckpt["input"]
        model = create_model(cfg.model, in_channels=spec["channels"], image_size=tuple(spec["size"]),
                             num_classes=len(ckpt["classes"]))
        ckpt["model"] = model.state_dict()
    save_checkpoint(path, ckpt)
    return path


def test_network_without_conv_layers_errors_clearly(cli, run_dir, tmp_path):
    linear = {"arch": "custom", "layers": ["flatten", {"linear": {"out": 32}}, "relu", "linear"]}
    ckpt = rewritten_checkpoint(run_dir, tmp_path / "mlp.pt", model=linear)
    result = cli("visualize", ckpt, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "mlp.pt" in result.stderr and "no convolutional layer" in result.stderr
    assert "Traceback" not in result.output
    with pytest.raises(Exception, match="no convolutional layer"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_1x1_maps_are_not_drawn(cli, run_dir, tmp_path):
    small = {"arch": "custom", "layers": [{"conv": {"out": 4, "kernel": 3, "padding": 1}}, "relu", {"maxpool": 2},
                                          {"adaptive_avgpool": 1}, "flatten", "linear"]}
    ckpt = rewritten_checkpoint(run_dir, tmp_path / "small.pt", model=small)
    result = cli("visualize", ckpt, "--image", write_png(tmp_path / "x.png"), "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    names = [Path(line).name for line in result.stdout.split()]
    # the conv, the ReLU after it, the max-pool; not the 1x1 adaptive pool
    assert [n for n in names if n.startswith("featuremaps_")] == ["featuremaps_01_layers_0.png",
                                                                   "featuremaps_02_layers_1.png",
                                                                   "featuremaps_03_layers_2.png"]


def test_missing_dataset_asks_for_an_image(cli, run_dir, tmp_path):
    data = {"dataset": "mnist", "root": str(tmp_path / "nothing-here"), "download": False}
    ckpt = rewritten_checkpoint(run_dir, tmp_path / "mnist.pt", data=data)
    result = cli("visualize", ckpt, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "mnist" in result.stderr and "--image" in result.stderr
    assert "Traceback" not in result.output
    with_image = cli("visualize", ckpt, "--image", write_png(tmp_path / "x.png"), "-o", tmp_path / "out")
    assert with_image.exit_code == 0, with_image.output


# ---------------------------------------------------------------- the numbers drawn


def test_captured_maps_are_the_layers_outputs(run_dir):
    ckpt, model = loaded(run_dir)
    _, x = model_input(ckpt)
    name, conv = first_conv(model)
    stages, logits = capture_stages(model, x)
    assert stages[0].name == name
    with torch.no_grad():
        assert torch.allclose(stages[0].output, conv(x)[0], atol=1e-6)
        assert torch.allclose(logits, model(x), atol=1e-6)
    assert not any(h for m in model.modules() for h in m._forward_hooks.values())  # hooks removed


def test_maps_are_caught_before_an_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    stages, _ = capture_stages(model, x)
    assert [s.name for s in stages] == ["0", "1", "2", "3"]  # the conv, its ReLU, the two pools
    assert stages[1].description == "ReLU after 0"
    with torch.no_grad():
        conv_out = model[0](x)
        assert (stages[0].output < 0).any()
        assert torch.equal(stages[0].output, conv_out[0])
        assert torch.equal(stages[1].output, conv_out[0].relu())  # the negatives set to zero
        assert torch.equal(stages[2].output, nn.functional.max_pool2d(conv_out.relu(), 2)[0])
    assert stages[3].output.shape == (4, 1, 1)


def test_resnet_stages_are_its_layers():
    from torchvision.models import resnet18

    names = [name for name, _ in stage_modules(resnet18())]
    assert names == ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]


def test_filter_grid_has_one_tile_per_filter(run_dir):
    _, model = loaded(run_dir)
    _, conv = first_conv(model)
    tiles, labels = filter_tiles(conv.weight)
    assert conv.in_channels == 1
    assert tiles.shape == (conv.out_channels, *conv.kernel_size, 3)
    assert labels == [str(i) for i in range(conv.out_channels)]


def test_filter_tiles_colour_grey_and_cap():
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 5).weight
    tiles, _ = filter_tiles(rgb)
    assert tiles.shape == (8, 5, 5, 3)
    # Each filter scaled to its own min..max, over its three colour channels together.
    w = rgb.detach()[2]
    assert np.allclose(tiles[2], ((w - w.min()) / (w.max() - w.min())).permute(1, 2, 0).numpy(), atol=1e-6)
    assert all(t.min() == 0 and t.max() == 1 for t in tiles)
    grey, labels = filter_tiles(nn.Conv2d(2, 5, 3).weight)
    assert grey.shape == (10, 3, 3, 3) and labels[:3] == ["0:0", "0:1", "1:0"]
    assert np.array_equal(grey[..., 0], grey[..., 2])
    many, _ = filter_tiles(nn.Conv2d(1, 100, 3).weight)
    assert len(many) == MAX_TILES
    flat, _ = filter_tiles(torch.zeros(2, 1, 3, 3))
    assert np.all(flat == 0)


def test_feature_tiles_and_mosaic():
    maps = torch.arange(100 * 4 * 4, dtype=torch.float32).reshape(100, 4, 4)
    maps[1] = 0.0
    tiles, labels = feature_tiles(maps)
    assert tiles.shape == (MAX_TILES, 4, 4, 3) and labels[:2] == ["0: 0..15", "1 inactive 0"]
    rows, cols = grid_shape(len(tiles))
    assert (rows, cols) == (8, 8) and grid_shape(6) == (2, 3) and grid_shape(1) == (1, 1)
    picture, origins = mosaic(tiles[:6], cols=3, pad=1)
    assert picture.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and len(origins) == 6
    for (y, x), tile in zip(origins, tiles[:6], strict=True):
        assert np.array_equal(picture[y:y + 4, x:x + 4], tile)
    assert origins[4] == (6, 6)


# ---------------------------------------------------------------- hostile input and signals (issue 23, items 5, 18)


def _writer_after(fifo: Path, seconds: float) -> threading.Timer:
    """Open ``fifo``'s write end after ``seconds`` and close it, if anyone is reading it by then: a command that wrongly
    opened the FIFO then reads an empty file and fails the test, instead of waiting for a writer forever."""
    def write() -> None:
        with contextlib.suppress(OSError):  # ENXIO: nobody has it open for reading, as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(seconds, write)
    timer.daemon = True
    timer.start()
    return timer


def test_a_fifo_as_image_is_refused_like_predict_does(cli, run_dir, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    before = (run_dir / "best.pt").read_bytes()
    timer = _writer_after(tmp_path / "pipe.png", 20)
    result = cli("visualize", run_dir, "--image", tmp_path / "pipe.png", "-o", tmp_path / "out")
    timer.cancel()
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {tmp_path / 'pipe.png'}: --image: not an image file: a FIFO (named pipe); give "
                             "an image file (PNG, JPEG, ...)\n")
    assert not (tmp_path / "out").exists() and (run_dir / "best.pt").read_bytes() == before
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.png").st_mode)


@pytest.mark.parametrize("layer, what", [("classifier.0", "a Linear"), ("features.1", "a ReLU"),
                                         ("features", "a Sequential")])
def test_layer_that_is_not_a_conv_stage_is_refused_listing_them(cli, run_dir, tmp_path, layer, what):
    pytest.importorskip("captum")
    result = cli("visualize", run_dir, "-o", tmp_path / "out", "--layer", layer)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {run_dir / 'best.pt'}: --layer {layer!r}: {what}, not a conv stage; Grad-CAM "
                             "reads the feature maps of a convolution (or a ResNet's layerN stage). Conv stages: "
                             "features.0, features.3\n")
    assert not (tmp_path / "out").exists(), "refused before a PNG is written"
    _, model = loaded(run_dir)
    assert named_layer(model, "features.3") is model.features[3]


def _handled_signals(pid: int) -> set[int]:
    """The signals process ``pid`` has installed handlers for (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            mask = int(line.split()[1], 16)
            return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}
    return set()


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"visualize ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in 120 s"
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads a process's handlers from /proc")
@pytest.mark.parametrize("sig, moment", [
    (signal.SIGINT, None),  # while torch is imported
    (signal.SIGTERM, "filters.png"),  # while the feature maps are drawn
    (signal.SIGINT, "prediction.png"),  # while Captum is imported and the attribution maps computed
])
def test_a_signal_during_visualize_always_exits_128_plus_it(run_dir, tmp_path, sig, moment):
    """Python raises KeyboardInterrupt wherever it is when SIGINT comes: in a weakref callback during drawing it was
    only printed ("Exception ignored in ...") and visualize exited 0; in matplotlib's C resampler or an extension's
    import it became a ValueError or ImportError traceback. Now the signal is noted and acted on between steps."""
    out = tmp_path / "out"
    before = (run_dir / "best.pt").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "cnnctl", "visualize", str(run_dir), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: signal.SIGTERM in _handled_signals(proc.pid), proc, "handlers")
        if moment is not None:
            _wait_for((out / moment).exists, proc, moment)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert stderr.splitlines()[-1] == f"interrupted by {signal.Signals(sig).name}", stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stdout == ""
    assert not list(out.glob(".*")), "no temporary file left behind"
    assert (run_dir / "best.pt").read_bytes() == before
