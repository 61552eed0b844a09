"""`mvd-bench loader`: clips/s of the DALI loaders against the PyTorch baseline and against
decoding alone, same shards, same machine, one run.

The pretrain loader (16x4 clips at 224, the student view and the teacher view, tube mask) and the
baseline written the way the public VideoMAE/MVD loaders work (`dali_pipelines.baseline`: PyAV
decode of the window in DataLoader workers, PIL crop + resize per frame) read the same synthetic
shards with the same number of worker processes / threads (all cores), in interleaved rounds;
medians are reported with their ratio. Two teacher sizes: 224 (the recipe's ViT-B teachers: one
tensor serves both views) and 196 (an H/14 teacher: a second resize of the same crop). Figures
per codec: VP9 (DALI decodes it on the CPU) and H.264 (on CPU, the PyAV fallback inside DALI's
parallel external source). The fine-tuning (RandAugment, erasing, 2 views) and eval (3 crops)
loaders are measured alone. `frames/s` counts the clip frames delivered (clips/s x 16).

Output: the loader's float32 normalised clips (`output=float32`, the default) and its uint8
clips (`output=uint8`, what the trainer asks for: it normalises on its device). At the first
teacher size both are timed in the same interleaved rounds as **decoding alone**: the loader's
own pipeline (same reader, threads, workers, prefetch) stopped after the decoder
(`loader.decode_stage()`), so `pretrain_over_decode_alone` (loader clips/s over decode-alone
clips/s, and `_cpu`, decode-alone CPU ms per clip over the loader's) says how close the loader
comes to the decoder's own limit on the same cores.

Decoding alone is also timed on one thread (the window's frames as RGB, by DALI's CPU decoder and
by PyAV): the baseline's CPU time per clip over the DALI loader's decoder's gives the ceiling of
the speedup (`pretrain_speedup_ceiling`) for loaders that decode the same frames.

Besides wall-clock clips/s, the CPU time per clip (this process and its workers) is reported
with its ratio: on a machine shared with other jobs the wall-clock ratio swings with their load,
the CPU-time ratio much less (on an otherwise idle machine where both loaders keep every core
busy, the two ratios agree).

A sweep of the decode pipelines (`gpu_decoders` 1, 2, 4, 7; uint8 and float32) at the first
teacher size follows (`decoder_sweep_clips_per_s`): concurrent NVDEC pipelines on a GPU; on the
CPU the same loader code with CPU pipelines up to the core count, the other points skipped with
the reason.

    python -m benchmarks.loader [--device cpu|gpu] [--quick] [--out DIR] [--make-shards]
"""

from __future__ import annotations

import argparse
import os
from importlib.util import find_spec
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median

import torch


# The decode-pipeline sweep (gpu_decoders) of the GPU check: 1 pipeline (DALI issue #6387 saw
# one pipeline use 1 of 7 NVDEC engines), then up to an H100/H200's 7 engines.
DECODER_SWEEP = (1, 2, 4, 7)


@dataclass(frozen=True)
class LoaderBenchSettings:
    num_videos: int
    num_frames: int  # per video
    width: int
    height: int
    clip_frames: int
    sampling_rate: int
    input_size: int
    teacher_sizes: tuple[int, ...]
    batch_size: int
    batches: int  # timed batches per round
    rounds: int
    codecs: tuple[str, ...]
    baseline: bool = True
    sweep: tuple[int, ...] = DECODER_SWEEP  # gpu_decoders values timed at the reference clip
    sweep_rounds: int = 1


# 320x240 clips of 80 frames at GOP 16: a 16x4 window needs ~72 decoded frames.
FULL_CPU = LoaderBenchSettings(48, 80, 320, 240, 16, 4, 224, (224, 196), 8, 6, 3, ("vp9", "h264"))
QUICK = LoaderBenchSettings(16, 40, 160, 120, 8, 4, 112, (112,), 4, 3, 2, ("vp9", "h264"))
# The GPU target: short-side-320 short-GOP H.264 (baseline still on the CPU for reference).
# 32 videos a codec (~23 MiB for both) so the set travels to the GPU check machine with its pack
# (benchmarks/gpu/pack.py); each batch of 32 then holds every video once, at random offsets.
FULL_GPU = LoaderBenchSettings(32, 80, 426, 320, 16, 4, 224, (224, 196), 32, 8, 3, ("h264", "vp9"))


def settings_for(device: str, quick: bool) -> LoaderBenchSettings:
    if quick:
        return QUICK
    return FULL_GPU if device == "gpu" else FULL_CPU


