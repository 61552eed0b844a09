"""The issue's throughput targets, checked against what a run measured (reported, not asserted).

A target is judged pass/fail only on its reference configuration (e.g. the ViT-B step on an
H100). A figure measured on another configuration is shown as indicative; a figure no run
produced is "not measured", with the reason.
"""

from __future__ import annotations

PASS, FAIL, INDICATIVE, NOT_MEASURED = "pass", "FAIL", "indicative only", "not measured"

REFERENCE_STEP = {
    "model": "mvd_student_base",
    "teachers": "mae_teacher_base+videomae_teacher_base",
    "clip": "16x224",
}


def evaluate(results: dict, environment: dict) -> list[dict]:
    """One row per target: what, wanted, measured, unit, status and how it was judged."""
    gpu = (environment.get("gpu") or {}).get("name", "")
    return [
        _step_target(
            results, gpu, "end_to_end", 400.0, "clips/s",
            "MVD ViT-B step, both teachers, 16x224, tube 0.9, on one H100",
        ),
        _step_target(
            results, gpu, "mfu_end_to_end", 45.0, "%",
            "MFU of that step (FLOPs counted by torch's FLOP counter)",
        ),
        _loader_headroom(results, gpu),
    ]


def _records(results: dict, mode: str, name: str) -> tuple[list[dict], str]:
    """Measured records of `name` in `mode`, and why there are none when there are none."""
    result = results.get(mode)
    if result is None:
        return [], f"`{mode}` mode not run"
    if result["status"] != "ok":
        return [], f"`{mode}` {result['status']}: {result.get('reason') or result.get('error')}"
    found = [r for r in result["records"] if r["name"] == name and "value" in r]
    return found, "" if found else f"`{mode}` produced no `{name}` figure"


def _row(what, wanted, unit, value=None, status=NOT_MEASURED, note="") -> dict:
    return {"what": what, "wanted": f">= {wanted:g} {unit}", "threshold": wanted, "unit": unit,
            "measured": value, "status": status, "note": note}


def _config(rec: dict) -> str:
    return (f"{rec.get('model')} with {rec.get('teachers')}, {rec.get('clip')}, "
            f"batch {rec.get('batch_size')}, {rec.get('dtype')}")


def _is_reference(rec: dict, gpu: str) -> bool:
    return "H100" in gpu and all(rec.get(k) == v for k, v in REFERENCE_STEP.items())


def _step_target(results, gpu, name, wanted, unit, what) -> dict:
    found, why = _records(results, "step", name)
    if not found:
        if name.startswith("mfu") and _records(results, "step", "end_to_end")[0]:
            why = "no bf16 peak known for this device (MFU is computed on GPUs only)"
        return _row(what, wanted, unit, note=why)
    best = max(found, key=lambda r: r["value"])
    if _is_reference(best, gpu):
        status = PASS if best["value"] >= wanted else FAIL
        return _row(what, wanted, unit, best["value"], status, f"{_config(best)} on {gpu}")
    where = gpu or "CPU"
    return _row(what, wanted, unit, best["value"], INDICATIVE,
                f"measured on {_config(best)} on {where}, not the reference configuration")


def _loader_headroom(results, gpu) -> dict:
    what = "Loader rate over the step's consumption (loader-only / compute-only, same run)"
    wanted, unit = 1.5, "x"
    found, why = _records(results, "step", "loader_over_compute")
    if not found:
        return _row(what, wanted, unit, note=why)
    # Judge at the batch size where the step consumes fastest: the loader's hardest case.
    compute, _ = _records(results, "step", "compute_only")
    fastest = max(compute, key=lambda r: r["value"])["batch_size"] if compute else None
    rec = next((r for r in found if r["batch_size"] == fastest), found[0])
    if _is_reference(rec, gpu):
        status = PASS if rec["value"] >= wanted else FAIL
        return _row(what, wanted, unit, rec["value"], status, f"{_config(rec)} on {gpu}")
    return _row(what, wanted, unit, rec["value"], INDICATIVE,
                f"measured on {_config(rec)} on {gpu or 'CPU'}, not the reference configuration")
