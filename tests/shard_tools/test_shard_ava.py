"""``mvd-shard ava`` end to end on the synthetic AVA-like set, checked against the description
files read here with the csv module (not shard_tools.ava_files), and clip cutting on movies whose
frames carry their own index."""

import csv
import io
import json
import pickle
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def

from shard_tools import ava_clips
from shard_tools.ava import ava_sources, shard_ava
from shard_tools.ava_clips import BEFORE_START, BEYOND_END, ClipOptions, cut_clip, cut_movie_clips
from shard_tools.cli import main
from shard_tools.merge import merge_parts
from shard_tools.parts import Part
from shard_tools.rejections import Rejected
from shard_tools.sample import unpack_meta
from shard_tools.synth_ava import make_synth_ava

SYNTH = {"movies": 3, "seconds": 6, "fps": 12.0, "width": 48, "height": 48, "seed": 0, "split": "val"}
CLIP = 16
UNKNOWN_ACTION = 99


# ----------------------------------------------------------------------------- the data set

def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The synthetic files plus ground-truth rows that must be rejected, one kind each."""
    files = make_synth_ava(tmp_path_factory.mktemp("ava") / "raw", **SYNTH)
    vid0, vid1 = files.video_ids[:2]
    person0_at_3 = next(r for r in _rows(files.annotations) if r[0] == vid1 and r[1] == "0003" and r[7] == "0")
    extra = [
        ["missingMovie1", "0002", "0.1", "0.1", "0.5", "0.5", "1", "0"],  # no such movie
        [vid0, "0050", "0.1", "0.1", "0.5", "0.5", "1", "0"],  # far past the end (the header says)
        [vid1, "0006", "0.1", "0.1", "0.5", "0.5", "1", "0"],  # frame 72 of a 72-frame movie (decoding says)
        [*person0_at_3[:6], str(UNKNOWN_ACTION), "0"],  # an unknown action on a box that has known ones
        [vid1, "0000", "0.1", "0.1", "0.5", "0.5", str(UNKNOWN_ACTION), "0"],  # a keyframe with only that
        [vid1, "0004", "0.2", "0.2", "0.2", "0.6", "1", "5"],  # a box of zero width
    ]
    with open(files.annotations, "a") as f:
        f.writelines(",".join(row) + "\n" for row in extra)
    return files


def _ava_args(files, out: Path, *more: str) -> list[str]:
    return ["ava", "--videos", str(files.videos), "--annotations", str(files.annotations), "--labels",
            str(files.labels), "--eval-labels", str(files.eval_labels), "--excluded", str(files.excluded),
            "--clip-frames", str(CLIP), "--shard-samples", "6", "--workers", "2", "--no-progress",
            "--out", str(out), *more]


@pytest.fixture(scope="module")
def sharded(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ava_shards")
    assert main(_ava_args(raw, out, "--proposals", str(raw.proposals))) == 0
    return out


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples = defaultdict(dict)
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                key, ext = member.name.split(".", 1)
                samples[key][ext] = tf.extractfile(member).read()
    return dict(samples)


def _label_ids(path: Path) -> dict[int, str]:
    text = path.read_text()
    return {int(i): name for name, i in re.findall(r'name:\s*"([^"]*)"\s*id:\s*(\d+)', text)}


def _expected_keyframes(files) -> dict[tuple[str, int], dict]:
    """Keyframe -> boxes / actions / person ids, grouped from the CSV rows as AVA defines them."""
    known = set(_label_ids(files.labels))
    excluded = {(v, int(t)) for v, t in _rows(files.excluded)}
    movies = {p.stem for p in files.videos.iterdir()}
    grouped = defaultdict(dict)
    for vid, ts, x1, y1, x2, y2, action, person in _rows(files.annotations):
        key = (vid, int(ts))
        box = tuple(float(v) for v in (x1, y1, x2, y2))
        if key in excluded or vid not in movies or int(ts) >= SYNTH["seconds"]:
            continue
        if int(action) in known and box[2] > box[0] and box[3] > box[1]:
            grouped[key].setdefault((box, int(person)), set()).add(int(action))
    return {key: {"boxes": [list(b) for b, _ in boxes], "person_ids": [p for _, p in boxes],
                  "actions": [sorted(a) for a in boxes.values()]} for key, boxes in grouped.items() if boxes}


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# ----------------------------------------------------------------------------- the samples

def test_every_usable_keyframe_is_one_sample_with_the_csv_boxes(raw, sharded):
    expected = _expected_keyframes(raw)
    samples = _samples(sharded)
    assert len(samples) == len(expected) > 0
    for key, members in samples.items():
        info = json.loads(members["json"])
        ann = info["ava"]
        assert key == f"{ann['video_id']}_{ann['timestamp']:04d}"
        want = expected[(ann["video_id"], ann["timestamp"])]
        assert {k: ann[k] for k in ("boxes", "actions", "person_ids")} == want, key
        assert ann["keyframe"] == CLIP // 2
        assert (info["label"], info["label_name"], members["cls"]) == (-1, "", b"-1")
        assert info["source"] == f"{ann['video_id']}.webm@{ann['timestamp']:04d}"
        assert len(_frames(members["webm"])) == info["num_frames"] == CLIP
        assert unpack_meta(members["meta"]) == (CLIP, SYNTH["width"], SYNTH["height"], -1)


def test_the_clip_is_the_movie_around_the_keyframe_and_the_boxes_cover_the_persons(raw, sharded):
    movies = {p.stem: _frames(p.read_bytes()) for p in raw.videos.iterdir()}
    w, h = SYNTH["width"], SYNTH["height"]
    for key, members in _samples(sharded).items():
        ann = json.loads(members["json"])["ava"]
        clip = np.stack(_frames(members["webm"])).astype(float)
        k = round(ann["timestamp"] * SYNTH["fps"])
        movie = np.stack(movies[ann["video_id"]][k - CLIP // 2:k + CLIP // 2]).astype(float)
        assert np.abs(clip - movie).mean() < 4, key  # the same frames, re-encoded once more
        # persons are saturated colours on a grey background: the keyframe's saturated pixels are the boxes
        frame = clip[ann["keyframe"]]
        saturated = frame.max(-1) - frame.min(-1) > 80
        boxes, near = np.zeros((h, w), bool), np.zeros((h, w), bool)
        for x1, y1, x2, y2 in ann["boxes"]:
            x1, y1, x2, y2 = round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)
            boxes[y1:y2, x1:x2] = True
            near[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = True
            # chroma subsampling greys a pixel or two where two persons' colours meet
            assert saturated[y1:y2, x1:x2].mean() > 0.6, key
        assert saturated[boxes].mean() > 0.75 and (saturated & ~near).sum() < 0.05 * boxes.sum(), key


def test_proposals_of_the_csv_are_attached_to_their_keyframe(raw, sharded):
    proposals = defaultdict(list)
    for vid, ts, *values in _rows(raw.proposals):
        proposals[(vid, int(ts))].append([float(v) for v in values])
    for key, members in _samples(sharded).items():
        ann = json.loads(members["json"])["ava"]
        want = proposals[(ann["video_id"], ann["timestamp"])]
        assert len(want) >= len(ann["boxes"])  # the synthetic set proposes every person
        np.testing.assert_allclose(sorted(ann["proposals"]), sorted(want), atol=1e-6)


def test_manifest_records_classes_detection_facts_and_rejections(raw, sharded):
    m = json.loads((sharded / "manifest.json").read_text())
    labels, eval_labels = _label_ids(raw.labels), _label_ids(raw.eval_labels)
    expected = _expected_keyframes(raw)
    assert (m["dataset"], m["samples"]) == ("ava", len(expected))
    assert m["classes"] == [labels[i] for i in sorted(labels)] and len(m["classes"]) == 7
    assert m["codecs"] == {"vp9": len(expected)} and len(m["shards"]) == -(-len(expected) // 6)
    excluded = sorted([v, int(t)] for v, t in _rows(raw.excluded))
    gt_keyframes = {(r[0], int(r[1])) for r in _rows(raw.annotations)}
    proposals = sum(1 for vid, ts, *_ in _rows(raw.proposals) if (vid, int(ts)) in expected)
    assert m["detection"] == {
        "action_ids": sorted(labels), "eval_action_ids": sorted(eval_labels), "excluded": excluded,
        "excluded_skipped": sum((v, t) in gt_keyframes for v, t in excluded),
        "keyframes": len(expected), "boxes": sum(len(k["boxes"]) for k in expected.values()),
        "proposals": proposals}
    assert m["detection"]["excluded_skipped"] == 2 and m["options"]["clip_frames"] == CLIP
    vid0, vid1 = raw.video_ids[:2]
    rejected = {(r["path"], r["reason"].split(":")[0]) for r in m["rejected"]}
    assert rejected == {
        ("missingMovie1@0002", "missing file"),
        (f"{vid0}.webm@0050", BEYOND_END),
        (f"{vid1}.webm@0006", BEYOND_END),
        (f"{vid1}.webm@0003", "unknown label"),
        (f"{vid1}.webm@0000", "unknown label"),
        (f"{vid1}.webm@0000", "no usable box"),
        (f"{vid1}.webm@0004", "empty box"),
    }
    assert all(str(UNKNOWN_ACTION) in r["reason"] for r in m["rejected"] if r["reason"].startswith("unknown"))


def test_the_shards_verify_and_a_rerun_resumes_to_the_same_manifest(raw, sharded):
    assert main(["verify", str(sharded)]) == 0
    before = (sharded / "manifest.json").read_text()
    assert main(_ava_args(raw, sharded, "--proposals", str(raw.proposals))) == 0
    assert (sharded / "manifest.json").read_text() == before


def test_dali_decodes_a_stored_clip_as_pyav_does(sharded):
    manifest = json.loads((sharded / "manifest.json").read_text())
    tars = [str(sharded / s["name"]) for s in manifest["shards"]]
    idxs = [str(sharded / s["index"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        video, meta = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["webm", "json"],
                                            missing_component_behavior="error")
        return fn.decoders.video(video, device="cpu"), video

    p = pipe()
    p.build()
    frames, encoded = p.run()
    for i in range(2):
        dali = np.array(frames[i]).astype(float)
        assert dali.shape == (CLIP, SYNTH["height"], SYNTH["width"], 3)
        pyav = np.stack(_frames(np.array(encoded[i]).tobytes())).astype(float)
        assert np.abs(dali - pyav).mean() < 6  # DALI's YUV -> RGB differs from FFmpeg's by a few levels


# ----------------------------------------------------------------------------- proposals and bad files

def _write_pickle(path: Path, proposals: dict) -> Path:
    with open(path, "wb") as f:
        pickle.dump(proposals, f)
    return path


def _csv_proposals(files) -> dict[str, np.ndarray]:
    found = defaultdict(list)
    for vid, ts, *values in _rows(files.proposals):
        found[f"{vid},{int(ts):04d}"].append([float(v) for v in values])
    return {key: np.array(rows, np.float32) for key, rows in found.items()}


def test_pickled_proposals_give_the_csv_proposals(raw, sharded, tmp_path):
    pkl = _write_pickle(tmp_path / "proposals.pkl", _csv_proposals(raw))
    m = shard_ava(tmp_path / "out", videos=raw.videos, annotations=raw.annotations, labels=raw.labels,
                  excluded=raw.excluded, proposals=pkl, clip=ClipOptions(clip_frames=CLIP), workers=2,
                  progress=False)
    assert m["detection"]["proposals"] == json.loads((sharded / "manifest.json").read_text())["detection"]["proposals"]
    assert m["detection"]["eval_action_ids"] == m["detection"]["action_ids"]  # no --eval-labels: all
    from_csv = {k: json.loads(v["json"])["ava"]["proposals"] for k, v in _samples(sharded).items()}
    from_pkl = {k: json.loads(v["json"])["ava"]["proposals"] for k, v in _samples(tmp_path / "out").items()}
    assert from_pkl.keys() == from_csv.keys()
    for key in from_csv:
        np.testing.assert_allclose(from_pkl[key], from_csv[key], atol=1e-6)


def test_the_shards_do_not_depend_on_the_worker_count(raw, tmp_path):
    runs = [shard_ava(tmp_path / str(n), videos=raw.videos, annotations=raw.annotations, labels=raw.labels,
                      proposals=raw.proposals, clip=ClipOptions(clip_frames=CLIP), shard_samples=8, workers=n,
                      progress=False) for n in (1, 2)]
    assert runs[0] == runs[1] and len(runs[0]["shards"]) > 1


def test_no_proposals_file_gives_empty_lists(raw, tmp_path):
    m = shard_ava(tmp_path, videos=raw.videos, annotations=raw.annotations, labels=raw.labels,
                  clip=ClipOptions(clip_frames=CLIP), workers=1, progress=False)
    assert m["detection"]["proposals"] == 0 and m["detection"]["excluded"] == []
    assert m["detection"]["excluded_skipped"] == 0 and m["samples"] == len(_expected_keyframes(raw)) + 2
    assert all(json.loads(s["json"])["ava"]["proposals"] == [] for s in _samples(tmp_path).values())


def test_pixel_proposals_and_bad_files_are_errors_naming_the_file(raw, tmp_path, capsys):
    pixels = {k: v * np.float32([48, 48, 48, 48, 1]) for k, v in _csv_proposals(raw).items()}
    pkl = _write_pickle(tmp_path / "pixel_proposals.pkl", pixels)
    assert main(_ava_args(raw, tmp_path / "a", "--proposals", str(pkl))) == 2
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long lines
    assert "pixel_proposals.pkl" in err and "outside [0, 1]" in err
    bad_labels = tmp_path / "labels.pbtxt"
    bad_labels.write_text('item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n')
    args = _ava_args(raw, tmp_path / "b")
    args[args.index("--labels") + 1] = str(bad_labels)
    assert main(args) == 2
    assert "labels.pbtxt:2" in capsys.readouterr().err.replace("\n", "")
    assert main(_ava_args(raw, tmp_path / "c", "--clip-frames", "15")) == 2
    assert "even" in capsys.readouterr().err


def test_an_eval_label_outside_the_label_map_is_an_error(raw, tmp_path, capsys):
    eval_labels = tmp_path / "eval.pbtxt"
    eval_labels.write_text('item { name: "fly" id: 42 }\n')
    args = _ava_args(raw, tmp_path / "out")
    args[args.index("--eval-labels") + 1] = str(eval_labels)
    assert main(args) == 2
    assert "eval.pbtxt" in capsys.readouterr().err.replace("\n", "")


# ----------------------------------------------------------------------------- cutting clips

FPS, NUM_FRAMES, GOP, W, H = 10, 300, 45, 64, 32


def _coded_frame(i: int) -> np.ndarray:
    """A frame showing its index as 10 black/white blocks (robust to lossy coding)."""
    frame = np.full((H, W, 3), (i * 7) % 256, np.uint8)
    for bit in range(10):
        frame[:16, bit * 6:(bit + 1) * 6] = 255 * ((i >> bit) & 1)
    return frame


def _read_index(frame: np.ndarray) -> int:
    return sum(int(frame[4:12, bit * 6 + 1:(bit + 1) * 6 - 1].mean() > 128) << bit for bit in range(10))


def _write_coded_movie(path: Path, encoder: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = GOP
        if encoder == "libx264":  # B-frames: decode order differs from display order
            stream.options = {"bf": "3", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}
        else:
            stream.options = {"deadline": "realtime", "cpu-used": "8", "g": str(GOP)}
        for i in range(NUM_FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_coded_frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name, encoder", [("movie.mp4", "libx264"), ("movie.mkv", "libx264"),
                                           ("movie.webm", "libvpx-vp9")])
def test_cut_clip_seeks_to_the_window_and_repeats_the_edge_frames(tmp_path, name, encoder):
    movie = _write_coded_movie(tmp_path / name, encoder)
    assert [_read_index(f) for f in _frames(movie.read_bytes())] == list(range(NUM_FRAMES))
    for ts in (0, 1, 14, 29):  # the movie's start and end fall inside the first and last window
        decoded = cut_clip(movie, ts, tmp_path / "clip.webm", ClipOptions(clip_frames=CLIP))
        got = [_read_index(f) for f in _frames((tmp_path / "clip.webm").read_bytes())]
        k = ts * FPS
        assert got == [min(max(i, 0), NUM_FRAMES - 1) for i in range(k - CLIP // 2, k + CLIP // 2)], ts
        assert decoded <= CLIP + GOP, (ts, decoded)  # from the key frame before the window, not frame 0
    with pytest.raises(Rejected, match=BEYOND_END):
        cut_clip(movie, 30, tmp_path / "clip.webm", ClipOptions(clip_frames=CLIP))


def test_movie_start_shifts_the_keyframes_of_cut_movies(tmp_path):
    movie = _write_coded_movie(tmp_path / "movie.webm", "libvpx-vp9")
    options = ClipOptions(clip_frames=CLIP, movie_start=10)  # the file begins at AVA time 10 s
    cut_clip(movie, 14, tmp_path / "clip.webm", options)
    got = [_read_index(f) for f in _frames((tmp_path / "clip.webm").read_bytes())]
    assert got == list(range(40 - CLIP // 2, 40 + CLIP // 2))
    with pytest.raises(Rejected, match=BEFORE_START):
        cut_clip(movie, 9, tmp_path / "clip.webm", options)


def test_cut_clip_scales_to_the_short_side_and_takes_the_codec(tmp_path):
    movie = _write_coded_movie(tmp_path / "movie.webm", "libvpx-vp9")
    cut_clip(movie, 5, tmp_path / "clip.mp4", ClipOptions(clip_frames=8, short_side=16, codec="h264"))
    with av.open(str(tmp_path / "clip.mp4")) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert (stream.codec_context.codec.canonical_name, len(frames)) == ("h264", 8)
        assert (frames[0].width, frames[0].height) == (32, 16)


def test_three_ava_parts_plus_merge_equal_one_whole_run_each_cut_in_one_pass(raw, tmp_path, monkeypatch):
    """AVA's detection counts add up over the parts (shard_tools.ava.merge_detection), and every
    clip comes from its movie's single pass (the per-keyframe cutter is never called)."""

    def per_keyframe(*args, **kwargs):
        raise AssertionError("a clip was cut alone, not from its movie's pass")

    monkeypatch.setattr(ava_clips, "cut_clip", per_keyframe)
    kwargs = {"videos": raw.videos, "annotations": raw.annotations, "labels": raw.labels,
              "eval_labels": raw.eval_labels, "excluded": raw.excluded, "proposals": raw.proposals,
              "clip": ClipOptions(clip_frames=CLIP), "shard_samples": 4, "workers": 1, "progress": False}
    whole = shard_ava(tmp_path / "whole", **kwargs)
    for i in range(3):
        shard_ava(tmp_path / "parts", part=Part(i, 3), **kwargs)
    merged = merge_parts(tmp_path / "parts")
    assert {k: v for k, v in merged.items() if k != "shards"} == {k: v for k, v in whole.items() if k != "shards"}
    assert merged["detection"]["keyframes"] == whole["samples"] > 0
    assert _samples(tmp_path / "parts") == _samples(tmp_path / "whole")


