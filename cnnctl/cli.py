"""The command line: parse, call one function, print. Torch is imported inside commands, never at start-up."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cnnctl.errors import CnnctlError, Interrupted

app = typer.Typer(
    name="cnnctl",
    help="Train, evaluate and run image-classification CNNs from YAML configs.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion; the completers are attached in main()
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config key, value parsed as YAML (repeatable)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout; human text goes to stderr.")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]


# Choice options as enums: Typer itself refuses another value with exit 2 and lists the valid ones.
class Split(str, Enum):
    test = "test"
    val = "val"


class Method(str, Enum):
    grid = "grid"
    random = "random"
    tpe = "tpe"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class TuneMetric(str, Enum):
    val_acc = "val_acc"
    val_loss = "val_loss"
    train_acc = "train_acc"
    train_loss = "train_loss"


def _configure(threads: int | str | None = None) -> None:
    """The process-wide settings, once per command, here at the entry point and nowhere in the library: logging
    (rank 0 alone reports progress under torchrun), the CPU allocator, and ``train.threads``."""
    from cnnctl.runtime import configure_process

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    configure_process(threads=threads, log_level=level)


def handle_errors(func: F) -> F:
    """The one place error kinds become exit codes: a message on stderr and ``e.exit_code``; no traceback for bad
    input. An interruption prints its resume command (no "error:"); Ctrl-C outside training exits 130."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _configure()
        try:
            return func(*args, **kwargs)
        except Interrupted as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(e.exit_code) from None
        except CnnctlError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
