"""Resume state of a sharding run: ``DIR/.mvd-shard-state.json``.

Records, for each finished shard, its file facts (size, sha256 of tar and index) and where in
the shuffled source order the next shard starts, so that re-running the same command skips the
probing/re-encoding of finished shards. A ``fingerprint`` of the inputs and options guards
against resuming a different command into the same directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shard_tools.sample import FORMAT
from shard_tools.writer import atomic_write_bytes, sha256_file

STATE_NAME = ".mvd-shard-state.json"


@dataclass
class FinishedShard:
    name: str
    index: str
    samples: int
    bytes: int
    sha256: str
    index_sha256: str
    next_source: int  # position in the shuffled order where the next shard starts
    codecs: dict[str, int]
    rejected: list[dict]  # probe-time rejections met while filling this shard
    streams: dict = field(default_factory=dict)  # its samples' stream summary (shard_tools.streams)


@dataclass
class RunState:
    fingerprint: str
    shards: list[FinishedShard] = field(default_factory=list)
    complete: bool = False
    tail_rejected: list[dict] = field(default_factory=list)  # rejections after the last shard

    @property
    def next_source(self) -> int:
        return self.shards[-1].next_source if self.shards else 0

    def save(self, out_dir: Path, name: str = STATE_NAME) -> None:
        """Write the state as ``out_dir/name`` (a part of an array job has its own name)."""
        data = {"format": FORMAT, **asdict(self)}
        atomic_write_bytes(Path(out_dir) / name, (json.dumps(data, indent=1) + "\n").encode())


def load_state(out_dir: Path, name: str = STATE_NAME) -> RunState | None:
    path = Path(out_dir) / name
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        shards = [FinishedShard(**s) for s in data["shards"]]
        return RunState(data["fingerprint"], shards, bool(data["complete"]), list(data["tail_rejected"]))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable state: start over


def shard_is_intact(out_dir: Path, shard: FinishedShard) -> bool:
    """The tar and its index exist with the recorded sizes and sha256."""
    tar, idx = Path(out_dir) / shard.name, Path(out_dir) / shard.index
    if not (tar.is_file() and idx.is_file()) or tar.stat().st_size != shard.bytes:
        return False
    return sha256_file(tar) == shard.sha256 and sha256_file(idx) == shard.index_sha256
