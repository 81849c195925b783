"""The batch plan, worker counts and loader defaults of cnnctl.data (mutation survivors of ``data_split``): the
numbers each rule gives for the edge cases, computed here by hand. Fast, no training.
``scripts/mutation.sh data_split`` runs this file with tests/test_data.py.
"""

from __future__ import annotations

import pytest
import torch

from cnnctl.data.base import BatchPlan, derive_seed, make_loader, to_model_input
from cnnctl.data.splits import MAX_AUTO_WORKERS, MIN_FILES_FOR_WORKERS, FileSplit, TensorSplit, resolve_workers
from cnnctl.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("n, batch, world, full, last, batches, samples", [
    (10, 4, 1, 2, 2, 3, 10),   # a last batch of 2 is kept
    (9, 4, 1, 2, 0, 2, 8),     # a last batch of 1 is dropped (BatchNorm cannot train on one image)
    (11, 4, 1, 2, 3, 3, 11),
    (13, 4, 2, 3, 0, 3, 6),    # rest 1 -> 0 after trimming to the world size
    (14, 4, 2, 3, 0, 3, 6),    # rest 2: one image per rank, dropped
    (16, 6, 2, 2, 4, 3, 8),    # rest 4: two per rank, kept
    (15, 6, 2, 2, 0, 2, 6),    # rest 3 -> 2: one per rank, dropped
    (25, 6, 3, 4, 0, 4, 8),    # rest 1 -> 0
    (22, 8, 2, 2, 6, 3, 11),   # rest 6: three per rank
])
def test_a_train_plans_batches(n, batch, world, full, last, batches, samples):
    plan = BatchPlan(n, batch, True, 0, 0, world)
    assert (plan.full, plan.last, plan.num_batches, plan.num_samples) == (full, last, batches, samples)
    assert isinstance(plan.num_samples, int)
    seen = [plan.batch(b, plan.permutation(0))[0] for b in range(plan.num_batches)]
    assert sum(len(s) for s in seen) == samples


def test_an_eval_plan_covers_every_sample_once_in_order():
    plan = BatchPlan(10, 4, False, 0)
    assert plan.permutation(3) is None
    got = [plan.batch(b, None) for b in range(plan.num_batches)]
    assert got == [(slice(0, 4), 4, 0), (slice(4, 8), 4, 0), (slice(8, 10), 2, 0)]
    ranks = [BatchPlan(10, 4, False, 0, r, 3) for r in range(3)]
    spans = [(p.batch(b, None)[0], p.batch(b, None)[1], p.batch(b, None)[2]) for p in ranks for b in range(p.num_batches)]
    assert [s for s, _, _ in spans] == [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6), slice(6, 8), slice(8, 10)]
    assert all(offset == 0 and size == s.stop - s.start for s, size, offset in spans)


def test_the_order_and_the_augmentation_come_from_the_seed_the_epoch_and_the_batch_alone():
    """The documented derivation (a resumed run, or another cnnctl version, must draw the same numbers)."""
    plan = BatchPlan(50, 8, True, seed=7)
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(derive_seed(7, "perm", 3)))
    assert torch.equal(plan.permutation(3), expected)
    assert not torch.equal(plan.permutation(3), plan.permutation(4))
    assert not torch.equal(plan.permutation(3), BatchPlan(50, 8, True, seed=8).permutation(3))
    g = plan.augment_generator(3, 2)
    assert torch.equal(torch.rand(4, generator=g),
                       torch.rand(4, generator=torch.Generator().manual_seed(derive_seed(7, "augment", 3, 2))))
    draws = {(e, b): torch.rand(3, generator=plan.augment_generator(e, b)) for e in (0, 1) for b in (0, 1)}
    assert len({tuple(v.tolist()) for v in draws.values()}) == 4


def test_derive_seed_is_fixed_across_processes():
    assert derive_seed(0, "perm", 0) == 914356420369218569  # blake2b of the parts' repr: pinned, see above
    assert 0 <= derive_seed(123, "augment", 4, 5) < 2 ** 63


def test_workers_auto_shares_the_cpus_between_the_processes(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(3, 10) == 3 and resolve_workers("2", 5000) == 2  # a number is taken as it is
    assert resolve_workers("auto", MIN_FILES_FOR_WORKERS - 1) == 0  # few files: decoding in the main process
    assert resolve_workers("auto", MIN_FILES_FOR_WORKERS) == MAX_AUTO_WORKERS == 4  # 16 cpus: capped at 4
    assert resolve_workers("auto", 5000, 8) == 2  # 16 cpus over 8 processes
    assert resolve_workers("auto", 5000, 32) == 1  # never below one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # torchrun's count of processes on this machine wins
    assert resolve_workers("auto", 5000, 1) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")
    assert resolve_workers("auto", 5000, 1) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_workers("auto", 5000) == 2


def test_a_global_batch_must_split_evenly_over_the_processes():
    split = TensorSplit(torch.zeros(20, 1, 4, 4, dtype=torch.uint8), torch.zeros(20, dtype=torch.int64))
    with pytest.raises(ConfigError) as info:
        make_loader(split, batch_size=10, train=True, device=CPU, mean=[0], std=[1], augment=None, seed=0,
                    world_size=4)
    assert info.value.key == "data.batch_size"
    assert str(info.value) == ("data.batch_size: 10 is the global batch over 4 processes, so it must be a multiple of "
                               "4; e.g. batch_size: 8")
    with pytest.raises(ConfigError, match="e.g. batch_size: 4$"):
        make_loader(split, batch_size=3, train=True, device=CPU, mean=[0], std=[1], augment=None, seed=0,
                    world_size=4)
    make_loader(split, batch_size=10, train=False, device=CPU, mean=[0], std=[1], augment=None, seed=0,
                world_size=4)  # evaluation shards samples, not batches: any size


def test_batches_are_plain_nchw_unless_asked():
    images = torch.randint(0, 256, (6, 3, 4, 5), dtype=torch.uint8)
    x = to_model_input(images, [0.5] * 3, [0.25] * 3, CPU)
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, (images.float() / 255 - 0.5) / 0.25, atol=1e-5)
    assert to_model_input(images, [0.5] * 3, [0.25] * 3, CPU, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)
    split = TensorSplit(images, torch.arange(6))
    [(xb, _)] = list(make_loader(split, batch_size=6, train=False, device=CPU, mean=[0] * 3, std=[1] * 3,
                                 augment=None, seed=0).batches(0))
    assert xb.is_contiguous() and not xb.is_contiguous(memory_format=torch.channels_last)


def test_a_file_loader_with_its_defaults_yields_every_image(tmp_path):
    from cnnctl.data.base import FileLoader
    from tests.datafiles import write_image_folder

    files = write_image_folder(tmp_path / "f", {"a": 3, "b": 4}, channels=3, size=(5, 6))
    split = FileSplit(files, [0] * 3 + [1] * 4, 3, (5, 6))
    loader = FileLoader(split, BatchPlan(7, 3, False, 0), CPU, [0, 0, 0], [1, 1, 1], None)  # workers, world: defaults
    got = list(loader.batches(0))
    assert [len(y) for _, y in got] == [3, 3, 1]
    assert torch.cat([y for _, y in got]).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert got[0][0].is_contiguous() and not got[0][0].is_contiguous(memory_format=torch.channels_last)
    assert [len(y) for _, y in loader.batches(0, start=1)] == [3, 1]
    loader.sampler.start = 0
    assert len(loader.sampler) == 3
    loader.sampler.start = 2
    assert len(loader.sampler) == 1
    loader.sampler.start = 5
    assert len(loader.sampler) == 0
