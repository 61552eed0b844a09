"""mvd.ava_eval: frame-level AVA mAP@0.5 as the official ActivityNet evaluator computes it.

Hand-made cases carry their expected values worked out in the test; a randomized cross-check
compares against a brute-force evaluator written here straight from the protocol's rules (pure
Python, no shared code); the CLI runs on files written by the test, as a subprocess once (the
`python -m mvd.ava_eval` entry) and in this process for its errors."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mvd.ava_eval import evaluate_frame_map, main
from shard_tools.ava_files import BoxRow, write_detections_csv

REPO = Path(__file__).resolve().parents[2]
LABELS = {1: "stand", 2: "sit", 3: "talk to (e.g., self, a person, a group)"}
FULL = (0.0, 0.0, 1.0, 1.0)


def gt(video, ts, box, action, person=0):
    return BoxRow(video, ts, tuple(box), action, person, None)


def det(video, ts, box, action, score):
    return BoxRow(video, ts, tuple(box), action, None, score)


def xspan(x1, x2):
    """A full-height box over [x1, x2]: IoUs reduce to interval overlaps."""
    return (x1, 0.0, x2, 1.0)


def test_perfect_detections_give_map_one():
    boxes = [(0.1, 0.1, 0.4, 0.9), (0.5, 0.2, 0.9, 0.8)]
    groundtruth = [gt("v", 902, boxes[0], 1), gt("v", 902, boxes[0], 2), gt("v", 903, boxes[1], 1)]
    detections = [det("v", 902, boxes[0], 1, 0.9), det("v", 902, boxes[0], 2, 0.3), det("v", 903, boxes[1], 1, 0.6)]
    result = evaluate_frame_map(groundtruth, detections, LABELS)
    assert result["mAP"] == 1.0
    assert result["per_class"] == {1: 1.0, 2: 1.0, 3: None}
    assert result["names"] == LABELS and result["gt_per_class"] == {1: 2, 2: 1, 3: 0}
    assert result["counts"]["gt_boxes"] == 3 and result["counts"]["detections"] == 3
    assert result["counts"]["keyframes"] == 2


def test_a_duplicate_detection_is_a_false_positive():
    g1, g2 = xspan(0.0, 0.3), xspan(0.6, 0.9)
    groundtruth = [gt("v", 902, g1, 1), gt("v", 902, g2, 1)]
    detections = [det("v", 902, g1, 1, 0.9), det("v", 902, g1, 1, 0.8), det("v", 902, g2, 1, 0.7)]
    # ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; envelope 1, 2/3, 2/3
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    result = evaluate_frame_map(groundtruth, detections, LABELS)
    assert result["per_class"][1] == pytest.approx(5 / 6, abs=1e-12)
    assert result["mAP"] == pytest.approx(5 / 6, abs=1e-12)


def test_a_missed_box_caps_recall():
    g1, g2 = xspan(0.0, 0.3), xspan(0.6, 0.9)
    result = evaluate_frame_map([gt("v", 902, g1, 1), gt("v", 903, g2, 1)], [det("v", 902, g1, 1, 0.5)], LABELS)
    assert result["per_class"][1] == 0.5  # precision 1 up to recall 1/2, nothing after


def test_an_excluded_timestamp_ignores_its_ground_truth_and_detections():
    box, elsewhere = xspan(0.0, 0.4), xspan(0.6, 1.0)
    groundtruth = [gt("v", 902, box, 1), gt("v", 905, box, 1), gt("v", 905, box, 5)]
    detections = [det("v", 902, box, 1, 0.5), det("v", 905, elsewhere, 1, 0.9)]
    # not excluded: FP (0.9) then TP (0.5) -> precision 0, 1/2 at recall 0, 1/2 -> AP 1/4
    assert evaluate_frame_map(groundtruth, detections, LABELS)["per_class"][1] == 0.25
    result = evaluate_frame_map(groundtruth, detections, LABELS, {("v", 905)})
    assert result["per_class"][1] == 1.0 and result["mAP"] == 1.0
    counts = result["counts"]
    # class 5 is not in the label map: skipped before the exclusion, as the official reader does
    assert counts["excluded_gt"] == 1 and counts["excluded_detections"] == 1
    assert counts["skipped_unknown_class_gt"] == 1 and counts["gt_boxes"] == 1 and counts["keyframes"] == 1


def test_a_class_without_ground_truth_is_left_out_of_the_mean_and_one_without_detections_counts_zero():
    box = xspan(0.2, 0.7)
    detections = [det("v", 902, box, 1, 0.9), det("v", 902, box, 2, 0.9)]
    result = evaluate_frame_map([gt("v", 902, box, 1)], detections, LABELS)
    assert result["per_class"] == {1: 1.0, 2: None, 3: None} and result["mAP"] == 1.0
    # class 3 has ground truth and no detection: AP 0.0 (the official compute_average_precision of
    # an empty ranking), and it counts in the mean
    result = evaluate_frame_map([gt("v", 902, box, 1), gt("v", 902, box, 3)], detections, LABELS)
    assert result["per_class"] == {1: 1.0, 2: None, 3: 0.0} and result["mAP"] == 0.5


def test_no_ground_truth_at_all_gives_nan():
    result = evaluate_frame_map([], [det("v", 902, FULL, 1, 0.5)], LABELS)
    assert math.isnan(result["mAP"]) and set(result["per_class"].values()) == {None}


@pytest.mark.parametrize("tp_position", ["first", "last"])
def test_the_51st_detection_of_a_keyframe_is_dropped_whatever_the_file_order(tp_position):
    box, other = xspan(0.0, 0.4), xspan(0.5, 0.9)
    groundtruth = [gt("v", 902, box, 1)]
    fillers = [det("v", 902, other, 2, 0.5 + i / 100) for i in range(50)]  # over all classes
    true_positive = det("v", 902, box, 1, 0.1)  # the lowest score of the keyframe
    detections = [true_positive, *fillers] if tp_position == "first" else [*fillers, true_positive]
    result = evaluate_frame_map(groundtruth, detections, LABELS)
    assert result["per_class"][1] == 0.0
    assert result["counts"]["detections_dropped_capacity"] == 1 and result["counts"]["detections"] == 50
    assert evaluate_frame_map(groundtruth, detections, LABELS, capacity=51)["per_class"][1] == 1.0
    # a 51st with the highest score evicts the lowest instead
    top = det("v", 902, box, 1, 0.99)
    result = evaluate_frame_map(groundtruth, [*fillers[:49], det("v", 902, other, 2, 0.01), top], LABELS)
    assert result["per_class"][1] == 1.0 and result["counts"]["detections_dropped_capacity"] == 1


def test_capacity_is_per_keyframe():
    box = xspan(0.0, 0.4)
    groundtruth = [gt("v", 902, box, 1), gt("v", 903, box, 1)]
    detections = [det("v", ts, box, 1, 0.9 - i / 100) for ts in (902, 903) for i in range(50)]
    result = evaluate_frame_map(groundtruth, detections, LABELS)
    assert result["counts"]["detections_dropped_capacity"] == 0 and result["counts"]["detections"] == 100


def test_degenerate_detections_are_dropped_and_counted():
    box = xspan(0.2, 0.6)
    detections = [det("v", 902, (0.2, 0.0, 0.2, 1.0), 1, 0.9),  # zero width
                  det("v", 902, (0.6, 0.0, 0.2, 1.0), 1, 0.8),  # x2 < x1: dropped, not reordered
                  det("v", 902, (0.2, 0.5, 0.6, 0.5), 1, 0.7)]  # zero height
    result = evaluate_frame_map([gt("v", 902, box, 1)], detections, LABELS)
    assert result["per_class"][1] == 0.0
    assert result["counts"]["detections_dropped_degenerate"] == 3 and result["counts"]["detections"] == 0
    # a dropped box does not cost precision: FP-free ranking with the TP below it
    result = evaluate_frame_map([gt("v", 902, box, 1)], [*detections, det("v", 902, box, 1, 0.1)], LABELS)
    assert result["per_class"][1] == 1.0


def test_a_detection_on_a_keyframe_without_ground_truth_is_a_false_positive():
    box = xspan(0.2, 0.6)
    detections = [det("v", 902, box, 1, 0.5), det("v", 999, box, 1, 0.9), det("w", 902, box, 1, 0.8)]
    # FP, FP, TP: precision 0, 0, 1/3 at recall 0, 0, 1 -> AP 1/3
    result = evaluate_frame_map([gt("v", 902, box, 1)], detections, LABELS)
    assert result["per_class"][1] == pytest.approx(1 / 3, abs=1e-12)
    assert result["counts"]["detections_on_keyframes_without_gt"] == 2


def test_a_detection_whose_best_box_is_taken_is_a_false_positive_even_if_another_overlaps():
    g1, g2 = xspan(0.0, 0.50), xspan(0.05, 0.55)
    d2 = xspan(0.02, 0.52)  # IoU with g1 0.48/0.52 = 0.92 (its argmax), with g2 0.47/0.53 = 0.89
    groundtruth = [gt("v", 902, g1, 1), gt("v", 902, g2, 1)]
    detections = [det("v", 902, g1, 1, 0.9), det("v", 902, d2, 1, 0.8)]
    # TP then FP (g2 stays unmatched): precision 1, 1/2 at recall 1/2, 1/2 -> AP 1/2
    # (a matcher that falls back to the best free box would say 1.0)
    assert evaluate_frame_map(groundtruth, detections, LABELS)["per_class"][1] == 0.5


def test_precision_is_taken_from_its_monotone_envelope():
    g1, g2 = xspan(0.0, 0.3), xspan(0.6, 0.9)
    detections = [det("v", 902, xspan(0.35, 0.55), 1, 0.9), det("v", 902, g1, 1, 0.8), det("v", 902, g2, 1, 0.7)]
    # FP, TP, TP: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the envelope lifts 1/2 to 2/3 -> AP 2/3
    # (the raw precision would give 1/2 * 1/2 + 1/2 * 2/3 = 7/12)
    result = evaluate_frame_map([gt("v", 902, g1, 1), gt("v", 902, g2, 1)], detections, LABELS)
    assert result["per_class"][1] == pytest.approx(2 / 3, abs=1e-12)


def test_iou_of_exactly_the_threshold_matches():
    g = xspan(0.0, 0.5)
    assert evaluate_frame_map([gt("v", 902, g, 1)], [det("v", 902, xspan(0.0, 0.25), 1, 0.5)],
                              LABELS)["per_class"][1] == 1.0  # IoU 0.25 / 0.5 = 0.5 exactly
    assert evaluate_frame_map([gt("v", 902, g, 1)], [det("v", 902, xspan(0.0, 0.2499), 1, 0.5)],
                              LABELS)["per_class"][1] == 0.0


def test_detections_only_match_ground_truth_of_their_own_class():
    box = xspan(0.1, 0.5)
    result = evaluate_frame_map([gt("v", 902, box, 1)], [det("v", 902, box, 2, 0.9), det("v", 902, box, 1, 0.4)],
                                LABELS)
    assert result["per_class"] == {1: 1.0, 2: None, 3: None}


def test_equal_scores_rank_as_the_official_argsort_later_keyframe_first():
    # the official metrics.compute_precision_recall ranks by np.argsort(scores)[::-1]: of two tied
    # detections the later one (in keyframe order) comes first; the official code gives 0.5 here
    box = xspan(0.1, 0.5)
    detections = [det("a", 902, box, 1, 0.5), det("b", 902, box, 1, 0.5)]
    assert evaluate_frame_map([gt("a", 902, box, 1)], detections, LABELS)["per_class"][1] == 0.5


def test_rows_of_classes_outside_the_label_map_are_skipped_and_counted():
    box = xspan(0.1, 0.5)
    result = evaluate_frame_map([gt("v", 902, box, 1), gt("v", 902, box, 7)],
                                [det("v", 902, box, 9, 0.9), det("v", 902, box, 1, 0.1)], LABELS)
    assert result["per_class"][1] == 1.0
    assert result["counts"]["skipped_unknown_class_gt"] == 1
    assert result["counts"]["skipped_unknown_class_detections"] == 1 and result["counts"]["skipped_unknown_class"] == 2


# ----------------------------------------------------------------------------- brute force

def brute_force_map(groundtruth, detections, label_map, excluded, capacity=50, threshold=0.5):
    """The protocol, literally: lists and loops, recall-step AP (assumes distinct scores)."""
    def iou(a, b):  # x1, y1, x2, y2
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    gts = [r for r in groundtruth if r.action_id in label_map and (r.video_id, r.timestamp) not in excluded]
    kept = []
    for frame in {(r.video_id, r.timestamp) for r in detections}:
        if frame in excluded:
            continue
        rows = [r for r in detections if (r.video_id, r.timestamp) == frame and r.action_id in label_map]
        for r in sorted(rows, key=lambda r: -r.score)[:capacity]:
            if r.box[0] < r.box[2] and r.box[1] < r.box[3]:
                kept.append(r)
    aps = {}
    for c in label_map:
        class_gt = [r for r in gts if r.action_id == c]
        if not class_gt:
            aps[c] = None
            continue
        outcomes = []  # (score, is_tp)
        for frame in {(r.video_id, r.timestamp) for r in kept if r.action_id == c}:
            frame_gt = [r.box for r in class_gt if (r.video_id, r.timestamp) == frame]
            used = [False] * len(frame_gt)
            for r in sorted((r for r in kept if r.action_id == c and (r.video_id, r.timestamp) == frame),
                            key=lambda r: -r.score):
                overlaps = [iou(r.box, g) for g in frame_gt]
                if not overlaps:
                    outcomes.append((r.score, False))
                    continue
                best = overlaps.index(max(overlaps))
                hit = overlaps[best] >= threshold and not used[best]
                used[best] = used[best] or hit
                outcomes.append((r.score, hit))
        outcomes.sort(key=lambda o: -o[0])
        precisions, ap, tp = [], 0.0, 0
        for n, (_, hit) in enumerate(outcomes, start=1):
            tp += hit
            precisions.append((tp / n, hit))
        for i, (_, hit) in enumerate(precisions):
            if hit:  # recall rises by 1/num_gt here; take the best precision at any later rank
                ap += max(p for p, _ in precisions[i:]) / len(class_gt)
        aps[c] = ap
    present = [v for v in aps.values() if v is not None]
    return (sum(present) / len(present) if present else math.nan), aps


def random_case(rng):
    frames = [(v, t) for v in ("a", "b", "c") for t in range(902, 902 + rng.randint(1, 4))]
    groundtruth, pool = [], []
    for frame in frames:
        if rng.random() < 0.2:
            continue
        for _ in range(rng.randint(0, 4)):
            x1, y1 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
            box = (x1, y1, x1 + rng.uniform(0.02, 0.3), y1 + rng.uniform(0.02, 0.3))
            pool.append(box)
            for action in rng.sample(range(1, 6), rng.randint(1, 2)):
                groundtruth.append(gt(*frame, box, action))
    detections = []
    for frame in frames + [("z", 950)]:
        for _ in range(rng.randint(0, 80 if rng.random() < 0.25 else 8)):
            if pool and rng.random() < 0.7:
                box = tuple(min(1.0, max(0.0, v + rng.gauss(0, 0.03))) for v in rng.choice(pool))
            else:
                x1, y1 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
                box = (x1, y1, x1 + rng.uniform(-0.02, 0.2), y1 + rng.uniform(0.0, 0.2))
            detections.append(det(*frame, box, rng.randint(1, 6), rng.random()))
    rng.shuffle(detections)
    excluded = {f for f in frames if rng.random() < 0.15}
    label_map = {c: f"class {c}" for c in sorted(rng.sample(range(1, 6), rng.randint(2, 5)))}
    return groundtruth, detections, label_map, excluded


def test_random_cases_agree_with_a_brute_force_evaluator():
    rng = random.Random(20240514)
    informative = 0
    for _ in range(150):
        groundtruth, detections, label_map, excluded = random_case(rng)
        result = evaluate_frame_map(groundtruth, detections, label_map, excluded)
        expected_map, expected = brute_force_map(groundtruth, detections, label_map, excluded)
        for c in label_map:
            if expected[c] is None:
                assert result["per_class"][c] is None
            else:
                assert result["per_class"][c] == pytest.approx(expected[c], abs=1e-9)
        assert (math.isnan(result["mAP"]) and math.isnan(expected_map)) or \
            result["mAP"] == pytest.approx(expected_map, abs=1e-9)
        informative += 0 < result["mAP"] < 1
        counts = result["counts"]  # every row lands in exactly one count
        assert len(groundtruth) == counts["gt_boxes"] + counts["excluded_gt"] + counts["skipped_unknown_class_gt"]
        assert len(detections) == (counts["detections"] + counts["excluded_detections"]
                                   + counts["detections_dropped_capacity"] + counts["detections_dropped_degenerate"]
                                   + counts["skipped_unknown_class_detections"])
    assert informative > 50  # the cases exercise partial scores, not just 0 / 1 / NaN


# ----------------------------------------------------------------------------- CLI

LABEL_MAP_TEXT = """label {
  name: "stand"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "sit"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
"""


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mvd.ava_eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_the_cli_prints_per_class_lines_counts_and_a_final_json_line(tmp_path):
    (tmp_path / "labels.pbtxt").write_text(LABEL_MAP_TEXT)
    (tmp_path / "gt.csv").write_text("vid_A,0902,0.0,0.0,0.3,1.0,1,0\nvid_A,0902,0.6,0.0,0.9,1.0,1,1\n"
                                     "vid_A,0903,0.1,0.1,0.5,0.5,2,0\nvid_A,0904,0.1,0.1,0.5,0.5,1,0\n")
    write_detections_csv(tmp_path / "det.csv", [
        ("vid_A", 902, 0.0, 0.0, 0.3, 1.0, 1, 0.9), ("vid_A", 902, 0.0, 0.0, 0.3, 1.0, 1, 0.8),
        ("vid_A", 902, 0.6, 0.0, 0.9, 1.0, 1, 0.7), ("vid_A", 903, 0.6, 0.6, 0.9, 0.9, 2, 0.5),
        ("vid_A", 904, 0.1, 0.1, 0.5, 0.5, 1, 0.99), ("vid_A", 902, 0.1, 0.1, 0.5, 0.5, 3, 0.9)])
    (tmp_path / "excluded.csv").write_text("vid_A,0904\n")
    proc = run_cli("-l", tmp_path / "labels.pbtxt", "-g", tmp_path / "gt.csv", "-d", tmp_path / "det.csv",
                   "--exclusions", tmp_path / "excluded.csv")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    final = json.loads(lines[-1])
    # class 1 as the duplicate case (5/6); class 2's only detection misses: 0; mean 5/12
    assert final["mAP"] == pytest.approx(5 / 12, abs=1e-12)
    assert final["per_class"] == {"1": pytest.approx(5 / 6, abs=1e-12), "2": 0.0}
    assert final["counts"]["excluded_gt"] == 1 and final["counts"]["excluded_detections"] == 1
    assert final["counts"]["skipped_unknown_class_detections"] == 1
    assert any(line.split()[:2] == ["stand", "1"] and line.split()[2] == "0.8333" for line in lines)
    assert any(line.split()[:3] == ["sit", "2", "0.0000"] for line in lines)
    assert "excluded_detections: 1" in lines


def test_the_cli_exits_2_naming_the_bad_line(tmp_path, capsys):
    (tmp_path / "labels.pbtxt").write_text(LABEL_MAP_TEXT)
    (tmp_path / "gt.csv").write_text("vid_A,0902,0.0,0.0,0.3,1.0,1,0\n")
    (tmp_path / "det.csv").write_text("vid_A,0902,0.0,0.0,0.3,1.0,1,0.9\nvid_A,0902,12,40,300,200,1,0.5\n")
    files = ["-g", str(tmp_path / "gt.csv"), "-d", str(tmp_path / "det.csv")]
    assert main(["-l", str(tmp_path / "labels.pbtxt"), *files]) == 2
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'det.csv'}:2: x1 = 12.0 is outside [0, 1]" in err and out == ""
    assert main(["-l", str(tmp_path / "missing.pbtxt"), *files]) == 2
    assert "cannot read label map" in capsys.readouterr().err


def test_the_cli_refuses_ground_truth_with_nothing_to_evaluate(tmp_path, capsys):
    (tmp_path / "labels.pbtxt").write_text(LABEL_MAP_TEXT)
    (tmp_path / "gt.csv").write_text("vid_A,0902,0.0,0.0,0.3,1.0,42,0\n")
    (tmp_path / "det.csv").write_text("vid_A,0902,0.0,0.0,0.3,1.0,1,0.9\n")
    assert main(["-l", str(tmp_path / "labels.pbtxt"), "-g", str(tmp_path / "gt.csv"), "-d",
                 str(tmp_path / "det.csv")]) == 2
    assert "no ground-truth box of a label-map class" in capsys.readouterr().err
