"""``mvd-shard``: pack video datasets into WebDataset shards (``mvd-shards/1``).

    mvd-shard kinetics --videos DIR --csv FILE [--classes FILE|kinetics400] --out DIR
    mvd-shard ssv2 --videos DIR --labels labels.json --annotations train.json --out DIR
    mvd-shard list --root DIR --list FILE [--classes FILE|kinetics400] --out DIR
    mvd-shard ucf101 --videos DIR --class-index classInd.txt --split-file trainlist01.txt --out DIR
    mvd-shard hmdb51 --videos DIR --splits-dir DIR --split 1 --subset train --out DIR
    mvd-shard ava --videos DIR --annotations ava_val_v2.2.csv --labels ava_action_list_v2.2.pbtxt
                  [--eval-labels FILE.pbtxt --excluded FILE.csv --proposals FILE.csv|.pkl
                   --clip-frames 64 --short-side N --codec vp9 --movie-start 0] --out DIR
    mvd-shard synth --out DIR [--num-videos N --num-frames T --width W --height H --split NAME
                          --spatial-cue shape|colour|stripes|shading]
    every source also takes [--part I/N --workers N --seed S]; all but ava and synth take
      [--target gpu-ampere-hopper|...|cpu-dali|pyav --reject-unsupported --max-gop N]
    mvd-shard merge DIR      (after every --part I/N of an array job)
    mvd-shard verify DIR [--target gpu-ampere-hopper|gpu-hopper|cpu-dali|pyav|...]

Re-running a command into the same ``--out`` resumes it. This module only parses and calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from shard_tools import sources as src
from shard_tools.ava import shard_ava
from shard_tools.ava_clips import CLIP_CODECS, ClipOptions
from shard_tools.build import BuildOptions, ShardDirError, build_shards
from shard_tools.class_lists import SHIPPED, read_class_list
from shard_tools.encode import CODECS
from shard_tools.merge import MergeError, merge_parts
from shard_tools.parts import Part
from shard_tools.reencode import ReencodeOptions
from shard_tools.synth import CLASS_GRID, SPATIAL_CUES, make_synth_dataset
from shard_tools.verify import verify_shards
from video_caps.decoders import DECODERS, DEFAULT_TARGET

REENCODE_CODECS = ("h264", "hevc", "vp9", "mjpeg")
CLASSES_HELP = (f"class names, one per line in index order, or a list shipped with mvd-shard "
                f"({', '.join(sorted(SHIPPED))})")


def _common(parser: argparse.ArgumentParser, *, reencode: bool) -> None:
    g = parser.add_argument_group("common options")
    g.add_argument("--out", type=Path, required=True, help="output shard directory (re-running resumes)")
    g.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: %(default)s)")
    g.add_argument("--shard-size-mb", type=float, default=1024.0, help="max MiB per shard (default: %(default)s)")
    g.add_argument("--shard-samples", type=int, default=None, help="max samples per shard (default: no limit)")
    g.add_argument("--seed", type=int, default=0, help="shuffle seed (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="delete shards of another command in --out first")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or summary table")
    g.add_argument("--part", type=Part.parse, default=None, metavar="I/N",
                   help="pack only part I (0-based) of N, into an --out the parts share (an array job; then "
                        "`mvd-shard merge DIR`); re-running a part resumes it")
    if reencode:
        r = parser.add_argument_group("re-encoding (off unless --reencode)")
        r.add_argument("--reencode", action="store_true", help="re-encode every video instead of copying its bytes")
        r.add_argument("--short-side", type=int, default=None, help="scale so the short side is this (default: keep)")
        r.add_argument("--codec", choices=REENCODE_CODECS, default=None, help="codec (default: h264)")
        r.add_argument("--gop", type=int, default=None, help="key frame every N frames (default: 16)")
        t = parser.add_argument_group("the decoder the shards are made for")
        t.add_argument("--target", choices=sorted(DECODERS), default=DEFAULT_TARGET,
                       help="a stream this decoder does not take is re-encoded into one it takes (8-bit 4:2:0 "
                            "H.264, VP9 for cpu-dali, even sizes within its limits); others are copied byte for "
                            "byte; pyav takes whatever FFmpeg decodes (default: %(default)s, what NVDEC on "
                            "Ampere and Hopper both take)")
        t.add_argument("--reject-unsupported", action="store_true",
                       help="reject such a stream (with the reason) instead of re-encoding it")
        t.add_argument("--max-gop", type=int, default=None,
                       help="also re-encode streams whose key frames lie more than N frames apart (default: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvd-shard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("kinetics", help="Kinetics-400 from its CSV")
    p.add_argument("--videos", type=Path, required=True, help="folder with <youtube_id>_<start>_<end>.<ext> files")
    p.add_argument("--csv", type=Path, required=True, help="CSV with label,youtube_id,time_start,time_end,split")
    p.add_argument("--classes", default=None, help=CLASSES_HELP + "; kinetics400 keeps the official indices for a "
                   "CSV with only some classes (default: the CSV's sorted labels)")
    _common(p, reencode=True)

    p = sub.add_parser("ssv2", help="Something-Something-v2 from labels.json + annotations")
    p.add_argument("--videos", type=Path, required=True, help="folder with <id>.webm files")
    p.add_argument("--labels", type=Path, required=True, help="labels.json (label name -> index)")
    p.add_argument("--annotations", type=Path, required=True, help="train.json / validation.json")
    _common(p, reencode=True)

    p = sub.add_parser("list", help="a list file of 'relative/path label_index' lines")
    p.add_argument("--root", type=Path, required=True, help="folder the listed paths are relative to")
    p.add_argument("--list", type=Path, required=True, dest="list_file", help="the list file")
    p.add_argument("--classes", default=None, help=CLASSES_HELP + " (default: the indices as names)")
    _common(p, reencode=True)

    p = sub.add_parser("ucf101", help="UCF101 from classInd.txt + an official train/test list")
    p.add_argument("--videos", type=Path, required=True, help="folder with <Class>/v_<Class>_gNN_cNN.avi files")
    p.add_argument("--class-index", type=Path, required=True, help="classInd.txt ('<1-based index> <Class>')")
    p.add_argument("--split-file", type=Path, required=True, help="trainlist0N.txt or testlist0N.txt")
    _common(p, reencode=True)

    p = sub.add_parser("hmdb51", help="HMDB51 from its folder of <class>_test_split<N>.txt files")
    p.add_argument("--videos", type=Path, required=True, help="folder with <class>/<video>.avi files")
    p.add_argument("--splits-dir", type=Path, required=True, help="folder with the <class>_test_split<N>.txt files")
    p.add_argument("--split", type=int, required=True, choices=(1, 2, 3), help="official split number")
    p.add_argument("--subset", required=True, choices=sorted(src.HMDB51_SUBSETS), help="lines with id 1 or 2")
    _common(p, reencode=True)

    p = sub.add_parser("ava", help="AVA v2.2: the clip around every annotated keyframe, with its boxes")
    p.add_argument("--videos", type=Path, required=True, help="folder with the <video_id>.<ext> movies")
    p.add_argument("--annotations", type=Path, required=True, help="ground truth, e.g. ava_val_v2.2.csv")
    p.add_argument("--labels", type=Path, required=True, help="label map, e.g. ava_action_list_v2.2.pbtxt")
    p.add_argument("--eval-labels", type=Path, default=None, help="the evaluated subset, e.g. "
                   "ava_action_list_v2.2_for_activitynet_2019.pbtxt (default: every action of --labels)")
    p.add_argument("--excluded", type=Path, default=None, help="keyframes to skip, e.g. "
                   "ava_val_excluded_timestamps_v2.2.csv")
    p.add_argument("--proposals", type=Path, default=None, help="person proposals per keyframe: a CSV "
                   "(video_id,timestamp,x1,y1,x2,y2,[action_id,]score) or a .pkl ({'video_id,%%04d': (P, 5)})")
    c = p.add_argument_group("clips (always re-encoded)")
    c.add_argument("--clip-frames", type=int, default=64, help="frames per clip, centred on the keyframe "
                   "(default: %(default)s = 16 x stride 4)")
    c.add_argument("--short-side", type=int, default=None, help="scale so the short side is this (default: keep)")
    c.add_argument("--codec", choices=CLIP_CODECS, default="vp9", help="(default: vp9 in .webm)")
    c.add_argument("--gop", type=int, default=16, help="key frame every N frames (default: %(default)s)")
    c.add_argument("--movie-start", type=float, default=0.0, help="AVA time (s) of the movie files' first frame: "
                   "0 for the full movies, 900 for movies cut to AVA's 15-minute segment (default: %(default)s)")
    _common(p, reencode=False)

    p = sub.add_parser("synth", help="the synthetic (shape or colour) x motion-direction dataset")
    p.add_argument("--num-videos", type=int, default=400)
    p.add_argument("--num-frames", type=int, default=40)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=8, choices=sorted(CLASS_GRID))
    p.add_argument("--fps", type=float, default=12.0)
    p.add_argument("--codec", choices=sorted(CODECS), default="vp9", help="(default: vp9 in .webm)")
    p.add_argument("--gop", type=int, default=16)
    p.add_argument("--split", default="train", help="split name; another name gives held-out clips (default: train)")
    p.add_argument("--spatial-cue", choices=sorted(SPATIAL_CUES), default="shape",
                   help="what tells the classes apart besides the motion direction (default: %(default)s)")
    _common(p, reencode=False)

    p = sub.add_parser("merge", help="write the manifest of a folder the parts of an array job (--part) wrote")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("verify", help="check a shard directory against its manifest, and count the samples a "
                                      "decoder cannot take")
    p.add_argument("dir", type=Path)
    p.add_argument("--target", choices=sorted(DECODERS), default=None,
                   help=f"the decoder to check the samples against (default: {DEFAULT_TARGET}, reported only); "
                        "given, samples it cannot take fail the check")
    return parser


def _reencode_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ReencodeOptions | None:
    given = [flag for flag, value in (("--short-side", args.short_side), ("--codec", args.codec),
                                      ("--gop", args.gop)) if value is not None]
    if not args.reencode:
        if given:
            parser.error(f"{', '.join(given)} only apply with --reencode")
        return None
    return ReencodeOptions(codec=args.codec or "h264", short_side=args.short_side,
                           gop=args.gop if args.gop is not None else 16)


def _sources(args: argparse.Namespace) -> tuple[src.SourceSet, dict]:
    if args.command == "kinetics":
        paths = {"videos": args.videos, "csv": args.csv}
        classes = None
        if args.classes is not None:  # only then in the options, so earlier runs' fingerprints still match
            paths["classes"], classes = _class_option(args.classes), read_class_list(args.classes)
        sources = src.kinetics_sources(args.videos, args.csv, classes)
    elif args.command == "ssv2":
        paths = {"videos": args.videos, "labels": args.labels, "annotations": args.annotations}
        sources = src.ssv2_sources(args.videos, args.labels, args.annotations)
    elif args.command == "ucf101":
        paths = {"videos": args.videos, "class_index": args.class_index, "split_file": args.split_file}
        sources = src.ucf101_sources(args.videos, args.class_index, args.split_file)
    elif args.command == "hmdb51":
        paths = {"videos": args.videos, "splits_dir": args.splits_dir, "split": args.split, "subset": args.subset}
        sources = src.hmdb51_sources(args.videos, args.splits_dir, args.split, args.subset)
    else:
        paths = {"root": args.root, "list": args.list_file, "classes": _class_option(args.classes)}
        sources = src.list_sources(args.root, args.list_file, args.classes)
    return sources, {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in paths.items()}


def _class_option(value: str | None) -> str | None:
    """``--classes`` as the manifest records it: a shipped list's name, or the file's absolute path."""
    if value is None or (value in SHIPPED and not Path(value).exists()):
        return value
    return str(Path(value).resolve())


def _verify(args: argparse.Namespace, console: Console) -> int:
    report = verify_shards(args.dir, args.target or DEFAULT_TARGET)
    for problem in report.problems:
        console.print(f"[red]FAIL[/red] {problem}", highlight=False)
    if not report.ok:
        console.print(f"[red]{args.dir}: {len(report.problems)} problem(s)[/red]")
        return 1
    print(f"OK {args.dir}: {report.samples} samples in {report.shards} shards match the manifest")
    probed = f" ({report.probed} without recorded stream facts, probed)" if report.probed else ""
    if not report.not_taken:
        print(f"OK {args.dir}: {DECODERS[report.target].label} takes every sample{probed}")
        return 0
    count = sum(report.not_taken.values())
    by = ", ".join(f"{n} {what}" for what, n in sorted(report.not_taken.items()))
    colour = "red" if args.target else "yellow"
    console.print(f"[{colour}]{args.dir}: {count} of {report.samples} samples are not taken by "
                  f"{DECODERS[report.target].label} ({by}){probed}[/{colour}]", highlight=False)
    for example in report.not_taken_examples:
        console.print(f"  {example}", highlight=False)
    print(f"fix: {report.fix}")  # plain, unwrapped: a command to copy
    return 1 if args.target else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    if args.command == "verify":
        return _verify(args, console)
    if args.command == "merge":
        try:
            manifest = merge_parts(args.dir)
        except MergeError as err:
            console.print(f"[red]mvd-shard merge: {err}[/red]", highlight=False)
            return 1
        print(f"OK {args.dir}: {manifest['samples']} samples in {len(manifest['shards'])} shards, "
              f"{len(manifest['rejected'])} rejected; manifest written")
        return 0
    try:
        if args.command == "synth":
            make_synth_dataset(args.out, num_videos=args.num_videos, num_frames=args.num_frames, width=args.width,
                               height=args.height, num_classes=args.num_classes, fps=args.fps, codec=args.codec,
                               gop=args.gop, seed=args.seed, split=args.split, spatial_cue=args.spatial_cue,
                               shard_size_mb=args.shard_size_mb,
                               shard_samples=args.shard_samples, workers=args.workers,
                               progress=not args.no_progress, overwrite=args.overwrite, part=args.part)
            return 0
        if args.command == "ava":
            clip = ClipOptions(clip_frames=args.clip_frames, short_side=args.short_side, codec=args.codec,
                               gop=args.gop, movie_start=args.movie_start)
            shard_ava(args.out, videos=args.videos, annotations=args.annotations, labels=args.labels,
                      eval_labels=args.eval_labels, excluded=args.excluded, proposals=args.proposals, clip=clip,
                      seed=args.seed, shard_size_mb=args.shard_size_mb, shard_samples=args.shard_samples,
                      workers=args.workers, progress=not args.no_progress, overwrite=args.overwrite,
                      on_note=lambda note: console.print(f"[yellow]note: {note}[/yellow]", highlight=False),
                      part=args.part)
            return 0
        reencode = _reencode_options(args, parser)
        sources, paths = _sources(args)
        for note in sources.notes:
            console.print(f"[yellow]note: {note}[/yellow]", highlight=False)
        options = BuildOptions(seed=args.seed, shard_size_mb=args.shard_size_mb, shard_samples=args.shard_samples,
                               workers=args.workers, reencode=reencode, target=args.target,
                               reject_unsupported=args.reject_unsupported, max_gop=args.max_gop, part=args.part)
        build_shards(sources, args.out, options, command=paths, progress=not args.no_progress,
                     overwrite=args.overwrite)
        return 0
    except (src.SourceError, ShardDirError, ValueError) as err:
        console.print(f"[red]mvd-shard {args.command}: {err}[/red]", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print(f"interrupted: finished shards are kept; run the same command again to resume into {args.out}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
