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


def stats_of(pixels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 [N, C, H, W] in [0, 1] units, in float64."""
    x = pixels.double().div(255).transpose(0, 1).reshape(pixels.shape[1], -1)
    return x.mean(1).tolist(), x.std(1, unbiased=False).tolist()


def test_auto_normalization_of_a_large_in_memory_split_counts_every_chunk():
    from cnnctl.config import DataConfig
    from cnnctl.data.base import DataBundle, _normalization

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (5000, 2, 2, 2), generator=g, dtype=torch.uint8)  # more than one 4096 chunk
    images[4500:] = 250  # the last chunk differs: a sum that kept only one chunk would not match
    bundle = DataBundle("x", ["a"], 2, (2, 2), [0, 0], [1, 1], TensorSplit(images, torch.zeros(5000)), None, None)
    mean, std = _normalization(DataConfig(dataset="fake", normalize="auto"), bundle)
    want_mean, want_std = stats_of(images)
    assert mean == pytest.approx(want_mean, abs=1e-12) and std == pytest.approx(want_std, abs=1e-12)


def test_auto_normalization_of_image_files_reads_every_batch(tmp_path, caplog):
    import logging

    import numpy as np

    from cnnctl.config import DataConfig
    from cnnctl.data.base import DataBundle, _normalization
    from tests.datafiles import write_png

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 200, (3, 3, 3), dtype=np.uint8) for _ in range(300)]  # two batches of 256; no 255
    files = [write_png(tmp_path / "a" / f"{i}.png", a) for i, a in enumerate(arrays)]
    split = FileSplit(files, [0] * 300, 3, (3, 3))
    bundle = DataBundle("imagefolder", ["a"], 3, (3, 3), [0] * 3, [1] * 3, split, None, None)
    with caplog.at_level(logging.INFO, logger="cnnctl"):
        mean, std = _normalization(DataConfig(dataset="imagefolder", root=str(tmp_path), workers=0), bundle)
    want_mean, want_std = stats_of(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    assert mean == pytest.approx(want_mean, abs=1e-12) and std == pytest.approx(want_std, abs=1e-12)
    assert "normalize: auto: computing the mean and std of 300 training images" in caplog.messages


def test_the_affine_is_computed_in_float64():
    from cnnctl.data.base import _affine

    mean, std = [0.1307, 0.4914, 0.3], [0.3081, 0.2470, 0.7]
    scale, shift = _affine(mean, std, CPU)
    m64, s64 = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    assert torch.equal(scale.flatten(), (1 / (255 * s64)).float())
    assert torch.equal(shift.flatten(), (-m64 / s64).float())
    assert scale.shape == shift.shape == (1, 3, 1, 1)


def test_the_train_order_comes_from_the_loaders_seed():
    labels = torch.arange(40)
    split = TensorSplit(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), labels)
    loader = make_loader(split, batch_size=40, train=True, device=CPU, mean=[0], std=[1], augment=None, seed=5)
    [(_, y)] = list(loader.batches(2))
    assert torch.equal(y, BatchPlan(40, 40, True, 5).permutation(2))


def test_a_crop_alone_or_a_flip_alone_is_applied():
    from cnnctl.config import Augment

    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 255, (16, 1, 6, 6), generator=g, dtype=torch.uint8), torch.arange(16))
    plain = list(make_loader(split, batch_size=16, train=True, device=CPU, mean=[0], std=[1], augment=None,
                             seed=1).batches(0))[0][0]
    for augment in (Augment(crop_padding=2), Augment(hflip=True)):
        got = list(make_loader(split, batch_size=16, train=True, device=CPU, mean=[0], std=[1], augment=augment,
                               seed=1).batches(0))[0][0]
        assert not torch.equal(got, plain)
    channels_last = list(make_loader(split, batch_size=16, train=True, device=CPU, mean=[0], std=[1], augment=None,
                                     seed=1, channels_last=True).batches(0))[0][0]
    assert torch.equal(channels_last, plain)


def test_a_channels_last_loader_gives_channels_last_batches():
    split = TensorSplit(torch.zeros(4, 3, 5, 5, dtype=torch.uint8), torch.arange(4))
    [(x, _)] = list(make_loader(split, batch_size=4, train=False, device=CPU, mean=[0] * 3, std=[1] * 3,
                                augment=None, seed=0, channels_last=True).batches(0))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_file_splits_keep_their_channels_size_and_int64_labels(tmp_path):
    from cnnctl.data.base import labels_of, split_off, take
    from cnnctl.data.splits import _FileDataset

    split = FileSplit([tmp_path / f"{i}.png" for i in range(10)], [i % 2 for i in range(10)], 1, (7, 9))
    labels = labels_of(split)
    assert labels.dtype == torch.int64 and labels.tolist() == split.labels
    part = take(split, torch.tensor([3, 1]))
    assert (part.files, part.labels, part.channels, part.size) == ([split.files[3], split.files[1]], [1, 1], 1, (7, 9))
    tensors = TensorSplit(torch.zeros(2, 1, 1, 1, dtype=torch.uint8), torch.tensor([1, 0]))
    assert labels_of(tensors) is tensors.labels
    kept, held = split_off(split, 0.1, 0)  # one image held out: still a split
    assert held is not None and len(held) == 1 and len(kept) == 9
    assert split_off(split, 0.0, 0) == (split, None)
    with pytest.raises(ValueError) as info:
        _FileDataset(FileSplit(split.files, split.labels, 1, None))
    assert str(info.value) == "FileSplit.size must be set before loading batches"
