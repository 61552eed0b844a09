"""`mvd-bench demo`'s thread-count comparison on summaries made up for the purpose (the runs
themselves: test_bench_cli runs the mode on a shrunk budget)."""

import pytest

from benchmarks import demo


def _summary(distilled: float, scratch: float) -> dict:
    return {"distilled": {"top1": distilled}, "scratch": {"top1": scratch}, "margin_top1": distilled - scratch,
            "margin_curve_top1": (distilled - scratch) / 2}


def test_thread_shifts_are_the_spread_of_each_figure_over_the_thread_counts():
    results = {(0, 1): _summary(99.4, 60.0), (0, 2): _summary(97.5, 81.2), (0, 4): _summary(98.8, 55.0),
               (3, 1): _summary(90.0, 50.0), (3, 2): _summary(90.0, 50.0), (3, 4): _summary(90.0, 50.0)}
    records = demo.thread_shifts(results, (0, 3), (1, 2, 4))
    got = {(r["seed"], r["figure"]): r["value"] for r in records}
    assert got[0, "distilled_top1"] == pytest.approx(99.4 - 97.5)
    assert got[0, "scratch_top1"] == pytest.approx(81.2 - 55.0)
    assert got[0, "margin_top1"] == pytest.approx((98.8 - 55.0) - (97.5 - 81.2))
    assert got[0, "margin_curve_top1"] == pytest.approx(got[0, "margin_top1"] / 2)
    assert all(got[3, f] == 0 for f in ("distilled_top1", "scratch_top1", "margin_top1", "margin_curve_top1"))
    assert {r["threads"] for r in records} == {"1,2,4"} and {r["unit"] for r in records} == {"points"}
