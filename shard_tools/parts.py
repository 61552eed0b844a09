"""Sharding as an array job: ``--part I/N`` runs one of N parts into a folder the parts share.

Every part lists the whole input, gives it the same keys and the same seeded order as one whole
run would, and packs the I-th of N contiguous slices of that order (:meth:`Part.positions`), so
the parts together pack exactly the whole run's samples in the whole run's order. A part keeps
its own files (:class:`Layout`: ``shard-<I>of<N>-<n>.tar``, its resume state, its work folder),
so parts may run at the same time; once complete it writes ``.mvd-shard-part.<I>of<N>.json``, a
*piece*: its shards, rejections, stream summary and dataset fields. ``mvd-shard merge DIR``
(:mod:`shard_tools.merge`) assembles the pieces into ``manifest.json`` with
:func:`assemble_manifest`, the same function a whole run's manifest is made by, so a merged
folder lists the same samples, labels, classes and rejections as one whole run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shard_tools.manifest import make_manifest
from shard_tools.state import STATE_NAME
from shard_tools.streams import merge_summaries
from shard_tools.writer import shard_name

WORK_DIR_NAME = ".work"  # temporary files (re-encoded and synthetic videos) inside the output dir
PIECE_FILE = re.compile(r"^\.mvd-shard-part\.(\d+)of(\d+)\.json$")
PART_STATE_FILE = re.compile(r"^\.mvd-shard-state\.(\d+)of(\d+)\.json$")
_PART_TEXT = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based, as Slurm's ``$SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1``) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index}/{self.count}: need 0 <= I < N (I is 0-based)")

    @classmethod
    def parse(cls, text: str) -> Part:
        """``"I/N"`` -> Part(I, N)."""
        found = _PART_TEXT.match(text.strip())
        if not found:
            raise ValueError(f"--part {text!r}: expected I/N, e.g. 0/8 (I from 0 to N-1)")
        return cls(int(found.group(1)), int(found.group(2)))

    @property
    def tag(self) -> str:
        return f"{self.index}of{self.count}"

    def positions(self, total: int) -> range:
        """This part's contiguous slice of the ``total`` positions of the shuffled order."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)


@dataclass(frozen=True)
class Layout:
    """The names one run (a whole run, or one part) owns inside the output folder."""

    part: Part | None = None

    def shard_name(self, n: int) -> str:
        return shard_name(n) if self.part is None else f"shard-{self.part.tag}-{n:06d}.tar"

    @property
    def shard_file(self) -> re.Pattern:
        middle = "" if self.part is None else re.escape(f"{self.part.tag}-")
        return re.compile(rf"^shard-{middle}\d{{6}}\.(tar|idx)$")

    @property
    def state_name(self) -> str:
        return STATE_NAME if self.part is None else f".mvd-shard-state.{self.part.tag}.json"

    @property
    def piece_name(self) -> str | None:
        return None if self.part is None else f".mvd-shard-part.{self.part.tag}.json"

    def work_dir(self, out_dir: Path) -> Path:
        root = Path(out_dir) / WORK_DIR_NAME
        return root if self.part is None else root / self.part.tag

    def positions(self, total: int) -> range:
        return range(total) if self.part is None else self.part.positions(total)


def assemble_manifest(pieces: list[dict],
                      merge_fields: Callable[[list[dict]], dict] | None = None) -> dict:
    """The manifest of a folder from its pieces (one for a whole run, N for an array job), in
    order; ``merge_fields`` combines the pieces' dataset fields (AVA's detection counts)."""
    first = pieces[0]
    shards = [s for p in pieces for s in p["shards"]]
    rejected = list(first["source_rejected"]) + [r for p in pieces for r in p["rejected"]]
    manifest = make_manifest(first["dataset"], first["classes"], shards, rejected, first["options"],
                             first["class_list"])
    manifest["streams"] = {"target": first["target"], **merge_summaries([p["streams"] for p in pieces])}
    fields = [p["fields"] for p in pieces]
    if len(pieces) == 1 or not any(fields):
        extra = fields[0]
    elif merge_fields is None:
        raise ValueError(f"the {first['dataset']} parts carry dataset fields {sorted(fields[0])} "
                         "that no merger combines")
    else:
        extra = merge_fields(fields)
    clash = sorted(set(extra) & set(manifest))
    if clash:
        raise ValueError(f"dataset manifest fields {clash} would replace standard fields")
    manifest.update(extra)
    return manifest
