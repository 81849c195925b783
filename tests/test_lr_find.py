"""The learning-rate range test on the bundled digits data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from cnnctl.config import load_config
from cnnctl.errors import UsageError
from cnnctl.lr_find import format_result, lr_find, lr_find_command, suggest


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_lr_find_writes_its_folder_only_and_raises_the_lr_geometrically(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    result = lr_find_command("lenet5-digits", ["data.batch_size=64"], start=1e-5, end=1.0, steps=30,
                             out=str(tmp_path / "out"), device="cpu")
    folder = tmp_path / "out" / "lr-find-lenet5-digits"
    assert result["out_dir"] == str(folder)
    assert tree(tmp_path) - before == {"out", "out/lr-find-lenet5-digits", "out/lr-find-lenet5-digits/lr_find.csv",
                                       "out/lr-find-lenet5-digits/lr_find.png"}
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    lines = (folder / "lr_find.csv").read_text().splitlines()
    assert lines[0] == "step,lr,loss,smoothed_loss" and len(lines) == 1 + result["steps"]
    lrs = result["lrs"]
    assert lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([(1.0 / 1e-5) ** (1 / 29)] * len(ratios))
    assert result["stopped_early"] or lrs[-1] == pytest.approx(1.0)
    assert result["rule"] == "min/10" and result["suggestion"] == pytest.approx(result["min_loss_lr"] / 10)
    assert "suggested lr" in format_result(result)
    # a second run gets a folder of its own, the first stays as it was
    again = lr_find_command("lenet5-digits", ["data.batch_size=64"], start=1e-5, end=1.0, steps=20,
                            out=str(tmp_path / "out"), device="cpu")
    assert again["out_dir"].endswith("lr-find-lenet5-digits-2")
    assert len((folder / "lr_find.csv").read_text().splitlines()) == len(lines)
    assert os.listdir(work) == []


def test_lr_find_stops_when_the_loss_diverges(tmp_path):
    cfg = load_config("lenet5-digits", ["optimizer.name=sgd", "optimizer.momentum=0.9", "data.batch_size=64"])[0]
    result = lr_find(cfg, out_dir=tmp_path, start=1e-3, end=1e4, steps=60, device="cpu")
    assert result["stopped_early"]
    assert result["steps"] < 60
    assert "minimum" in result["stop_reason"] or "became" in result["stop_reason"]
    smoothed = result["smoothed"]
    assert smoothed[-1] > 4 * min(smoothed) or not math.isfinite(result["losses"][-1])


def test_suggest_on_a_known_curve():
    lrs = [10 ** (-6 + i * 0.25) for i in range(25)]  # 1e-6 .. 1
    # flat, then falling fastest between 1e-3 and 1e-2, lowest at 10**-1.5, then rising
    loss = [2.0 - 1.5 / (1 + math.exp(-4 * (math.log10(lr) + 2.5))) + (0.5 * (math.log10(lr) + 1.5) ** 2
            if lr > 10**-1.5 else 0) for lr in lrs]
    readings = suggest(lrs, loss)
    assert readings["min_loss_lr"] == pytest.approx(10**-1.5)
    assert readings["min/10"] == pytest.approx(10**-2.5)
    assert readings["steepest"] == pytest.approx(10**-2.5)


@pytest.mark.parametrize(("args", "fragment"), [
    ({"start": 0.0}, "--start"),
    ({"start": 1e-3, "end": 1e-4}, "--end"),
    ({"steps": 5}, "--steps"),
])
def test_bad_ranges_are_refused_before_anything_runs(tmp_path, args, fragment):
    with pytest.raises(UsageError, match=fragment):
        lr_find_command("lenet5-digits", out=str(tmp_path), **args)
    assert list(tmp_path.iterdir()) == []


def test_cli_lr_find_prints_a_suggestion_and_refuses_bad_arguments(tmp_path, cli):
    result = cli("lr-find", "lenet5-digits", "--set", "data.batch_size=64", "--start", "1e-5", "--end", "1",
                 "--steps", "20", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "suggested lr:" in result.stdout and "lr_find.png" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "lr-find-lenet5-digits").iterdir()) == ["lr_find.csv",
                                                                                               "lr_find.png"]
    bad = cli("lr-find", "lenet5-digits", "--steps", "5", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--steps" in bad.stderr and not (tmp_path / "bad").exists()
