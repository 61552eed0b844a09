"""Samples that fail to decode: found, replaced, counted, logged, and a stop past the limit that
every rank takes at the same step.

On the PyAV path the reader catches a failure itself and replaces the sample by another of its
batch; its `info` row says which item failed (`FailureLog.note`). On the DALI path the whole
batch raises: when the error is the video decoder's (`is_decode_failure`; anything else, an out
of memory or a CUDA error, propagates at once), `probe` decodes that pipeline's samples one by
one with DALI to find the culprit, which is marked bad (`FailureLog.mark`) so the rebuilt
pipeline's reader replaces it.

Not every error of the video decoder is a sample's: NVDEC refusing the stream's configuration
(codec, chroma format, bit depth), a size outside NVDEC's range, or a driver without its video
library fail every sample alike. The probe stops at the first of those with
DecoderUnsupportedError, naming the error, the stream (codec, chroma, bit depth, size) and the
sample. Nor does a probe run on unchecked: when no batch succeeds, `FailureLog.check` is never
reached, so the probe applies the limit itself (`FailureLog.probe_limit`): the epoch's limit, the
share of failed samples among those seen once enough were seen, and a run of failed probes with
the same message.

The stop: after every batch each rank calls `FailureLog.check`, which all-reduces "this rank is
past max_failure_fraction" over the process group (one int, torch.distributed directly: the data
package needs nothing from mvd) and, when any rank is, raises DecodeFailureError on every rank,
naming every rank's shards and keys. So a rank never waits in a collective for another that has
stopped, whatever launched them.
"""

from __future__ import annotations

import io
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

# The video decoder's own errors that no sample causes: the GPU, its driver or the stream's
# format (DALI 2.4, dali/operators/video/frames_decoder_gpu.cc: NVDEC's caps per stream; the
# driver's libnvcuvid is loaded on first use)
NOT_A_SAMPLE = ("Codec configuration not supported on this GPU",
                "Video is too small in at least one dimension",
                "Video is too large in at least one dimension", "libnvcuvid")
# Probing without a successful batch: the share of failed samples is judged once this many
# samples were seen (delivered or probed) and at least 1 / max_failure_fraction * FAIR_SHARE,
# so that a rate below the limit is not stopped by the first unlucky batches ...
MIN_SEEN = 64
FAIR_SHARE = 10
# ... and this many failed probes in a row with the same message stop the run: one cause
SAME_MESSAGE_RUN = 8


class DecoderUnsupportedError(RuntimeError):
    """The video decoder failed for a reason no sample causes (the stream's configuration on
    this GPU, a size outside the decoder's range, a missing driver library): raised at once,
    naming the error, the stream and the sample."""


class DecodeFailureError(RuntimeError):
    """More samples failed to decode than the loader's max_failure_fraction allows (raised on
    every rank at the same step)."""


def is_decode_failure(exc: BaseException) -> bool:
    """Whether a pipeline's exception is DALI's video decoder failing on its input (a bad
    sample to find and replace) rather than anything else (to propagate at once)."""
    text = str(exc)
    return DECODER_OPERATOR in text and not any(marker in text for marker in NOT_THE_SAMPLE)


def not_a_sample(why: str) -> bool:
    """Whether a decoder error is one that no sample causes (see NOT_A_SAMPLE)."""
    return any(marker in why for marker in NOT_A_SAMPLE)


def describe_stream(data: bytes, table: SampleTable, sample: int, codecs: dict | None = None) -> str:
    """The stream's codec, chroma, bit depth and size, for a message: PyAV's reading of the
    bytes where PyAV is installed (the GPU check machine has none), else the shard dir's
    manifest codecs (``codecs``, as ``ShardDir.codecs`` holds them) and the sample table (size)."""
    try:
        import av  # heavy optional dependency, only for this message
    except ImportError:
        codecs = ", ".join(sorted(codecs or {}))
        return (f"codec {codecs or 'unknown'} (shard manifest), "
                f"{int(table.width[sample])}x{int(table.height[sample])} (sample table), chroma "
                "and bit depth as the decoder's message gives them (PyAV is not installed)")
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            pix_fmt = stream.codec_context.pix_fmt or "unknown"
            return (f"codec {stream.codec_context.name}, pixel format {pix_fmt} "
                    f"(chroma {_chroma(pix_fmt)}, {_bit_depth(pix_fmt)}-bit), "
                    f"{stream.codec_context.width}x{stream.codec_context.height}")
    except Exception as exc:  # the bytes themselves may be what is wrong: say so, go on
        return (f"{int(table.width[sample])}x{int(table.height[sample])} (sample table); PyAV "
                f"cannot read the stream: {type(exc).__name__}: {exc}")


def _chroma(pix_fmt: str) -> str:
    for tag, chroma in (("420", "4:2:0"), ("422", "4:2:2"), ("444", "4:4:4"), ("gray", "4:0:0"),
                        ("nv12", "4:2:0"), ("p010", "4:2:0")):
        if tag in pix_fmt:
            return chroma
    return "unknown"


