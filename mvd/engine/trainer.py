"""The training loop: ``Trainer(cfg).train()`` for every training task, ``run_eval(cfg)`` for a
task that only evaluates.

The trainer owns the loop only; the task (``mvd.engine.tasks``) owns models, loaders, loss and
validation, the checkpointer owns saving and resuming, and the metrics logger owns the one marked
host sync per ``run.log_every`` steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from mvd.config import Config, Derived, derive, dump_yaml, per_process_config, plan_batch, to_dict
from mvd.engine import distributed as D
from mvd.engine.checkpoint import Checkpointer, atomic_write
from mvd.engine.data import ModelInputs, log_cpu_budgets
from mvd.engine.metrics import MetricsLogger
from mvd.engine.optim import CosineSchedule, build_optimizer
from mvd.engine.precision import plan_precision
from mvd.engine.tasks import build_task, task_class
from mvd.engine.weights import EXPORT_NAME
from mvd.models import model_metadata

log = logging.getLogger("mvd.train")


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became NaN/inf (raised on every rank at the same step)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop reads at its next sync (so every rank stops at the same
    step and writes one checkpoint); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: stopping at the next sync with a checkpoint (Ctrl-C again "
                    "to abort now)", signal.Signals(signum).name)

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.info = info = D.init_distributed(cfg.dist)
        self.run_dir = Path(cfg.run.dir)
        self.fsdp = cfg.dist.fsdp and info.distributed
        # before any work: the world must reach train.global_batch; the task and its loader then
        # see the planned per-process batch as data.batch_size
        multiple = task_class(cfg).batch_multiple(cfg)
        cfg = self.cfg = per_process_config(cfg, plan_batch(cfg, info.world_size, multiple))
        self.precision = plan_precision(cfg.train.precision, info.device.type, fsdp=cfg.dist.fsdp,
                                        teacher_weights=cfg.train.teacher_weights)
        seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP needs it)
        self.task = build_task(cfg, info.device, info.rank, precision=self.precision)
        self.loader = self.task.train_loader(info)
        self.inputs = ModelInputs(info.device)  # uint8 clips -> normalised, in the step
        log_cpu_budgets(self.loader, info)
        self.derived: Derived = derive(cfg, info.world_size, len(self.loader),
                                       views=self.task.clip_views(cfg))
        seed_everything(cfg.seed + info.rank)  # then per-rank streams (drop path, mixup)
        self.model = self._wrap(self.task.model)
        self.optimizer, impl = build_optimizer(self.task.model, cfg.optim, info.device,
                                               self.derived.lr, fsdp=self.fsdp)
        d = self.derived
        self.schedule = CosineSchedule(self.optimizer, lr=d.lr, min_lr=d.min_lr,
                                       warmup_steps=d.warmup_steps, total_steps=d.total_steps,
                                       warmup_lr=d.warmup_lr)
        self.scaler = self.precision.grad_scaler()
        self.checkpointer = Checkpointer(cfg.checkpoint, self.run_dir, info, fsdp=cfg.dist.fsdp)
        self.step, self.counters = 0, {"skipped": 0}
        self.last_eval: dict = {}
        ckpt = self.checkpointer.find_resume()
        if ckpt is not None:
            self.checkpointer.restore(ckpt, model=self.model, optimizer=self.optimizer,
                                      scheduler=self.schedule, scaler=self.scaler,
                                      loader=self.loader)
            self.step, self.counters = int(ckpt["step"]), dict(ckpt.get("counters") or {})
            self.counters.setdefault("skipped", 0)
            log.info("resumed at step %d (epoch %d)", self.step, ckpt["epoch"])
        self.metrics = MetricsLogger(cfg.run, self.run_dir, info, total_steps=d.max_steps,
                                     start_step=self.step, clips_per_step=d.clips_per_step,
                                     config=to_dict(cfg))
        self._announce(impl)

    # ------------------------------------------------------------------ set-up

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Compile (student and teachers, with model.compile) and parallelise, in the order
        :func:`mvd.engine.distributed.wrap_model` documents."""
        model.train()
        if self.cfg.model.compile:
            for teacher in self.task.teachers:
                D.compile_teacher(teacher)
        return D.wrap_model(model, self.info, fsdp=self.cfg.dist.fsdp, precision=self.precision,
                            compile=self.cfg.model.compile,
                            find_unused=self.task.find_unused_parameters)

    def _announce(self, optimizer_impl: str) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
        (self.run_dir / "derived.yaml").write_text(dump_yaml(vars(self.derived)))
        d = self.derived
        n_params = sum(p.numel() for p in self.task.model.parameters() if p.requires_grad)
        log.info("task %s: %s (%.2fM trainable parameters) on %d x %s, run dir %s",
                 self.cfg.task, self.cfg.model.name, n_params / 1e6, d.world_size,
                 self.info.device.type, self.run_dir)
        log.info("global batch %d videos = %d per process x %d processes x %d accumulation "
                 "(%d clips a step); lr %.3g "
                 "(base %.3g x %d / 256), min lr %.3g; %d steps/epoch, %d epochs = %d steps "
                 "(%d warm-up); this run stops at step %d", d.global_batch,
                 d.per_gpu_batch, d.world_size, d.accum_steps, d.clips_per_step, d.lr,
                 self.cfg.optim.base_lr, d.global_batch, d.min_lr, d.steps_per_epoch,
                 self.cfg.schedule.epochs, d.total_steps, d.warmup_steps, d.max_steps)
        log.info("optimizer: %s", optimizer_impl)
        log.info("precision: %s", self.precision.describe(self.fsdp, bool(self.task.teachers)))
        log.info("model: %s", D.wrapping(self.info.distributed, self.cfg.dist.fsdp,
                                         self.cfg.model.compile))
        if self.info.device.type == "cpu":
            log.info("torch threads per process: %d (dist.cpu_threads)", torch.get_num_threads())

    # ------------------------------------------------------------------ loop

    def train(self) -> dict:
        """Run to ``derived.max_steps``; returns {"status", "step", ...}. Raises NonFiniteLoss."""
        d, cfg = self.derived, self.cfg
        status = "finished"
        try:
            with StopRequest() as stop:
                for group, data_wait in self._batches(d.max_steps - self.step):
                    self.step += 1
                    values = self.train_step(group)
                    self.metrics.record(self.step, self._epoch(), self.schedule.value(self.step - 1),
                                        values, data_wait)
                    save = self.checkpointer.due(self.step)
                    if save or self.step % cfg.run.log_every == 0 or self.step == d.max_steps:
                        if self._sync(stop.requested):
                            status = "interrupted"
                            save = True
                    if save:
                        self.save()
                    if status == "interrupted":
                        break
                    if cfg.eval.every_epochs and self.task.validates and \
                            self.step % (d.steps_per_epoch * cfg.eval.every_epochs) == 0:
                        self.validate()
            self._sync(False)
            self.save()
        finally:
            self.metrics.close()
        result = {"status": status, "step": self.step, "skipped": self.counters["skipped"]}
        if status == "finished":
            self.export()
            if self.task.validates and cfg.eval.dir:
                result["eval"] = self.last_eval if self.last_eval.get("step") == self.step \
                    else self.validate()
        return result

    def _epoch(self) -> int:
        return (self.step - 1) // self.derived.steps_per_epoch

    def _batches(self, steps: int):
        """Yields (accum_steps micro-batches, seconds waited for them) for ``steps`` optimizer
        steps, epoch after epoch; an epoch's leftover micro-batches (fewer than accum) are
        dropped."""
        accum = self.derived.accum_steps
        while steps > 0:
            group, waited = [], 0.0
            it = iter(self.loader)
            while steps > 0:
                t0 = time.perf_counter()
                batch = next(it, None)
                waited += time.perf_counter() - t0
                if batch is None:
                    break
                group.append(batch)
                if len(group) == accum:
                    yield group, waited
                    group, waited = [], 0.0
                    steps -= 1

    def train_step(self, group: list[dict]) -> dict[str, torch.Tensor]:
        """Forward/backward over the micro-batches, clip, optimizer and schedule step.
        Returns device scalars (loss, its parts, grad_norm); no host sync unless
        train.nonfinite=skip."""
        model, accum = self.model, len(group)
        total, parts_sum = 0.0, {}
        for i, batch in enumerate(group):
            micro = (self.step - 1) * accum + i
            inputs = self.inputs(batch)  # normalise (and erase) on the device: no host sync
            with self._grad_sync(i == accum - 1), self.precision.autocast():
                loss, parts = self.task.loss(model, inputs, micro)
            with self._grad_sync(i == accum - 1):
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total = total + loss.detach().float() / accum
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.detach().float() / accum
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self._clip()
        skip = False
        if self.cfg.train.nonfinite == "skip":
            # HOST SYNC (only with train.nonfinite=skip): the step must be skipped before the
            # optimizer touches the weights; grad_norm is the same on every rank after DDP's
            # all-reduce, so all ranks decide alike.
            skip = not bool(torch.isfinite(grad_norm))
            if skip:
                self._count_skip()
        if not skip:
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        return {"loss": total, **parts_sum, "grad_norm": grad_norm}

    def _grad_sync(self, sync: bool):
        if sync or not self.info.distributed:
            return contextlib.nullcontext()
        if hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            return _fsdp_no_sync(self.model)
        return contextlib.nullcontext()

    def _clip(self) -> torch.Tensor:
        params = [p for p in self.task.model.parameters() if p.grad is not None]
        if self.cfg.optim.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: the norm of the sharded grads is a DTensor
            norm = norm.full_tensor()
        return norm.detach().float()

    def _count_skip(self) -> None:
        self.counters["skipped"] += 1
        log.warning("step %d: non-finite loss or gradient norm; step skipped (%d so far, "
                    "train.nonfinite=skip)", self.step, self.counters["skipped"])
        if self.counters["skipped"] > self.cfg.train.max_skipped:
            raise NonFiniteLoss(f"{self.counters['skipped']} steps skipped for non-finite loss, "
                                f"more than train.max_skipped={self.cfg.train.max_skipped}; the "
                                f"last was step {self.step}. Lower optim.base_lr or set "
                                f"optim.clip_grad.")

    def _sync(self, stop_requested: bool) -> bool:
        """The marked logging sync; raises NonFiniteLoss (stop mode); returns whether any rank
        asked to stop."""
        rows, flag = self.metrics.flush(float(stop_requested))
        if self.cfg.train.nonfinite == "stop":
            bad = [r for r in rows if r.get("loss") is None or r.get("grad_norm") is None]
            if bad:
                last = self.checkpointer.last_saved_step
                where = (f"the last good checkpoint is step {last} in {self.checkpointer.dir}"
                         if last > 0 else "no checkpoint was written")
                shown = {k: "nan/inf" if bad[0].get(k) is None else f"{bad[0][k]:.4g}"
                         for k in ("loss", "grad_norm")}
                raise NonFiniteLoss(
                    f"non-finite loss at step {bad[0]['step']} (loss {shown['loss']}, grad norm "
                    f"{shown['grad_norm']}); stopped without writing a checkpoint; "
                    f"{where}. Lower optim.base_lr, set optim.clip_grad, or set "
                    f"train.nonfinite=skip to skip such steps.")
        return flag > 0

    # ------------------------------------------------------------------ outputs

    def save(self) -> None:
        path = self.checkpointer.save(
            step=self.step, epoch=self._epoch(), model=self.model, optimizer=self.optimizer,
            scheduler=self.schedule, scaler=self.scaler, loader=self.loader,
            config=to_dict(self.cfg), derived=vars(self.derived),
            counters=self.counters, classes=self.task.classes)
        if path is not None and self.info.is_main:
            log.info("step %d: checkpoint %s", self.step, path)

    def export(self) -> Path:
        """The trained model alone (no teachers, no optimizer) as run.dir/model.safetensors."""
        from safetensors.torch import save

        sd = self.checkpointer.full_state_dicts(self.model, self.optimizer)[0]
        path = self.run_dir / EXPORT_NAME
        if self.info.is_main:
            # serialised in memory (the model's size once more), then written like a checkpoint;
            # the metadata carries the position table kinds and a classifier's class names
            meta = model_metadata(self.task.model, self.task.classes)
            data = save({k: v.detach().contiguous().cpu() for k, v in sd.items()},
                        metadata={"format": "pt", **meta, "mvd_model": self.cfg.model.name,
                                  "task": self.cfg.task, "step": str(self.step)})
            atomic_write(path, lambda f: f.write(data))
            log.info("trained model written to %s", path)
        D.barrier()
        return path

    def validate(self) -> dict:
        """The task's validation on eval.dir, written to run.dir/eval.json (a collective)."""
        result = self.task.validate(self.model, self.info, self.precision, self.run_dir)
        result["step"] = self.step
        self.last_eval = result
        self.metrics.log_eval(self.step, result)
        if self.info.is_main:
            write_eval(self.run_dir, result)
            log.info("step %d: %s", self.step, self.task.eval_summary(result))
        return result


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def write_eval(run_dir: Path, result: dict) -> None:
    with open(run_dir / "eval.json", "w") as f:
        json.dump(result, f, indent=1)


def run_eval(cfg: Config) -> dict:
    """A task that only evaluates (``trains`` False, task eval): its model scored on eval.dir,
    the resolved config and eval.json (and the task's own outputs) written to run.dir."""
    info = D.init_distributed(cfg.dist)
    seed_everything(cfg.seed)
    precision = plan_precision(cfg.train.precision, info.device.type)
    task = build_task(cfg, info.device, info.rank, precision=precision)
    run_dir = Path(cfg.run.dir)
    result = task.validate(task.model, info, precision, run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        write_eval(run_dir, result)
        log.info("eval of %s", task.eval_summary(result))
    return result
