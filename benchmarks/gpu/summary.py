"""The GPU check's summary: every stage of the call with its status (ran; skipped, and why;
failed or timed out, with the first error line of its log) and every figure the stages wrote,
as OUT/summary.json and OUT/summary.md.

The figures are read from what the stages leave in the call's work folder:

- `env/versions.json` (benchmarks.gpu.probe): the GPU, torch, the modules that did not import;
- `pytest/junit.xml`: passed, failed and skipped tests, each failure's first line;
- `dryrun/dryrun.json` (benchmarks.gpu.memory_plan): the dry run's peak_memory_gib_per_rank per
  variant, set next to the step's torch.cuda.max_memory_allocated at the same per-GPU batch;
- `*/step-records.jsonl` (mvd-bench step, a line a record, written as each variant ends);
- `nvdec/nvdec.json`, `decode/decode_check.json`, `sweep/sweep.jsonl` (the DALI call).

Standard library only: it also runs after a failed install.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

FORMAT = "mvd-gpu-check/2"
# The lines that say what went wrong, most telling first
ERROR_PATTERNS = (re.compile(r"^(E\s+)?\w*(Error|Exception)\b.*"), re.compile(r"^E\s+.+"),
                  re.compile(r"^(FAILED|ERROR)\b.+"), re.compile(r".*\b(error|failed)\b.*", re.I))


def first_error(text: str) -> str:
    """The first line of a log that names an error (else its last non-empty line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in ERROR_PATTERNS:
        for line in lines:
            if pattern.match(line):
                return line[:300]
    return (lines[-1] if lines else "(empty log)")[:300]


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut short by a timeout
            continue
    return out


def pytest_figures(junit: Path) -> dict | None:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            counts["failed" if bad.tag == "failure" else "errors"] += 1
            failures.append(f"{name}: {(bad.get('message') or '').splitlines()[:1]}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def step_figures(work: Path) -> list[dict]:
    """Every mvd-bench step record of the call, with the folder it came from."""
    figures = []
    for path in sorted(work.glob("*/step-records.jsonl")):
        for rec in _jsonl(path):
            figures.append({"source": path.parent.name, **rec})
    return figures


def memory_table(work: Path, steps: list[dict]) -> list[dict]:
    """Per variant: the dry run's peak next to the measured max_memory_allocated (GiB)."""
    plan = _json(work / "dryrun" / "dryrun.json") or {}
    measured = {r.get("variant"): r for r in steps if r.get("name") == "peak_memory"
                and "value" in r}
    rows = []
    for variant, entry in plan.items():
        row = {"variant": variant, "per_gpu_batch": entry.get("per_gpu_batch"),
               "dryrun_peak_memory_gib_per_rank": entry.get("peak_memory_gib_per_rank"),
               "error": entry.get("error")}
        got = measured.get(variant)
        if got is not None:
            row["max_memory_allocated_gib"] = round(got["value"] / 1024, 3)
            row["measured_batch"] = got.get("batch_size")
        rows.append(row)
    return rows


def summarize(work: Path, call, records: list[dict], *, rehearse: bool, seconds: float) -> dict:
    work = Path(work)
    versions = _json(work / "env" / "versions.json") or {}
    environment = versions.get("environment") or {}
    steps = step_figures(work)
    ran = [r for r in records if r["status"] != "skipped"]
    return {
        "format": FORMAT,
        "call": call.name,
        "title": call.title,
        "rehearsal": rehearse,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 1),
        "budget_s": call.budget_s,
        "ok": bool(ran) and all(r["status"] in ("ran", "ok") for r in ran),
        "stages": records,
        "gpu": environment.get("gpu"),
        "git": environment.get("git"),
        "missing_modules": versions.get("missing"),
        "nvdec_library": versions.get("nvdec"),
        "figures": {
            "pytest": {name: pytest_figures(p) for name, p in
                       ((p.parent.name, p) for p in sorted(work.glob("*/junit.xml")))},
            "step": steps,
            "memory": memory_table(work, steps),
            "nvdec": _json(work / "nvdec" / "nvdec.json"),
            "decode": _json(work / "decode" / "decode_check.json"),
            "sweep": _jsonl(work / "sweep" / "sweep.jsonl"),
        },
    }


def _status(r: dict) -> str:
    if r["status"] == "skipped":
        return f"skipped: {r.get('reason', '')}"
    if r["status"] in ("failed", "timeout"):
        return f"{r['status']}: {r.get('first_error', '')}"
    return r["status"]


def _value(r: dict) -> str:
    if "value" not in r:
        return f"skipped: {r.get('skipped', '')}"
    return f"{r['value']:.4g} {r.get('unit', '')}"


def markdown(s: dict) -> str:
    gpu = (s["gpu"] or {}).get("name", "no GPU seen")
    lines = [
        f"# GPU check, {s['title']}{' (REHEARSAL on a CPU machine)' if s['rehearsal'] else ''}",
        "",
        f"{s['date_utc']}; GPU: {gpu}; {s['seconds']} s of a {s['budget_s']} s budget; "
        f"{'every stage that ran ended well' if s['ok'] else 'NOT every stage ended well'}.",
        "",
        "| stage | status | seconds | limit (s) |",
        "|---|---|---|---|",
        *(f"| {r['stage']} | {_status(r)} | {r.get('seconds', '')} | {r.get('limit_s', '')} |"
          for r in s["stages"]),
        "",
    ]
    if s.get("missing_modules"):
        lines += [f"Modules that did not import: {', '.join(s['missing_modules'])}", ""]
    f = s["figures"]
    for name, counts in f["pytest"].items():
        if counts:
            lines += [f"{name}: {counts['passed']} passed, {counts['failed']} failed, "
                      f"{counts['errors']} errors, {counts['skipped']} skipped",
                      *(f"- {x}" for x in counts["failures"]), ""]
    if f["step"]:
        lines += ["| from | variant | figure | value |", "|---|---|---|---|",
                  *(f"| {r['source']} | {r.get('variant', '')} | {r['name']} | {_value(r)} |"
                    for r in f["step"]), ""]
    if f["memory"]:
        lines += ["| variant | per-GPU batch | dry run peak (GiB/rank) | max_memory_allocated "
                  "(GiB) |", "|---|---|---|---|",
                  *(f"| {m['variant']} | {m['per_gpu_batch']} | "
                    f"{m['dryrun_peak_memory_gib_per_rank'] or m.get('error')} | "
                    f"{m.get('max_memory_allocated_gib', 'not measured')} |"
                    for m in f["memory"]), ""]
    for key in ("nvdec", "decode"):
        if f[key]:
            lines += [f"{key}: `{json.dumps(f[key])[:1500]}`", ""]
    if f["sweep"]:
        lines += ["| codec | dtype | pipelines | clips/s |", "|---|---|---|---|",
                  *(f"| {p.get('codec')} | {p.get('dtype')} | {p.get('pipelines')} | "
                    f"{p.get('clips_per_s', p.get('error'))} |" for p in f["sweep"]), ""]
    return "\n".join(lines)


def write(s: dict, out: Path) -> None:
    out = Path(out)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(s))
