"""The DALI pipelines of one loader: built at a position (epoch, step), run batch after batch,
rebuilt when the loader asks for another position (a resume, a failure), closed together with
their reader worker processes.

A loader may decode each batch with several pipelines at once (`plan_pipelines`): every
pipeline decodes whole samples, always the same positions of every batch (position j of the
device's share -> device pipeline j % N; the host share, when there is one, the batch's last
positions), and the loader writes each sample into its planned row. Which pipeline decodes a
sample therefore never changes what the batch holds (beyond GPU and CPU decoders' rounding), so
batches stay deterministic and resumable whatever the split. DALI pipelines run asynchronously
(each prefetches its own batches), so N pipelines decode N sub-batches concurrently: on GPU that
is how several NVDEC engines get work (one pipeline was seen using 1 of 7, DALI issue #6387).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dali_pipelines import graph
from dali_pipelines.failures import is_decode_failure
from dali_pipelines.manifest import SampleTable
from dali_pipelines.outputs import Outputs
from dali_pipelines.reader import ClipReader
from dali_pipelines.reader_config import ReaderConfig


@dataclass(frozen=True)
class PipelinePlan:
    """One of a loader's pipelines: the batch positions it decodes, and how."""

    positions: tuple[int, ...]
    decode: str  # "dali": the reader returns bytes and DALI decodes; "pyav": decoded frames
    decode_on: str  # where DALI decodes: "gpu" (NVDEC) or "cpu"
    dali_threads: int
    reader_workers: int


def plan_pipelines(batch_size: int, *, device_pipelines: int, device_decode: str,
                   device_decode_on: str, host_share: float, host_decode: str,
                   dali_threads: int, reader_workers: int) -> tuple[PipelinePlan, ...]:
    """The pipelines of a loader: round(host_share * batch_size) positions (the last ones) for
    one host pipeline decoding on the CPU with `host_decode`, the others round-robin over
    `device_pipelines` pipelines decoding with `device_decode` on `device_decode_on`. DALI
    threads are split in proportion to the samples each decodes (at least one each); the reader
    workers likewise, among the PyAV pipelines when there are any (there the workers decode)."""
    host = int(round(host_share * batch_size))
    shares = [tuple(range(k, batch_size - host, device_pipelines)) for k in range(device_pipelines)]
    plans = [(p, device_decode, device_decode_on) for p in shares if p]
    if host:
        plans.append((tuple(range(batch_size - host, batch_size)), host_decode, "cpu"))
    sizes = [len(p) for p, _, _ in plans]
    threads = _split(dali_threads, sizes)
    pyav = [n if decode == "pyav" else 0 for n, (_, decode, _) in zip(sizes, plans)]
    workers = _split(reader_workers, pyav if any(pyav) else sizes)
    return tuple(
        PipelinePlan(positions, decode, decode_on, max(1, t), w)
        for (positions, decode, decode_on), t, w in zip(plans, threads, workers)
    )


def _split(total: int, sizes: list[int]) -> list[int]:
    """`total` in proportion to `sizes`, as whole numbers that add up to it (the largest
    remainders, then the first, take the units rounding leaves)."""
    shares = [total * n / sum(sizes) for n in sizes]
    out = [int(s) for s in shares]
    by_remainder = sorted(range(len(sizes)), key=lambda k: shares[k] - out[k], reverse=True)
    for k in by_remainder[: total - sum(out)]:
        out[k] += 1
    return out


@dataclass(frozen=True)
class Part:
    """One pipeline's share of a batch: the batch positions its samples take, and its outputs
    by name (see `Outputs.stage`)."""

    positions: np.ndarray  # (n,) int: sample i of the outputs is sample positions[i] of the batch
    named: dict
    outputs: Outputs


class BatchFailed(Exception):
    """A pipeline's run raised. `reader` is that pipeline's reader at the failed batch and
    `decode_on` where it decodes; the pipelines are closed (DALI pipelines may not be reused
    after an operator failure)."""

    def __init__(self, reader: ClipReader, decode_on: str, cause: Exception):
        super().__init__(str(cause))
        self.reader, self.decode_on, self.cause = reader, decode_on, cause


