"""Export: every model of the zoo goes to ONNX and TorchScript and computes what PyTorch does; the files carry
their classes and preprocessing; `predict` on an ONNX file answers as on its checkpoint; a missing extra is a
clear error."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnctl import __version__
from cnnctl.config import Config
from cnnctl.errors import CnnctlError
from cnnctl.inference.evaluate import model_from_checkpoint
from cnnctl.inference.export import TOLERANCE, ExportError, export, export_metadata, read_metadata
from cnnctl.inference.predict import onnx_predict
from cnnctl.models.registry import MODELS, create_model
from cnnctl.training.checkpoint import FORMAT, save_checkpoint
from tests.conftest import error_line, snapshot
from tests.datafiles import write_image_folder

HAS_EXTRA = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_EXTRA, reason="the export extra is not installed: pip install 'cnnctl[export]'")

# Every layer kind a custom stack can hold, in one network.
CUSTOM_LAYERS = [
    {"conv": {"out": 6, "kernel": 5, "padding": 2}}, "relu", {"maxpool": 2},
    {"conv": {"out": 8, "kernel": 3, "padding": 1}}, "batchnorm", {"leaky_relu": 0.1}, {"avgpool": 2},
    {"residual": [{"conv": {"out": 8, "kernel": 3, "padding": 1}}, "gelu"]},
    {"residual": [{"conv": {"out": 12, "kernel": 3, "padding": 1}}, "sigmoid"]},
    {"sumpool": {"kernel": 3, "stride": 2, "padding": 1}}, "identity", {"adaptive_avgpool": 2}, "flatten", {"dropout": 0.5}, {"linear": {"out": 16}},
    "tanh", "linear",
]

# (channels, side) per arch: small inputs, since every export runs each model six times. AlexNet needs 63x63,
# VGG's five pools 32x32; ResNets run their CIFAR stem on 16x16 (layer4 at 2x2), the ImageNet stem on 32x32.
INPUTS = {"lenet5": (1, 28), "custom": (1, 28), "alexnet": (3, 64), **{arch: (3, 16) for arch in MODELS.names()
                                                                       if arch.startswith("resnet")}}
TORCHVISION = "torchvision.mobilenet_v3_small"
# Exporting costs time per operation traced, not per weight: ONNX export of a ResNet-200 takes 15-30 s on two
# cores. The nets that differ from another only in depth (the same blocks, repeated) are exported to ONNX only
# (the exporter that rewrites the graph) and marked slow; every distinct block, stem and layer kind is exported
# in both formats: lenet5, alexnet, custom, vgg11(_bn), resnet18 (both stems), resnet50, resnet20, torchvision.
DEPTH_ONLY = {"vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnet34", "resnet101", "resnet152",
              "resnet200", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"}
# Models that cannot be exported, with the reason: (arch, format) -> why. Empty: every model exports.
CANNOT_EXPORT: dict[tuple[str, str], str] = {}


def make_checkpoint(path: Path, arch: str, *, channels: int = 3, side: int = 32, classes: int = 5,
                    dataset: str = "fake", data: dict | None = None, **model) -> dict:
    """A checkpoint as training writes one (the keys export reads), with freshly initialised weights."""
    if data is None:
        data = {"dataset": dataset}
        if dataset == "fake":
            data.update(num_samples=20, num_classes=classes, channels=channels, image_size=side)
    cfg = Config.model_validate({"name": arch, "data": data, "model": {"arch": arch, **model}})
    torch.manual_seed(0)
    net = create_model(cfg.model, in_channels=channels, image_size=(side, side), num_classes=classes).eval()
    ckpt = {
        "format": FORMAT,
        "cnnctl_version": __version__,
        "config": cfg.dump(),
        "classes": [f"class_{i}" for i in range(classes)],
        "input": {"channels": channels, "size": [side, side], "mean": [0.5] * channels, "std": [0.25] * channels},
        "model": net.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, ckpt)
    return ckpt


def zoo_cases() -> list:
    models = [(arch, {}) for arch in MODELS.names()]
    models += [(TORCHVISION, {}), ("resnet18", {"stem": "imagenet"})]
    cases = []
    for arch, options in models:
        for fmt in ("onnx", "torchscript"):
            if fmt == "torchscript" and arch in DEPTH_ONLY:
                continue
            marks = [needs_onnx] if fmt == "onnx" else []
            if (arch, fmt) in CANNOT_EXPORT:
                marks.append(pytest.mark.xfail(strict=True, raises=ExportError, reason=CANNOT_EXPORT[arch, fmt]))
            if arch in DEPTH_ONLY:
                marks.append(pytest.mark.heavy)
            if arch == "resnet1202":  # untrained, its 600 blocks overflow float32 in eval mode (tests/test_models.py)
                marks.append(pytest.mark.xfail(strict=True, raises=ExportError, reason="non-finite untrained logits"))
            name = "-".join([arch, *(f"{v}-{k}" for k, v in options.items()), fmt])
            cases.append(pytest.param(arch, options, fmt, marks=marks, id=name))
    return cases


@pytest.mark.parametrize(("arch", "options", "fmt"), zoo_cases())
def test_every_model_exports_and_computes_what_pytorch_does(tmp_path, arch, options, fmt):
    channels, side = (3, 32) if options.get("stem") == "imagenet" else INPUTS.get(arch, (3, 32))
    model = {"layers": CUSTOM_LAYERS} if arch == "custom" else options
    ckpt = make_checkpoint(tmp_path / "best.pt", arch, channels=channels, side=side, **model)

    result = export(tmp_path / "best.pt", format=fmt)

    assert Path(result["path"]).is_file()
    assert result["path"] == str(tmp_path / ("best.onnx" if fmt == "onnx" else "best.torchscript.pt"))
    # Agreement computed here, not taken from export()'s report: run the written file and the PyTorch model.
    x = torch.randn(3, channels, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model_from_checkpoint(ckpt, "best.pt", torch.device("cpu"))(x).numpy()
    got = run_exported(result["path"], fmt, x.numpy())
    assert got.shape == expected.shape == (3, 5)
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) <= TOLERANCE * scale
    assert float(np.abs(softmax(got) - softmax(expected)).max()) <= TOLERANCE
    assert result["top1_agree"] is True
    assert result["max_prob_diff"] <= TOLERANCE
    assert result["exporter"] == ("torch.onnx (dynamo)" if fmt == "onnx" else "torch.jit.trace")
    # The fake dataset's test images, then random batches other than the exported one (the dynamic batch axis).
    assert result["checked"] == ["4 fake test images", "random batch of 1", "random batch of 3"]
    assert read_metadata(result["path"]) == export_metadata(ckpt)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def run_exported(path: str, fmt: str, x: np.ndarray) -> np.ndarray:
    """The logits of an exported file, computed by its own runtime (onnxruntime, or the TorchScript loader)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
        return torch.jit.load(path)(torch.from_numpy(x)).numpy()


