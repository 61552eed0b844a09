"""Pack a :class:`~shard_tools.sources.SourceSet` into a shard directory, resumably.

The plan is a pure function of the inputs and the seed: sources get keys in input order, are
shuffled by the seed, and are probed (and re-encoded) in that order by a process pool; accepted
samples fill shards in order, a shard being cut before the sample that would push it past
``shard_size_mb`` (or ``shard_samples``). After each shard is renamed into place, the resume
state records it and where the next shard starts, so a re-run of the same command skips the
finished shards' work and produces the same manifest.

Each probed stream is judged against the decoder the shards are made for
(``BuildOptions.target``, :mod:`video_caps.decoders`): one it takes is copied byte for byte;
one it does not is re-encoded into one it takes (8-bit 4:2:0, even sizes, scaled into the
decoder's size limits), or rejected with the reason when ``reject_unsupported`` is set. With
``max_gop``, streams whose key frames lie further apart are re-encoded too.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from shard_tools import rejections as rj
from shard_tools.keys import unique_keys
from shard_tools.manifest import MANIFEST_NAME, write_manifest
from shard_tools.parts import PART_STATE_FILE, PIECE_FILE, WORK_DIR_NAME, Layout, Part, assemble_manifest
from shard_tools.probe import ProbeResult, probe_video
from shard_tools.progress import BuildProgress, print_summary
from shard_tools.reencode import ReencodeOptions, reencode_video
from shard_tools.sample import FORMAT, VideoInfo, sample_members, tar_bytes
from shard_tools.sources import SourceRecord, SourceSet
from shard_tools.state import STATE_NAME, FinishedShard, RunState, load_state, shard_is_intact
from shard_tools.streams import KEYFRAME_INTERVAL, count_stream, empty_summary, merge_summaries
from shard_tools.writer import PARTIAL_SUFFIX, ShardWriter, atomic_write_bytes
from video_caps.decoders import Decoder, decoder, reencode_plan, refusal

_EXT = re.compile(r"^[a-z0-9]{1,8}$")
FIT_GOP = 16  # key frame interval of streams re-encoded to suit the target (or --max-gop, if shorter)
_EXT_BY_CODEC = {"h264": "mp4", "hevc": "mp4", "mpeg4": "mp4", "av1": "mp4", "vp8": "webm",
                 "vp9": "webm", "mjpeg": "avi"}


class ShardDirError(RuntimeError):
    """The output directory holds something this run must not overwrite."""


@dataclass(frozen=True)
class BuildOptions:
    seed: int = 0
    shard_size_mb: float = 1024.0  # MiB of tar per shard, at most (a single larger sample gets its own)
    shard_samples: int | None = None  # at most this many samples per shard
    workers: int | None = None  # processes for probing/re-encoding; None = os.cpu_count()
    reencode: ReencodeOptions | None = None
    # the decoder the shards are made for (video_caps.decoders.DECODERS); "pyav" takes whatever
    # FFmpeg decodes, which packs every decodable stream as it came
    target: str = "pyav"
    reject_unsupported: bool = False  # reject a stream the target does not take instead of re-encoding it
    max_gop: int | None = None  # re-encode streams whose key frames lie further apart (frames)
    part: Part | None = None  # pack only this part of an array job (shard_tools.parts)

    def __post_init__(self) -> None:
        decoder(self.target)
        if self.max_gop is not None and self.max_gop < 1:
            raise ValueError(f"max GOP must be >= 1 frame, got {self.max_gop}")
        if self.shard_size_mb <= 0:
            raise ValueError(f"shard size must be > 0 MB, got {self.shard_size_mb}")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ValueError(f"samples per shard must be >= 1, got {self.shard_samples}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def output_options(self) -> dict:
        """The options that decide the output (the worker count does not)."""
        options = {"seed": self.seed, "shard_size_mb": self.shard_size_mb, "shard_samples": self.shard_samples,
                   "reencode": asdict(self.reencode) if self.reencode else None}
        # only when they change what is packed, so earlier runs' fingerprints still match
        if self.target != "pyav":
            options["target"] = self.target
        if self.reject_unsupported:
            options["reject_unsupported"] = True
        if self.max_gop is not None:
            options["max_gop"] = self.max_gop
        return options


def work_dir(out_dir: Path) -> Path:
    """Where sources' ``prepare`` writes (AVA clips, synthetic videos): shared by the parts."""
    return Path(out_dir) / WORK_DIR_NAME


