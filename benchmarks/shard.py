"""Sharding throughput: how fast ``mvd-shard`` packs videos, copying bytes and re-encoding, and
how much AVA's one-pass clip cutting saves.

Generated H.264 source clips (textured background, moving shape, per-frame noise: a bitrate in
the range of Kinetics clips; 8-bit 4:2:0 with one key frame per 10 s, as YouTube's long GOPs) are
packed twice from a list file by :func:`shard_tools.build.build_shards` with all cores, for the
default GPU target: once copying the bytes (NVDEC on Ampere/Hopper takes them: probe = decode
every frame), once re-encoding every one (``max_gop=16``: decode + encode + probe of both, the
path a stream the target does not take goes). Figures: videos/s (and per worker process, one per
core), source MB/s and decoded frames/s of each pass, measured in one run on the same sources;
sizes 340x256 and 1280x720, 10 s at 25 fps (K400-like). Then the synthetic AVA movies' keyframes
are cut twice in one process, per keyframe (:func:`shard_tools.ava_clips.cut_clip`) and in one pass per
movie (:func:`shard_tools.ava_clips.cut_movie_clips`): keyframes/s of each and the speed-up.

    python -m benchmarks.shard [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType

from shard_tools.ava_clips import ClipOptions, cut_clip, cut_movie_clips
from shard_tools.ava_files import read_box_csv
from shard_tools.build import BuildOptions, build_shards
from shard_tools.encode import VideoWriter
from shard_tools.sources import list_sources
from shard_tools.synth_ava import make_synth_ava
from video_caps.decoders import DEFAULT_TARGET

K400_VIDEOS = 240_000  # Kinetics-400 train + val, roughly
NODE_CORES = 64


@dataclass(frozen=True)
class ShardBenchSettings:
    num_videos: int
    num_frames: int
    width: int
    height: int
    fps: float = 25.0
    max_gop: int = 16  # the re-encode pass: every source has one key frame, so each is re-encoded


@dataclass(frozen=True)
class AvaCutSettings:
    movies: int
    seconds: int
    width: int
    height: int
    fps: float
    clip_frames: int
    long_gop_size: tuple[int, int]  # the long-GOP H.264 copies of the movies
    long_gop_short_side: int  # their clips' short side


QUICK = ShardBenchSettings(num_videos=16, num_frames=48, width=320, height=240)
FULL = (ShardBenchSettings(num_videos=8, num_frames=250, width=340, height=256),  # 10 s at 25 fps
        ShardBenchSettings(num_videos=4, num_frames=250, width=1280, height=720))
AVA_QUICK = AvaCutSettings(movies=1, seconds=6, width=160, height=96, fps=12.0, clip_frames=16,
                           long_gop_size=(320, 192), long_gop_short_side=96)
AVA_FULL = AvaCutSettings(movies=2, seconds=20, width=640, height=360, fps=25.0, clip_frames=64,  # recipe: 16x4
                          long_gop_size=(1280, 720), long_gop_short_side=320)


def _source_frames(rng: np.random.Generator, s: ShardBenchSettings):
    """(H, W, 3) uint8 frames: static texture, a moving square, a little noise per frame."""
    ys, xs = np.mgrid[0:s.height, 0:s.width]
    base = (rng.uniform(40, 200, 3) + 30 * np.sin(xs / rng.uniform(5, 20))[..., None]
            + rng.normal(0, 12, (s.height, s.width, 3)))
    noise = rng.normal(0, 6, (7, s.height, s.width, 3))
    size = s.height // 5
    x0, y0 = rng.integers(0, s.width - size), rng.integers(0, s.height - size)
    vx, vy = rng.uniform(-3, 3, 2)
    color = rng.uniform(0, 255, 3)
    for t in range(s.num_frames):
        frame = base + noise[t % 7]
        x, y = int(x0 + vx * t) % (s.width - size), int(y0 + vy * t) % (s.height - size)
        frame[y:y + size, x:x + size] = color
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_sources(src_dir: Path, s: ShardBenchSettings) -> Path:
    """H.264 .mp4 clips and a list file over them; kept between runs into the same directory."""
    list_file = src_dir / "list.txt"
    if list_file.exists():
        return list_file
    src_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(s.num_videos):
        rng = np.random.default_rng([7, i])
        name = f"clip_{i:04d}.mp4"
        with VideoWriter(src_dir / name, "h264", s.width, s.height, s.fps, gop=250, quality=18) as writer:
            for frame in _source_frames(rng, s):
                writer.write(frame)
        lines.append(f"{name} {i % 4}")
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def _shard_records(out_dir: Path, s: ShardBenchSettings) -> list[dict]:
    size = f"{s.width}x{s.height}"
    list_file = make_sources(out_dir / f"sources-{size}-{s.num_frames}", s)
    sources = list_sources(list_file.parent, list_file)
    source_mb = sum(r.path.stat().st_size for r in sources.records) / 1e6
    source_kbps = source_mb * 8000 / (s.num_videos * s.num_frames / s.fps)  # mean source bitrate
    workers = os.cpu_count() or 1
    records = []
    # below the clips' length, so that each (one key frame) is re-encoded
    for mode, max_gop in (("copy", None), ("reencode", min(s.max_gop, s.num_frames - 1))):
        shard_dir = out_dir / f"shards-{size}-{mode}"
        shutil.rmtree(shard_dir, ignore_errors=True)
        start = time.perf_counter()
        manifest = build_shards(sources, shard_dir, BuildOptions(workers=workers, target=DEFAULT_TARGET,
                                                                 max_gop=max_gop), progress=False)
        seconds = time.perf_counter() - start
        if manifest["samples"] != s.num_videos:
            raise RuntimeError(f"{mode}: packed {manifest['samples']} of {s.num_videos} videos: {manifest['rejected']}")
        reencoded = sum(manifest["streams"]["reencoded"].values())
        if reencoded != (s.num_videos if max_gop else 0):
            raise RuntimeError(f"{mode}: {reencoded} of {s.num_videos} videos re-encoded")
        fields = {"mode": mode, "workers": workers, "videos": s.num_videos, "frames": s.num_frames, "size": size,
                  "source_kbps": round(source_kbps), "target": DEFAULT_TARGET,
                  "reencode": f"h264 same size, gop {min(max_gop, 16)} (max_gop {max_gop})" if max_gop else "-"}
        per_core = s.num_videos / seconds / workers
        records += [
            {"name": "shard_videos_per_s", "value": s.num_videos / seconds, "unit": "videos/s", **fields},
            {"name": "shard_videos_per_s_per_core", "value": per_core, "unit": "videos/s", **fields},
            {"name": "shard_mb_per_s", "value": source_mb / seconds, "unit": "MB/s", **fields},
            {"name": "shard_frames_per_s", "value": s.num_videos * s.num_frames / seconds, "unit": "frames/s",
             **fields},
            {"name": "shard_seconds", "value": seconds, "unit": "s", **fields},
            # what the per-core rate means for Kinetics-400 on one node (one worker per core)
            {"name": "k400_hours_on_64_cores", "value": K400_VIDEOS / (per_core * NODE_CORES) / 3600, "unit": "h",
             **fields, "k400_videos": K400_VIDEOS, "node_cores": NODE_CORES},
        ]
    return records


def _long_gop_copy(src: Path, dst: Path, gop: int, size: tuple[int, int]) -> None:
    """``src`` scaled to ``size`` as H.264 with a key frame every ``gop`` frames exactly (no
    scene-cut key frames), as films are; kept between runs."""
    if dst.exists():
        return
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        rate = inp.streams.video[0].average_rate
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "20", "g": str(gop), "keyint_min": str(gop),
                          "sc_threshold": "0", "threads": "1"}
        for i, frame in enumerate(inp.decode(video=0)):
            frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            frame.pict_type = PictureType.NONE  # not the source's key frames: one every `gop` frames
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _ava_records(out_dir: Path, a: AvaCutSettings) -> list[dict]:
    """Every keyframe of the synthetic AVA movies cut per keyframe, then in one pass per movie:
    the movies as synthesised (VP9, a key frame a second, clips at the movie's size), and scaled
    to 1280x720 H.264 with a key frame every 10 s, clips at short side 320 (real movies: large,
    long GOPs, which per-keyframe cutting decodes a lead-in of; the clips stored small)."""
    files = make_synth_ava(out_dir / f"ava-{a.width}x{a.height}-{a.seconds}s", movies=a.movies, seconds=a.seconds,
                           fps=a.fps, width=a.width, height=a.height)
    by_movie: dict[str, list[int]] = {}
    for row in read_box_csv(files.annotations, scores=False):
        by_movie.setdefault(row.video_id, [])
        if row.timestamp not in by_movie[row.video_id]:
            by_movie[row.video_id].append(row.timestamp)
    synthesised = {v: next(files.videos.glob(f"{v}.*")) for v in by_movie}
    long_gop = out_dir / "ava-long-gop"
    long_gop.mkdir(exist_ok=True)
    gop, (w, h) = round(10 * a.fps), a.long_gop_size
    long_gop_movies = {v: long_gop / f"{v}-{w}x{h}-gop{gop}.mp4" for v in by_movie}  # named by what makes them
    for v, path in synthesised.items():
        _long_gop_copy(path, long_gop_movies[v], gop, a.long_gop_size)
    for path in long_gop_movies.values():  # the label must be true: key frames exactly gop apart
        with av.open(str(path)) as c:
            starts = sorted(p.pts for p in c.demux(video=0) if p.is_keyframe and p.size)
        if len(starts) != -(-round(a.seconds * a.fps) // gop):
            raise RuntimeError(f"{path}: {len(starts)} key frames, expected one every {gop} frames")
    keyframes = sum(len(t) for t in by_movie.values())
    records = []
    for label, movies, short_side in (
            (f"vp9 {a.width}x{a.height}, key frame every {round(a.fps)} frames", synthesised, None),
            (f"h264 {w}x{h}, key frame every {gop} frames", long_gop_movies, a.long_gop_short_side)):
        options = ClipOptions(clip_frames=a.clip_frames, short_side=short_side)
        clips = out_dir / "ava-clips"
        shutil.rmtree(clips, ignore_errors=True)
        clips.mkdir(parents=True)
        first_movie = next(iter(by_movie))
        cut_clip(movies[first_movie], by_movie[first_movie][0], clips / "warm-up.webm", options)  # set-up, untimed
        start, decoded_alone = time.perf_counter(), 0
        for video, stamps in by_movie.items():
            for t in stamps:
                decoded_alone += cut_clip(movies[video], t, clips / f"alone_{video}_{t}.webm", options)
        alone = time.perf_counter() - start
        start, decoded_pass = time.perf_counter(), 0
        for video, stamps in by_movie.items():
            found, decoded = cut_movie_clips(movies[video], [(t, clips / f"pass_{video}_{t}.webm") for t in stamps],
                                             options)
            decoded_pass += decoded
            if any(reason is not None for reason in found.values()):
                raise RuntimeError(f"one pass over {video} rejected keyframes: {found}")
        one_pass = time.perf_counter() - start
        for video, stamps in by_movie.items():  # the same clips, or the figure means nothing
            for t in stamps:
                if (clips / f"alone_{video}_{t}.webm").read_bytes() != (clips / f"pass_{video}_{t}.webm").read_bytes():
                    raise RuntimeError(f"{video}@{t}: the one-pass clip differs from the per-keyframe clip")
        fields = {"movies": a.movies, "movie": label, "keyframes": keyframes, "fps": a.fps,
                  "clip_frames": a.clip_frames, "clip_codec": options.codec, "clip_short_side": short_side or "movie's",
                  "processes": 1}
        records += [
            {"name": "ava_cut_keyframes_per_s", "value": keyframes / alone, "unit": "keyframes/s",
             "cut": "per keyframe", **fields},
            {"name": "ava_cut_keyframes_per_s", "value": keyframes / one_pass, "unit": "keyframes/s",
             "cut": "one pass per movie", **fields},
            {"name": "ava_cut_s_per_keyframe", "value": alone / keyframes, "unit": "s", "cut": "per keyframe",
             **fields},
            {"name": "ava_cut_s_per_keyframe", "value": one_pass / keyframes, "unit": "s",
             "cut": "one pass per movie", **fields},
            {"name": "ava_cut_frames_decoded_per_keyframe", "value": decoded_alone / keyframes, "unit": "frames",
             "cut": "per keyframe", **fields},
            {"name": "ava_cut_frames_decoded_per_keyframe", "value": decoded_pass / keyframes, "unit": "frames",
             "cut": "one pass per movie", **fields},
            {"name": "ava_one_pass_speedup", "value": alone / one_pass, "unit": "x", **fields},
        ]
    return records


def run(out_dir: Path, *, quick: bool) -> list[dict]:
    """Shard the generated sources copying and re-encoding, and cut the AVA clips both ways;
    returns benchmark records."""
    out_dir = Path(out_dir)
    records = []
    for s in (QUICK,) if quick else FULL:
        records += _shard_records(out_dir, s)
    return records + _ava_records(out_dir, AVA_QUICK if quick else AVA_FULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 clips of 48 frames at 320x240, a small AVA movie")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-shard"), help="work directory")
    args = parser.parse_args()
    for rec in run(args.out, quick=args.quick):
        extra = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("name", "value", "unit"))
        print(f"{rec['name']:>20} = {rec['value']:10.2f} {rec['unit']:<9} ({extra})")


if __name__ == "__main__":
    main()