@pytest.mark.parametrize("name, encoder", [("movie.mp4", "libx264"), ("movie.webm", "libvpx-vp9")])
def test_one_pass_cuts_the_clips_per_keyframe_cutting_cuts(tmp_path, name, encoder):
    """cut_movie_clips (one decoding pass for every keyframe) against cut_clip (one seek and
    window decode per keyframe): the same frames, the same bytes, the same rejections."""
    movie = _write_coded_movie(tmp_path / name, encoder)
    options = ClipOptions(clip_frames=CLIP, movie_start=1)  # keyframe 0 lies before the movie's start
    stamps = [0, 2, 3, 4, 9, 15, 16, 22, 30, 31, 40]  # overlapping windows, both edges, beyond the end
    results, decoded = cut_movie_clips(movie, [(t, tmp_path / f"pass_{t}.webm") for t in stamps], options)
    assert decoded <= NUM_FRAMES  # each frame decoded once at most
    for t in stamps:
        one_pass = tmp_path / f"pass_{t}.webm"
        try:
            cut_clip(movie, t, tmp_path / "alone.webm", options)
        except Rejected as err:
            assert results[one_pass] == str(err), t
            assert not one_pass.exists()
            continue
        assert results[one_pass] is None, t
        alone = (tmp_path / "alone.webm").read_bytes()
        assert [_read_index(f) for f in _frames(one_pass.read_bytes())] == [_read_index(f) for f in _frames(alone)]
        assert one_pass.read_bytes() == alone, t
    assert sum(r is not None for r in results.values()) == 3  # t=0 before the start, t=31 and 40 beyond the end


def test_clips_the_gpu_decoder_would_refuse_are_named_in_a_note(raw, tmp_path):
    def notes(clip):
        return ava_sources(raw.videos, raw.annotations, raw.labels, clip_dir=tmp_path, clip=clip).sources.notes

    small_vp9 = [n for n in notes(ClipOptions(clip_frames=CLIP)) if "not taken by NVDEC" in n]
    assert len(small_vp9) == 1 and "decodes VP9 from 128x128" in small_vp9[0]  # 48x48 VP9 clips
    assert not [n for n in notes(ClipOptions(clip_frames=CLIP, codec="h264")) if "not taken by NVDEC" in n]