@pytest.fixture
def digits_ckpt(tmp_path) -> tuple[Path, dict]:
    """A LeNet-5 for the 8x8 digits, in a run directory, as `cnnctl train` leaves it."""
    run = tmp_path / "runs" / "digits"
    ckpt = make_checkpoint(run / "best.pt", "lenet5", channels=1, side=8, classes=10, dataset="digits")
    return run, ckpt


def write_images(folder: Path, n: int = 5) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        mode_shape = ("L", (12, 9)) if i % 2 else ("RGB", (8, 8, 3))  # other sizes and modes: resized, converted
        Image.fromarray(rng.integers(0, 256, mode_shape[1], dtype=np.uint8), mode_shape[0]).save(folder / f"{i}.png")
        files.append(str(folder / f"{i}.png"))
    (folder / "broken.png").write_bytes(b"not an image")
    return files


@needs_onnx
def test_onnx_file_carries_metadata_and_verifies_on_real_test_images(digits_ckpt, caplog):
    import onnx

    run, ckpt = digits_ckpt
    caplog.set_level("INFO", logger="cnnctl.inference.export")
    result = export(run, format="onnx", opset=18)

    assert result["path"] == str(run / "best.onnx")
    assert result["checked"][0] == "16 digits test images"
    assert "verify on 16 digits test images" in caplog.text
    model = onnx.load(result["path"])
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["classes"] == ckpt["classes"]
    assert props["size"] == [8, 8] and props["channels"] == 1
    assert props["mean"] == [0.5] and props["std"] == [0.25]
    assert props["arch"] == "lenet5" and props["cnnctl_version"] == __version__
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert {o.domain: o.version for o in model.opset_import}[""] == 18


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_file_carries_metadata(digits_ckpt):
    run, ckpt = digits_ckpt
    (run / "exported").mkdir()
    result = export(run / "best.pt", format="torchscript", output=run / "exported")  # a folder: the default name

    assert result["path"] == str(run / "exported" / "best.torchscript.pt")
    extra = {"cnnctl.json": ""}
    module = torch.jit.load(result["path"], _extra_files=extra)
    meta = json.loads(extra["cnnctl.json"])
    assert meta == export_metadata(ckpt)
    assert meta["classes"] == ckpt["classes"] and meta["size"] == [8, 8]
    assert module(torch.zeros(7, 1, 8, 8)).shape == (7, 10)


