"""Single-process setup of `mvd.engine.distributed` on the CPU: torch's thread count."""

import os

import pytest
import torch

from mvd.config import DistConfig
from mvd.engine.distributed import cpu_threads, init_distributed


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_leaves_half_of_each_process_share_of_the_cores_to_the_loader():
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(0, 1) == max(1, cores // 2)
    assert cpu_threads(0, 2) == max(1, cores // 4)
    assert cpu_threads(0, 4 * cores) == 1  # never 0
    assert cpu_threads(3, 1) == 3  # an explicit value wins


@pytest.mark.parametrize("configured", [0, 1, 3])
def test_init_on_cpu_sets_torch_threads(restore_threads, monkeypatch, configured):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    torch.set_num_threads(7)
    info = init_distributed(DistConfig(device="cpu", cpu_threads=configured))
    assert info.device.type == "cpu" and info.world_size == 1
    assert torch.get_num_threads() == cpu_threads(configured, 1)
