"""The GPU check's summary: the stages' outcomes (OUT/stages.jsonl, one line per stage written by
run.sh), the pack it ran from (OUT/pack-manifest.json) and the versions the probe found
(OUT/env/versions.json), as OUT/summary.json and a short OUT/summary.md.

    python3 -m benchmarks.gpu.summary OUT    # exit 1 when a stage did not end ok

Standard library only: it also runs after a failed install.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

FORMAT = "mvd-gpu-check/1"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summarize(out: Path) -> dict:
    out = Path(out)
    stages_file = out / "stages.jsonl"
    lines = stages_file.read_text().splitlines() if stages_file.exists() else []
    stages = [json.loads(line) for line in lines if line.strip()]
    manifest = _read(out / "pack-manifest.json")
    versions = _read(out / "env" / "versions.json")
    environment = versions.get("environment", {})
    return {
        "format": FORMAT,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ok": bool(stages) and all(s["status"] == "ok" for s in stages),
        "seconds": sum(s.get("seconds", 0) for s in stages),
        "stages": stages,
        "gpu": environment.get("gpu"),
        "packages": environment.get("packages"),
        "nvdec": versions.get("nvdec"),
        "pack": {k: manifest.get(k) for k in ("git", "created_utc", "command", "requirements")},
        "reports": sorted(str(p.relative_to(out)) for p in out.glob("*/report.json")),
    }


def markdown(summary: dict) -> str:
    gpu = (summary["gpu"] or {}).get("name", "no GPU seen")
    git = summary["pack"].get("git") or {}
    rows = [f"| {s['stage']} | {s['status']} | {s.get('rc', '')} | {s.get('seconds', '')} | "
            f"{s.get('limit_s', '')} |" for s in summary["stages"]]
    return "\n".join([
        f"# GPU check, {summary['date_utc']}",
        "",
        f"GPU: {gpu}; pack from commit {git.get('commit')} (dirty: {git.get('dirty')}); "
        f"{summary['seconds']} s in all; {'every stage ok' if summary['ok'] else 'NOT all ok'}.",
        "",
        "| stage | status | rc | seconds | limit (s) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Reports: " + (", ".join(summary["reports"]) or "none"),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m benchmarks.gpu.summary OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    summary = summarize(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
