"""What the four loaders share: the epoch/step state, iteration, exact resume and the recovery from
decode failures. The parts are built beforehand (`parts.build_parts`) and passed in; each loader
module (`pretrain_loader`, `finetune_loader`, `eval_loader`, `detect_loader`) builds its own and
adds its extras to each batch.

Iterating yields the rest of the current epoch, then moves to the next: a fresh loader yields
epoch 0, iterating again yields epoch 1. The state is (epoch, step) plus the samples known to be
bad; `load_state_dict` rebuilds the pipelines at that step, and since every random draw is a
function of (seed, epoch, sample) or (seed, epoch, step), the resumed loader yields exactly the
batches an uninterrupted one would.

Failures (`failures`): a sample that fails to decode is replaced by another sample of its batch,
counted and logged with its shard and key; past `max_failure_fraction` of the dataset every rank
raises DecodeFailureError at the same step naming the shards and keys.
"""

from __future__ import annotations

import numpy as np

from dali_pipelines.parts import LoaderParts
from dali_pipelines.runner import BatchFailed, Part, PipelinePlan, PipelineRunner

STATE_VERSION = 1


class ClipLoader:
    """A loader over built parts. Subclasses add to each batch in `_extend` (called while
    iterating, never while constructing)."""

    def __init__(self, parts: LoaderParts):
        self.parts = parts
        self.shards, self.table = parts.shards, parts.table
        self.options = parts.options
        self.device = parts.options.device
        self.batch_size, self.steps = parts.batch_size, parts.steps
        self.budget, self.failures = parts.budget, parts.failures
        self.normalize = parts.options.normalize
        self.epoch, self.step = 0, 0
        self._cfg, self._runner, self._builder = parts.cfg, parts.runner, parts.builder

    # -- public API ----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        return self.shards.classes

    @property
    def num_classes(self) -> int:
        return len(self.shards.classes)

    @property
    def decoder(self) -> str:
        """"dali" or "pyav": who decodes on this loader."""
        return self._cfg.decode

    @property
    def max_failure_fraction(self) -> float:
        return self.failures.max_failure_fraction

    @property
    def bad(self) -> dict[int, str]:
        """Samples known to be bad: sample -> why."""
        return self.failures.bad

    @property
    def num_failures(self) -> int:
        """Replacement events so far (a bad sample seen twice counts twice)."""
        return self.failures.num_failures

    @property
    def failed_keys(self) -> list[str]:
        return self.failures.failed_keys

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.steps

    def __iter__(self):
        if self.step >= self.steps:
            self.epoch, self.step = self.epoch + 1, 0
        while self.step < self.steps:
            batch = self._batch(self._run(), self.epoch, self.step)
            self.failures.check(self.epoch, self.step)  # every rank, every batch: stop together
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """Where the next batch comes from, and what is known to be bad."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self._cfg.seed,
            "num_shards": self._cfg.num_shards,
            "shard_id": self._cfg.shard_id,
            "batch_size": self.batch_size,
            "bad": {int(k): v for k, v in self.failures.bad.items()},
            "num_failures": self.failures.num_failures,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "num_shards", "shard_id", "batch_size"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state was saved with {key}={state.get(key)}, this loader has "
                    f"{key}={mine[key]}; resume needs the same {key}"
                )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.failures.bad = {int(k): v for k, v in state.get("bad", {}).items()}
        self.failures.num_failures = int(state.get("num_failures", 0))
        self._runner.close()

    def close(self) -> None:
        self._runner.close()

    def __del__(self):
        try:
            self._runner.close()
        except Exception:  # interpreter shutdown, or a constructor that raised
            pass

    def decode_stage(self) -> PipelineRunner:
        """A runner of this loader's pipelines that stop after decoding (the same readers,
        threads, workers and prefetch; `run(epoch, step, bad)` returns parts whose outputs are
        `decoded`, `info`, `error`): what `mvd-bench loader` times as decoding alone."""
        return self._runner.with_decode_only()

    @property
    def pipelines(self) -> tuple[PipelinePlan, ...]:
        """The decode pipelines: the batch positions each decodes, its decoder, threads and
        reader workers."""
        return self._runner.plans

    # -- the pipelines -------------------------------------------------------------------------

    @property
    def _pipe(self):
        """The built pipelines (None when closed): the same object until they are rebuilt."""
        return self._runner.pipes

    def _run(self) -> list[Part]:
        """The pipelines' outputs for (epoch, step), recovering from DALI decode errors."""
        while True:
            try:
                return self._runner.run(self.epoch, self.step, self.failures.bad)
            except BatchFailed as failed:
                device_id = self.parts.device.index if failed.decode_on == "gpu" else None
                self.failures.probe(failed.reader, self.options.prefetch, failed.decode_on,
                                    device_id, failed.cause)

    # -- the batch -----------------------------------------------------------------------------

    def _batch(self, parts: list[Part], epoch: int, step: int) -> dict:
        """The batch of one step: what every loader's holds (`batches.BatchBuilder.common`),
        then what this loader adds (`_extend`)."""
        info = self._builder.info(parts)
        for part in parts:
            self.failures.note(info[part.positions], part.named["error"])
        _, valid = self._planned(epoch, step)
        batch = self._builder.common(parts, info, valid, self._host_fields(info))
        self._extend(batch, parts, info, epoch, step)
        return batch

    def _planned(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, valid) of one batch as planned (before any replacement)."""
        items, valid = self.parts.planner.plan(epoch)
        b = self._cfg.batch_size
        return items[step * b : (step + 1) * b], valid[step * b : (step + 1) * b]

    def _host_fields(self, info: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-view host fields of this loader (int64 tensors in the batch)."""
        return {}

    def _extend(self, batch: dict, parts: list[Part], info: np.ndarray, epoch: int,
                step: int) -> None:
        """What this loader adds to the batch; `info` (B, 3) [sample, failed item, clip]."""
