"""AVA v2.2 annotation files: label maps, box CSVs, excluded timestamps, person proposals.

Every reader validates as it parses and raises :class:`AvaFileError` naming ``file:line`` (or the
pickle key) and the field, so a wrong column order or a pixel-coordinate file stops at the row
that shows it. The files, as the AVA release spells them:

- label map (``ava_action_list_v2.2.pbtxt``, ``..._for_activitynet_2019.pbtxt``): protobuf text,
  ``label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }`` blocks
  (the ActivityNet lists spell them ``item { name: ... id: ... }``), one field a line or all on one.
- box CSVs, no header, boxes normalised x1,y1,x2,y2 in [0, 1]:
  ground truth ``video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]``, one row per
  (box, action); detections ``video_id, timestamp, x1, y1, x2, y2, action_id, score``; proposals
  ``video_id, timestamp, x1, y1, x2, y2[, action_id], score`` (an empty action_id field, as in
  SlowFast's ``ava_val_predicted_boxes.csv``, reads as none).
- excluded timestamps: ``video_id, timestamp``.
- proposals pickle (``ava_dense_proposals_val.FAIR.recall_93.9.pkl``): ``{"video_id,%04d": (P, 5)
  array x1,y1,x2,y2,score}``, normalised.

Box rules follow the official ActivityNet evaluator: a ground-truth box with x2 < x1 or y2 < y1
is an error (the official code refuses it with "Invalid box data"; zero width or height is
accepted, as there), while a detection or proposal box in any corner order is read as given,
because the evaluator drops degenerate detections (x1 >= x2 or y1 >= y2) and counts them.
Coordinates outside [0, 1] by more than ``BOX_TOLERANCE`` are errors (pixel boxes); values are
kept exactly as written, never clipped.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOX_TOLERANCE = 1e-3  # normalised coordinates may overshoot [0, 1] by float noise, not more
LABEL_ID_FIELDS = ("id", "label_id")  # the ActivityNet lists say id, the AVA release label_id
IGNORED_LABEL_FIELDS = ("label_type", "display_name")


class AvaFileError(ValueError):
    """An AVA annotation file is unusable; the message names file:line (or key) and the field."""


@dataclass(frozen=True)
class BoxRow:
    """One row of a box CSV. ``person_id`` only in ground truth, ``score`` only in detections and
    proposals; ``action_id`` is None only for a proposal row without one."""

    video_id: str
    timestamp: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, normalised
    action_id: int | None
    person_id: int | None
    score: float | None


# ----------------------------------------------------------------------------- label map

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\\n]|\\.)*")|([{}:])|([^\s{}:"#]+))')


def _pbtxt_tokens(text: str, path: Path):
    """(kind, value, line) for each token: kind in {"str", "punct", "word"}; comments dropped."""
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            rest = text[pos:].lstrip()
            if not rest:
                return
            line += text[pos:len(text) - len(rest)].count("\n")
            raise AvaFileError(f"{path}:{line}: cannot parse label map text {rest[:20]!r}")
        line += text[pos:m.start(m.lastindex)].count("\n")
        comment, string, punct, word = m.groups()
        if string is not None:
            yield "str", re.sub(r"\\(.)", r"\1", string[1:-1]), line
        elif punct is not None:
            yield "punct", punct, line
        elif word is not None:
            yield "word", word, line
        pos = m.end()


def read_label_map(path: str | Path) -> dict[int, str]:
    """Action id -> name, in file order. Blocks may be called ``label`` or ``item``, the id field
    ``id`` or ``label_id``; ``label_type`` / ``display_name`` are ignored. Duplicate ids, ids < 1,
    a block without name or id, and unknown fields are errors."""
    path = Path(path)
    text = _read_text(path, "label map")
    tokens = list(_pbtxt_tokens(text, path))
    labels: dict[int, str] = {}
    first_line: dict[int, int] = {}
    i = 0

    def expect(kind: str, value: str | None, what: str):
        nonlocal i
        if i >= len(tokens):
            last = tokens[-1][2] if tokens else 1
            raise AvaFileError(f"{path}:{last}: label map ends inside a block (expected {what})")
        tok = tokens[i]
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise AvaFileError(f"{path}:{tok[2]}: expected {what}, found {tok[1]!r}")
        i += 1
        return tok

    while i < len(tokens):
        _, block, block_line = expect("word", None, "a 'label {' or 'item {' block")
        if block not in ("label", "item"):
            raise AvaFileError(f"{path}:{block_line}: expected a 'label {{' or 'item {{' block, found {block!r}")
        expect("punct", "{", f"'{{' after {block!r}")
        name, class_id = None, None
        while i < len(tokens) and tokens[i][1] != "}":
            _, field, field_line = expect("word", None, "a field name or '}'")
            expect("punct", ":", f"':' after {field!r}")
            if i >= len(tokens):
                raise AvaFileError(f"{path}:{field_line}: field {field!r} has no value")
            kind, value, value_line = tokens[i]
            i += 1
            if field == "name":
                if kind != "str":
                    raise AvaFileError(f"{path}:{value_line}: field 'name' must be a quoted string, found {value!r}")
                name = value
            elif field in LABEL_ID_FIELDS:
                if kind != "word" or not re.fullmatch(r"[+-]?\d+", value):
                    raise AvaFileError(f"{path}:{value_line}: field {field!r} must be an integer, found {value!r}")
                class_id = int(value)
                if class_id < 1:
                    raise AvaFileError(f"{path}:{value_line}: field {field!r} is {class_id}; AVA action ids "
                                       "start at 1")
                id_line = value_line
            elif field in IGNORED_LABEL_FIELDS:
                if kind == "punct":
                    raise AvaFileError(f"{path}:{value_line}: field {field!r} has no value")
            else:
                raise AvaFileError(f"{path}:{field_line}: unknown label map field {field!r} (known: name, "
                                   f"{', '.join(LABEL_ID_FIELDS + IGNORED_LABEL_FIELDS)})")
        expect("punct", "}", f"'}}' closing the block opened on line {block_line}")
        if name is None or class_id is None:
            missing = "name" if name is None else "id"
            raise AvaFileError(f"{path}:{block_line}: label map block has no {missing}")
        if class_id in labels:
            raise AvaFileError(f"{path}:{id_line}: action id {class_id} already defined on line "
                               f"{first_line[class_id]}")
        labels[class_id] = name
        first_line[class_id] = id_line
    if not labels:
        raise AvaFileError(f"{path}: label map defines no classes")
    return labels


# ----------------------------------------------------------------------------- CSV fields

def _read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AvaFileError(f"cannot read {what} {path}: {err.strerror}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AvaFileError(f"{what} {path} is not UTF-8 text ({err})") from err


def _csv_rows(path: Path, what: str):
    """(line, [stripped fields]) for each non-blank row."""
    text = _read_text(path, what)
    reader = csv.reader(text.splitlines())
    for row in reader:
        if not row or all(not f.strip() for f in row):
            continue
        yield reader.line_num, [f.strip() for f in row]


def _int_field(value: str, where: str, field: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", value):
        raise AvaFileError(f"{where}: {field} must be an integer, found {value!r}")
    return int(value)


def _float_field(value: str, where: str, field: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise AvaFileError(f"{where}: {field} must be a number, found {value!r}") from None
    if not math.isfinite(number):
        raise AvaFileError(f"{where}: {field} must be finite, found {value!r}")
    return number


def _video_id(value: str, where: str) -> str:
    if not value:
        raise AvaFileError(f"{where}: video_id is empty")
    return value


def _timestamp(value: str, where: str) -> int:
    ts = _int_field(value, where, "timestamp (whole seconds)")
    if ts < 0:
        raise AvaFileError(f"{where}: timestamp is negative ({ts})")
    return ts


def _action_id(value: str, where: str) -> int:
    action = _int_field(value, where, "action_id")
    if action < 1:
        raise AvaFileError(f"{where}: action_id is {action}; AVA action ids are the label map's ids, from 1 "
                           "(a 0-based class index written instead?)")
    return action


def check_box(box: Iterable[float], where: str, *, ordered: bool) -> tuple[float, float, float, float]:
    """A normalised x1,y1,x2,y2 box: finite, inside [0, 1] up to ``BOX_TOLERANCE``; with ``ordered``
    (ground truth) also x1 <= x2 and y1 <= y2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    for field, v in zip(("x1", "y1", "x2", "y2"), (x1, y1, x2, y2)):
        if not math.isfinite(v):
            raise AvaFileError(f"{where}: {field} must be finite, found {v!r}")
        if v < -BOX_TOLERANCE or v > 1 + BOX_TOLERANCE:
            raise AvaFileError(f"{where}: {field} = {v!r} is outside [0, 1]; AVA boxes are normalised by the "
                               "frame size (pixel coordinates?)")
    if ordered and (x2 < x1 or y2 < y1):
        raise AvaFileError(f"{where}: box x1,y1,x2,y2 = {x1!r},{y1!r},{x2!r},{y2!r} has x2 < x1 or y2 < y1")
    return x1, y1, x2, y2


