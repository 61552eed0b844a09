"""``manifest.json``: what a shard directory holds (see ARCHITECTURE.md, "Shards")."""

from __future__ import annotations

import json
from pathlib import Path

from shard_tools.sample import FORMAT
from shard_tools.writer import atomic_write_bytes

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    pass


def make_manifest(dataset: str, classes: list[str], shards: list[dict], rejected: list[dict],
                  options: dict, class_list: dict | None = None) -> dict:
    """``shards`` entries carry name, index, samples, bytes, sha256 and codecs (summed here);
    ``class_list`` says where ``classes`` came from (``{"source", "file", "sha256"}``)."""
    codecs: dict[str, int] = {}
    for shard in shards:
        for codec, n in shard["codecs"].items():
            codecs[codec] = codecs.get(codec, 0) + n
    return {
        "format": FORMAT,
        "dataset": dataset,
        "samples": sum(s["samples"] for s in shards),
        "classes": list(classes),
        "class_list": dict(class_list or {"source": "not recorded"}),
        "shards": [{k: s[k] for k in ("name", "index", "samples", "bytes", "sha256")} for s in shards],
        "codecs": dict(sorted(codecs.items())),
        "rejected": sorted(rejected, key=lambda r: (r["path"], r["reason"])),
        "options": options,
    }


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return path


def load_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path} not found: not a shard directory, or its sharding run did not finish") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for field in ("samples", "classes", "shards", "rejected"):
        if field not in manifest:
            raise ManifestError(f"{path} lacks the field {field!r}")
    return manifest
