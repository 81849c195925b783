"""``Run``: it holds the parts assembly built and reads them as its own; a hook may swap the module and loaders."""

from __future__ import annotations

from types import SimpleNamespace

from cnnctl.training.state import Run


def test_a_run_reads_its_parts_and_a_hook_may_swap_the_module_and_the_loaders():
    parts = SimpleNamespace(model="net", module="compiled", criterion="loss", optimizer="opt", scheduler="sched",
                            train_loader="images", val_loader="val", test_loader=None, scaler=None)
    run = Run(config=None, parts=parts, hooks=[], dist=None, run_dir=None)
    assert (run.model, run.module, run.criterion, run.optimizer, run.scheduler) == ("net", "compiled", "loss", "opt",
                                                                                    "sched")
    assert (run.train_loader, run.val_loader, run.test_loader, run.scaler) == ("images", "val", None, None)
    run.module, run.train_loader, run.val_loader = "head", "features", None  # as Unfreeze does for a phase
    assert (parts.module, parts.train_loader, parts.val_loader) == ("head", "features", None)
    assert run.model == "net"
    assert not run.has_checkpoint()  # a run without a directory (lr-find) has none


def test_the_run_holds_no_hook_by_name():
    """Hooks share state only through what assembly hands them (``Trackers``), never through the run."""
    assert not {"best", "early_stopping"} & set(dir(Run))
