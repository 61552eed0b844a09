"""No host sync inside a steady-state training step, for every training task.

A host sync (``.item()``, ``bool(t)``, ``.tolist()``, a device->host copy, or an op whose output
shape depends on the data such as ``nonzero``) stalls the CPU until the GPU catches up and kills
the overlap of data loading and compute. Here, on CPU, two independent counters watch the body of
``Trainer.train_step`` on the real loader's batches:

- a ``TorchDispatchMode`` that sees every aten op (forward, backward, grad clipping) and counts
  those that sync or have data-dependent output shapes;
- ``torch.Tensor`` methods that convert to host values (``item``, ``tolist``, ``cpu``, ``numpy``,
  ``__bool__``, ``__int__``, ``__float__``), wrapped to count calls (``tolist`` on a CPU tensor
  never reaches the dispatcher, so the dispatch mode alone would miss it).

Excluded on purpose: the loader (batches are fetched before counting; it is not part of the
step), step 1 (the task counts the first batch's mask once to check it against the config), and
``optimizer.step`` (torch's AdamW internals, e.g. reading the CPU ``step`` counter of the foreach
implementation, are torch's business; counting pauses while it runs). ``run.log_every`` is
larger than the counted steps, so the trainer's one marked logging sync never falls inside.
On a GPU the same property is checked directly with ``torch.cuda.set_sync_debug_mode("error")``
in tests/mvd/test_cuda.py.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mvd.config import load_config
from mvd.engine.trainer import Trainer

TINY = Path(__file__).resolve().parents[3] / "configs" / "tiny"
TRAIN_TASKS = ["pretrain_mvd", "pretrain_videomae", "pretrain_mae", "finetune"]
COUNTED_STEPS = 3  # steps 2..4

aten = torch.ops.aten
# ops that read a device value on the host, or whose output shape depends on the data
SYNC_OPS = {
    aten._local_scalar_dense,  # .item(), bool(t), int(t), float(t)
    aten.is_nonzero,
    aten.equal,
    aten.nonzero,
    aten.masked_select,
    aten.masked_scatter,
    aten.masked_scatter_,
    aten.unique_dim,
    aten._unique,
    aten._unique2,
    aten.unique_consecutive,
}
HOST_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
_COUNTER_FRAMES = {"_short_stack", "hit", "__torch_dispatch__", "wrapper"}  # not shown in stacks


def _short_stack(limit: int = 6) -> str:
    """The innermost frames of the project's code (mvd/, dali_pipelines/, tests/), or of any code
    when none of the project's frames is on the stack."""
    frames = [f for f in traceback.extract_stack() if "_python_dispatch" not in f.filename
              and not (f.filename == __file__ and f.name in _COUNTER_FRAMES)]
    ours = [f for f in frames if any(p in f.filename for p in ("/mvd/", "/dali_pipelines/"))]
    shown = (ours or frames)[-limit:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(shown))