@needs_onnx
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "static-batch"])
def test_onnx_predict_matches_checkpoint_predict(digits_ckpt, tmp_path, dynamic):
    from cnnctl.inference.predict import predict

    run, _ = digits_ckpt
    files = write_images(tmp_path / "images")
    onnx_path = export(run, format="onnx", dynamic_batch=dynamic)["path"]
    inputs = [str(tmp_path / "images"), files[0], str(tmp_path / "missing.png")]

    expected = predict(inputs, str(run / "best.pt"), topk=3)
    got = onnx_predict(onnx_path, inputs, topk=3, batch_size=4)  # 4: the last batch is not a full one

    assert [r["file"] for r in got] == [r["file"] for r in expected]
    # The folder's five images and broken.png (sorted), the file named again, the missing one.
    assert [("error" in r) for r in got] == [("error" in r) for r in expected] == [False] * 5 + [True, False, True]
    for g, e in zip(got, expected, strict=True):
        if "error" in e:
            assert g["error"] == e["error"]
            continue
        assert [t["class"] for t in g["topk"]] == [t["class"] for t in e["topk"]]
        assert [t["index"] for t in g["topk"]] == [t["index"] for t in e["topk"]]
        assert np.allclose([t["prob"] for t in g["topk"]], [t["prob"] for t in e["topk"]], atol=1e-4, rtol=0)


@needs_onnx
def test_cli_predict_on_onnx_file_matches_checkpoint(cli, digits_ckpt, tmp_path):
    run, _ = digits_ckpt
    write_images(tmp_path / "images", n=3)
    (tmp_path / "images" / "broken.png").unlink()
    assert cli("export", run).exit_code == 0

    from_pt = cli("predict", tmp_path / "images", "-c", run / "best.pt", "--json", "-k", "3")
    from_onnx = cli("predict", tmp_path / "images", "-c", run / "best.onnx", "--json", "-k", "3")

    assert from_pt.exit_code == 0 and from_onnx.exit_code == 0, from_onnx.stderr
    pt, ox = json.loads(from_pt.stdout), json.loads(from_onnx.stdout)
    assert [[t["class"] for t in r["topk"]] for r in ox] == [[t["class"] for t in r["topk"]] for r in pt]
    assert np.allclose([[t["prob"] for t in r["topk"]] for r in ox], [[t["prob"] for t in r["topk"]] for r in pt],
                       atol=1e-4, rtol=0)


@pytest.mark.parametrize(("fmt", "name"), [pytest.param("onnx", "best.onnx", marks=needs_onnx),
                                           ("torchscript", "best.torchscript.pt")])
def test_cli_export_prints_the_path_alone(cli, digits_ckpt, caplog, fmt, name):
    run, _ = digits_ckpt
    caplog.set_level("INFO", logger="cnnctl.inference.export")  # the CLI logs to stderr; in-process, pytest captures it
    result = cli("export", run, "--format", fmt)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == str(run / name) + "\n"
    assert "exported" in caplog.text and "max |logit diff|" in caplog.text
    assert "Warning" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "tflite"], "'tflite' is not one of 'onnx', 'torchscript'"),
    (["-o", "{run}/best.pt", "--format", "torchscript"], "is the checkpoint itself"),
], ids=["unknown-format", "output-is-the-checkpoint"])
def test_cli_export_bad_arguments_exit_2(cli, digits_ckpt, args, message):
    run, _ = digits_ckpt
    result = cli("export", run, *[a.format(run=run) for a in args])

    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_missing_extra_names_the_install_command(cli, digits_ckpt, monkeypatch):
    run, _ = digits_ckpt
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError

    result = cli("export", run)

    assert result.exit_code == 2
    assert "pip install 'cnnctl[export]'" in result.stderr
    assert "Traceback" not in result.output
    assert not (run / "best.onnx").exists()
    with pytest.raises(CnnctlError, match=r"pip install 'cnnctl\[export\]'"):
        onnx_predict(run / "best.pt", ["x.png"])