@handle_errors
def train(
    config: Annotated[str | None, typer.Argument(help="A YAML config file or a bundled config name.")] = None,
    set_: SetOption = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default: the config's name).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Folder for run directories (default: runs).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="A run directory or checkpoint to continue.")] = None,
    device: DeviceOption = None,
) -> None:
    """Train a network; writes OUT/NAME/ with config.yaml, metrics.csv, best.pt, last.pt, summary.json."""
    from cnnctl.api import train as run_train
    from cnnctl.config import check_device, check_run_name

    if name is not None:
        check_run_name(name, "--name")
    if device is not None:
        check_device(device, "--device")

    result = run_train(config, overrides=set_, name=name, out=out, resume=resume, device=device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone answers
        typer.echo(str(result.run_dir))


@app.command("eval")
@handle_errors
def eval_(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoints or run directories; several: their ensemble.")],
    split: Annotated[Split, typer.Option("--split", help="Which split to evaluate.")] = Split.test,
    data_root: Annotated[str | None, typer.Option("--data-root", help="Where the dataset is, if not where it was.")] = None,
    json_: JsonOption = False,
    device: DeviceOption = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write the confusion matrix, per-class chart and the most confident mistakes (mistakes.png) here.")] = None,
) -> None:
    """Evaluate checkpoints: loss, accuracy, top-5, per-class precision/recall/F1, confusion matrix."""
    if device is not None:
        from cnnctl.config import check_device

        check_device(device, "--device")
    from cnnctl.api import evaluate
    from cnnctl.inference.evaluate import format_report

    result = evaluate(checkpoints, split=split.value, data_root=data_root, device=device or "auto", plots=plots)
    for path in result.get("plots", []):
        typer.echo(f"wrote {path}", err=True)
    if json_:
        _print_json(result)
    else:
        typer.echo(format_report(result))


@app.command()
@handle_errors
def predict(
    images: Annotated[list[str], typer.Argument(help="Image files or folders (searched recursively).")],
    checkpoint: Annotated[str | None, typer.Option("-c", "--checkpoint", help="Checkpoint (default: newest runs/*/best.pt).")] = None,
    topk: Annotated[int, typer.Option("--topk", "-k", help="How many classes to show.")] = 5,
    json_: JsonOption = False,
    device: DeviceOption = None,
    explain: Annotated[bool, typer.Option("--explain", help="Per image: preprocessing, logits, the safe softmax step by "
                                          "step, and with a known class its cross-entropy loss.")] = False,
    label: Annotated[str | None, typer.Option("--label", help="The true class of the images (for --explain's loss).")] = None,
    labels_from_folders: Annotated[bool, typer.Option("--labels-from-folders", help="Each image's true class is its "
                                                      "folder's name (for --explain's loss).")] = False,
) -> None:
    """Predict the classes of images with a trained checkpoint."""
    if device is not None:
        from cnnctl.config import check_device

        check_device(device, "--device")
    from cnnctl.api import predict as run_predict
    from cnnctl.inference.predict import check_results, format_predictions

    results = run_predict(images, checkpoint, topk=topk, device=device or "cpu", explain=explain, label=label,
                          labels_from_folders=labels_from_folders)
    if json_:
        _print_json(results)
    else:
        typer.echo(format_predictions(results))
    check_results(results)  # a DataError naming the files that could not be read, after the others are shown


@app.command()
@handle_errors
def summary(
    config: Annotated[str, typer.Argument(help="A YAML config file or a bundled config name.")],
    set_: SetOption = None,
    json_: JsonOption = False,
    explain: Annotated[bool, typer.Option("--explain", help="Per layer: output-size arithmetic, receptive field, "
                                          "parameter formula.")] = False,
) -> None:
    """Show the network a config builds: layers, output shapes, parameters, multiply-adds."""
    from cnnctl.api import summary as network_summary

    result = network_summary(config, overrides=set_, explain=explain)
    if json_:
        _print_json(result)
    else:
        typer.echo(result.text)


@app.command()
@handle_errors
def step(
    config: Annotated[str, typer.Argument(metavar="CONFIG|CKPT", help="A config (file or bundled name: its seeded "
                                          "initial network) or a checkpoint / run directory (its last.pt).")],
    image: Annotated[str | None, typer.Option("--image", help="An image file, read as predict reads it (default: "
                                              "the dataset's first training sample).")] = None,
    label: Annotated[str | None, typer.Option("--label", help="The image's true class: a name or an index.")] = None,
    param: Annotated[str | None, typer.Option("--param", metavar="LAYER.weight[I,J]", help="The weight to work the "
                                              "chain rule down to (default: the last linear layer's weight from "
                                              "hidden unit 0 to the true class).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Optimizer steps on the same image; the "
                                       "state after them shows momentum and Adam's moments.")] = 1,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """One training step worked by hand: forward, softmax and loss, the chain rule down to one weight beside
    autograd's gradient, and the optimizer's update beside torch's step."""
    from cnnctl.insight.step import format_step, run_step

    result = run_step(config, image=image, label=label, param=param, steps=steps, overrides=set_)
    if json_:
        _print_json(result)
    else:
        typer.echo(format_step(result))


@app.command()
@handle_errors
def configs() -> None:
    """List the bundled configs, one line each."""
    from cnnctl.config import bundled_configs, read_yaml

    entries = bundled_configs()
    width = max((len(n) for n in entries), default=0)
    for name, path in entries.items():
        first = path.read_text(encoding="utf-8").splitlines()[:1]
        description = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        if not description:
            description = str(read_yaml(path).get("name", ""))
        typer.echo(f"{name:<{width}}  {description}")


@app.command()
@handle_errors
def plot(
    runs: Annotated[list[str], typer.Argument(help="Run directories to overlay.")],
    metric: Annotated[str, typer.Option("--metric", help="Any metrics.csv column (val_acc, train_loss, lr, "
                                        "epoch_seconds...), or grad_norm / update_ratio from gradients.csv.")] = "val_acc",
    gradients: Annotated[bool, typer.Option("--gradients", help="Overlay the runs' gradient flow: the last "
                                            "epoch's grad_norm per layer (same as --metric grad_norm).")] = False,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")] = Path("comparison.png"),
) -> None:
    """Overlay the curves of several runs (e.g. one network trained with different optimizers)."""
    from cnnctl.insight.plots import plot_runs

    typer.echo(str(plot_runs(runs, metric="grad_norm" if gradients else metric, output=output)))


@app.command("lr-find")
@handle_errors
def lr_find(
    config: Annotated[str, typer.Argument(help="A YAML config file or a bundled config name.")],
    set_: SetOption = None,
    start: Annotated[float, typer.Option("--start", help="First learning rate (1e-12 to 1000).")] = 1e-7,
    end: Annotated[float, typer.Option("--end", help="Last learning rate, above --start (at most 1000).")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps from --start to --end (20 to 10,000).")] = 200,
    out: Annotated[str | None, typer.Option("--out", help="Folder for lr-find-NAME/ (default: the config's out).")] = None,
    device: DeviceOption = None,
) -> None:
    """Learning-rate range test (Smith 2017): raise the lr exponentially from the config's initial state, stop when
    the loss diverges, draw loss vs lr to lr_find.png and print a suggested lr. Writes only OUT/lr-find-NAME/."""
    from cnnctl.config import load_config
    from cnnctl.training.lr_find import format_result
    from cnnctl.training.lr_find import lr_find as range_test

    cfg = load_config(config, set_)[0]  # parsed once: the thread count and the test read the same config
    _configure(threads=cfg.train.threads)
    result = range_test(cfg, out_dir=out or cfg.out, start=start, end=end, steps=steps, device=device)
    typer.echo(format_result(result))


@app.command()
@handle_errors
def optimizers(
    surface: Annotated[list[str] | None, typer.Option("--surface", help="rosenbrock, saddle, ravine or "
                                                      "styblinski-tang (repeatable; default: all).")] = None,
    optimizer: Annotated[list[str] | None, typer.Option("--optimizer", help="A registry optimizer (repeatable; "
                                                        "default: all).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps per path, 1 to 10000.")] = 1000,
    set_: SetOption = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for optimizer-paths.png and one "
                                         "optimizer-paths-SURFACE.gif per surface.")] = Path("optimizer-paths"),
    explain: Annotated[bool, typer.Option("--explain", help="Print each optimizer's update rule, which config key "
                                          "is which symbol, and what the study notes say of it.")] = False,
    json_: JsonOption = False,
) -> None:
    """Every optimizer of the registry, built from the optimizer config keys as training builds it, descending
    2-D test surfaces: paths over the contours (PNG), an animation (GIF) and a table of where each ends."""
    from cnnctl.insight.surfaces import format_report, optimizers_on_surfaces

    result = optimizers_on_surfaces(surface or (), optimizer or (), steps=steps, overrides=set_ or (), out=output,
                                    explain=explain)
    if json_:
        _print_json(result)
    else:
        typer.echo(format_report(result))


@app.command()
@handle_errors
def visualize(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint or run directory.")],
    image: Annotated[str | None, typer.Option("--image", help="Image for the feature maps (default: a test image).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Folder for the PNGs (default: RUN/visualize).")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="The layer Grad-CAM reads (default: the last conv "
                                              "stage).")] = None,
) -> None:
    """Draw the first layer's filters, the feature maps of every conv/pool stage, the top-k prediction and where the
    network looks (Grad-CAM, occlusion, saliency; needs the [explain] extra)."""
    from cnnctl.interrupts import stop_on_signal

    with stop_on_signal():  # a signal is acted on between steps, never inside a finalizer or C callback
        from cnnctl.insight.visualize import visualize as run_visualize

        written = run_visualize(checkpoint, image=image, output=output, layer=layer)
    for path in written:
        typer.echo(str(path))