def synth_shards(root: Path, s: LoaderBenchSettings, codec: str) -> Path:
    """The benchmark's shards (made once, reused by later runs into the same dir)."""
    from shard_tools.synth import make_synth_dataset

    out = root / f"synth-{codec}-{s.width}x{s.height}x{s.num_frames}-{s.num_videos}"
    if not (out / "manifest.json").exists():
        make_synth_dataset(out, num_videos=s.num_videos, num_frames=s.num_frames, width=s.width,
                           height=s.height, codec=codec, gop=16)
    return out


class DecodeAlone:
    """A loader's own pipelines stopped after the decoder (`loader.decode_stage()`): same reader,
    threads, workers and prefetch. Iterating yields {"clips": batch size} per batch, the frames
    left in DALI's buffers."""

    def __init__(self, loader):
        self.loader, self.runner, self.epoch = loader, loader.decode_stage(), 0

    @classmethod
    def of(cls, make_loader) -> DecodeAlone:
        return cls(make_loader())

    def __iter__(self):
        for step in range(len(self.loader)):
            parts = self.runner.run(self.epoch, step, {})
            yield {"clips": sum(len(p.positions) for p in parts)}
        self.epoch += 1

    def close(self) -> None:
        self.runner.close()
        self.loader.close()


def clips_per_s(make_loader, batches: int) -> tuple[float, float]:
    """(clips/s, CPU ms per clip) over `batches` batches after one warm-up batch (worker start-up
    not counted). CPU time is that of this process and all its worker processes: on a shared
    machine it stays meaningful when wall-clock rates do not."""
    from benchmarks.timing import endless

    loader = make_loader()
    it = endless(loader)
    first = next(it)
    _sync(first)
    cpu0, start, clips = cpu_seconds(), time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        clips += batch["clips"] if "clips" in batch else batch["video"].shape[0]
    _sync(batch)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    close = getattr(loader, "close", None)
    if close:
        close()
    return clips / wall, 1000 * cpu / clips


def decoder_sweep_records(data_dir: Path, s: LoaderBenchSettings, where: dict, device: str,
                          common: dict) -> list[dict]:
    """The pretrain loader at the first teacher size with `gpu_decoders` = each of `s.sweep`,
    uint8 and float32 clips (`decoder_sweep_clips_per_s`, `s.sweep_rounds` rounds each). On a
    GPU these are concurrent NVDEC pipelines; on the CPU the same loader code runs that many CPU
    pipelines, up to the core count, and the larger (NVDEC-only) points are skipped with the
    reason."""
    from dali_pipelines import PretrainLoader

    cores = len(os.sched_getaffinity(0))
    records = []
    for n in s.sweep:
        for output in ("uint8", "float32"):
            tag = dict(where, loader="dali", teacher_size=s.teacher_sizes[0], output=output,
                       gpu_decoders=n)
            if device == "cpu" and n > cores:
                records.append({"name": "decoder_sweep_clips_per_s", "unit": "clips/s", **tag,
                                "skipped": f"gpu_decoders={n} is a point of the NVDEC sweep: it "
                                           f"needs --device gpu (on CPU the sweep runs CPU "
                                           f"pipelines up to the {cores} cores)"})
                continue
            make = partial(PretrainLoader, data_dir, s.batch_size, device=device,
                           teacher_input_size=s.teacher_sizes[0], gpu_decoders=n,
                           normalize=output == "float32", **common)
            measured = [clips_per_s(make, s.batches) for _ in range(s.sweep_rounds)]
            records.append({"name": "decoder_sweep_clips_per_s", "unit": "clips/s", **tag,
                            "value": median(r for r, _ in measured)})
            records.append({"name": "decoder_sweep_cpu_ms_per_clip", "unit": "ms", **tag,
                            "value": median(ms for _, ms in measured)})
    return records


def decode_floor_records(data_dir: Path, s: LoaderBenchSettings, where: dict, loader_decoder: str,
                         baseline_ms: float | None) -> list[dict]:
    """Decoding alone, per decoder that can read the codec on the CPU, and the ceiling it puts on
    the speedup over the baseline: the baseline's CPU ms per clip (`baseline_ms`) over the
    decode-only CPU ms of the decoder the DALI loader used (with all cores busy, no loader that
    decodes the same frames can go faster than that ratio).

    The clips are the pretrain windows of the first batches x batch_size samples of epoch 0 (the
    frames both loaders ask for), decoded on one thread to RGB frames by DALI's CPU video decoder
    or by PyAV (`dali_pipelines.decode`, converting only the wanted frames)."""
    from dali_pipelines.baseline import BaselinePretrainLoader
    from dali_pipelines.manifest import DALI_CODECS

    reader = BaselinePretrainLoader(data_dir, s.batch_size, num_frames=s.clip_frames,
                                    sampling_rate=s.sampling_rate, input_size=s.input_size).reader
    items = [int(i) for i in reader.plan(0)[0][: s.batch_size * s.batches]]
    videos = [reader.video_bytes(i) for i in items]
    frames = [reader.draw(i, 0)["frames"] for i in items]
    decoders = ["dali", "pyav"] if where["codec"] in DALI_CODECS["cpu"] else ["pyav"]
    records = []
    for decoder in decoders:
        ms = median(decode_cpu_ms(videos, frames, decoder) for _ in range(s.rounds))
        records.append({"name": "decode_cpu_ms_per_clip", "value": ms, "unit": "ms", **where,
                        "decoder": decoder, "note": "one thread, the window's frames as RGB"})
        if decoder == loader_decoder and baseline_ms is not None:
            records.append({"name": "pretrain_speedup_ceiling", "value": baseline_ms / ms,
                            "unit": "x", **where, "teacher_size": s.teacher_sizes[0],
                            "decoder": decoder,
                            "note": "baseline CPU ms per clip over decode-only CPU ms per clip"})
    return records


