"""Samples that fail to decode: found, replaced, counted, logged, and a stop past the limit that
every rank takes at the same step.

On the PyAV path the reader catches a failure itself and replaces the sample by another of its
batch; its `info` row says which item failed (`FailureLog.note`). On the DALI path the whole
batch raises: when the error is the video decoder's (`is_decode_failure`; anything else, an out
of memory or a CUDA error, propagates at once), `probe` decodes that pipeline's samples one by
one with DALI to find the culprit, which is marked bad (`FailureLog.mark`) so the rebuilt
pipeline's reader replaces it.

The stop: after every batch each rank calls `FailureLog.check`, which all-reduces "this rank is
past max_failure_fraction" over the process group (one int, torch.distributed directly: the data
package needs nothing from mvd) and, when any rank is, raises DecodeFailureError on every rank,
naming every rank's shards and keys. So a rank never waits in a collective for another that has
stopped, whatever launched them.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from dali_pipelines import graph
from dali_pipelines.manifest import SampleTable
from dali_pipelines.reader import NO_FAILURE, ClipReader

log = logging.getLogger("dali_pipelines")

# DALI's error text names the failing operator; only the video decoder's failures are bad
# samples, and not even those when the device ran out of memory or lost its context
DECODER_OPERATOR = "operator `nvidia.dali.fn.decoders.video`"
NOT_THE_SAMPLE = ("out of memory", "OUT_OF_MEMORY", "cudaErrorMemoryAllocation",
                  "illegal memory access", "ILLEGAL_ADDRESS", "cudaErrorIllegalAddress",
                  "unspecified launch failure", "LAUNCH_FAILED", "ECC error")


class DecodeFailureError(RuntimeError):
    """More samples failed to decode than the loader's max_failure_fraction allows (raised on
    every rank at the same step)."""


def is_decode_failure(exc: BaseException) -> bool:
    """Whether a pipeline's exception is DALI's video decoder failing on its input (a bad
    sample to find and replace) rather than anything else (to propagate at once)."""
    text = str(exc)
    return DECODER_OPERATOR in text and not any(marker in text for marker in NOT_THE_SAMPLE)


class FailureLog:
    """The samples known to be bad (sample -> why) and the replacements made, against the limit.

    `split(item) -> (sample, clip)` maps the reader's items to samples; `samples_per_rank` is how
    many samples this rank reads per epoch (the base of the fraction). `group` is the
    torch.distributed process group whose ranks stop together (None: the default group, when
    torch.distributed is initialised); `vote_device` the device of the vote's tensor on a group
    without a CPU backend (NCCL); None: the current CUDA device, asked only when such a group
    votes (a CPU loader constructs without touching CUDA).
    """

    def __init__(self, table: SampleTable, split: Callable[[int], tuple[int, int]],
                 max_failure_fraction: float, samples_per_rank: float, *, group=None,
                 vote_device: torch.device | None = None):
        self.table = table
        self.split = split
        self.max_failure_fraction = max_failure_fraction
        self.samples_per_rank = samples_per_rank
        self.group = group
        self.vote_device = vote_device
        self.bad: dict[int, str] = {}
        self.num_failures = 0  # replacement events (a bad sample seen twice counts twice)
        self._warned_vote = False

    @property
    def failed_keys(self) -> list[str]:
        """"shard:key" of every bad sample, in manifest order."""
        return [self.table.where(i) for i in sorted(self.bad)]

    @property
    def over_limit(self) -> bool:
        """Whether this rank is past max_failure_fraction."""
        return len(self.bad) > self.max_failure_fraction * self.samples_per_rank

    def note(self, info: np.ndarray, errors) -> None:
        """Count the replacements the reader reports: info (B, 3) rows [sample, failed item or
        -1, clip]; errors[j] the failure message of row j as uint8."""
        for j in np.nonzero(info[:, 1] != NO_FAILURE)[0]:
            item = int(info[j, 1])
            sample = self.split(item)[0]
            why = bytes(np.asarray(errors[int(j)])).decode(errors="replace") or "failed to decode"
            self.num_failures += 1
            if sample not in self.bad:
                log.warning("sample %s replaced by %s: %s", self.table.where(sample),
                            self.table.where(int(info[j, 0])), why)
                self.bad[sample] = why

    def mark(self, found: dict[int, str]) -> None:
        """Samples a probe found bad (they are replaced from the next pipeline build on)."""
        for sample, why in found.items():
            log.warning("sample %s failed to decode with DALI (%s); it will be replaced",
                        self.table.where(sample), why)
            self.bad[sample] = why

    def check(self, epoch: int, step: int) -> None:
        """Raise DecodeFailureError on every rank when any rank is past the limit. Called once
        per batch by every rank (a collective when a process group is initialised)."""
        group = self._group()
        over = self.over_limit
        if group is not None:
            # one int per batch; on a CPU (gloo) group it reads nothing back from a device
            flag = torch.tensor([int(over)], dtype=torch.int32, device=self._vote_device(group))
            dist.all_reduce(flag, group=group)
            if not int(flag.item()):  # host value (a sync only on an NCCL-only group)
                return
            reports = [None] * dist.get_world_size(group)
            dist.all_gather_object(reports, (dist.get_rank(), self.report()), group=group)
        elif over:
            reports = [(None, self.report())]
        else:
            return
        limit = self.max_failure_fraction * self.samples_per_rank
        failing = [rank for rank, (n, _, _) in reports if n > limit]
        raise DecodeFailureError(
            f"decoding failures past max_failure_fraction={self.max_failure_fraction} at epoch "
            f"{epoch} step {step}" + (f" on rank(s) {', '.join(map(str, failing))}"
                                      if group is not None else "") + "; "
            + "; ".join(self._describe(rank, report) for rank, report in reports)
        )

    def report(self) -> tuple[int, list[str], list[str]]:
        """(bad samples, their shards, their keys) of this rank."""
        shards = sorted({self.table.where(i).split(":")[0] for i in self.bad})
        return len(self.bad), shards, [self.table.keys[i] for i in sorted(self.bad)]

    def _describe(self, rank, report) -> str:
        n, shards, keys = report
        who = "this rank" if rank is None else f"rank {rank}"
        if not n:
            return f"{who}: none failed"
        return (f"{who}: {n} of its {self.samples_per_rank:g} samples failed to decode; shards: "
                f"{', '.join(shards)}; keys: {', '.join(keys)}")

    def _group(self):
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def _vote_device(self, group) -> torch.device:
        backend = str(dist.get_backend(group))
        if "gloo" in backend:
            return torch.device("cpu")
        if self.vote_device is None:  # a CPU loader over a group without a CPU backend (NCCL):
            # the process already uses CUDA for that group, so asking for its device now
            # initialises nothing the group has not
            self.vote_device = torch.device("cuda", torch.cuda.current_device())
        if not self._warned_vote:
            log.info("the decode-failure vote runs on %s over a %s group: one device sync per "
                     "batch; pass the loader a gloo process_group to keep it on the host",
                     self.vote_device, backend)
            self._warned_vote = True
        return self.vote_device


def probe(reader: ClipReader, prefetch: int, bad, device: str, device_id: int | None,
          exc: Exception) -> dict[int, str]:
    """The samples of a failed batch that DALI's decoder on `device` cannot decode alone: the
    batch the failing pipeline (`reader`) was asked for, then the `prefetch` batches it may
    already have been decoding. Raises RuntimeError (from `exc`) when every one decodes."""
    found = {}
    for ahead in range(prefetch + 1):
        epoch, step = reader.position(ahead)
        for item in reader.own_items(epoch, step):
            sample, clip = reader.cfg.split(int(item))
            if sample in bad or sample in found:
                continue
            frames = reader.draw(sample, epoch, clip)["frames"]
            why = graph.decode_error(reader.video_bytes(sample), frames, device, device_id)
            if why is not None:
                found[sample] = why
        if found:
            return found
    epoch, step = reader.position(0)
    raise RuntimeError(
        f"DALI failed at epoch {epoch} step {step}, but every sample of the batch decodes on "
        f"its own: {exc}"
    ) from exc