@app.command()
@handle_errors
def tune(
    config: Annotated[str, typer.Argument(help="The base config: a file or a bundled config name.")],
    space: Annotated[str, typer.Option("--space", help="SPACE.yaml (dotted keys to distributions) or a bundled space name.")],
    set_: SetOption = None,
    trials: Annotated[int | None, typer.Option("--trials", help="Total trials of the study, over every process sharing it "
                                               "(default 20; grid: every point; with --timeout: no limit).")] = None,
    method: Annotated[Method, typer.Option("--method", help="The sampler.")] = Method.tpe,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop starting trials after S seconds.")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (sqlite:///x.db, postgresql://...).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the config name).")] = None,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Stop hopeless trials (median pruner).")] = True,
    metric: Annotated[TuneMetric, typer.Option("--metric", help="Metric to optimise.")] = TuneMetric.val_acc,
    ensemble_top: Annotated[int, typer.Option("--ensemble-top", help="Evaluate the ensemble of the K best trials.")] = 0,
    out: Annotated[str | None, typer.Option("--out", help="Folder for the study (default: the config's out).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
) -> None:
    """Search hyper-parameters with Optuna (grid, random, TPE) with pruning; optionally ensemble the best."""
    from cnnctl.config import load_config
    from cnnctl.tune import run_tune

    loaded = load_config(config, set_)  # parsed once: the thread count and the search read the same config
    _configure(threads=loaded[0].train.threads)  # every trial runs in this process
    result = run_tune(config, space, overrides=set_, trials=trials, method=method.value, timeout=timeout,
                      storage=storage, study=study, prune=prune, metric=metric.value, ensemble_top=ensemble_top,
                      out=out, seed=seed, loaded=loaded)
    typer.echo(result["study_dir"])


@app.command()
@handle_errors
def export(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint or run directory.")],
    format_: Annotated[ExportFormat, typer.Option("--format", help="The file format.")] = ExportFormat.onnx,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write (default: beside the checkpoint).")] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset version.")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch", help="Batch dimension.")] = True,
) -> None:
    """Export a checkpoint to ONNX or TorchScript, verified against PyTorch."""
    from cnnctl.inference.export import export as run_export

    result = run_export(checkpoint, format=format_.value, output=output, opset=opset, dynamic_batch=dynamic_batch)
    typer.echo(str(result["path"]))


