"""Class lists: the official lists shipped with mvd-shard, user files, and where a list came from.

A class list file holds one class name per line, in index order (blank lines are skipped, names
are stripped). ``--classes`` takes such a file or the name of a shipped list:

- ``kinetics400``: the 400 Kinetics-400 classes as the official annotation CSVs spell them,
  sorted (the order every K400 release and model uses; ``data/kinetics400_classes.txt``).

Every adapter records the list's provenance (``ClassList.provenance``), which lands in the
manifest's ``class_list`` field, so a shard directory says where its indices came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED = {"kinetics400": DATA_DIR / "kinetics400_classes.txt"}


class ClassListError(ValueError):
    """A class list file is unusable (unreadable, empty, or names a class twice)."""


@dataclass(frozen=True)
class ClassList:
    names: list[str]
    provenance: dict  # {"source": ..., "file": ..., "sha256": ...}: what the manifest records


def parse_class_names(text: str, where: str) -> list[str]:
    """One name per line (stripped, blank lines skipped); a name given twice is an error."""
    names, seen = [], {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise ClassListError(f"class list {where}: {name!r} on line {line_no} already on line {seen[name]}")
        seen[name] = line_no
        names.append(name)
    if not names:
        raise ClassListError(f"class list {where} names no classes")
    return names


def read_class_list(file_or_name: str | Path) -> ClassList:
    """A class list file, or a shipped list by name (``kinetics400``); an existing file wins."""
    path = Path(file_or_name)
    shipped = str(file_or_name) in SHIPPED and not path.exists()
    if shipped:
        path = SHIPPED[str(file_or_name)]
    try:
        data = path.read_bytes()
    except OSError as err:
        names = ", ".join(sorted(SHIPPED))
        raise ClassListError(f"cannot read class list {path}: {err.strerror} (give a file with one class "
                             f"name per line, or a shipped list: {names})") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ClassListError(f"class list {path} is not UTF-8 text ({err})") from err
    names = parse_class_names(text, str(path))
    provenance = {"source": str(file_or_name) if shipped else "file", "file": str(path.resolve()),
                  "sha256": hashlib.sha256(data).hexdigest()}
    return ClassList(names, provenance)


def kinetics400() -> ClassList:
    """The official Kinetics-400 list shipped with mvd-shard."""
    return read_class_list("kinetics400")
