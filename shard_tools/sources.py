"""Dataset adapters: Kinetics-400 CSV, Something-Something-v2 JSON, plain list files, and the
official UCF101 and HMDB51 split files.

Each adapter turns its dataset's own description into a :class:`SourceSet`: the class names in
index order, one :class:`SourceRecord` per video to pack, and a :class:`Rejection` for each entry
that cannot be packed before even opening the file (missing file, unknown label, malformed line).
Problems with the description files themselves raise :class:`SourceError` naming the file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shard_tools import rejections as rj
from shard_tools.class_lists import ClassList, ClassListError, kinetics400, read_class_list
from shard_tools.rejections import Rejection


class SourceError(ValueError):
    """A dataset description file (CSV, labels, annotations, list) is unusable."""


@dataclass(frozen=True)
class SourceRecord:
    """One video to pack.

    ``source`` is the path as the dataset names it (relative to the videos root when the file is
    under it); it goes into the sample's json and into rejections. ``prepare``, when set, is a
    picklable callable that writes the file at ``path`` first (the synthetic dataset and AVA's
    keyframe clips use it); such files are temporary and deleted once packed. It may raise
    :class:`shard_tools.rejections.Rejected` to reject the source. ``json_fields`` are added to
    the sample's json (AVA's ``"ava"`` annotation).
    """

    path: Path
    label: int
    label_name: str
    source: str
    prepare: Callable[[Path], None] | None = None
    json_fields: dict | None = None


@dataclass
class SourceSet:
    dataset: str  # kinetics | ssv2 | list | ucf101 | hmdb51 | synth | ava
    classes: list[str]
    records: list[SourceRecord]
    rejected: list[Rejection] = field(default_factory=list)
    class_list: dict = field(default_factory=dict)  # where ``classes`` came from (manifest "class_list")
    notes: list[str] = field(default_factory=list)  # advice for the user, printed by the CLI
    # prepares many records at once before packing (AVA: one decoding pass per movie), given the
    # records still to pack and build_shards' ordered map over its worker pool
    prepare_all: Callable[[list[SourceRecord], Callable], None] | None = None


def _display_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _index_videos(videos_dir: Path) -> dict[str, Path]:
    """Map each video file's stem to its path, searching ``videos_dir`` recursively.

    When several files share a stem, the first in sorted path order wins.
    """
    if not videos_dir.is_dir():
        raise SourceError(f"videos directory {videos_dir} does not exist")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(videos_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            stem = name.rsplit(".", 1)[0] if "." in name else name
            found.setdefault(stem, Path(dirpath) / name)
    return found


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SourceError(f"cannot read {what} {path}: {err.strerror}") from err


def _read_json(path: Path, what: str):
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as err:
        raise SourceError(f"{what} {path} is not valid JSON: {err}") from err


def kinetics_filename_stem(youtube_id: str, time_start: int, time_end: int) -> str:
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def kinetics_sources(videos_dir: Path, csv_path: Path, classes: ClassList | None = None) -> SourceSet:
    """Kinetics-400: CSV with columns ``label, youtube_id, time_start, time_end, split``.

    Files are ``<youtube_id>_<start:06d>_<end:06d>.<any extension>`` anywhere under
    ``videos_dir`` (flat or in per-class folders). With ``classes`` (e.g. the shipped official
    list, :func:`shard_tools.class_lists.kinetics400`) the indices are that list's, so a CSV with
    only some of the classes keeps the official indices; a CSV label missing from the list is an
    error. Without it, classes are the CSV's sorted unique label names (the standard K400 order
    when the CSV holds all 400 classes).
    """
    videos_dir, csv_path = Path(videos_dir), Path(csv_path)
    text = _read_text(csv_path, "Kinetics CSV")
    reader = csv.DictReader(text.splitlines())
    need = {"label", "youtube_id", "time_start", "time_end"}
    missing_cols = need - set(reader.fieldnames or [])
    if missing_cols:
        raise SourceError(
            f"Kinetics CSV {csv_path} lacks column(s) {sorted(missing_cols)}; "
            "expected label,youtube_id,time_start,time_end,split"
        )
    rows = list(reader)
    labels = sorted({row["label"].strip() for row in rows if (row["label"] or "").strip()})
    notes = []
    if classes is None:
        class_names, provenance = labels, {"source": "csv", "file": str(csv_path.resolve())}
        official = kinetics400()
        if len(labels) < len(official.names) and set(labels) <= set(official.names):
            notes.append(f"{csv_path.name} has {len(labels)} of the {len(official.names)} Kinetics-400 classes, "
                         f"so its class indices are not the official ones; pass --classes kinetics400 to keep them")
    else:
        class_names, provenance = list(classes.names), dict(classes.provenance)
        known = set(class_names)
        unknown = [name for name in labels if name not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise SourceError(f"Kinetics CSV {csv_path}: label {unknown[0]!r}{more} is not in the class list "
                              f"{provenance.get('file', provenance['source'])} ({len(class_names)} classes); "
                              f"fix the CSV or give the class list of this dataset with --classes FILE")
    class_index = {name: i for i, name in enumerate(class_names)}
    files = _index_videos(videos_dir)
    records, rejected = [], []
    for line_no, row in enumerate(rows, start=2):
        try:
            stem = kinetics_filename_stem(
                row["youtube_id"].strip(),
                int(float(row["time_start"])),
                int(float(row["time_end"])),
            )
        except (TypeError, ValueError, AttributeError):
            rejected.append(Rejection(f"{csv_path.name}:{line_no}", rj.reason(rj.MALFORMED, f"row {row}")))
            continue
        path = files.get(stem)
        where = _display_path(path, videos_dir) if path else stem
        _add_named_file(path, where, (row["label"] or "").strip(), class_index, records, rejected)
    return SourceSet("kinetics", class_names, records, rejected, provenance, notes)


def _add_named_file(path: Path | None, where: str, label_name: str, class_index: dict[str, int],
                    records: list[SourceRecord], rejected: list[Rejection]) -> None:
    """Append the video at ``path`` labelled by class name, or its rejection (``where`` names it).

    An unknown label is rejected first, then a file that was not found (``path`` None) as missing.
    """
    if label_name not in class_index:
        rejected.append(Rejection(where, rj.reason(rj.UNKNOWN_LABEL, repr(label_name))))
    elif path is None:
        rejected.append(Rejection(where, rj.MISSING))
    else:
        records.append(SourceRecord(path, class_index[label_name], label_name, where))


def ssv2_template_to_label(template: str) -> str:
    """SSv2 annotations carry ``"Putting [something] on [something]"``; labels.json drops the brackets."""
    return template.replace("[", "").replace("]", "")


def ssv2_sources(videos_dir: Path, labels_path: Path, annotations_path: Path) -> SourceSet:
    """Something-Something-v2: ``labels.json`` (name -> index) and an annotations list.

    Each annotation is ``{"id", "template", ...}``; the video is ``<id>.webm`` (any extension is
    accepted) under ``videos_dir``. Entries without a template (the test split) or whose template
    is not in labels.json are rejected as unknown labels.
    """
    videos_dir, labels_path, annotations_path = Path(videos_dir), Path(labels_path), Path(annotations_path)
    labels = _read_json(labels_path, "SSv2 labels")
    if not isinstance(labels, dict):
        raise SourceError(f"SSv2 labels {labels_path} must map label names to indices")
    try:
        by_index = sorted((int(v), k) for k, v in labels.items())
    except (TypeError, ValueError) as err:
        raise SourceError(f"SSv2 labels {labels_path}: indices must be integers ({err})") from err
    if [i for i, _ in by_index] != list(range(len(by_index))):
        raise SourceError(f"SSv2 labels {labels_path}: indices must be 0..{len(by_index) - 1} without gaps")
    classes = [name for _, name in by_index]
    class_index = {name: i for i, name in enumerate(classes)}
    provenance = {"source": "labels.json", "file": str(labels_path.resolve())}
    annotations = _read_json(annotations_path, "SSv2 annotations")
    if not isinstance(annotations, list):
        raise SourceError(f"SSv2 annotations {annotations_path} must be a JSON list of objects")
    files = _index_videos(videos_dir)
    records, rejected = [], []
    for n, item in enumerate(annotations):
        if not isinstance(item, dict) or "id" not in item:
            rejected.append(Rejection(f"{annotations_path.name}[{n}]", rj.reason(rj.MALFORMED, "no 'id'")))
            continue
        vid = str(item["id"])
        path = files.get(vid)
        where = _display_path(path, videos_dir) if path else f"{vid}.webm"
        label_name = ssv2_template_to_label(str(item.get("template", "")))
        _add_named_file(path, where, label_name, class_index, records, rejected)
    return SourceSet("ssv2", classes, records, rejected, provenance)


def list_sources(root: Path, list_path: Path, classes_path: Path | str | None = None) -> SourceSet:
    """A list file: one ``relative/path label_index`` per line (VideoMAE / UCF101 / HMDB51 style).

    Paths may contain spaces (the label is the last field). Blank lines and ``#`` comments are
    skipped. Class names come from ``classes_path`` (one per line, in index order, or the name of
    a shipped list such as ``kinetics400``) when given, else they are the indices as text,
    ``"0" .. str(max label)``.
    """
    root, list_path = Path(root), Path(list_path)
    if not root.is_dir():
        raise SourceError(f"root directory {root} does not exist")
    classes: list[str] | None = None
    provenance = {"source": "list indices", "file": str(list_path.resolve())}
    if classes_path is not None:
        try:
            class_list = read_class_list(classes_path)
        except ClassListError as err:
            raise SourceError(str(err)) from None
        classes, provenance = class_list.names, class_list.provenance
    entries, rejected = [], []
    for line_no, line in enumerate(_read_text(list_path, "list file").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            rejected.append(Rejection(f"{list_path.name}:{line_no}", rj.reason(rj.MALFORMED, repr(line))))
            continue
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            label = -1
        entries.append((rel, label, label_text))
    if classes is None:
        top = max((label for _, label, _ in entries), default=-1)
        classes = [str(i) for i in range(top + 1)]
    records = []
    for rel, label, label_text in entries:
        _add_labelled_file(root, rel, label, classes, repr(label_text), records, rejected)
    return SourceSet("list", classes, records, rejected, provenance)


def _add_labelled_file(root: Path, rel: str, label: int, classes: list[str], label_detail: str,
                       records: list[SourceRecord], rejected: list[Rejection]) -> None:
    """Append ``root/rel`` with 0-based ``label`` to ``records``, or its rejection to ``rejected``.

    A label outside ``classes`` is rejected as unknown (``label_detail`` says which label and
    where), then a file that is not there as missing.
    """
    path = root / rel
    if not 0 <= label < len(classes):
        rejected.append(Rejection(rel, rj.reason(rj.UNKNOWN_LABEL, label_detail)))
    elif not path.is_file():
        rejected.append(Rejection(rel, rj.MISSING))
    else:
        records.append(SourceRecord(path, label, classes[label], rel))


def _numbered_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """The non-blank lines of a text file, stripped (CRLF too), with their 1-based line numbers.

    No comment syntax: official split files have none, and HMDB51 names start with ``#``.
    """
    lines = enumerate(_read_text(path, what).splitlines(), start=1)
    return [(line_no, line.strip()) for line_no, line in lines if line.strip()]


def ucf101_classes(class_index_path: Path) -> list[str]:
    """UCF101 ``classInd.txt``: lines ``<1-based index> <ClassName>``; the names in index order."""
    class_index_path = Path(class_index_path)
    entries: dict[int, str] = {}
    for line_no, line in _numbered_lines(class_index_path, "UCF101 class index"):
        where = f"UCF101 class index {class_index_path}:{line_no}"
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SourceError(f"{where}: expected '<1-based index> <ClassName>', got {line!r}")
        index, name = int(parts[0]), parts[1]
        if index in entries:
            raise SourceError(f"{where}: index {index} appears twice")
        if name in entries.values():
            raise SourceError(f"{where}: class {name!r} appears twice")
        entries[index] = name
    if not entries:
        raise SourceError(f"UCF101 class index {class_index_path} lists no classes")
    if 0 in entries:
        raise SourceError(f"UCF101 class index {class_index_path}: index 0 found, but indices are 1-based")
    gaps = sorted(set(range(1, max(entries) + 1)) - set(entries))
    if gaps:
        raise SourceError(f"UCF101 class index {class_index_path}: indices must be 1..{len(entries)} "
                          f"without gaps; missing {gaps[:5]}")
    return [entries[i] for i in sorted(entries)]


def ucf101_sources(videos_dir: Path, class_index_path: Path, split_path: Path) -> SourceSet:
    """UCF101 from ``classInd.txt`` and one official list, ``trainlist0N.txt`` or ``testlist0N.txt``.

    Train lines are ``<Class>/<video>.avi <1-based label>``; test lines are ``<Class>/<video>.avi``
    and take their class from the directory name, looked up in classInd.txt. Paths are relative
    to ``videos_dir``. Classes are in classInd order, 0-based in the shards.
    """
    videos_dir, split_path = Path(videos_dir), Path(split_path)
    if not videos_dir.is_dir():
        raise SourceError(f"videos directory {videos_dir} does not exist")
    classes = ucf101_classes(class_index_path)
    class_index = {name: i for i, name in enumerate(classes)}
    index_name = Path(class_index_path).name
    records: list[SourceRecord] = []
    rejected: list[Rejection] = []
    for line_no, line in _numbered_lines(split_path, "UCF101 split file"):
        where = f"{split_path.name}:{line_no}"
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            rel, label = parts[0], int(parts[1]) - 1
            detail = f"label {parts[1]} outside 1..{len(classes)} of {index_name} ({where})"
        elif len(parts) == 1:
            rel = parts[0]
            class_name = rel.split("/")[0] if "/" in rel else None
            label = class_index.get(class_name, -1)
            detail = (f"class directory {class_name!r} not in {index_name} ({where})" if class_name is not None
                      else f"no <Class>/ directory in the path to take the class from ({where})")
        else:
            rejected.append(Rejection(where, rj.reason(
                rj.MALFORMED, f"expected '<Class>/<video> [<1-based label>]', got {line!r}")))
            continue
        _add_labelled_file(videos_dir, rel, label, classes, detail, records, rejected)
    provenance = {"source": "classInd", "file": str(Path(class_index_path).resolve())}
    return SourceSet("ucf101", classes, records, rejected, provenance)


HMDB51_SUBSETS = {"train": 1, "test": 2}  # the id each split line carries; 0 = not used in that split
_HMDB51_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")


def hmdb51_sources(videos_dir: Path, splits_dir: Path, split: int, subset: str) -> SourceSet:
    """HMDB51 from its folder of per-class split files ``<class>_test_split{1,2,3}.txt``.

    Each line is ``<video>.avi <id>`` with id 1 = train, 2 = test, 0 = unused in that split; the
    lines of ``subset`` are packed from ``videos_dir/<class>/<video>.avi``. Classes are the sorted
    class names (the usual HMDB51 order).
    """
    videos_dir, splits_dir = Path(videos_dir), Path(splits_dir)
    if subset not in HMDB51_SUBSETS:
        raise SourceError(f"HMDB51 subset must be one of {sorted(HMDB51_SUBSETS)}, got {subset!r}")
    if not videos_dir.is_dir():
        raise SourceError(f"videos directory {videos_dir} does not exist")
    if not splits_dir.is_dir():
        raise SourceError(f"HMDB51 splits directory {splits_dir} does not exist")
    split_files = {}
    for path in splits_dir.iterdir():
        match = _HMDB51_SPLIT_FILE.match(path.name)
        if match and int(match["split"]) == split:
            split_files[match["cls"]] = path
    if not split_files:
        raise SourceError(f"HMDB51 splits directory {splits_dir} has no <class>_test_split{split}.txt files")
    classes = sorted(split_files)
    wanted = HMDB51_SUBSETS[subset]
    records: list[SourceRecord] = []
    rejected: list[Rejection] = []
    for label, class_name in enumerate(classes):
        split_path = split_files[class_name]
        for line_no, line in _numbered_lines(split_path, "HMDB51 split file"):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                rejected.append(Rejection(f"{split_path.name}:{line_no}", rj.reason(
                    rj.MALFORMED, f"expected '<video>.avi <0|1|2>', got {line!r}")))
            elif int(parts[1]) == wanted:
                _add_labelled_file(videos_dir, f"{class_name}/{parts[0]}", label, classes, "", records, rejected)
    provenance = {"source": "split file names", "file": str(splits_dir.resolve())}
    return SourceSet("hmdb51", classes, records, rejected, provenance)