def decode_cpu_ms(videos: list[bytes], frames: list, decoder: str) -> float:
    """CPU ms per clip to decode `frames[i]` of `videos[i]` on one thread with `decoder`
    ("dali": DALI's CPU video decoder, in one batch after a warm-up batch; "pyav")."""
    if decoder == "pyav":
        from dali_pipelines.decode import decode_frames

        start = time.process_time()
        for data, wanted in zip(videos, frames):
            decode_frames(data, wanted)
        return 1000 * (time.process_time() - start) / len(videos)
    from dali_pipelines.graph import decode_only

    pipe = decode_only(videos, frames, "cpu", None)
    pipe.build()
    pipe.run()  # warm-up: first-run allocations are not decoding
    start = time.process_time()
    pipe.run()
    ms = 1000 * (time.process_time() - start) / len(videos)
    del pipe
    return ms


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its live child processes and reaped ones."""
    me, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _children(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_children(kid)]
    return found


def _sync(batch) -> None:
    if torch.cuda.is_initialized():  # the whole device: DALI's streams as well as torch's
        torch.cuda.synchronize()


def run(out_dir: Path, *, device: str = "cpu", quick: bool = False) -> list[dict]:
    """Measure every loader on every codec of the settings; returns benchmark records.

    torch's threads are set as mvd-train sets them for a CPU run (`dist.cpu_threads` auto): the
    CPU loaders crop and resize with torch in the calling thread, beside DALI's threads."""
    from mvd.engine.distributed import cpu_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads(0, 1))
    try:
        return _run(out_dir, device, quick)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, device: str, quick: bool) -> list[dict]:
    from dali_pipelines import EvalLoader, FinetuneLoader, PretrainLoader
    from dali_pipelines.baseline import BaselinePretrainLoader

    s = settings_for(device, quick)
    workers = len(os.sched_getaffinity(0))
    clip = f"{s.clip_frames}x{s.sampling_rate}@{s.input_size}"
    common = dict(num_frames=s.clip_frames, sampling_rate=s.sampling_rate, input_size=s.input_size)
    records = []
    has_pyav = find_spec("av") is not None  # the GPU check's machine may have DALI only
    for codec in s.codecs:
        data_dir = synth_shards(Path(out_dir) / "shards", s, codec)
        probe = PretrainLoader(data_dir, s.batch_size, device=device, **common)
        decoder = probe.decoder
        probe.close()
        # PyAV decodes in the reader workers: as many as the baseline's (all cores); DALI's
        # decoder takes the loader's default split (all cores as DALI threads, no workers)
        loader_kw = dict(common, **({"reader_workers": workers} if decoder == "pyav" else {}))
        where = dict(codec=codec, video=f"{s.width}x{s.height}x{s.num_frames}", clip=clip,
                     batch_size=s.batch_size, workers=workers, torch_threads=torch.get_num_threads(),
                     device=device)
        baseline_ms = None  # the baseline's CPU ms per clip at the first teacher size
        if s.baseline and not has_pyav:
            records.append({"name": "pretrain_speedup_vs_baseline", "unit": "x", **where,
                            "skipped": "PyAV is not installed: the baseline decodes with it"})
        for teacher in s.teacher_sizes:
            kw = dict(loader_kw, teacher_input_size=teacher)
            pretrain = partial(PretrainLoader, data_dir, s.batch_size, device=device, **kw)
            makers = {"float32": pretrain, "baseline": partial(
                BaselinePretrainLoader, data_dir, s.batch_size, num_workers=workers,
                **dict(common, teacher_input_size=teacher))}
            if teacher == s.teacher_sizes[0]:  # the reference: uint8 and decoding alone beside
                makers["uint8"] = partial(pretrain, normalize=False)
                makers["decode"] = partial(DecodeAlone.of, pretrain)
            if not (s.baseline and has_pyav):
                del makers["baseline"]
            rates = {name: [] for name in makers}
            cpu = {name: [] for name in makers}
            for _ in range(s.rounds):  # interleaved, so all see the same machine load
                for name, make in makers.items():
                    rate, ms = clips_per_s(make, s.batches)
                    rates[name].append(rate)
                    cpu[name].append(ms)
            rate = {name: median(v) for name, v in rates.items()}
            ms = {name: median(v) for name, v in cpu.items()}
            for name in ("float32", "uint8", "baseline"):
                if name not in rate:
                    continue
                tag = dict(where, loader="baseline" if name == "baseline" else "dali",
                           teacher_size=teacher, output="float32" if name == "baseline" else name,
                           decoder="pyav (baseline)" if name == "baseline" else decoder)
                records.append({"name": "pretrain_clips_per_s", "value": rate[name],
                                "unit": "clips/s", **tag})
                records.append({"name": "pretrain_frames_per_s",
                                "value": rate[name] * s.clip_frames, "unit": "frames/s", **tag})
                records.append({"name": "pretrain_cpu_ms_per_clip", "value": ms[name],
                                "unit": "ms", **tag})
            if "decode" in rate:
                tag = dict(where, loader="decode alone", teacher_size=teacher, decoder=decoder,
                           note="the loader's pipeline stopped after the decoder")
                records.append({"name": "decode_alone_clips_per_s", "value": rate["decode"],
                                "unit": "clips/s", **tag})
                records.append({"name": "decode_alone_cpu_ms_per_clip", "value": ms["decode"],
                                "unit": "ms", **tag})
                for name in ("uint8", "float32"):
                    ratio = dict(where, teacher_size=teacher, decoder=decoder, output=name)
                    records.append({"name": "pretrain_over_decode_alone",
                                    "value": rate[name] / rate["decode"], "unit": "x", **ratio,
                                    "note": "loader clips/s over decode-alone clips/s"})
                    records.append({"name": "pretrain_over_decode_alone_cpu",
                                    "value": ms["decode"] / ms[name], "unit": "x", **ratio,
                                    "note": "decode-alone CPU ms per clip over the loader's"})
            if "baseline" in rate:
                if teacher == s.teacher_sizes[0]:
                    baseline_ms = ms["baseline"]
                ratio = dict(where, teacher_size=teacher, decoder=decoder)
                records.append({"name": "pretrain_speedup_vs_baseline",
                                "value": rate["float32"] / rate["baseline"], "unit": "x", **ratio})
                records.append({"name": "pretrain_cpu_efficiency_vs_baseline",
                                "value": ms["baseline"] / ms["float32"], "unit": "x", **ratio,
                                "note": "baseline CPU time per clip over the DALI loader's"})
        if device == "cpu" and has_pyav:  # the ceiling of a CPU loader
            records += decode_floor_records(data_dir, s, where, decoder, baseline_ms)
        records += decoder_sweep_records(data_dir, s, where, device, loader_kw)
        finetune = lambda: FinetuneLoader(data_dir, s.batch_size // 2, device=device, **loader_kw)  # noqa: E731
        rate = median(clips_per_s(finetune, s.batches)[0] for _ in range(s.rounds))
        records.append({"name": "finetune_clips_per_s", "value": rate, "unit": "clips/s",
                        **where, "loader": "dali", "note": "2 views per video (counted as clips)"})
        evaluation = lambda: EvalLoader(data_dir, s.batch_size // 2 * 3, device=device,  # noqa: E731
                                        num_clips=2, num_crops=3, **loader_kw)
        rate = median(clips_per_s(evaluation, s.batches)[0] for _ in range(s.rounds))
        records.append({"name": "eval_views_per_s", "value": rate, "unit": "views/s",
                        **where, "loader": "dali", "note": "3 crops per decoded clip"})
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-loader"))
    parser.add_argument("--make-shards", action="store_true",
                        help="only make the shards the run reads (under OUT/shards, reused by a "
                             "later run there; mvd-bench --work W reads W/loader/shards): made "
                             "here, carried to a machine without encoders")
    args = parser.parse_args(argv)
    if args.make_shards:
        s = settings_for(args.device, args.quick)
        for codec in s.codecs:
            print(synth_shards(args.out / "shards", s, codec))
        return
    for rec in run(args.out, device=args.device, quick=args.quick):
        extra = {k: v for k, v in rec.items() if k not in ("name", "value", "unit")}
        print(f"{rec['name']:32s} {rec['value']:10.2f} {rec['unit']:9s} {extra}")


if __name__ == "__main__":
    main()
