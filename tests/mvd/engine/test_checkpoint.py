"""Checkpoint files: atomic writes, the last K kept, `resume: auto` taking the newest VALID one
(a damaged newest is skipped for the previous one with a warning) and opening it memory-mapped
once, stale temporary files of a killed save removed, RNG states round-tripping."""

import logging
import random

import numpy as np
import pytest
import torch

from mvd.config import CheckpointConfig
from mvd.engine import checkpoint
from mvd.engine.checkpoint import (Checkpointer, atomic_save, atomic_write, find_latest_valid,
                                   list_checkpoints, load_valid, rng_state, set_rng_state)
from mvd.engine.distributed import DistInfo

INFO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class _Loader:
    def __init__(self):
        self.pos = 0

    def state_dict(self):
        return {"epoch": np.int64(1), "position": self.pos}

    def load_state_dict(self, s):
        self.pos = s["position"]


class _Sched:
    def __init__(self):
        self.step_num = 0

    def state_dict(self):
        return {"step": self.step_num}

    def load_state_dict(self, s):
        self.step_num = s["step"]


def _pieces():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return dict(model=model, optimizer=opt, scheduler=_Sched(), scaler=None, loader=_Loader())


def _save(ck, step, pieces):
    pieces["loader"].pos = step
    return ck.save(step=step, epoch=0, config={"task": "x"}, derived={}, counters={"skipped": 0},
                   **pieces)


def test_save_keeps_the_last_k_and_leaves_no_temporary_files(tmp_path):
    ck = Checkpointer(CheckpointConfig(keep_last=2), tmp_path, INFO, fsdp=False)
    pieces = _pieces()
    for step in (2, 4, 6):
        _save(ck, step, pieces)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [6, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000004.pt", "step-00000006.pt"]
    ckpt = load_valid(tmp_path / "checkpoints" / "step-00000006.pt")
    assert ckpt["step"] == 6 and ckpt["loader"] == [{"epoch": 1, "position": 6}]
    assert ckpt["complete"] is True and "rng" in ckpt and ckpt["config"] == {"task": "x"}


def test_resume_auto_skips_a_corrupted_newest_checkpoint_for_the_previous_one(tmp_path, caplog):
    ck = Checkpointer(CheckpointConfig(keep_last=3), tmp_path, INFO, fsdp=False)
    pieces = _pieces()
    _save(ck, 2, pieces)
    _save(ck, 4, pieces)
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn write
    with caplog.at_level(logging.WARNING, logger="mvd.train"):
        ckpt = ck.find_resume()
    assert ckpt["step"] == 2
    assert "step-00000004.pt" in caplog.text and "skipping" in caplog.text
    fresh = _pieces()
    ck.restore(ckpt, **fresh)
    assert fresh["loader"].pos == 2
    for a, b in zip(pieces["model"].state_dict().values(), fresh["model"].state_dict().values()):
        assert torch.equal(a, b)


def test_incomplete_checkpoint_without_its_marker_is_not_trusted(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    atomic_save({"format": "mvd-train-ckpt/1", "step": 9, "model": {}}, d / "step-00000009.pt")
    assert find_latest_valid(d) is None
    with pytest.raises(ValueError, match="incomplete"):
        load_valid(d / "step-00000009.pt")


def test_resume_none_and_explicit_path(tmp_path):
    ck = Checkpointer(CheckpointConfig(), tmp_path, INFO, fsdp=False)
    _save(ck, 3, _pieces())
    assert Checkpointer(CheckpointConfig(resume="none"), tmp_path, INFO, fsdp=False).find_resume() is None
    path = tmp_path / "checkpoints" / "step-00000003.pt"
    assert Checkpointer(CheckpointConfig(resume=str(path)), tmp_path, INFO,
                        fsdp=False).find_resume()["step"] == 3
    with pytest.raises(ValueError, match="checkpoint.resume"):
        Checkpointer(CheckpointConfig(resume=str(tmp_path / "nope.pt")), tmp_path, INFO,
                     fsdp=False).find_resume()


def test_rng_states_round_trip_python_numpy_torch(tmp_path):
    state = rng_state()
    atomic_save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_a_checkpoint_cut_short_anywhere_is_not_valid(tmp_path):
    ck = Checkpointer(CheckpointConfig(), tmp_path, INFO, fsdp=False)
    path = _save(ck, 1, _pieces())
    data = path.read_bytes()
    torn = tmp_path / "torn.pt"
    for cut in (1, 64, len(data) // 4, len(data) // 2, len(data) - 100, len(data) - 22,
                len(data) - 1):
        torn.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cannot be read"):
            load_valid(torn)


def test_resume_auto_opens_the_picked_checkpoint_once_and_memory_mapped(tmp_path, monkeypatch):
    ck = Checkpointer(CheckpointConfig(keep_last=3), tmp_path, INFO, fsdp=False)
    pieces = _pieces()
    _save(ck, 2, pieces)
    _save(ck, 4, pieces)
    calls = []
    real_load = torch.load

    def load(path, *args, **kwargs):
        calls.append((str(path), kwargs.get("mmap"), kwargs.get("weights_only")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "load", load)
    assert ck.find_resume()["step"] == 4
    assert calls == [(str(tmp_path / "checkpoints" / "step-00000004.pt"), True, True)]


def test_stale_temporary_files_of_a_killed_save_are_removed_by_rank_0_at_start(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    d.mkdir()
    (d / ".step-00000006.pt.tmp-4242").write_bytes(b"half a checkpoint")
    (d / ".step-00000008.pt.tmp-4243").write_bytes(b"")
    (d / "step-00000004.pt").write_bytes(b"kept")  # not ours to judge here
    (d / "notes.txt").write_text("kept")
    other = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    Checkpointer(CheckpointConfig(), tmp_path, other, fsdp=False)
    assert len(list(d.glob(".*.tmp-*"))) == 2  # only rank 0 cleans
    with caplog.at_level(logging.INFO, logger="mvd.train"):
        Checkpointer(CheckpointConfig(), tmp_path, INFO, fsdp=False)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt", "step-00000004.pt"]
    assert "removed 2 stale temporary" in caplog.text


def test_atomic_write_leaves_the_old_file_and_no_temporary_when_writing_fails(tmp_path):
    path = tmp_path / "model.safetensors"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.cuda
def test_cuda_rng_state_is_the_current_device_s_and_round_trips(tmp_path):
    torch.cuda.init()
    state = rng_state()
    assert isinstance(state["cuda"], torch.Tensor)  # one device's state, not a list of all
    atomic_save(state, tmp_path / "rng.pt")
    a = torch.rand(4, device="cuda")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(4, device="cuda"), a)
    # a checkpoint written with get_rng_state_all (a list per device) still restores
    every_device = torch.cuda.get_rng_state_all()
    b = torch.rand(4, device="cuda")
    set_rng_state({**state, "cuda": every_device})
    assert torch.equal(torch.rand(4, device="cuda"), b)
