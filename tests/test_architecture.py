"""ARCHITECTURE.md's module tables against the files: every module they name exists, every
shipped module is named, once, so the doc cannot silently go stale."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from tests.import_graph import PACKAGES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def module_rows(text: str) -> list[str]:
    """The first cell of every row of every table whose header's first column is "module"."""
    rows, in_table = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        if not in_table:
            in_table = line.split("|")[1].strip() == "module"
            continue
        m = ROW.match(line)
        if m:
            rows.append(m.group(1))
    return rows


def is_marker(path: Path) -> bool:
    """An ``__init__.py`` that holds nothing but (at most) a docstring: it only marks a package."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def shipped_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for folder, dirs, files in os.walk(ROOT / package):  # symbolic links are not followed
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                path = Path(folder) / name
                if name.endswith(".py") and not is_marker(path):
                    found.add(path.relative_to(ROOT).as_posix())
    return found


def test_module_rows_are_found():
    rows = module_rows("| module | job |\n| --- | --- |\n| `a/b.py` | x |\n\n| decision | owner |\n"
                       "| --- | --- |\n| `c/d.py` | y |\n")
    assert rows == ["a/b.py"]


def test_architecture_names_every_shipped_module_and_only_existing_ones():
    rows = module_rows(DOC.read_text())
    assert len(rows) == len(set(rows)), sorted({r for r in rows if rows.count(r) > 1})
    missing_files = sorted(r for r in rows if not (ROOT / r).is_file())
    assert not missing_files, f"ARCHITECTURE.md names modules that do not exist: {missing_files}"
    unnamed = sorted(shipped_modules() - set(rows))
    assert not unnamed, f"modules missing from ARCHITECTURE.md's module tables: {unnamed}"


def test_architecture_refers_to_nothing_outside_the_repository():
    text = DOC.read_text()
    assert "../" not in text
    assert "shared/" not in text