@dataclass(frozen=True)
class _Task:
    position: int  # in the shuffled order
    key: str
    record: SourceRecord
    reencode: ReencodeOptions | None
    work_dir: Path
    target: Decoder
    reject_unsupported: bool
    max_gop: int | None


@dataclass(frozen=True)
class _Processed:
    position: int
    key: str
    record: SourceRecord
    info: VideoInfo | None
    reason: str | None
    data_path: Path | None = None
    ext: str = ""
    temporary: tuple[Path, ...] = ()  # files to delete once packed
    reencoded: str | None = None  # the property the stream was re-encoded for (to suit the target)


def _video_ext(path: Path, codec: str) -> str:
    ext = path.suffix.lower().lstrip(".")
    return ext if _EXT.match(ext) else _EXT_BY_CODEC.get(codec, "mkv")


def _reencoded(task: _Task, options: ReencodeOptions, size: tuple[int, int] | None, suffix: str,
               temporary: list[Path]) -> tuple[Path, ProbeResult | str]:
    """Re-encode the task's source into its work dir; (the file, its probe or the rejection reason)."""
    dst = task.work_dir / f"{task.key}{suffix}.{options.ext}"
    temporary.append(dst)
    try:
        reencode_video(task.record.path, dst, options, size=size)
    except Exception as err:  # FFmpeg/PyAV raise many types; the file is rejected with the reason
        return dst, rj.reason(rj.REENCODE_FAILED, f"{type(err).__name__}: {err}"[:200])
    found = probe_video(dst)
    return dst, (found if found.ok else rj.reason(rj.REENCODE_FAILED, found.reason))


def _process(task: _Task) -> _Processed:
    """Worker: (make,) decode-check, (re-encode) and fit one source to the target. Runs in a pool process."""
    record, temporary = task.record, []

    def reject(reason: str) -> _Processed:
        for path in temporary:
            path.unlink(missing_ok=True)
        return _Processed(task.position, task.key, record, None, reason)

    def packed(info: VideoInfo, path: Path, ext: str, reencoded: str | None = None) -> _Processed:
        return _Processed(task.position, task.key, record, info, None, path, ext, tuple(temporary), reencoded)

    if record.prepare is not None:
        temporary.append(record.path)
        try:
            record.prepare(record.path)
        except rj.Rejected as err:
            return reject(str(err))
    probe = probe_video(record.path)
    if not probe.ok:
        return reject(probe.reason)
    path, ext = record.path, _video_ext(record.path, probe.info.codec)
    if task.reencode is not None:  # --reencode: every stream, as the user asked
        path, probe = _reencoded(task, task.reencode, None, "", temporary)
        if isinstance(probe, str):
            return reject(probe)
        ext = task.reencode.ext

    # what the target decoder takes is packed as it is; the rest re-encoded into what it takes
    facts = probe.info.stream
    refused = refusal(task.target, facts)
    too_long = task.max_gop is not None and facts.max_keyframe_interval > task.max_gop
    if refused is None and not too_long:
        return packed(probe.info, path, ext)
    if refused is not None and task.reject_unsupported:
        return reject(rj.reason(rj.NOT_TAKEN, refused.text))
    codec, width, height = reencode_plan(task.target, facts.width, facts.height)
    fit = ReencodeOptions(codec=codec, gop=min(task.max_gop or FIT_GOP, FIT_GOP))
    path, probe = _reencoded(task, fit, (width, height), "-fit", temporary)
    if isinstance(probe, str):
        return reject(probe)
    still = refusal(task.target, probe.info.stream)
    if still is not None:
        return reject(rj.reason(rj.REENCODE_FAILED, f"the re-encoded stream is still not taken: {still.text}"))
    return packed(probe.info, path, fit.ext, refused.property if refused is not None else KEYFRAME_INTERVAL)


@contextmanager
def _mapper(workers: int):
    """An ordered, lazy ``map`` over a process pool (or in-process for one worker)."""
    if workers <= 1:
        yield map
        return
    # fork is cheapest, but only safe while this process runs a single Python thread
    method = "fork" if threading.active_count() == 1 else "forkserver"
    pool = multiprocessing.get_context(method).Pool(workers)
    try:
        yield lambda fn, items: pool.imap(fn, items, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _fingerprint(sources: SourceSet, keys: list[str], order: list[int], options: dict) -> str:
    def entry(record: SourceRecord) -> list:
        # json fields only when a dataset has them, so earlier runs' fingerprints still match
        return [record.source, record.label] + ([record.json_fields] if record.json_fields is not None else [])

    plan = {"format": FORMAT, "dataset": sources.dataset, "classes": sources.classes, "options": options,
            "order": [[keys[i], *entry(sources.records[i])] for i in order]}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _existing_shard_files(out_dir: Path, layout: Layout) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if layout.shard_file.match(p.name))


