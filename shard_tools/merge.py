"""``mvd-shard merge DIR``: write the manifest of a folder the parts of an array job wrote.

Refuses, naming the part, while any part of the N is missing (no run of it wrote into DIR) or
unfinished (its resume state is there, its piece is not), when pieces come from different
commands, or when a piece's shard files are missing or have another size. Merging again is
harmless: the pieces stay, and the same manifest is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from shard_tools.ava import merge_detection
from shard_tools.manifest import write_manifest
from shard_tools.parts import PART_STATE_FILE, PIECE_FILE, Layout, Part, assemble_manifest
from shard_tools.state import load_state

# dataset -> how its parts' dataset fields combine (datasets without such fields need none)
FIELD_MERGERS: dict[str, Callable[[list[dict]], dict]] = {"ava": merge_detection}


class MergeError(ValueError):
    """The parts cannot be merged yet (or at all); the message names the part and the fix."""


def _found(out_dir: Path, pattern) -> dict[tuple[int, int], Path]:
    return {(int(m.group(1)), int(m.group(2))): p for p in out_dir.iterdir() if (m := pattern.match(p.name))}


def merge_parts(out_dir: Path) -> dict:
    """Assemble the N pieces in ``out_dir`` into ``manifest.json``; returns the manifest."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MergeError(f"{out_dir}: no such directory")
    pieces, states = _found(out_dir, PIECE_FILE), _found(out_dir, PART_STATE_FILE)
    counts = sorted({n for _, n in pieces} | {n for _, n in states})
    if not counts:
        raise MergeError(f"{out_dir} holds no parts of an array job (runs with --part I/N write them)")
    if len(counts) > 1:
        raise MergeError(f"{out_dir} holds parts of splits into {counts} parts; keep one split (the others are "
                         "another command's)")
    count = counts[0]
    loaded = []
    for index in range(count):
        part = Part(index, count)
        if (index, count) not in pieces:
            state = load_state(out_dir, Layout(part).state_name) if (index, count) in states else None
            if state is None:
                raise MergeError(f"part {index}/{count} is missing: no run of it wrote into {out_dir} "
                                 f"(run the command with --part {index}/{count})")
            raise MergeError(f"part {index}/{count} is unfinished ({len(state.shards)} shards done): run it again "
                             f"with --part {index}/{count}, it resumes")
        loaded.append(json.loads(pieces[(index, count)].read_text()))
    for index, piece in enumerate(loaded):
        if piece["plan"] != loaded[0]["plan"]:
            raise MergeError(f"part {index}/{count} was made by a different command than part 0/{count} "
                             "(inputs or options differ); re-run it with the same command")
        for shard in piece["shards"]:
            for name in (shard["name"], shard["index"]):
                if not (out_dir / name).is_file():
                    raise MergeError(f"part {index}/{count}: {name} is missing; run the part again, it resumes")
            if (out_dir / shard["name"]).stat().st_size != shard["bytes"]:
                raise MergeError(f"part {index}/{count}: {shard['name']} has another size than the part recorded; "
                                 "run the part again, it resumes")
    manifest = assemble_manifest(loaded, FIELD_MERGERS.get(loaded[0]["dataset"]))
    write_manifest(out_dir, manifest)
    return manifest