@app.command("runs")
@handle_errors
def runs_(
    folder: Annotated[Path, typer.Argument(help="Folder of run directories, searched recursively (default: runs).")] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", help="name, status, arch, dataset, epochs, val_acc, test_acc, wall or "
                                      "started (accuracies, epochs and start time: largest first).")] = "name",
    json_: JsonOption = False,
) -> None:
    """List the runs in a folder: arch, dataset, epochs, status, best val_acc, test accuracy, wall time."""
    from cnnctl.insight.runs import format_runs, list_runs

    found = list_runs(folder, sort=sort)
    if json_:
        _print_json(found)
    elif found:
        typer.echo(format_runs(found))
    else:
        typer.echo(f"no runs in {folder} (a run is a folder holding config.yaml)", err=True)


# Shell completion: parameters are completed by their name in whichever command has them, so a new command's
# `config` or `checkpoint` argument completes like the others. Values are cnnctl.completion functions.
COMPLETERS = {
    "config": "config_names", "space": "space_names", "set_": "set_values", "resume": "run_dirs",
    "checkpoints": "checkpoints", "checkpoint": "checkpoints", "runs": "run_dirs", "folder": "run_dirs",
    "device": "devices",
}


def with_completion(command: Any) -> Any:
    """Typer's click command tree with cnnctl's completers on the parameters named in COMPLETERS."""

    def completer(name: str) -> Callable[..., list[str]]:
        def complete(ctx: Any, param: Any, incomplete: str | None) -> list[str]:
            from cnnctl import completion  # on Tab only: --help stays quick

            return getattr(completion, name)(incomplete or "")

        return complete

    for sub in [command, *getattr(command, "commands", {}).values()]:
        for param in sub.params:
            if param.name in COMPLETERS:
                # the hook click's Parameter(shell_complete=...) sets; Typer builds the parameters, so set it after
                param._custom_shell_complete = completer(COMPLETERS[param.name])
    return command


def main() -> None:
    from cnnctl.interrupts import on_second_signal

    # The process is the CLI's: a second Ctrl-C (or SIGTERM) while the first is honoured leaves at once. Library
    # code raises KeyboardInterrupt instead, which a notebook survives.
    on_second_signal(lambda signum: os._exit(128 + signum))
    with_completion(typer.main.get_command(app))()


if __name__ == "__main__":
    main()