def _part_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if PIECE_FILE.match(p.name) or PART_STATE_FILE.match(p.name))


def _clear_dir(out_dir: Path, layout: Layout) -> None:
    """--overwrite: a whole run clears the folder's shards (the parts' too); a part its own files."""
    if layout.part is None:
        for path in _part_files(out_dir) + [p for p in out_dir.iterdir() if p.name.startswith("shard-")]:
            path.unlink()
        names = (MANIFEST_NAME, STATE_NAME)
    else:
        for path in _existing_shard_files(out_dir, layout):
            path.unlink()
        names = (layout.state_name, layout.piece_name)
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


def _check_layouts(out_dir: Path, layout: Layout) -> None:
    """A whole run and the parts of an array job do not share a folder."""
    if layout.part is None and _part_files(out_dir):
        raise ShardDirError(f"{out_dir} holds parts of an array job (--part); finish them and run "
                            f"`mvd-shard merge {out_dir}`, or use another --out directory or pass --overwrite")
    if layout.part is not None and (out_dir / STATE_NAME).exists():
        raise ShardDirError(f"{out_dir} holds a whole run (without --part); use another --out directory for the "
                            "parts, or pass --overwrite to the whole run")


def _remove_leftovers(out_dir: Path, layout: Layout, records: list[SourceRecord]) -> None:
    if layout.part is None:
        for path in out_dir.glob(f".*{PARTIAL_SUFFIX}"):
            path.unlink()
        shutil.rmtree(work_dir(out_dir), ignore_errors=True)
        return
    # a part removes only its own leftovers: the other parts may be running
    for path in out_dir.glob(f".*{PARTIAL_SUFFIX}"):
        if layout.shard_file.match(path.name[1:-len(PARTIAL_SUFFIX)]) or path.name[1:].startswith(layout.state_name):
            path.unlink()
    shutil.rmtree(layout.work_dir(out_dir), ignore_errors=True)
    for record in records:
        if record.prepare is not None:
            record.path.unlink(missing_ok=True)


def _resume_state(out_dir: Path, fingerprint: str, layout: Layout) -> RunState:
    """The state to continue from: the intact prefix of the finished shards, or a fresh state."""
    state = load_state(out_dir, layout.state_name)
    if state is None:
        if _existing_shard_files(out_dir, layout) or (layout.part is None and (out_dir / MANIFEST_NAME).exists()):
            raise ShardDirError(f"{out_dir} holds shards that no resumable mvd-shard run recorded; "
                                "use an empty --out directory or pass --overwrite")
        state = RunState(fingerprint)
        state.save(out_dir, layout.state_name)  # from now on a killed run leaves a state to resume from
        return state
    if state.fingerprint != fingerprint:
        raise ShardDirError(f"{out_dir} holds shards of a different command (inputs or options differ); "
                            "use another --out directory or pass --overwrite")
    for n, shard in enumerate(state.shards):
        if not shard_is_intact(out_dir, shard):
            state.shards, state.complete, state.tail_rejected = state.shards[:n], False, []
            break
    keep = {name for s in state.shards for name in (s.name, s.index)}
    for path in _existing_shard_files(out_dir, layout):
        if path.name not in keep:
            path.unlink()
    state.save(out_dir, layout.state_name)
    return state