class PipelineRunner:
    """Builds and runs the pipelines (`plans`) decoding one loader's batches."""

    def __init__(self, cfg: ReaderConfig, table: SampleTable, steps: int,
                 plans: tuple[PipelinePlan, ...], *, device: str, device_id: int | None,
                 input_size: int, teacher_input_size: int | None, prefetch: int,
                 normalize: bool = True, decode_only: bool = False, resize: str = "dali"):
        self.cfg, self.table, self.steps, self.plans = cfg, table, steps, plans
        self.device, self.device_id = device, device_id
        self.input_size, self.teacher_input_size = input_size, teacher_input_size
        self.prefetch, self.normalize = prefetch, normalize
        self.decode_only, self.resize = decode_only, resize
        teacher = bool(teacher_input_size) and teacher_input_size != input_size
        self._cfgs = [replace(cfg, decode=plan.decode) for plan in plans]
        self.outputs = [Outputs.of(c, teacher, decode_only, resize) for c in self._cfgs]
        self.pipes: tuple | None = None  # the built pipelines; the same object until rebuilt
        self._readers: tuple[ClipReader, ...] = ()
        self._next: int | None = None  # epoch * steps + step of the pipelines' next batch

    def with_decode_only(self) -> PipelineRunner:
        """The same pipelines stopped after the decoder (outputs `decoded`, `info`, `error`)."""
        return PipelineRunner(
            self.cfg, self.table, self.steps, self.plans, device=self.device,
            device_id=self.device_id, input_size=self.input_size,
            teacher_input_size=self.teacher_input_size, prefetch=self.prefetch, decode_only=True,
        )

    def run(self, epoch: int, step: int, bad) -> list[Part]:
        """Every pipeline's outputs for batch (epoch, step), building them there when they stand
        elsewhere; raises BatchFailed (pipelines closed) when a run raises."""
        if self.pipes is None or self._next != epoch * self.steps + step:
            self.open(epoch, step, bad)
        parts = []
        for pipe, reader, plan, outputs in zip(self.pipes, self._readers, self.plans, self.outputs):
            try:
                out = pipe.run()  # no stream given: the host waits here for this batch's outputs
            except Exception as exc:  # DALI reports any operator failure as a generic error
                if not is_decode_failure(exc):  # out of memory, CUDA, the reader: not a sample
                    self.close()
                    raise
                failed = ClipReader(reader.cfg, self.table, epoch, step, self.steps, reader.bad,
                                    outputs=reader.outputs, positions=reader.positions)
                self.close()
                raise BatchFailed(failed, plan.decode_on, exc) from exc
            parts.append(Part(np.asarray(plan.positions), outputs.named(out), outputs))
        self._next += 1
        return parts

    def open(self, epoch: int, step: int, bad) -> None:
        self.close()
        pipes, readers = [], []
        whole = len(self.plans) == 1 and self.plans[0].positions == tuple(range(self.cfg.batch_size))
        for plan, cfg, outputs in zip(self.plans, self._cfgs, self.outputs):
            reader = ClipReader(cfg, self.table, epoch, step, self.steps, frozenset(bad),
                                outputs=outputs, positions=None if whole else plan.positions)
            pipes.append(graph.build(
                reader, outputs, device=self.device, input_size=self.input_size,
                teacher_input_size=self.teacher_input_size, dali_threads=plan.dali_threads,
                reader_workers=plan.reader_workers, device_id=self.device_id, prefetch=self.prefetch,
                normalize=self.normalize, decode_on=plan.decode_on,
            ))
            readers.append(reader)
        self.pipes, self._readers = tuple(pipes), tuple(readers)
        self._next = epoch * self.steps + step

    def close(self) -> None:
        if self.pipes is not None:
            pipes, self.pipes, self._readers, self._next = self.pipes, None, (), None
            pools = [getattr(p, "_py_pool", None) for p in pipes]
            del pipes
            for pool in pools:
                if pool is not None:
                    pool.close()
