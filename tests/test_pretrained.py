"""Where the first weights come from: torchvision's ImageNet weights (``model.pretrained``), found in torch.hub's
cache under torchvision's file name, and another run's or file's weights (``model.init_from``), matched by name
and shape with a report (init.json). No test reaches the network: the weights file is made here with torchvision,
and the downloader is replaced by one that fails as an offline machine's does."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from cnnctl.models.pretrained import WITH_WEIGHTS
from tests.conftest import write_config

URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# resnet18 at 32 px on 40 random images: one epoch in about a second
FAKE = """\
seed: 0
data: {{dataset: fake, num_samples: 40, num_classes: {classes}, image_size: 32, batch_size: 16, val_split: 0.25}}
model: {{arch: {arch}{model}}}
optimizer: {{name: sgd, lr: 0.01}}
train: {{epochs: 1, threads: 1, early_stopping: null}}
"""


def fake_config(tmp_path: Path, name: str = "run", *, arch: str = "resnet18", classes: int = 5, model: str = "") -> Path:
    return write_config(tmp_path / f"{name}.yaml", FAKE.format(arch=arch, classes=classes, model=model))


@pytest.fixture
def offline(monkeypatch):
    """torch.hub's downloader fails as it does without a network; True once it has been asked for a file."""
    asked = []

    def no_network(url, dst, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return asked


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """torchvision's resnet18 (random, seeded: no ImageNet file is here) saved as torch.save'd weights, once."""
    import torchvision

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch, offline, resnet18_file):
    """TORCH_HOME in tmp_path with ``resnet18_file`` under the name torchvision's ImageNet weights have in torch.hub's
    cache; returns the file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    os.link(resnet18_file, path)
    return path


def only_run(out: Path) -> Path:
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


# ---------------------------------------------------------------- model.pretrained


def test_the_weights_file_in_torch_hubs_cache_gives_torchvisions_logits_bit_for_bit(hub, offline):
    import torchvision

    from cnnctl.config import ModelConfig
    from cnnctl.models.registry import create_model
    from cnnctl.training.initial_weights import initialise, weights_source

    cfg = ModelConfig(arch="resnet18", pretrained=True)
    # 32 px: stem auto would pick the CIFAR stem; with pretrained weights it is torchvision's
    model = create_model(cfg, in_channels=3, image_size=(32, 32), num_classes=1000)
    report = initialise(model, weights_source(cfg, in_channels=3))
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(hub, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), reference.eval()(x))
    assert len(report.loaded) == len(reference.state_dict()) and not report.new and not report.skipped
    assert offline == []  # found in the cache: no download tried


@pytest.mark.parametrize("arch", WITH_WEIGHTS)
def test_every_zoo_arch_with_weights_is_laid_out_as_torchvisions_when_pretrained(arch):
    """At 32 px stem auto would pick the CIFAR stem (ResNet) or the small head (VGG); pretrained, the network has
    torchvision's names and shapes, so its file fits. Built on the meta device: shapes only."""
    import torchvision

    from cnnctl.config import ModelConfig
    from cnnctl.models.limits import meta_network
    from cnnctl.models.registry import _builder

    ours = meta_network(_builder(ModelConfig(arch=arch, pretrained=True), in_channels=3, image_size=(32, 32),
                                 num_classes=1000))
    theirs = meta_network(lambda: torchvision.models.get_model(arch))
    assert [(k, t.shape) for k, t in ours.state_dict().items()] == [(k, t.shape) for k, t in theirs.state_dict().items()]


def test_with_five_classes_the_head_is_new_and_every_other_tensor_the_files(hub):
    from cnnctl.config import ModelConfig
    from cnnctl.models.registry import create_model
    from cnnctl.training.initial_weights import initialise, weights_source

    cfg = ModelConfig(arch="resnet18", pretrained="IMAGENET1K_V1")
    torch.manual_seed(0)
    model = create_model(cfg, in_channels=3, image_size=(32, 32), num_classes=5)
    fresh_fc = model.fc.weight.detach().clone()
    report = initialise(model, weights_source(cfg, in_channels=3))
    file_state = torch.load(hub, weights_only=True)
    state = model.state_dict()
    assert [k for k in state if torch.equal(state[k], file_state[k])] == [k for k in state if not k.startswith("fc.")]
    assert torch.equal(model.fc.weight, fresh_fc)
    assert [i["name"] for i in report.new] == ["fc.weight", "fc.bias"]


