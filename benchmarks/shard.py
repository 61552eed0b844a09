"""Sharding throughput: how fast ``mvd-shard`` packs videos, copying bytes and re-encoding.

Generated H.264 source clips (textured background, moving shape, per-frame noise: a bitrate in
the range of Kinetics clips) are packed twice from a list file by
:func:`shard_tools.build.build_shards` with all cores: once copying the bytes (probe = decode
every frame), once re-encoding (decode + scale + encode + probe again). Figures: videos/s,
source MB/s and decoded frames/s of each pass, measured in one run on the same sources.

    python -m benchmarks.shard [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shard_tools.build import BuildOptions, build_shards
from shard_tools.encode import VideoWriter
from shard_tools.reencode import ReencodeOptions
from shard_tools.sources import list_sources


@dataclass(frozen=True)
class ShardBenchSettings:
    num_videos: int
    num_frames: int
    width: int
    height: int
    fps: float = 25.0
    reencode: ReencodeOptions = field(default_factory=lambda: ReencodeOptions(codec="h264", short_side=128, gop=16))


QUICK = ShardBenchSettings(num_videos=16, num_frames=48, width=320, height=240)
FULL = ShardBenchSettings(num_videos=64, num_frames=150, width=340, height=256)  # 6 s clips at 25 fps


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


def run(out_dir: Path, *, quick: bool) -> list[dict]:
    """Shard the generated sources with and without re-encoding; returns benchmark records."""
    s = QUICK if quick else FULL
    out_dir = Path(out_dir)
    list_file = make_sources(out_dir / "sources", s)
    sources = list_sources(list_file.parent, list_file)
    source_mb = sum(r.path.stat().st_size for r in sources.records) / 1e6
    source_kbps = source_mb * 8000 / (s.num_videos * s.num_frames / s.fps)  # mean source bitrate
    workers = os.cpu_count() or 1
    records = []
    for mode, reencode in (("copy", None), ("reencode", s.reencode)):
        shard_dir = out_dir / f"shards-{mode}"
        shutil.rmtree(shard_dir, ignore_errors=True)
        start = time.perf_counter()
        manifest = build_shards(sources, shard_dir, BuildOptions(workers=workers, reencode=reencode),
                                progress=False)
        seconds = time.perf_counter() - start
        if manifest["samples"] != s.num_videos:
            raise RuntimeError(f"{mode}: packed {manifest['samples']} of {s.num_videos} videos: {manifest['rejected']}")
        target = f"{reencode.codec} short side {reencode.short_side} gop {reencode.gop}" if reencode else "-"
        fields = {"mode": mode, "workers": workers, "videos": s.num_videos, "frames": s.num_frames,
                  "size": f"{s.width}x{s.height}", "source_kbps": round(source_kbps), "reencode": target}
        frames = s.num_videos * s.num_frames
        records += [
            {"name": "shard_videos_per_s", "value": s.num_videos / seconds, "unit": "videos/s", **fields},
            {"name": "shard_mb_per_s", "value": source_mb / seconds, "unit": "MB/s", **fields},
            {"name": "shard_frames_per_s", "value": frames / seconds, "unit": "frames/s", **fields},
            {"name": "shard_seconds", "value": seconds, "unit": "s", **fields},
        ]
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 clips of 48 frames at 320x240")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-shard"), help="work directory")
    args = parser.parse_args()
    for rec in run(args.out, quick=args.quick):
        extra = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in ("name", "value", "unit"))
        print(f"{rec['name']:>20} = {rec['value']:10.2f} {rec['unit']:<9} ({extra})")


if __name__ == "__main__":
    main()
