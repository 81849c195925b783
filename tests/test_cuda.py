"""The CUDA path on a real GPU: train, resume, eval and predict; precisions, channels_last, compile, NCCL.

Every test here is marked ``cuda`` and skips without a CUDA device. ``scripts/gpu_check.sh`` runs them
(``pytest -m cuda``) with the CUDA benchmarks on a GPU machine. Sizes are small: the point is that each switch
runs on the device and gives sane numbers, not speed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, write_config
from tests.datafiles import write_image_folder, write_png

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False); run scripts/gpu_check.sh on one"),
]

CONFIG = """\
seed: 0
data: {data}
model: {{arch: {arch}}}
optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
train: {{epochs: {epochs}, device: cuda, precision: {precision}, channels_last: {channels_last}, compile: {compile},
        early_stopping: null}}
"""
DATA = {
    "lenet5": "{dataset: digits, batch_size: 64}",
    "resnet20": "{dataset: fake, channels: 3, image_size: 16, num_classes: 4, num_samples: 384, batch_size: 64, "
                "augment: {crop_padding: 2, hflip: true}}",
}


def config(tmp: Path, arch: str, *, epochs: int = 2, precision: str = "fp32", channels_last: bool = False,
           compile: bool = False, name: str = "c") -> Path:
    text = CONFIG.format(data=DATA[arch], arch=arch, epochs=epochs, precision=precision,
                         channels_last=str(channels_last).lower(), compile=str(compile).lower())
    return write_config(tmp / f"{name}.yaml", text)


def run_dir_of(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def metrics(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, map_location="cpu", weights_only=True)["model"]


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# Every precision with and without channels_last on lenet5; resnet20 (batch norm, residuals) in three of them.
MATRIX = [("lenet5", p, cl) for p in ("fp32", "bf16", "fp16") for cl in (False, True)] + [
    ("resnet20", "fp32", False), ("resnet20", "bf16", True), ("resnet20", "fp16", True)]


@pytest.mark.parametrize(("arch", "precision", "channels_last"), MATRIX,
                         ids=[f"{a}-{p}-{'cl' if cl else 'nchw'}" for a, p, cl in MATRIX])
def test_train_resume_eval_predict_on_cuda(cli, tmp_path, arch, precision, channels_last):
    if precision == "bf16" and not bf16_supported():
        pytest.skip("this GPU has no bf16")
    straight = cli("train", config(tmp_path, arch, precision=precision, channels_last=channels_last),
                   "--out", tmp_path / "runs", "--name", "straight")
    assert straight.exit_code == 0, straight.output
    run = run_dir_of(straight)
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["val_loss"])) for r in rows)
    assert all(t.device.type == "cpu" for t in weights(run).values())  # checkpoints load anywhere
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0

    # Resume: one epoch, then on to two from last.pt, as after an interruption.
    first = cli("train", config(tmp_path, arch, epochs=1, precision=precision, channels_last=channels_last,
                                name="one"), "--out", tmp_path / "runs", "--name", "resumed")
    assert first.exit_code == 0, first.output
    resumed = cli("train", "--resume", run_dir_of(first), "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert [int(r["epoch"]) for r in metrics(run_dir_of(resumed))] == [1, 2]
    if precision == "fp32":  # the same arithmetic, up to cuDNN's non-deterministic reductions
        for key, tensor in weights(run).items():
            other = weights(run_dir_of(resumed))[key]
            assert torch.allclose(tensor.float(), other.float(), atol=1e-2, rtol=1e-2), key

    on_gpu = cli("eval", run / "best.pt", "--json", "--device", "cuda")
    on_cpu = cli("eval", run / "best.pt", "--json", "--device", "cpu")
    assert on_gpu.exit_code == 0 and on_cpu.exit_code == 0, on_gpu.output + on_cpu.output
    gpu, cpu = json.loads(on_gpu.stdout), json.loads(on_cpu.stdout)
    assert gpu["n"] == cpu["n"] and abs(gpu["accuracy"] - cpu["accuracy"]) <= 0.05

    images = tmp_path / "images"
    channels = 1 if arch == "lenet5" else 3
    for i in range(3):
        write_png(images / f"{i}.png", np.random.default_rng(i).integers(0, 255, (8, 8, channels), dtype=np.uint8))
    predicted = cli("predict", images, "-c", run / "best.pt", "--json", "--device", "cuda")
    assert predicted.exit_code == 0, predicted.output
    results = json.loads(predicted.stdout)
    assert len(results) == 3
    for r in results:
        probs = [t["prob"] for t in r["topk"]]
        assert all(0.0 <= p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True), r


def test_compile_on_cuda(cli, tmp_path):
    result = cli("train", config(tmp_path, "lenet5", epochs=1, compile=True), "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run = run_dir_of(result)
    assert not any(k.startswith("_orig_mod.") for k in weights(run))  # saved from the unwrapped module
    assert math.isfinite(float(metrics(run)[0]["train_loss"]))


def test_device_resident_loaders_match_the_cpu_batches(tmp_path):
    from cnnctl.config import Augment, DataConfig
    from cnnctl.data.base import load_data, make_loader

    root = tmp_path / "folder"
    write_image_folder(root, {"a": 40, "b": 40}, size=(12, 12))
    bundle = load_data(DataConfig(dataset="imagefolder", root=str(root), cache="memory"), 0, device="cuda")
    augment = Augment(crop_padding=2, hflip=True)
    args = {"batch_size": 16, "train": True, "mean": bundle.mean, "std": bundle.std, "augment": augment, "seed": 1}
    gpu = list(make_loader(bundle.train, device=torch.device("cuda"), channels_last=True, **args).batches(0))
    cpu = list(make_loader(bundle.train, device=torch.device("cpu"), **args).batches(0))
    assert len(gpu) == len(cpu)
    for (xg, yg), (xc, yc) in zip(gpu, cpu, strict=True):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yg.cpu(), yc)
        assert torch.allclose(xg.cpu(), xc, atol=1e-5)  # crops and flips exact; the fused normalize may round apart


def test_auto_cache_budget_counts_the_gpu(monkeypatch):
    from cnnctl.data import cache

    monkeypatch.setattr(cache, "available_ram", lambda: 1 << 50)  # plenty of RAM: the GPU is the limit
    budget, where = cache.memory_budget("cuda")
    free, _ = torch.cuda.mem_get_info()
    assert budget <= free and "free on cuda" in where


NCCL_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cnnctl.config import ModelConfig
from cnnctl.models.registry import create_model

dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=torch.device("cuda", 0))
t = torch.arange(4.0, device="cuda")
dist.all_reduce(t)
assert t.tolist() == [0.0, 1.0, 2.0, 3.0], t
model = create_model(ModelConfig(arch="resnet20"), in_channels=3, image_size=(16, 16), num_classes=4).cuda()
ddp = DistributedDataParallel(model, device_ids=[0])
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
x, y = torch.randn(8, 3, 16, 16, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_bf16_supported()):
    loss = torch.nn.functional.cross_entropy(ddp(x), y)
loss.backward()
opt.step()
assert torch.isfinite(loss), loss
print(dist.get_backend())
dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_nccl_available(),
                    reason="this torch has no NCCL")
def test_one_process_nccl_group_trains_a_ddp_step():
    # A fresh process: a process group is process-wide state that must not leak into the other tests.
    proc = subprocess.run([sys.executable, "-c", NCCL_SCRIPT], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "nccl"


def test_train_under_torchrun_on_cuda(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    cfg = config(tmp_path, "lenet5", epochs=1)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=1", "-m", "cnnctl", "train", str(cfg),
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert (run / "last.pt").exists() and len(metrics(run)) == 1