@pytest.mark.slow
def test_pretrained_with_five_classes_loads_all_but_a_new_head(cli, tmp_path, hub, caplog):
    caplog.set_level(logging.INFO, logger="cnnctl")
    out = tmp_path / "runs"
    result = cli("train", fake_config(tmp_path, model=", pretrained: true"), "--out", out)
    assert result.exit_code == 0, result.output
    run_dir = only_run(out)
    report = json.loads((run_dir / "init.json").read_text())
    file_state = torch.load(hub, weights_only=True)
    assert report["source"] == f"torchvision ResNet18_Weights.IMAGENET1K_V1 ({hub})"
    assert report["loaded"] == [k for k in file_state if not k.startswith("fc.")]
    assert report["new"] == [{"name": f"fc.{k}", "why": "the classifier: 5 classes here, 1000 in the weights"}
                             for k in ("weight", "bias")]
    assert report["skipped"] == [{"name": "fc.weight", "why": "another shape"},
                                 {"name": "fc.bias", "why": "another shape"}]
    assert f"init: 120 of the network's 122 tensors loaded from {report['source']}" in caplog.messages
    # the weights' normalisation; the config's own image size is kept
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    assert saved["input"]["mean"] == IMAGENET_MEAN and saved["input"]["std"] == IMAGENET_STD
    assert saved["input"]["size"] == [32, 32]
    assert saved["config"]["data"]["normalize"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    assert "model.pretrained ResNet18_Weights.IMAGENET1K_V1: from the weights: data.normalize mean [0.485, 0.456, " \
           "0.406] std [0.229, 0.224, 0.225] (the inputs the network learned its features on" in caplog.text
    assert saved["model"]["conv1.weight"].shape == (64, 3, 7, 7)  # torchvision's stem at 32 px
    hub.unlink()
    evaluated = cli("eval", run_dir)  # the checkpoint's config rebuilds that stem; no weights file is read
    assert evaluated.exit_code == 0, evaluated.output


def test_missing_weights_offline_is_exit_2_naming_the_url_and_the_path(cli, tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "runs"
    result = cli("train", fake_config(tmp_path, model=", pretrained: true"), "--out", out)
    assert result.exit_code == 2, result.output
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert offline == [URL]
    assert f"download {URL} and put it at {path}" in result.stderr
    assert "model.pretrained" in result.stderr and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())  # no run directory left behind
    assert not path.exists()


def test_an_unreadable_cached_file_is_exit_2_saying_to_delete_it(cli, tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>a captive portal, saved by hand</html>")
    result = cli("train", fake_config(tmp_path, model=", pretrained: true"), "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: the cached file is unreadable (")
    assert f"delete it and run again to download {URL} afresh" in result.stderr
    assert offline == [] and path.read_bytes().startswith(b"<html>")  # nothing downloaded, nothing removed


def test_densenets_old_key_names_are_renamed_as_torchvision_does():
    from cnnctl.models.pretrained import _torchvision_keys

    state = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.conv0.weight": 2}
    assert _torchvision_keys("torchvision.densenet121", state) == {
        "features.denseblock1.denselayer1.norm1.weight": 1, "features.conv0.weight": 2}
    assert _torchvision_keys("resnet18", state) is state


@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_an_arch_without_published_weights_is_refused_naming_those_with(cli, tmp_path, arch):
    result = cli("train", fake_config(tmp_path, arch=arch, model=", pretrained: true"), "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert f"model.pretrained: arch {arch!r} has no published pretrained weights" in result.stderr
    assert "resnet18, resnet34, resnet50, resnet101, resnet152" in result.stderr and "vgg11_bn" in result.stderr
    assert "alexnet" in result.stderr and "torchvision.NAME" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unknown_weights_name_is_refused_naming_torchvisions(cli, tmp_path, hub):
    result = cli("train", fake_config(tmp_path, model=", pretrained: IMAGENET1K_V9"), "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert "torchvision has no weights 'IMAGENET1K_V9' for resnet18; it has IMAGENET1K_V1" in result.stderr


@pytest.mark.parametrize(("model", "channels", "message"), [
    (", pretrained: true, stem: cifar", 3, "model.pretrained: torchvision's weights have the ImageNet stem"),
    (", pretrained: true, init_from: x.pt", 3, "model.init_from: model.pretrained and model.init_from both"),
    (", pretrained: true", 1, "model.pretrained: torchvision's pretrained weights take 3-channel (RGB) images"),
])
def test_pretrained_refuses_what_torchvisions_weights_cannot_fit(cli, tmp_path, hub, model, channels, message):
    cfg = fake_config(tmp_path, model=model)
    result = cli("train", cfg, "--out", tmp_path / "runs", "--set", f"data.channels={channels}")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_resumed_pretrained_run_needs_no_weights_file_and_keeps_its_source(cli, tmp_path, hub, caplog):
    out = tmp_path / "runs"
    assert cli("train", fake_config(tmp_path, model=", pretrained: true"), "--out", out).exit_code == 0
    run_dir = only_run(out)
    hub.unlink()  # the checkpoint holds the weights now
    caplog.set_level(logging.INFO, logger="cnnctl")
    result = cli("train", "--resume", run_dir, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert not any(m.startswith("init:") for m in caplog.messages)
    changed = cli("train", "--resume", run_dir, "--set", "train.epochs=3", "--set", "model.pretrained=false")
    assert changed.exit_code == 2 and "model.pretrained (True -> False)" in changed.stderr


# ---------------------------------------------------------------- model.init_from


@pytest.fixture
def three_class_run(cli, tmp_path) -> Path:
    result = cli("train", fake_config(tmp_path, "three", arch="lenet5", classes=3), "--out", tmp_path / "first")
    assert result.exit_code == 0, result.output
    return only_run(tmp_path / "first")


def test_init_from_a_run_of_another_class_count_loads_all_but_the_head(cli, tmp_path, three_class_run, caplog):
    caplog.set_level(logging.INFO, logger="cnnctl")
    source = torch.load(three_class_run / "best.pt", weights_only=True)["model"]
    cfg = fake_config(tmp_path, arch="lenet5", model=f", init_from: {three_class_run}")  # a run directory: its best.pt
    result = cli("train", cfg, "--out", tmp_path / "second")
    assert result.exit_code == 0, result.output
    report = json.loads((only_run(tmp_path / "second") / "init.json").read_text())
    head = [k for k in source if source[k].shape[:1] == (3,)]
    assert head and report["loaded"] == [k for k in source if k not in head]
    assert [n["name"] for n in report["new"]] == head
    assert report["new"][0]["why"] == f"{[5, *source[head[0]].shape[1:]]} here, {list(source[head[0]].shape)} in the source"
    assert any(m.startswith(f"init: left new (freshly initialised): {head[0]} ([5, ") for m in caplog.messages)


def test_init_from_another_architecture_is_exit_2_naming_the_mismatches(cli, tmp_path, three_class_run):
    cfg = fake_config(tmp_path, arch="vgg11", model=f", init_from: {three_class_run / 'best.pt'}")
    result = cli("train", cfg, "--out", tmp_path / "second")
    assert result.exit_code == 2, result.output
    assert f"{three_class_run / 'best.pt'}: model.init_from: none of its" in result.stderr
    assert "(first mismatches: features.0.weight: [64, 3, 3, 3] here, [6, 3, 5, 5] in the source;" in result.stderr
    assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())


def test_init_from_a_plain_state_dict_file(cli, tmp_path):
    from cnnctl.models.lenet import lenet5

    torch.manual_seed(3)
    state = lenet5(num_classes=5, in_channels=3, image_size=(32, 32)).state_dict()
    torch.save(state, tmp_path / "weights.pt")
    result = cli("train", fake_config(tmp_path, arch="lenet5", model=f", init_from: {tmp_path / 'weights.pt'}"),
                 "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    report = json.loads((only_run(tmp_path / "runs") / "init.json").read_text())
    assert report["loaded"] == list(state) and report["new"] == [] and report["skipped"] == []


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda t: t.fill_(float("nan")), "NaN value(s)"),
    (lambda t: t.to(torch.int64), "holds int64 values where the network has floating-point ones"),
])
def test_init_from_refuses_non_finite_and_integer_weights(cli, tmp_path, spoil, message):
    from cnnctl.models.lenet import lenet5

    state = lenet5(num_classes=5, in_channels=3, image_size=(32, 32)).state_dict()
    name = next(iter(state))
    state[name] = spoil(state[name])
    torch.save(state, tmp_path / "bad.pt")
    result = cli("train", fake_config(tmp_path, arch="lenet5", model=f", init_from: {tmp_path / 'bad.pt'}"),
                 "--out", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert str(tmp_path / "bad.pt") in result.stderr and message in result.stderr and name in result.stderr


def test_init_from_a_missing_file_is_exit_2_naming_it(cli, tmp_path):
    result = cli("train", fake_config(tmp_path, arch="lenet5", model=f", init_from: {tmp_path / 'nope.pt'}"),
                 "--out", tmp_path / "runs")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope.pt'}: no such file" in result.stderr