class SyncCounter(TorchDispatchMode):
    """Counts host syncs while active and not ``paused``; ``hits`` holds (what, short stack)."""

    def __init__(self):
        super().__init__()
        self.hits: list[tuple[str, str]] = []
        self.counting = False
        self.paused = False

    def hit(self, what: str) -> None:
        if self.counting and not self.paused:
            self.hits.append((what, _short_stack()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SYNC_OPS:
            self.hit(f"aten.{packet.__name__}")
        elif packet in (aten.index, aten.index_put, aten.index_put_) and _bool_index(args):
            self.hit(f"aten.{packet.__name__} with a bool index")
        elif packet is aten._to_copy and _to_cpu(args[0], kwargs.get("device")):
            self.hit(f"aten._to_copy to cpu from {args[0].device}")
        elif packet is aten.copy_ and _to_cpu(args[1], args[0].device):
            self.hit(f"aten.copy_ to cpu from {args[1].device}")
        return func(*args, **kwargs)

    def report(self) -> str:
        return "\n".join(f"  {what}: {stack}" for what, stack in self.hits)


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices or ())


def _to_cpu(src, device) -> bool:
    return (isinstance(src, torch.Tensor) and device is not None
            and torch.device(device).type == "cpu" and src.device.type != "cpu")


@pytest.fixture
def counter(monkeypatch):
    """A SyncCounter with the host-conversion methods of torch.Tensor wrapped to report to it
    (restored by monkeypatch at the end of the test)."""
    c = SyncCounter()
    for name in HOST_METHODS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            c.hit(f"Tensor.{__name}")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return c


def make_trainer(task: str, synth_shards, run_dir, *overrides) -> Trainer:
    cfg = load_config(TINY / f"{task}.yaml", [
        f"data.dir={synth_shards}", f"run.dir={run_dir}", "run.progress=false",
        "checkpoint.resume=none", "checkpoint.every_steps=0", "run.log_every=1000", *overrides])
    return Trainer(cfg)


def prefetch(trainer: Trainer, n: int) -> list[dict]:
    """n batches from the trainer's loader (the loader is not part of the step)."""
    it = iter(trainer.loader)
    return [next(it) for _ in range(n)]


def pause_during_optimizer_step(trainer: Trainer, counter: SyncCounter, monkeypatch) -> None:
    step = trainer.optimizer.step

    def paused_step(*args, **kwargs):
        counter.paused = True
        try:
            return step(*args, **kwargs)
        finally:
            counter.paused = False

    monkeypatch.setattr(trainer.optimizer, "step", paused_step)


def run_counted_steps(trainer: Trainer, batches: list[dict], counter: SyncCounter, *,
                      extra=None) -> list[dict]:
    """Step 1 uncounted, then the rest of ``batches`` one step each under the counter; ``extra``
    (values -> None) runs inside the counted region after each step."""
    trainer.step += 1
    trainer.train_step([batches[0]])
    out = []
    with counter:
        counter.counting = True
        for batch in batches[1:]:
            trainer.step += 1
            values = trainer.train_step([batch])
            if extra is not None:
                extra(values)
            out.append(values)
        counter.counting = False
    return out


@pytest.mark.parametrize("task, overrides", [pytest.param(t, (), id=t) for t in TRAIN_TASKS] + [
    # clip_grad_norm_ instead of get_total_norm
    pytest.param("pretrain_mvd", ("optim.clip_grad=0.5",), id="pretrain_mvd-clip_grad"),
    # plain cross-entropy instead of timm's Mixup + soft-target cross-entropy
    pytest.param("finetune", ("finetune.mixup=0", "finetune.cutmix=0"), id="finetune-no_mixup"),
])
def test_steady_state_train_step_has_no_host_sync(task, overrides, synth_shards, tmp_path,
                                                  counter, monkeypatch):
    trainer = make_trainer(task, synth_shards, tmp_path, *overrides)
    try:
        batches = prefetch(trainer, 1 + COUNTED_STEPS)
        pause_during_optimizer_step(trainer, counter, monkeypatch)
        steps = run_counted_steps(trainer, batches, counter)
    finally:
        trainer.metrics.close()
    assert len(steps) == COUNTED_STEPS
    assert all(isinstance(v, torch.Tensor) for s in steps for v in s.values())
    assert not counter.hits, (f"{task}: {len(counter.hits)} host sync(s) in steps 2..."
                              f"{1 + COUNTED_STEPS} of train_step:\n{counter.report()}")


def test_the_counter_sees_a_deliberate_item_in_the_step(synth_shards, tmp_path, counter,
                                                       monkeypatch):
    """The check above cannot pass vacuously: one ``loss.item()`` per counted step is seen by
    both counters (the dispatch mode's _local_scalar_dense and the wrapped Tensor.item), and
    nothing is counted while the optimizer steps."""
    trainer = make_trainer("pretrain_videomae", synth_shards, tmp_path)
    optimizer_calls = []
    try:
        batches = prefetch(trainer, 1 + COUNTED_STEPS)
        inner = trainer.optimizer.step

        def step_that_syncs(*args, **kwargs):
            optimizer_calls.append(torch.zeros(()).item())  # a sync the pause must hide
            return inner(*args, **kwargs)

        monkeypatch.setattr(trainer.optimizer, "step", step_that_syncs)
        pause_during_optimizer_step(trainer, counter, monkeypatch)
        run_counted_steps(trainer, batches, counter, extra=lambda v: v["loss"].item())
    finally:
        trainer.metrics.close()
    whats = [w for w, _ in counter.hits]
    assert len(optimizer_calls) == 1 + COUNTED_STEPS
    assert whats.count("Tensor.item") == COUNTED_STEPS, counter.report()
    assert whats.count("aten._local_scalar_dense") == COUNTED_STEPS, counter.report()
    assert len(whats) == 2 * COUNTED_STEPS, counter.report()
    assert all("test_host_sync.py" in stack for _, stack in counter.hits), counter.report()


KINDS_OF_SYNC = {
    "aten.nonzero": lambda t: t.nonzero(),
    "aten.masked_select": lambda t: torch.masked_select(t, t > 0),
    "aten.index with a bool index": lambda t: t[t > 0],
    "aten._unique2": lambda t: torch.unique(t),
    "aten._local_scalar_dense": lambda t: bool(t.sum() > 0),
    "Tensor.tolist": lambda t: t.tolist(),
    "Tensor.__float__": lambda t: float(t.sum()),
}


@pytest.mark.parametrize("what", KINDS_OF_SYNC)
def test_the_counter_knows_each_kind_of_sync(what, counter):
    t = torch.randn(8)
    with counter:
        counter.counting = True
        KINDS_OF_SYNC[what](t)
        t + 1  # an ordinary op counts nothing
    assert what in [w for w, _ in counter.hits], counter.report()