def _box(fields: list[str], where: str, *, ordered: bool) -> tuple[float, float, float, float]:
    values = [_float_field(v, where, name) for v, name in zip(fields, ("x1", "y1", "x2", "y2"))]
    return check_box(values, where, ordered=ordered)


# ----------------------------------------------------------------------------- readers

def read_box_csv(path: str | Path, *, scores: bool, require_action: bool = False) -> list[BoxRow]:
    """The rows of a box CSV, in file order.

    ``scores=False`` (ground truth): 7 columns, or 8 with the person id last.
    ``scores=True`` (detections, proposals): 8 columns with the score last, or 7 without an
    action id; an empty action_id field reads as None. ``require_action`` (detections) makes a
    missing action id an error.
    """
    path = Path(path)
    what = "box CSV" if scores else "ground-truth CSV"
    rows = []
    for line, fields in _csv_rows(path, what):
        where = f"{path}:{line}"
        if scores:
            expected = (8,) if require_action else (7, 8)
            layout = ("video_id, timestamp, x1, y1, x2, y2, action_id, score" if require_action else
                      "video_id, timestamp, x1, y1, x2, y2, [action_id,] score")
        else:
            expected = (7, 8)
            layout = "video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]"
        if len(fields) not in expected:
            hint = (" (a 2-column row is a keyframe without boxes, which this reader does not take)"
                    if len(fields) == 2 else "")
            raise AvaFileError(f"{where}: expected {' or '.join(map(str, expected))} columns ({layout}), "
                               f"found {len(fields)}{hint}")
        video_id = _video_id(fields[0], where)
        timestamp = _timestamp(fields[1], where)
        box = _box(fields[2:6], where, ordered=not scores)
        person_id, score, action_id = None, None, None
        if scores:
            score = _float_field(fields[-1], where, "score")
            if len(fields) == 8 and fields[6] != "":
                action_id = _action_id(fields[6], where)
            elif require_action:
                raise AvaFileError(f"{where}: action_id is empty; detections need the label map id")
        else:
            action_id = _action_id(fields[6], where)
            if len(fields) == 8 and fields[7] != "":
                person_id = _int_field(fields[7], where, "person_id")
        rows.append(BoxRow(video_id, timestamp, box, action_id, person_id, score))
    return rows