def build_shards(sources: SourceSet, out_dir: Path, options: BuildOptions | None = None, *,
                 command: dict | None = None, progress: bool = True, overwrite: bool = False,
                 manifest_fields: Callable[[list[SourceRecord]], dict] | None = None) -> dict:
    """Pack ``sources`` into ``out_dir`` and return the manifest (also written to manifest.json).

    ``command`` holds the command's own options (input paths etc.) for the manifest; with
    ``options`` it forms the run's fingerprint. Re-running with the same arguments resumes.
    ``manifest_fields``, given the records that were packed (told apart from the rejected ones
    by ``source``, which must then be unique), returns dataset fields for the manifest (AVA's
    ``"detection"``). With ``options.part`` only that part is packed, and its piece written for
    ``mvd-shard merge`` instead of the manifest (the part's own manifest is returned).
    """
    options = options or BuildOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = Layout(options.part)
    records = sources.records
    keys = unique_keys(r.path.stem for r in records)
    order = list(range(len(records)))
    random.Random(options.seed).shuffle(order)
    positions = layout.positions(len(order))
    if overwrite:
        _clear_dir(out_dir, layout)
    _check_layouts(out_dir, layout)
    _remove_leftovers(out_dir, layout, [records[order[p]] for p in positions])
    manifest_options = {**(command or {}), **options.output_options()}
    plan = _fingerprint(sources, keys, order, manifest_options)
    run = plan if options.part is None else hashlib.sha256(f"{plan} part {options.part.tag}".encode()).hexdigest()
    state = _resume_state(out_dir, run, layout)

    start = max(state.next_source, positions.start)
    workers = 1 if state.complete else options.workers or os.cpu_count() or 1
    # the pool is made before the progress bar starts its refresh thread (fork safety)
    with _mapper(workers) as mapper, BuildProgress(len(positions), start - positions.start,
                                                   enabled=progress) as bar:
        if not state.complete:
            if options.part is None:
                (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
            layout.work_dir(out_dir).mkdir(parents=True, exist_ok=True)  # .work/ (or its part's)
            if sources.prepare_all is not None:
                sources.prepare_all([records[order[pos]] for pos in range(start, positions.stop)], mapper)
            target = decoder(options.target)
            tasks = (_Task(pos, keys[order[pos]], records[order[pos]], options.reencode, layout.work_dir(out_dir),
                           target, options.reject_unsupported, options.max_gop)
                     for pos in range(start, positions.stop))
            _fill_shards(mapper(_process, tasks), out_dir, options, state, positions.stop, bar, layout)
            shutil.rmtree(layout.work_dir(out_dir), ignore_errors=True)

    not_packed = {r["path"] for s in state.shards for r in s.rejected} | {r["path"] for r in state.tail_rejected}
    packed = [records[i] for i in sorted(order[p] for p in positions) if records[i].source not in not_packed]
    piece = {
        "format": FORMAT, "plan": plan, "part": [options.part.index, options.part.count] if options.part else None,
        "dataset": sources.dataset, "classes": sources.classes, "class_list": sources.class_list,
        "options": manifest_options, "target": options.target,
        "source_rejected": [r.to_dict() for r in sources.rejected],
        "shards": [asdict(s) for s in state.shards],
        "rejected": [r for s in state.shards for r in s.rejected] + state.tail_rejected,
        "streams": merge_summaries([s.streams for s in state.shards]),
        "fields": manifest_fields(packed) if manifest_fields is not None else {},
    }
    manifest = assemble_manifest([piece])
    if options.part is None:
        write_manifest(out_dir, manifest)
    else:
        atomic_write_bytes(out_dir / layout.piece_name, (json.dumps(piece, indent=1) + "\n").encode())
    if progress:
        print_summary(manifest, processed=bar.processed, packed_bytes=bar.bytes, elapsed=bar.elapsed)
    return manifest


def _fill_shards(results, out_dir: Path, options: BuildOptions, state: RunState, total: int,
                 bar: BuildProgress, layout: Layout) -> None:
    """Consume worker results in order, writing shards and recording each in ``state``."""
    limit = int(options.shard_size_mb * 2**20)
    writer: ShardWriter | None = None
    shard_bytes, codecs, pending, streams = 0, {}, [], empty_summary()

    def finish(next_source: int) -> None:
        nonlocal writer, shard_bytes, codecs, pending, streams
        done = writer.finish()
        state.shards.append(FinishedShard(done.name, done.index, done.samples, done.bytes, done.sha256,
                                          done.index_sha256, next_source, codecs, pending, streams))
        state.save(out_dir, layout.state_name)
        writer, shard_bytes, codecs, pending, streams = None, 0, {}, [], empty_summary()

    try:
        for result in results:
            if result.info is None:
                pending.append(rj.Rejection(result.record.source, result.reason).to_dict())
                bar.advance()
                continue
            video = result.data_path.read_bytes()
            for path in result.temporary:
                path.unlink(missing_ok=True)
            record = result.record
            members = sample_members(result.key, result.ext, video, result.info, record.label,
                                     record.label_name, record.source, record.json_fields)
            size = tar_bytes(members)
            if writer is not None and (shard_bytes + size > limit or writer.samples == options.shard_samples):
                finish(result.position)
            if writer is None:
                writer = ShardWriter(out_dir, layout.shard_name(len(state.shards)))
            writer.add(members)
            shard_bytes += size
            codecs[result.info.codec] = codecs.get(result.info.codec, 0) + 1
            count_stream(streams, result.info.stream, result.reencoded)
            bar.advance(len(video))
        if writer is not None:
            finish(total)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    state.tail_rejected, state.complete = pending, True
    state.save(out_dir, layout.state_name)
