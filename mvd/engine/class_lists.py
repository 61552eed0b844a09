"""Class lists of shard directories and checkpoints, and the check that two of them agree.

A shard directory's list is its manifest's ``classes`` (with ``class_list`` saying where mvd-shard
took it from); a checkpoint's is what ``mvd.models.load_checkpoint`` reports (the metadata of this
project's exports and training checkpoints, or a hub config's ``id2label``). A fine-tune whose
training and eval shards disagree, or an eval of a checkpoint trained on another list, would
score against shifted labels; ``check_same_classes`` stops it before any work, naming both
sources and the first difference.
"""

from __future__ import annotations

from dataclasses import dataclass

from dali_pipelines.manifest import ShardDirError, read_manifest
from mvd.config import ConfigError


@dataclass(frozen=True)
class ClassSource:
    """A class list and where it came from, as the error names it."""

    names: list[str]
    where: str


def shard_manifest(data_dir: str, what: str = "data.dir") -> dict:
    """The manifest of a shard directory (``dali_pipelines.manifest.read_manifest``), its errors
    as ConfigErrors naming the config key, e.g. ``what="eval.dir"``."""
    try:
        return read_manifest(data_dir)
    except ShardDirError as e:
        raise ConfigError(f"config key '{what}': {e}") from None


def shard_classes(data_dir: str, what: str = "data.dir") -> ClassSource:
    """The class list of a shard directory (its manifest's ``classes``)."""
    manifest = shard_manifest(data_dir, what)
    try:
        names = [str(n) for n in manifest["classes"]]
    except (KeyError, TypeError) as e:
        raise ConfigError(f"config key '{what}': {data_dir}/manifest.json has no readable 'classes' "
                          f"({e!r})") from None
    origin = manifest.get("class_list") or {}
    how = origin.get("source", "not recorded")
    if origin.get("file"):
        how += f" {origin['file']}"
    return ClassSource(names, f"{what}={data_dir} ({len(names)} classes, class list: {how})")


def first_difference(a: list[str], b: list[str]) -> str | None:
    """'index i: x vs y' at the first position the lists differ, or None if they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"index {i}: {x!r} vs {y!r}"
    if len(a) == len(b):
        return None
    i = min(len(a), len(b))
    x, y = (repr(a[i]), "(end of list)") if len(a) > i else ("(end of list)", repr(b[i]))
    return f"index {i}: {x} vs {y}"


def check_same_classes(a: ClassSource, b: ClassSource, fix: str) -> None:
    """Raise ConfigError naming both sources and the first difference unless the lists are equal."""
    diff = first_difference(a.names, b.names)
    if diff is not None:
        raise ConfigError(f"class lists differ: {a.where} and {b.where}; first difference at {diff}. {fix}")


SHARD_FIX = ("Shard both with the same class list (mvd-shard kinetics / list --classes FILE, or "
             "--classes kinetics400 for the official Kinetics-400 indices).")