def read_excluded(path: str | Path) -> set[tuple[str, int]]:
    """``(video_id, timestamp)`` pairs of an excluded-timestamps CSV."""
    path = Path(path)
    excluded = set()
    for line, fields in _csv_rows(path, "excluded timestamps CSV"):
        where = f"{path}:{line}"
        if len(fields) != 2:
            raise AvaFileError(f"{where}: expected 2 columns (video_id, timestamp), found {len(fields)}")
        excluded.add((_video_id(fields[0], where), _timestamp(fields[1], where)))
    return excluded


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a proposals file is data, and pickle can
    run arbitrary code, so only the classes numpy's array pickles name are allowed."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"), ("_codecs", "encode"),
        ("builtins", "bytes"), ("__builtin__", "bytes"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a proposals pickle holds a dict "
                                         "of numpy arrays only)")
        return super().find_class(module, name)


def _proposals_array(value, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.size == 0:
        return np.zeros((0, 5), np.float32)
    if array.ndim != 2 or array.shape[1] != 5:
        hint = (" (4 columns: boxes without scores, often in pixels; convert to normalised x1,y1,x2,y2,score)"
                if array.ndim == 2 and array.shape[1] == 4 else "")
        raise AvaFileError(f"{where}: proposals must be a (P, 5) array x1,y1,x2,y2,score, found shape "
                           f"{array.shape}{hint}")
    if not np.issubdtype(array.dtype, np.number):
        raise AvaFileError(f"{where}: proposals must be numbers, found dtype {array.dtype}")
    array = array.astype(np.float64)
    for p, row in enumerate(array):
        check_box(row[:4], f"{where} proposal {p}", ordered=False)
        if not math.isfinite(row[4]):
            raise AvaFileError(f"{where} proposal {p}: score must be finite, found {row[4]!r}")
    return array.astype(np.float32)


def _read_proposals_pickle(path: Path) -> dict[tuple[str, int], np.ndarray]:
    try:
        with open(path, "rb") as f:
            # latin1: the FAIR file is a Python 2 pickle of numpy arrays (py3 pickles are unaffected)
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as err:
        raise AvaFileError(f"cannot read proposals {path}: {err.strerror}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise AvaFileError(f"proposals {path} is not a readable pickle of numpy arrays ({err})") from err
    if not isinstance(data, dict):
        raise AvaFileError(f"proposals {path}: expected a dict 'video_id,%04d' -> (P, 5) array, found "
                           f"{type(data).__name__}")
    proposals = {}
    for key, value in data.items():
        where = f"{path} key {key!r}"
        if not isinstance(key, str) or "," not in key:
            raise AvaFileError(f"{where}: keys must be 'video_id,timestamp' strings")
        video_id, ts = key.rsplit(",", 1)
        proposals[(_video_id(video_id.strip(), where), _timestamp(ts.strip(), where))] = \
            _proposals_array(value, where)
    return proposals


def _read_proposals_csv(path: Path) -> dict[tuple[str, int], np.ndarray]:
    # A CSV with action ids repeats a box once per action: identical boxes of a keyframe are one
    # proposal, with the highest score given to it.
    boxes: dict[tuple[str, int], dict[tuple[float, ...], float]] = {}
    for row in read_box_csv(path, scores=True):
        per_key = boxes.setdefault((row.video_id, row.timestamp), {})
        per_key[row.box] = max(row.score, per_key.get(row.box, -math.inf))
    return {key: np.array([(*box, score) for box, score in per_key.items()], np.float32).reshape(-1, 5)
            for key, per_key in boxes.items()}


def read_proposals(path: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """Person proposals per keyframe, ``(video_id, timestamp) -> (P, 5) float32`` x1,y1,x2,y2,score
    normalised: a ``.pkl`` (``{"video_id,%04d": array}``) or a CSV (see :func:`read_box_csv`)."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        return _read_proposals_pickle(path)
    return _read_proposals_csv(path)


# ----------------------------------------------------------------------------- writer

def write_detections_csv(path: str | Path, rows: Iterable) -> int:
    """Write the detections CSV the evaluator reads: rows of (video_id, timestamp, x1, y1, x2, y2,
    action_id, score) or :class:`BoxRow`. Values are validated as the reader would and written
    exactly (shortest round-trip floats); the file appears atomically. Returns the row count."""
    path = Path(path)
    lines = []
    for n, row in enumerate(rows):
        if isinstance(row, BoxRow):
            row = (row.video_id, row.timestamp, *row.box, row.action_id, row.score)
        where = f"detection {n} for {path}"
        if len(row) != 8:
            raise AvaFileError(f"{where}: expected (video_id, timestamp, x1, y1, x2, y2, action_id, score), "
                               f"found {len(row)} values")
        video_id, timestamp, *box, action_id, score = row
        video_id = str(video_id)
        if not video_id or "," in video_id or "\n" in video_id:
            raise AvaFileError(f"{where}: video_id {video_id!r} is empty or holds a comma or newline")
        if int(timestamp) != timestamp or timestamp < 0:
            raise AvaFileError(f"{where}: timestamp must be a whole non-negative number, found {timestamp!r}")
        if action_id is None or int(action_id) != action_id or action_id < 1:
            raise AvaFileError(f"{where}: action_id must be a label map id >= 1, found {action_id!r}")
        box = check_box(box, where, ordered=False)
        score = float(score)
        if not math.isfinite(score):
            raise AvaFileError(f"{where}: score must be finite, found {score!r}")
        lines.append(f"{video_id},{int(timestamp):04d},{','.join(repr(v) for v in box)},{int(action_id)},"
                     f"{score!r}\n")
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines)
