"""The frozen-body feature cache: while only the head trains, run the body once per split, not once per epoch.

While every layer before the classifier head is frozen and in eval mode (``freeze.Frozen.is_body``) and the
training images are not randomly augmented, the body is a fixed function of each image: its output (the head's
input) is computed once, in the stored order, and each epoch's batches are cut from it by the same ``BatchPlan``
as the image loader's, so batch ``b`` of epoch ``e`` holds the same samples in the same order. The head then
trains on exactly what it would have seen: an epoch costs a few matrix products instead of a pass of the whole
network (Keras' "feature extraction", as a config rather than a second script). Dropout in the head still applies.

Equal to the last bit? The body's arithmetic is the same, but a BLAS library may pick another kernel for another
batch size, and round a sum in another order. The features are computed in batches of the training batch size
(validation: of its own, exactly as the uncached evaluation), so a training split of whole batches trains to
bit-identical weights (tests/test_features.py); the images of a last, smaller batch may differ in the last bit of
a float (2e-7 measured), as they would between two batch sizes of the uncached run.

The run keeps the whole network (``run.model``): checkpoints, eval, predict and export are unchanged. Only
``run.module`` (the head) and ``run.train_loader``/``run.val_loader`` (the features) differ, and only between an
epoch's start and its end (``Unfreeze`` swaps them): the hooks of ``on_epoch_end`` see the images and the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnctl.data.base import BatchPlan, FileLoader, make_loader

if TYPE_CHECKING:
    from cnnctl.training.freeze import Frozen
    from cnnctl.training.run import Run

log = logging.getLogger("cnnctl")


class FeatureLoader:
    """Batches of precomputed features and their labels, in the order of ``plan`` (the image loader's plan).

    ``draws_seed``: the image loader was a DataLoader, which draws one number from torch's global generator per
    pass; this loader draws it too, so the generator (and any dropout after it) goes on exactly as uncached."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, plan: BatchPlan, *, draws_seed: bool) -> None:
        self.features, self.labels, self.plan, self.draws_seed = features, labels, plan, draws_seed
        self.num_samples = plan.num_samples

    def __len__(self) -> int:
        return self.plan.num_batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.draws_seed:
            torch.empty((), dtype=torch.int64).random_()
        perm = self.plan.permutation(epoch)
        if perm is not None:
            perm = perm.to(self.features.device)
        for b in range(start, len(self)):
            index, _, _ = self.plan.batch(b, perm)
            if isinstance(index, slice):
                yield self.features[index], self.labels[index]
            else:
                yield self.features.index_select(0, index), self.labels.index_select(0, index)


@dataclass
class CachedPhase:
    """What the loop uses while the body is cached: the head alone and the loaders of features."""

    module: nn.Module
    train_loader: FeatureLoader
    val_loader: FeatureLoader | None


def cache_problem(run: Run, frozen: Frozen) -> str | None:
    """Why the body's features cannot stand in for the images (None: they can)."""
    cfg = run.config
    if not cfg.train.cache_features:
        return "train.cache_features is off"
    if not frozen.is_body(run.model):
        return "not every layer before the head is frozen"
    augment = cfg.data.augment
    if augment.crop_padding or augment.hflip:
        return "data.augment changes the images every epoch"
    if run.dist.world_size > 1:
        return "training runs in several processes"
    return None


def build_cached_phase(run: Run, frozen: Frozen) -> CachedPhase | None:
    """The head and the features of the train and val splits, or None (the reason logged) when the head is not
    the network's last operation (its output is not the network's output) or the features would not fit in
    memory (the decode-once cache's budget)."""
    head = nn.Sequential(*(run.model.get_submodule(n) for n in frozen.head))
    with torch.random.fork_rng(devices=[]):  # a DataLoader's pass draws from the global generator
        train = _features(run, head, run.data.train, run.config.data.batch_size)
        val = (_features(run, head, run.data.val, run.config.data.eval_batch_size or 2 * run.config.data.batch_size)
               if run.val_loader is not None and isinstance(train, tuple) else None)
    problem = next((x for x in (train, val) if isinstance(x, str)), None)
    if problem is not None:
        log.info("feature cache: off (%s)", problem)
        return None
    assert isinstance(train, tuple) and not isinstance(val, str)
    log.info("feature cache: the frozen body runs once: %d training%s images -> %d features each; the head "
             "trains on them", len(train[0]), f" and {len(val[0])} validation" if val else "", train[0][0].numel())
    return CachedPhase(head, _loader(train, run.train_loader), _loader(val, run.val_loader) if val else None)


def _loader(features: tuple[torch.Tensor, torch.Tensor], images: Any) -> FeatureLoader:
    return FeatureLoader(*features, images.plan, draws_seed=isinstance(images, FileLoader))


@torch.no_grad()
def _features(run: Run, head: nn.Module, split: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The head's input for every image of ``split`` in stored order, in batches of ``batch_size`` (the body in eval
    mode, the run's precision), or why not."""
    cfg = run.config
    images = make_loader(split, batch_size=batch_size, train=False,
                         device=run.device, mean=run.data.mean, std=run.data.std, augment=None, seed=cfg.seed,
                         workers=cfg.data.workers, channels_last=run.parts.channels_last)
    seen: dict[str, torch.Tensor] = {}
    hooks = [head[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("input", args[0])),
             head[-1].register_forward_hook(lambda _m, _a, out: seen.__setitem__("output", out))]
    was_training = run.model.training
    features, labels = [], []
    try:
        run.model.eval()
        for x, y in images.batches(0):
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                out = run.model(x)
            if seen.get("output") is not out:
                return f"the head {'+'.join(_names(run.model, head))} is not the network's last layer"
            if not features and (problem := _too_large(seen["input"], len(split), run.device)):
                return problem
            features.append(seen["input"])
            labels.append(y)
    finally:
        run.model.train(was_training)
        for h in hooks:
            h.remove()
    return torch.cat(features), torch.cat(labels)


def _too_large(batch: torch.Tensor, n: int, device: torch.device) -> str | None:
    """Why ``n`` features like ``batch``'s would not fit in the decode-once cache's memory budget (None: they fit)."""
    from cnnctl.data.cache import MEMORY_FRACTION, _size, memory_budget

    nbytes = batch[0].numel() * batch.element_size() * n
    budget, where = memory_budget(device)
    if nbytes <= budget:
        return None
    return f"{n} images' features would take {_size(nbytes)}, over {round(MEMORY_FRACTION * 100)}% of {where}"


def _names(model: nn.Module, head: nn.Module) -> list[str]:
    ids = {id(m) for m in head}
    return [n for n, m in model.named_modules() if id(m) in ids]
