"""cnnctl: train, evaluate and run image-classification CNNs from YAML configs.

The Python API (the CLI is a thin layer over it)::

    import cnnctl

    result = cnnctl.train("lenet5-digits", overrides=["train.epochs=3"], out="runs")
    result.run_dir, result.summary["test"]["accuracy"], result.metrics[-1]["val_acc"]
    cnnctl.evaluate(result.best_checkpoint)          # or several checkpoints: their ensemble
    cnnctl.predict(["digit.png"], result.run_dir, topk=3)
    cnnctl.summary("resnet20-cifar10").text
    cnnctl.load_config({"data": {"dataset": "digits"}, "model": {"arch": "lenet5"}})

The names are loaded on first use (PEP 562), so ``import cnnctl`` and ``cnnctl --help`` do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnctl.version import __version__

if TYPE_CHECKING:
    from cnnctl.api import RunResult, Summary, evaluate, load_config, predict, summary, train
    from cnnctl.config import Config
    from cnnctl.errors import (
        CheckpointError,
        CnnctlError,
        ConfigError,
        DataError,
        Interrupted,
        TrainingError,
        UsageError,
        WriteError,
    )

__all__ = [
    "__version__", "train", "evaluate", "predict", "summary", "load_config", "RunResult", "Summary", "Config",
    "CnnctlError", "ConfigError", "CheckpointError", "DataError", "UsageError", "TrainingError", "WriteError",
    "Interrupted",
]
_API = {"train", "evaluate", "predict", "summary", "load_config", "RunResult", "Summary"}
_ERRORS = {"CnnctlError", "ConfigError", "CheckpointError", "DataError", "UsageError", "TrainingError",
           "WriteError", "Interrupted"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from cnnctl import api

        return getattr(api, name)
    if name in _ERRORS:
        from cnnctl import errors

        return getattr(errors, name)
    if name == "Config":
        from cnnctl.config import Config

        return Config
    raise AttributeError(f"module 'cnnctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