def test_an_export_that_disagrees_is_refused_with_exit_1(cli, digits_ckpt, monkeypatch, caplog):
    import cnnctl.inference.export as export_module

    run, _ = digits_ckpt
    caplog.set_level("INFO", logger="cnnctl.inference.export")
    real_runner = export_module._torchscript_runner
    monkeypatch.setattr(export_module, "_torchscript_runner", lambda data: lambda x: real_runner(data)(x) + 1e-3)

    result = cli("export", run, "--format", "torchscript")

    assert result.exit_code == 1
    assert "does not compute what the PyTorch model does" in result.stderr
    assert "max |logit diff| 1.00e-03" in result.stderr
    assert "FAILED" in caplog.text
    assert not (run / "best.torchscript.pt").exists()


@needs_onnx
def test_onnx_falls_back_to_the_torchscript_exporter(digits_ckpt, monkeypatch):
    import cnnctl.inference.export as export_module

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::something")

    monkeypatch.setattr(export_module, "_dynamo_onnx", broken)
    run, ckpt = digits_ckpt
    result = export(run, format="onnx")

    assert result["exporter"] == "torch.onnx (torchscript)"
    assert result["top1_agree"]
    assert read_metadata(result["path"]) == export_metadata(ckpt)


def test_imagefolder_test_images_are_read_with_the_checkpoint_preprocessing(tmp_path):
    write_image_folder(tmp_path / "images", {"cat": 5, "dog": 5}, channels=3, size=(12, 10))
    data = {"dataset": "imagefolder", "root": str(tmp_path / "images"), "image_size": 16, "test_split": 0.4}
    make_checkpoint(tmp_path / "best.pt", "custom", channels=3, side=16, classes=2, data=data,
                    layers=[{"conv": {"out": 4, "kernel": 3}}, "relu", {"sumpool": 2}, "flatten", "linear"])

    result = export(tmp_path / "best.pt", format="torchscript")

    assert result["checked"][0] == "4 imagefolder test images"  # files decoded and resized to 16x16 by load_image


def test_a_dataset_that_is_not_here_narrows_the_check_to_random_inputs(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its data.root, `data`, is relative: no MNIST there
    ckpt = make_checkpoint(tmp_path / "best.pt", "lenet5", channels=1, side=28, classes=10, dataset="mnist")
    ckpt_cfg = ckpt["config"]
    assert ckpt_cfg["data"]["download"] is True  # export must not download it anyway
    caplog.set_level("INFO", logger="cnnctl.inference.export")

    result = export(tmp_path / "best.pt", format="torchscript")

    assert result["checked"] == ["random batch of 1", "random batch of 3"]
    assert "no real images (dataset cannot be read here" in caplog.text


# ---------------------------------------------------------------- an exported file's metadata is checked on load


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """best.onnx of a LeNet-5 for the 8x8 digits ([batch, 1, 8, 8] -> [batch, 10]), exported once for the module."""
    if not HAS_EXTRA:
        pytest.skip("the export extra is not installed: pip install 'cnnctl[export]'")
    run = tmp_path_factory.mktemp("onnx") / "digits"
    make_checkpoint(run / "best.pt", "lenet5", channels=1, side=8, classes=10, dataset="digits")
    return Path(export(run, format="onnx")["path"])


def edited(source: Path, target: Path, **values) -> Path:
    """A copy of ``source`` with ``values`` (as JSON) in place of its own cnnctl metadata."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in values:
            prop.value = json.dumps(values.pop(prop.key))
    assert not values, f"no such metadata: {values}"
    onnx.save(model, str(target))
    return target


@needs_onnx
@pytest.mark.parametrize(("values", "problem"), [
    ({"classes": ["a"]}, "classes names 1 class(es) but the graph gives 10 logits per image"),
    ({"classes": "0123456789"}, "classes must be a list of class names, got '0123456789'"),
    ({"size": [40000, 40000]}, "size [40000, 40000] is larger than 4096 pixels a side, the most data.image_size allows"),
    ({"size": [-3, 0]}, "size must be [height, width] of positive integers, got '[-3, 0]'"),
    ({"size": [16, 16]}, "size is [16, 16] but the graph takes 1x8x8 images (channels x height x width)"),
    ({"channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, "channels is 3 but the graph takes 1-channel images (1x8x8)"),
    ({"mean": "x"}, "mean must be 1 finite number(s), one per channel, got 'x'"),
    ({"std": [0]}, "std must be positive (images are divided by it), got [0]"),
    ({"std": [0.25, 0.25]}, "std must be 1 finite number(s), one per channel, got '[0.25, 0.25]'"),
], ids=["classes-vs-output", "classes-a-string", "size-huge", "size-negative", "size-vs-graph", "channels-vs-graph",
        "mean-a-string", "std-zero", "std-per-channel"])
def test_predict_refuses_an_onnx_file_whose_metadata_is_wrong(cli, onnx_file, tmp_path, values, problem):
    """Issue 23: these ended in an IndexError or TypeError traceback, 6.4 GB per image, or "nan%" with exit 0."""
    bad = edited(onnx_file, tmp_path / "bad.onnx", **values)
    write_images(tmp_path / "images", n=1)

    result = cli("predict", tmp_path / "images" / "0.png", "-c", bad)

    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {bad}: metadata: {problem}; the file's metadata was edited or damaged: export "
                             "it again with `cnnctl export CHECKPOINT`\n")
    assert result.stdout == ""


@needs_onnx
def test_read_metadata_checks_what_predict_checks(onnx_file, tmp_path):
    bad = edited(onnx_file, tmp_path / "bad.onnx", std=[0])
    with pytest.raises(CnnctlError, match=r"bad.onnx: metadata: std must be positive") as info:
        read_metadata(bad)
    assert info.value.exit_code == 2 and info.value.key == "metadata"


def reshape_logits(path: Path, shape: list, declared: list) -> Path:
    """Rewrite the exported ``path`` so that its logits are reshaped to ``shape`` (-1 infers a side, "batch" is the
    batch size read at run time), its output declared ``declared``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw" if o == "logits" else o for o in node.output]
    fixed = [v for v in shape if v != "batch"]
    graph.initializer.extend([numpy_helper.from_array(np.array(fixed, np.int64), "fixed"),
                              numpy_helper.from_array(np.array([0], np.int64), "zero"),
                              numpy_helper.from_array(np.array([1], np.int64), "one")])
    if "batch" in shape:  # a shape computed at run time: no shape inference can tell the width
        graph.node.extend([helper.make_node("Shape", ["raw"], ["shape"]),
                           helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
                           helper.make_node("Concat", ["batch", "fixed"], ["target"], axis=0)])
    else:
        graph.node.append(helper.make_node("Identity", ["fixed"], ["target"]))
    graph.node.append(helper.make_node("Reshape", ["raw", "target"], ["logits"]))
    del graph.output[:], graph.value_info[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, declared))
    onnx.save(model, str(path))
    return path


