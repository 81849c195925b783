"""``cnnctl predict`` (cnnctl/inference/predict.py): --topk against probabilities computed here, and the files it
cannot read (a symlink loop, a FIFO) reported one by one, never skipped silently, never a hang."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from PIL import Image

from tests.checkpoints import digits_split, softmax64
from tests.conftest import error_line, run_cnnctl

# ---------------------------------------------------------------- --topk


def test_predict_topk_above_the_class_count_shows_every_class(cli, members, tmp_path):
    x, _ = digits_split("test")
    image = tmp_path / "digit.png"
    Image.fromarray(x[0, 0].numpy(), mode="L").save(image)
    path, weight, bias = members[0]

    result = cli("predict", image, "-c", path, "--topk", "20", "--json")

    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    topk = entry["topk"]
    assert len(topk) == 10
    assert sorted(t["index"] for t in topk) == list(range(10))
    expected = softmax64(x[:1], weight, bias)[0]
    assert [t["index"] for t in topk] == expected.argsort(descending=True).tolist()
    assert [t["prob"] for t in topk] == pytest.approx(expected.sort(descending=True).values.tolist(), abs=1e-6)
    text = cli("predict", image, "-c", path, "--topk", "20")
    assert text.exit_code == 0 and text.stdout.count("%") == 10


# ---------------------------------------------------------------- symlink loops, FIFOs


def test_predict_skips_nothing_silently_and_never_hangs(world, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(world / "pets" / "cat", folder)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "loop-dir").symlink_to(folder)  # a folder link is not followed: no endless descent
    os.mkfifo(tmp_path / "pipe.png")
    result = run_cnnctl("predict", folder, tmp_path / "pipe.png", "-c", world / "runs" / "pets", timeout=120)
    assert result.exit_code == 2, result.output
    assert f"{folder / 'loop.png'}: error: cannot be read: Too many levels of symbolic links" in result.stdout
    assert f"{tmp_path / 'pipe.png'}: error: not an image file: a FIFO (named pipe)" in result.stdout
    assert result.stdout.count(": cat ") + result.stdout.count(": dog ") == 12, "the real images are all predicted"
    line = error_line(result)
    assert line.startswith("error: 2 of 14 files could not be read: ") and "loop.png" in line and "pipe.png" in line
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.png").st_mode)