def _bit_depth(pix_fmt: str) -> int:
    for depth in (16, 14, 12, 10, 9):
        if f"p{depth}" in pix_fmt or pix_fmt.startswith(f"p0{depth}"):
            return depth
    return 8


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
                 vote_device: torch.device | None = None, codecs: dict | None = None):
        self.table = table
        self.codecs = codecs  # the shard dir's samples per codec, for messages
        self.split = split
        self.max_failure_fraction = max_failure_fraction
        self.samples_per_rank = samples_per_rank
        self.group = group
        self.vote_device = vote_device
        self.bad: dict[int, str] = {}
        self.num_failures = 0  # replacement events (a bad sample seen twice counts twice)
        self.num_seen = 0  # samples delivered in batches, and samples probed
        self._run_message, self._run_length = None, 0  # the current run of failed probes
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
        self.num_seen += len(info)
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
        self._stop(epoch, step, self.over_limit, "")

    def probe_limit(self) -> str | None:
        """Why probing must stop now although no batch may have succeeded (None: go on): past
        the epoch's limit; a share of failed samples past max_failure_fraction once enough were
        seen; or SAME_MESSAGE_RUN failed probes in a row with the same message."""
        if self.over_limit:
            return (f"{len(self.bad)} bad sample(s), more than max_failure_fraction="
                    f"{self.max_failure_fraction} of the {self.samples_per_rank:g} this rank reads")
        enough = max(MIN_SEEN, FAIR_SHARE / max(self.max_failure_fraction, 1e-9))
        if self.num_seen >= enough and len(self.bad) > self.max_failure_fraction * self.num_seen:
            return (f"{len(self.bad)} of the {self.num_seen} samples seen failed to decode, more "
                    f"than max_failure_fraction={self.max_failure_fraction}")
        if self._run_length >= SAME_MESSAGE_RUN:
            return (f"{self._run_length} samples in a row failed to decode with the same message "
                    f"({self._run_message}): one cause, not {self._run_length} bad samples "
                    f"(max_failure_fraction={self.max_failure_fraction})")
        return None

    def probe(self, reader: ClipReader, prefetch: int, device: str, device_id: int | None,
              exc: Exception) -> None:
        """Find and mark the samples of a failed batch that DALI's decoder on `device` cannot
        decode alone: the batch the failing pipeline (`reader`) was asked for, then the
        `prefetch` batches it may already have been decoding. Raises DecoderUnsupportedError at
        the first error no sample causes; DecodeFailureError (every rank, as `check` does) when,
        after the batch holding bad samples is probed, `probe_limit` says so; RuntimeError (from
        `exc`) when the batch's samples decode one by one."""
        found, known = {}, 0
        for ahead in range(prefetch + 1):
            epoch, step = reader.position(ahead)
            for item in reader.own_items(epoch, step):
                sample, clip = reader.cfg.split(int(item))
                if sample in self.bad or sample in found:
                    known += 1
                    continue
                frames = reader.draw(sample, epoch, clip)["frames"]
                data = reader.video_bytes(sample)
                why = graph.decode_error(data, frames, device, device_id)
                self.num_seen += 1
                if why is None:
                    self._run_message, self._run_length = None, 0
                    continue
                if not_a_sample(why):
                    raise DecoderUnsupportedError(
                        f"the {device} video decoder cannot decode this stream, whatever the "
                        f"sample: {why}; stream: {describe_stream(data, self.table, sample, self.codecs)}; "
                        f"sample {self.table.where(sample)}") from exc
                found[sample] = why
                self.mark({sample: why})
                same = why == self._run_message
                self._run_message, self._run_length = why, self._run_length + 1 if same else 1
            if found:  # the limit once per probed batch: the message names all of its bad ones
                stop = self.probe_limit()
                if stop is not None:
                    self._stop(epoch, step, True, f"while probing a failed batch: {stop}")
                return
        epoch, step = reader.position(0)
        if known:  # the reader had no good sample left to put in their place
            self._stop(epoch, step, True, f"while probing a failed batch: {known} of its samples "
                       "are known bad and the reader found no sample to replace them")
        raise RuntimeError(
            f"DALI failed at epoch {epoch} step {step}, but every sample of the batch decodes on "
            f"its own: {exc}"
        ) from exc

    def _stop(self, epoch: int, step: int, over: bool, why: str) -> None:
        """The vote: raise DecodeFailureError on every rank when any rank is `over` (a
        collective when a process group is initialised; a rank that stops while probing takes
        part in the same vote as the ranks that reached `check`)."""
        group = self._group()
        if group is not None:
            # one int per batch; on a CPU (gloo) group it reads nothing back from a device
            flag = torch.tensor([int(over)], dtype=torch.int32, device=self._vote_device(group))
            dist.all_reduce(flag, group=group)
            if not int(flag.item()):  # host value (a sync only on an NCCL-only group)
                return
            reports = [None] * dist.get_world_size(group)
            dist.all_gather_object(reports, (dist.get_rank(), (over, *self.report()), why),
                                   group=group)
        elif over:
            reports = [(None, (over, *self.report()), why)]
        else:
            return
        failing = [rank for rank, (stopped, *_), _ in reports if stopped]
        reasons = "; ".join(f"{'this rank' if rank is None else f'rank {rank}'} {reason}"
                            for rank, _, reason in reports if reason)
        raise DecodeFailureError(
            f"decoding failures past max_failure_fraction={self.max_failure_fraction} at epoch "
            f"{epoch} step {step}" + (f" on rank(s) {', '.join(map(str, failing))}"
                                      if group is not None else "") + "; "
            + "; ".join(self._describe(rank, report[1:]) for rank, report, _ in reports)
            + (f" (stopped {reasons})" if reasons else "")
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