@needs_onnx
def test_an_output_width_the_graph_leaves_open_is_checked_on_the_first_batch(cli, onnx_file, tmp_path):
    bad = reshape_logits(edited(onnx_file, tmp_path / "open.onnx", classes=["a", "b"]), ["batch", -1],
                         ["batch", "classes"])
    write_images(tmp_path / "images", n=1)

    result = cli("predict", tmp_path / "images" / "0.png", "-c", bad)

    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {bad}: metadata: classes names 2 class(es) but the graph gives [10] logits per image\n"
    assert result.stdout == ""


@needs_onnx
def test_a_graph_that_fails_on_its_own_input_is_named(cli, onnx_file, tmp_path):
    bad = reshape_logits(edited(onnx_file, tmp_path / "fails.onnx"), [3, -1], ["batch", 10])  # 10 logits in 3 rows
    write_images(tmp_path / "images", n=1)

    result = cli("predict", tmp_path / "images" / "0.png", "-c", bad)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {bad}: onnxruntime cannot run it on [1, 1, 8, 8] images ([ONNXRuntimeError]")
    assert result.stdout == ""


@needs_onnx
def test_a_graph_that_takes_no_images_is_refused(cli, onnx_file, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    source = onnx.load(str(onnx_file))
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "flat",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = source.ir_version
    model.metadata_props.extend(source.metadata_props)
    onnx.save(model, str(tmp_path / "flat.onnx"))

    result = cli("predict", tmp_path / "nothing.png", "-c", tmp_path / "flat.onnx")

    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {tmp_path / 'flat.onnx'}: its input 'input' is tensor(float) ['batch', 10], not "
                             "float32 [batch, channels, height, width], so it is not an image classifier cnnctl can "
                             "run; export one with `cnnctl export CHECKPOINT`\n")


# ---------------------------------------------------------------- --opset torch cannot write


@pytest.mark.parametrize("opset", ["1", "6", "99"])
def test_export_refuses_an_opset_torch_cannot_write(world, cli, opset):
    pytest.importorskip("onnx")
    run = world / "runs" / "pets"
    before = snapshot(run)
    result = cli("export", run, "--opset", opset)
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: --opset {opset}: torch.onnx ") and "writes opsets 7 to 23" in \
        result.stderr
    assert snapshot(run) == before, "nothing written"
