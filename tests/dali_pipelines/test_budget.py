"""The per-process CPU budget: the cores this process may use (affinity / LOCAL_WORLD_SIZE) split
between the training step's torch threads, DALI's threads and the reader workers."""

from __future__ import annotations

import itertools

import pytest
from conftest import TINY

from dali_pipelines import PretrainLoader
from dali_pipelines.budget import cpu_budget

PATHS = list(itertools.product(("cpu", "gpu"), ("dali", "pyav"), (None, "cpu", "cuda")))


@pytest.mark.parametrize("loader_device, decoder, step_device", PATHS)
def test_eight_ranks_on_sixteen_cores_ask_for_at_most_sixteen(loader_device, decoder, step_device):
    budgets = [cpu_budget(loader_device=loader_device, decoder=decoder, step_device=step_device,
                          local_world_size=8, cores=16) for _ in range(8)]
    assert sum(b.asked for b in budgets) <= 16
    b = budgets[0]
    assert b.cores == 2 and b.dali_threads >= 1
    assert b.torch_threads == (0 if step_device is None else 1)


@pytest.mark.parametrize("cores, ranks", [(16, 8), (64, 8), (96, 8), (2, 1), (7, 3)])
def test_the_asks_add_up_to_the_share(cores, ranks):
    for loader_device, decoder, step_device in PATHS:
        b = cpu_budget(loader_device=loader_device, decoder=decoder, step_device=step_device,
                       local_world_size=ranks, cores=cores)
        assert b.cores == cores // ranks and b.asked == b.cores


def test_the_split_by_decoder_and_step():
    b = cpu_budget(loader_device="cpu", decoder="dali", step_device="cpu", cores=16, local_world_size=1)
    assert (b.torch_threads, b.dali_threads, b.reader_workers) == (8, 8, 0)
    b = cpu_budget(loader_device="cpu", decoder="pyav", cores=16, local_world_size=1)
    assert (b.torch_threads, b.dali_threads, b.reader_workers) == (0, 1, 15)  # workers decode
    b = cpu_budget(loader_device="gpu", decoder="dali", step_device="cuda", cores=96, local_world_size=8)
    assert (b.cores, b.torch_threads, b.dali_threads, b.reader_workers) == (12, 1, 9, 2)


def test_local_world_size_comes_from_torchrun_and_explicit_values_win(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    b = cpu_budget(cores=16)
    assert (b.cores, b.local_world_size) == (4, 4)
    b = cpu_budget(cores=16, step_device="cpu", torch_threads=3, dali_threads=5, reader_workers=2)
    assert (b.torch_threads, b.dali_threads, b.reader_workers) == (3, 5, 2)
    assert cpu_budget(cores=1, local_world_size=8).cores == 1  # never 0


def test_the_loader_takes_its_threads_and_workers_from_the_budget(synth_shards, h264_shards):
    kw = {**TINY, "reader_workers": -1}
    loader = PretrainLoader(synth_shards, 4, device="cpu", step_device="cpu", **kw)
    want = cpu_budget(step_device="cpu")
    assert loader.budget == want
    assert sum(p.dali_threads for p in loader.pipelines) == want.dali_threads
    loader = PretrainLoader(h264_shards, 4, device="cpu", gpu_decoders=2, **kw)
    assert loader.budget.reader_workers == cpu_budget(decoder="pyav").reader_workers
    assert sum(p.reader_workers for p in loader.pipelines) == loader.budget.reader_workers
    loader = PretrainLoader(synth_shards, 4, device="cpu", dali_threads=3, **{**TINY, "reader_workers": 1})
    assert (loader.budget.dali_threads, loader.budget.reader_workers) == (3, 1)
