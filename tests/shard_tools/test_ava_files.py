"""shard_tools.ava_files: the AVA v2.2 files in their real layouts, and errors naming file:line and
the field for every bad row."""

import os
import pickle

import numpy as np
import pytest

from shard_tools.ava_files import (AvaFileError, BoxRow, read_box_csv, read_excluded, read_label_map,
                                   read_proposals, write_detections_csv)

# the first blocks of ava_action_list_v2.2.pbtxt as released (label / label_id / label_type)
AVA_V22_LABELS = """label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crawl"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
label {
  name: "answer phone"
  label_id: 9
  label_type: OBJECT_MANIPULATION
}
"""
# the ActivityNet evaluation lists: item / id, no label_type
ACTIVITYNET_LABELS = """item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(AvaFileError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------- label maps

@pytest.mark.parametrize("text, expected", [
    (AVA_V22_LABELS, {1: "bend/bow (at the waist)", 2: "crawl", 9: "answer phone"}),
    (ACTIVITYNET_LABELS, {1: "bend/bow (at the waist)", 3: "crouch/kneel"}),
    ('item { name: "bend/bow (at the waist)" id: 1 label_type: PERSON_MOVEMENT }\n'
     '# a comment\nitem { name: "talk to (e.g., self, a person, a group)" id: 79 }\n'
     'item{name:"say \\"hi\\"" id:80}',
     {1: "bend/bow (at the waist)", 79: "talk to (e.g., self, a person, a group)", 80: 'say "hi"'}),
])
def test_label_map_layouts_parse_to_ids_and_names_in_file_order(tmp_path, text, expected):
    labels = read_label_map(write(tmp_path, "labels.pbtxt", text))
    assert labels == expected and list(labels) == list(expected)


@pytest.mark.parametrize("text, message", [
    (AVA_V22_LABELS + 'label {\n  name: "again"\n  label_id: 2\n}\n', "labels.pbtxt:18: action id 2 already "
     "defined on line 8"),
    ('label {\n  name: "x"\n  label_type: PERSON_MOVEMENT\n}\n', "labels.pbtxt:1: label map block has no id"),
    ('label {\n  label_id: 4\n}\n', "labels.pbtxt:1: label map block has no name"),
    ('label {\n  name: "x"\n  label_id: 4\n  colour: 3\n}\n', "labels.pbtxt:4: unknown label map field 'colour'"),
    ('label {\n  name: "x"\n  label_id: four\n}\n', "labels.pbtxt:3: field 'label_id' must be an integer"),
    ('label {\n  name: "x"\n  label_id: 0\n}\n', "labels.pbtxt:3: field 'label_id' is 0; AVA action ids start at 1"),
    ('label {\n  name: x\n  label_id: 1\n}\n', "labels.pbtxt:2: field 'name' must be a quoted string"),
    ('label {\n  name: "x"\n  label_id: 1\n', "labels.pbtxt:3: label map ends inside a block"),
    ('1,bend\n', "labels.pbtxt:1: expected a 'label {' or 'item {' block"),
    ('# nothing\n', "label map defines no classes"),
])
def test_bad_label_maps_name_the_line(tmp_path, text, message):
    assert message in error_of(read_label_map, write(tmp_path, "labels.pbtxt", text))


def test_an_unreadable_label_map_says_so(tmp_path):
    assert "cannot read label map" in error_of(read_label_map, tmp_path / "absent.pbtxt")


# ----------------------------------------------------------------------------- box CSVs

def test_ground_truth_rows_with_and_without_person_ids(tmp_path):
    path = write(tmp_path, "ava_val_v2.2.csv", "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n"
                                               "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,9,1\n\n"
                                               "1j20qq1JyX4, 1798 ,0.0,0.0,1.0,1.0,12\n")
    assert read_box_csv(path, scores=False) == [
        BoxRow("-5KQ66BBWC4", 902, (0.077, 0.151, 0.283, 0.811), 80, 1, None),
        BoxRow("-5KQ66BBWC4", 902, (0.077, 0.151, 0.283, 0.811), 9, 1, None),
        BoxRow("1j20qq1JyX4", 1798, (0.0, 0.0, 1.0, 1.0), 12, None, None)]


def test_detection_and_proposal_rows(tmp_path):
    path = write(tmp_path, "boxes.csv", "vid,0902,0.1,0.2,0.3,0.4,5,0.25\n"
                                        "vid,0903,0.1,0.2,0.3,0.4,,0.5\n"  # SlowFast predicted boxes
                                        "vid,0904,0.1,0.2,0.3,0.4,0.75\n")  # no action column
    assert read_box_csv(path, scores=True) == [
        BoxRow("vid", 902, (0.1, 0.2, 0.3, 0.4), 5, None, 0.25),
        BoxRow("vid", 903, (0.1, 0.2, 0.3, 0.4), None, None, 0.5),
        BoxRow("vid", 904, (0.1, 0.2, 0.3, 0.4), None, None, 0.75)]
    assert "boxes.csv:2: action_id is empty" in error_of(read_box_csv, path, scores=True, require_action=True)


def test_detection_boxes_in_any_corner_order_are_read_but_ground_truth_ones_are_errors(tmp_path):
    row = "vid,0902,0.5,0.2,0.3,0.4,5,0.25\n"
    assert read_box_csv(write(tmp_path, "det.csv", row), scores=True)[0].box == (0.5, 0.2, 0.3, 0.4)
    message = error_of(read_box_csv, write(tmp_path, "gt.csv", "vid,0902,0.1,0.2,0.3,0.4,5,0\n" + row),
                       scores=False)
    assert "gt.csv:2: box x1,y1,x2,y2 = 0.5,0.2,0.3,0.4 has x2 < x1" in message
    # a zero-width ground-truth box is accepted, as by the official evaluator
    assert read_box_csv(write(tmp_path, "gt0.csv", "vid,0902,0.3,0.2,0.3,0.4,5,0\n"), scores=False)


@pytest.mark.parametrize("row, message", [
    ("vid,0902,0.1,0.2,0.3,abc,5,0.9", "rows.csv:2: y2 must be a number, found 'abc'"),
    ("vid,902.5,0.1,0.2,0.3,0.4,5,0.9", "rows.csv:2: timestamp (whole seconds) must be an integer, found '902.5'"),
    ("vid,0902,12,40,300,200,5,0.9", "rows.csv:2: x1 = 12.0 is outside [0, 1]"),
    ("vid,0902,0.1,0.2,1.01,0.4,5,0.9", "rows.csv:2: x2 = 1.01 is outside [0, 1]"),
    ("vid,0902,0.1,0.2,0.3,nan,5,0.9", "rows.csv:2: y2 must be finite"),
    ("vid,0902,0.1,0.2,0.3,0.4,0,0.9", "rows.csv:2: action_id is 0"),
    ("vid,0902,0.1,0.2,0.3,0.4,x,0.9", "rows.csv:2: action_id must be an integer, found 'x'"),
    ("vid,0902,0.1,0.2,0.3,0.4,5,high", "rows.csv:2: score must be a number, found 'high'"),
    ("vid,0902,0.1,0.2,0.3,0.4", "rows.csv:2: expected 8 columns"),
    ("vid,0902", "a 2-column row is a keyframe without boxes"),
    (",0902,0.1,0.2,0.3,0.4,5,0.9", "rows.csv:2: video_id is empty"),
])
def test_bad_detection_rows_name_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path, "rows.csv", "vid,0902,0.1,0.2,0.3,0.4,5,0.9\n" + row + "\n")
    assert message in error_of(read_box_csv, path, scores=True, require_action=True)


def test_a_tiny_overshoot_of_the_unit_square_is_float_noise_not_an_error(tmp_path):
    path = write(tmp_path, "det.csv", "vid,0902,-0.0005,0.0,1.0004,1.0,5,0.9\n")
    assert read_box_csv(path, scores=True)[0].box == (-0.0005, 0.0, 1.0004, 1.0)  # kept, not clipped


def test_a_bad_person_id_names_the_field(tmp_path):
    path = write(tmp_path, "gt.csv", "vid,0902,0.1,0.2,0.3,0.4,5,p7\n")
    assert "gt.csv:1: person_id must be an integer, found 'p7'" in error_of(read_box_csv, path, scores=False)


# ----------------------------------------------------------------------------- excluded, proposals

def test_excluded_timestamps(tmp_path):
    path = write(tmp_path, "ava_val_excluded_timestamps_v2.2.csv", "-5KQ66BBWC4,0934\n-5KQ66BBWC4,1798\n")
    assert read_excluded(path) == {("-5KQ66BBWC4", 934), ("-5KQ66BBWC4", 1798)}
    bad = write(tmp_path, "ex.csv", "vid,0934\nvid,0935,0.1\n")
    assert "ex.csv:2: expected 2 columns (video_id, timestamp), found 3" in error_of(read_excluded, bad)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_the_proposals_pickle(tmp_path, protocol):
    boxes = np.array([[0.1, 0.2, 0.5, 0.9, 0.99], [0.5, 0.1, 0.9, 0.8, 0.8]], np.float64)
    path = tmp_path / "ava_dense_proposals_val.FAIR.recall_93.9.pkl"
    path.write_bytes(pickle.dumps({"-5KQ66BBWC4,0902": boxes, "-5KQ66BBWC4,0903": np.zeros((0, 5))},
                                  protocol=protocol))
    proposals = read_proposals(path)
    assert set(proposals) == {("-5KQ66BBWC4", 902), ("-5KQ66BBWC4", 903)}
    assert proposals[("-5KQ66BBWC4", 902)].dtype == np.float32
    np.testing.assert_array_equal(proposals[("-5KQ66BBWC4", 902)], boxes.astype(np.float32))
    assert proposals[("-5KQ66BBWC4", 903)].shape == (0, 5)


@pytest.mark.parametrize("content, message", [
    ({"vid,0902": np.array([[10.0, 20.0, 300.0, 200.0]])}, "key 'vid,0902': proposals must be a (P, 5) array"),
    ({"vid,0902": np.array([[10.0, 20.0, 300.0, 200.0, 0.9]])}, "key 'vid,0902' proposal 0: x1 = 10.0 is outside"),
    ({"vid-0902": np.zeros((0, 5))}, "key 'vid-0902': keys must be 'video_id,timestamp' strings"),
    ({"vid,09x2": np.zeros((0, 5))}, "key 'vid,09x2': timestamp (whole seconds) must be an integer"),
    ([1, 2], "expected a dict 'video_id,%04d' -> (P, 5) array, found list"),
])
def test_bad_proposal_pickles_name_the_key(tmp_path, content, message):
    path = tmp_path / "proposals.pkl"
    path.write_bytes(pickle.dumps(content))
    assert message in error_of(read_proposals, path)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def test_a_pickle_holding_anything_but_arrays_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "proposals.pkl"
    path.write_bytes(pickle.dumps({"vid,0902": _Payload(marker)}))
    assert "refusing to load builtins.exec" in error_of(read_proposals, path)
    assert not marker.exists()


def test_proposals_from_a_csv_merge_a_box_repeated_per_action(tmp_path):
    path = write(tmp_path, "proposals.csv", "vid,0902,0.1,0.2,0.5,0.9,3,0.4\nvid,0902,0.1,0.2,0.5,0.9,7,0.8\n"
                                            "vid,0902,0.5,0.2,0.9,0.9,,0.3\nvid,0903,0.1,0.1,0.2,0.2,0.6\n")
    proposals = read_proposals(path)
    np.testing.assert_array_equal(proposals[("vid", 902)],
                                  np.array([[0.1, 0.2, 0.5, 0.9, 0.8], [0.5, 0.2, 0.9, 0.9, 0.3]], np.float32))
    np.testing.assert_array_equal(proposals[("vid", 903)], np.array([[0.1, 0.1, 0.2, 0.2, 0.6]], np.float32))


# ----------------------------------------------------------------------------- detections writer

def test_written_detections_read_back_exactly(tmp_path):
    rows = [("vid_a", 902, np.float32(0.1), 0.2, np.float64(1 / 3), 0.9, np.int64(12), np.float32(0.7)),
            BoxRow("vid_b", 1798, (0.0, 0.0, 1.0, 1.0), 80, None, 1e-7)]
    path = tmp_path / "detections.csv"
    assert write_detections_csv(path, rows) == 2
    assert path.read_text().splitlines()[1] == "vid_b,1798,0.0,0.0,1.0,1.0,80,1e-07"
    back = read_box_csv(path, scores=True, require_action=True)
    assert back[0] == BoxRow("vid_a", 902, (float(np.float32(0.1)), 0.2, 1 / 3, 0.9), 12, None,
                             float(np.float32(0.7)))
    assert back[1] == rows[1]
    assert os.listdir(tmp_path) == ["detections.csv"]


@pytest.mark.parametrize("row, message", [
    (("vid", 902, 0.1, 0.2, 0.3, 0.4, 0, 0.9), "action_id must be a label map id >= 1, found 0"),
    (("vid", 902, 10.0, 20.0, 300.0, 200.0, 1, 0.9), "x1 = 10.0 is outside [0, 1]"),
    (("vid", 902, 0.1, 0.2, 0.3, 0.4, 1, float("inf")), "score must be finite"),
    (("v,id", 902, 0.1, 0.2, 0.3, 0.4, 1, 0.9), "holds a comma"),
    (("vid", 902.5, 0.1, 0.2, 0.3, 0.4, 1, 0.9), "timestamp must be a whole non-negative number"),
    (("vid", 902, 0.1, 0.2, 0.3, 0.4, 0.9), "found 7 values"),
])
def test_the_writer_refuses_what_the_reader_would(tmp_path, row, message):
    path = tmp_path / "detections.csv"
    assert message in error_of(write_detections_csv, path, [("vid", 902, 0.1, 0.2, 0.3, 0.4, 1, 0.9), row])
    assert "detection 1 for" in error_of(write_detections_csv, path, [("vid", 902, 0.1, 0.2, 0.3, 0.4, 1, 0.9), row])
    assert not path.exists()
