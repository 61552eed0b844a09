"""A CPU loader never touches CUDA and never spawns its reader workers: on a CUDA machine (faked
here: torch says a device is there and already initialised, and every call that would reach
the device raises) it constructs, forks its workers and yields its batches on the host."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from dali_pipelines import PretrainLoader, graph


def _no_cuda_call(*args, **kwargs):
    raise AssertionError("a CPU loader touched CUDA")


@pytest.fixture
def cuda_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("current_device", "get_device_name", "init", "set_device", "synchronize",
                 "current_stream", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, _no_cuda_call)


def test_a_cpu_loader_on_a_cuda_machine_forks_and_never_touches_cuda(synth_shards, cuda_machine):
    loader = PretrainLoader(synth_shards, 4, device="cpu", **{**TINY, "reader_workers": 1})
    batch = next(iter(loader))
    assert batch["video"].device.type == "cpu" and batch["mask"].device.type == "cpu"
    methods = {pipe._py_start_method for pipe in loader._pipe}
    assert methods == {"fork"}
    loader.close()


def test_a_cpu_pipeline_reads_in_process_when_cuda_already_holds_the_process(monkeypatch):
    """DALI refuses to fork once the CUDA driver is initialised: the reads then run in this
    process rather than in spawned interpreters."""
    assert graph.worker_start("cpu", 2) == ("fork", 2)
    assert graph.worker_start("gpu", 2) == ("spawn", 2)
    monkeypatch.setattr(graph.backend, "IsDriverInitialized", lambda: True)
    assert graph.worker_start("cpu", 2) == ("fork", 0)
    assert graph.worker_start("cpu", 0) == ("fork", 0)
