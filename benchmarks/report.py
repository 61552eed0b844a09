"""Benchmark records and the reports made from them: report.json, report.md and PNG plots.

A record is one measured figure::

    {"name": "clips_per_s", "value": 123.4, "unit": "clips/s",
     "batch_size": 8, "model": "mvd_student_base", ...descriptive fields}

A record whose sub-benchmark could not run carries `"skipped": "<reason>"` and no value. Nothing
here computes a figure that a run did not produce: tables and plots only rearrange records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

FORMAT = "mvd-bench/1"
MODES = ("shard", "loader", "model", "step", "demo")
# Modes `all` leaves out (run by name): accuracy studies that train many models a seed (teachers
# 13, about 8 minutes a seed; detect 5, about 5 minutes a seed), and storage (S3 against disk:
# it needs moto's server from the dev extra).
SOLO_MODES = ("teachers", "detect", "storage")
RESERVED = ("name", "value", "unit", "skipped")
# Fields that vary along a plot's x axis, in the order plots are made.
PLOT_AXES = ("batch_size", "model", "workers")
# Descriptive fields too free-form to split plot series or table rows by.
FREE_TEXT = ("note",)
MODEL_SIZES = ("tiny", "small", "base", "large", "huge")


class RecordError(ValueError):
    """A module returned a record that is not a finite, unit-carrying figure."""


def validate_records(mode: str, records: Iterable) -> list[dict]:
    """Check every record of `mode` and return them as a list.

    Raises RecordError naming the mode and the record's position on: a non-dict, a missing or
    empty name or unit, a value that is not a finite real number, or a skipped record without a
    reason.
    """
    checked = []
    for i, rec in enumerate(records):
        where = f"{mode} record {i}"
        if not isinstance(rec, dict):
            raise RecordError(f"{where}: expected a dict, got {type(rec).__name__}")
        if not isinstance(rec.get("name"), str) or not rec["name"]:
            raise RecordError(f"{where}: missing 'name' ({rec!r})")
        where = f"{where} ({rec['name']!r})"
        if "skipped" in rec and "value" not in rec:
            if not isinstance(rec["skipped"], str) or not rec["skipped"]:
                raise RecordError(f"{where}: 'skipped' must give the reason as text")
            checked.append(dict(rec))
            continue
        value = rec.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: 'value' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise RecordError(f"{where}: 'value' is not finite ({value!r})")
        if not isinstance(rec.get("unit"), str) or not rec["unit"]:
            raise RecordError(f"{where}: missing 'unit'")
        checked.append({**rec, "value": float(value)})
    return checked


def measured(records: Iterable[dict]) -> list[dict]:
    """The records that carry a value (skipped ones left out)."""
    return [r for r in records if "value" in r]


def descriptive_fields(records: Iterable[dict]) -> list[str]:
    """Descriptive field names in order of first appearance."""
    fields: dict[str, None] = {}
    for rec in records:
        for key in rec:
            if key not in RESERVED:
                fields.setdefault(key)
    return list(fields)


# ---------------------------------------------------------------------------------------------
# Markdown


def format_value(value: float) -> str:
    """Four significant digits, without scientific notation for the usual magnitudes."""
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3e}"
    digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{digits}f}"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_value(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def pivot(records: list[dict]) -> tuple[list[str], list[str], list[list]]:
    """Lay records out side by side: one row per combination of descriptive fields, one column
    per figure (`name [unit]`), so that figures measured on the same configuration in the same
    run read across one row.

    Returns (field names, figure columns, rows) where each row is field values + figure values.
    """
    fields = descriptive_fields(records)
    columns: dict[str, None] = {}
    rows: list[tuple[tuple, dict]] = []
    for rec in records:
        column = f"{rec['name']} [{rec['unit']}]"
        columns.setdefault(column)
        key = tuple(_cell(rec.get(f)) for f in fields)
        # A second figure of the same name on the same configuration (a repeat) opens a new row.
        row = next((r for k, r in rows if k == key and column not in r), None)
        if row is None:
            row = {}
            rows.append((key, row))
        row[column] = rec["value"]
    table = [list(k) + [r.get(c) for c in columns] for k, r in rows]
    return fields, list(columns), table


def render_markdown(report: dict) -> str:
    env = report["environment"]
    pkgs = env["packages"]
    lines = [
        f"# mvd-bench: {report['config']['mode']} on {env['device_name']} ({env['device']})",
        "",
        f"- Command: `{report['command']}`",
        f"- Date (UTC): {env['date_utc']}",
        f"- Device: {env['device']} -- {env['device_name']}; CPU: {env['cpu_model']}, "
        f"{env['cpu_count']} usable cores",
        f"- GPU: {env['gpu']['name'] if env['gpu'] else 'none visible to torch'}",
        "- Packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in pkgs.items()),
        f"- Quick mode: {'yes' if report['config']['quick'] else 'no'}",
        "",
        "Every figure below was measured by this run; ratios compare figures measured side by "
        "side in it. A mode that could not run here is listed as skipped with its reason.",
        "",
    ]
    if report.get("notes"):
        lines += [f"> {note}" for note in report["notes"]] + [""]

    lines += ["## Targets", ""]
    targets = report.get("targets", [])
    if targets:
        lines += markdown_table(
            ["target", "wanted", "measured", "status", "how"],
            [
                [
                    t["what"],
                    t["wanted"],
                    "" if t["measured"] is None else f"{format_value(t['measured'])} {t['unit']}",
                    t["status"],
                    t["note"],
                ]
                for t in targets
            ],
        )
    lines.append("")

    for mode, result in report["modes"].items():
        lines += [f"## {mode}", ""]
        if result["status"] != "ok":
            why = result.get("reason") or result.get("error", "")
            lines += [f"**{result['status']}**: {why}", ""]
            if result["status"] != "failed" or not result.get("records"):
                continue
        records = result.get("records", [])
        if result.get("about"):
            lines += [result["about"], ""]
        if mode in report and mode in SUMMARY_SECTIONS:
            lines += SUMMARY_SECTIONS[mode](report[mode])
            lines += ["### Every figure of the run", ""]
        lines += [f"{len(measured(records))} figures in {result['seconds']:.1f} s.", ""]
        lines += tables(records)
        skipped = [r for r in records if "value" not in r]
        if skipped:
            lines += ["Not measured here:", ""]
            lines += [f"- {describe(r)}" for r in skipped] + [""]
        for plot in result.get("plots", []):
            lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines).rstrip() + "\n"


def tables(records: list[dict]) -> list[str]:
    """Markdown tables of the measured records: records with the same descriptive fields share
    a table, laid out by :func:`pivot`."""
    groups: dict[frozenset, list[dict]] = {}
    for rec in measured(records):
        groups.setdefault(frozenset(descriptive_fields([rec])), []).append(rec)
    lines = []
    for group in groups.values():
        fields, columns, rows = pivot(group)
        lines += markdown_table(fields + columns, rows) + [""]
    return lines


def describe(rec: dict) -> str:
    """One line for a console log: `name = value unit (fields)` or `name (fields): skipped: why`."""
    fields = ", ".join(f"{k}={rec[k]}" for k in descriptive_fields([rec]))
    fields = f" ({fields})" if fields else ""
    if "value" not in rec:
        return f"{rec['name']}{fields}: skipped: {rec['skipped']}"
    return f"{rec['name']} = {format_value(rec['value'])} {rec['unit']}{fields}"


# ---------------------------------------------------------------------------------------------
# The teachers block (benchmarks.teachers.summarise): tables, verdict, figures

ARM_LABELS = {"image": "image-taught", "video": "video-taught", "both": "co-taught", "scratch": "from scratch"}


def _spread(stats: dict, values: list[float], digits: int) -> str:
    """`mean ± std (v0 / v1 / ...)`: the block's statistics of per-seed values, and the values."""
    each = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} ({each})"


READOUT_TITLES = {"finetune": "Fine-tuned", "probe": "Linear probe"}


def _readout_markdown(block: dict, key: str) -> list[str]:
    r = block["readouts"][key]
    seeds = ", ".join(str(s) for s in block["seeds"])
    title = READOUT_TITLES[key]
    how = (f"{block['finetune_steps']} fine-tuning steps for every arm" if key == "finetune" else
           f"fitted on {block['probe_train_videos']} labelled clips per task")
    lines = [f"### {title}: held-out top-1 (%), mean ± std over seeds {seeds} (each seed in brackets)", "",
             f"The {r['what']}. {r['heldout_videos']} held-out clips per task (one clip is "
             f"{100 / r['heldout_videos']:.3g} points), {how}, chance "
             + ", ".join(f"{c:g} % ({task})" for task, c in block["chance_top1"].items()) + ". "
             f"Budget: {block['budget']}.", ""]
    lines += markdown_table(["task", *(ARM_LABELS[a] for a in r["top1"]["spatial"])],
                            [[f"{task}: {block['tasks'][task]}",
                              *(_spread(r["summary"][task][arm], v, 1) for arm, v in arms.items())]
                             for task, arms in r["top1"].items()])
    chance = r["above_chance"]
    above = "; ".join(f"{task}: " + (", ".join(ARM_LABELS[a] for a, c in arms.items() if c["above"]) or "none")
                      for task, arms in chance["arms"].items())
    learnt = "; ".join(f"{task}: {'learnt' if v['learnt'] else 'not learnt'} (best {ARM_LABELS[v['best']]}, "
                       f"{v['margin']:+.1f} points)" for task, v in r["learnt"].items())
    twice = ", ".join(f"{2 * se:.1f} points ({task})" for task, se in chance["se"].items())
    lines += ["", f"Two standard errors of a mean of guesses over {chance['clips']} clips are "
              f"{twice}; arms further above chance: {above}. A task counts as learnt "
              f"when its best arm's mean is at least {block['learnt_margin']:g} points above chance: {learnt}."]
    lines += ["", f"The paper's ordering, {title.lower()}:", ""]
    lines += markdown_table(["claim", "verdict", "per seed (points)"],
                            [[row["claim"], row["verdict"], " / ".join(f"{d:+.1f}" for d in row["per_seed"])]
                             for row in r["ordering"]])
    over = "; ".join(f"{task}: " + ", ".join(f"{ARM_LABELS[a]} {m:+.1f}" for a, m in arms.items())
                     for task, arms in r["over_scratch"].items())
    return lines + ["", f"Over from-scratch (mean points): {over}.", ""]


def teachers_markdown(block: dict) -> list[str]:
    seeds = ", ".join(str(s) for s in block["seeds"])
    sim = block["similarity"]
    lines = ["### The paper's ordering", ""]
    lines += [f"- **{READOUT_TITLES[key]}: {r['verdict']}**" for key, r in block["readouts"].items()] + [""]
    for key in block["readouts"]:
        lines += _readout_markdown(block, key)
    lines += ["### How static the features are", "",
              f"The {sim['what']}; 1 = the same features in every time slice.", ""]
    lines += markdown_table(["model", "all pairs", *(f"distance {d}" for d in sim["distances"])],
                            [[m, _spread(sim["summary"][m], sim["mean"][m], 3),
                              *(_spread(st, v, 3)
                                for st, v in zip(sim["by_distance_summary"][m], sim["by_distance"][m]))]
                             for m in sim["mean"]])
    lines += ["", f"{sim['claim']['claim'].capitalize()}: {sim['claim']['verdict']}.", ""]
    for plot in block.get("plots", []):
        lines += [f"![{plot}]({plot})", ""]
    lines += [f"### Seconds per stage (1-minute load average at its start), seeds {seeds}", ""]
    loads = block["load_1min_at_stage_start"]
    lines += markdown_table(["stage", *(f"seed {s}" for s in block["seeds"])],
                            [[stage, *(f"{v:.0f} ({'?' if load is None else f'{load:.2f}'})"
                                       for v, load in zip(values, loads[stage]))]
                             for stage, values in block["stage_s"].items()]
                            + [["whole seed", *(f"{v:.0f}" for v in block["seed_wall_s"])]])
    return lines + [""]


SUMMARY_SECTIONS = {"teachers": teachers_markdown}


def write_summary_plots(mode: str, block: dict, out_dir: Path) -> list[str]:
    """The figures of a mode's report.json block (only teachers has one); returns file names."""
    if mode != "teachers":
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    readouts = block["readouts"]
    tasks = list(block["tasks"])
    fig, axes = plt.subplots(len(readouts), len(tasks), figsize=(8.0, 3.3 * len(readouts)), dpi=100,
                             sharey=True, squeeze=False)
    for row, (key, r) in zip(axes, readouts.items()):
        for ax, task in zip(row, tasks):
            arms = r["top1"][task]
            for i, (arm, values) in enumerate(arms.items()):
                ax.bar(i, r["summary"][task][arm]["mean"], color=f"C{i}", alpha=0.6)
                ax.plot([i] * len(values), values, "ko", markersize=3)
            ax.axhline(block["chance_top1"][task], color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(range(len(arms)), [ARM_LABELS[a] for a in arms], rotation=15)
            ax.set_title(f"{READOUT_TITLES[key].lower()}, {task} task", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
        row[0].set_ylabel("held-out top-1 %")
    fig.suptitle("Which teacher helps which task (bar: mean, dots: seeds)", fontsize=10)
    fig.tight_layout()
    files.append("teachers-top1.png")
    fig.savefig(out_dir / files[-1])
    plt.close(fig)

    sim = block["similarity"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, (model, per_distance) in enumerate(sim["by_distance_summary"].items()):
        style = "--" if model.startswith("teacher") else "-"
        ax.plot(sim["distances"], [st["mean"] for st in per_distance], style, marker="o", color=f"C{i}",
                label=model)
        ax.fill_between(sim["distances"], [st["min"] for st in per_distance], [st["max"] for st in per_distance],
                        color=f"C{i}", alpha=0.15)
    ax.set_xticks(sim["distances"])
    ax.set_xlabel("temporal distance between the time slices (tubelets)")
    ax.set_ylabel("cosine similarity at the same position")
    ax.set_title("How static the features are (line: mean over seeds, band: min-max)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append("teachers-similarity.png")
    fig.savefig(out_dir / files[-1])
    plt.close(fig)
    return files


# ---------------------------------------------------------------------------------------------
# Plots


def _axis_order(axis: str, values: list) -> list:
    if axis != "model":
        return sorted(values)

    def size(name) -> tuple:
        text = str(name)
        for i, s in enumerate(MODEL_SIZES):
            if s in text:
                return (i, text)
        return (len(MODEL_SIZES), text)

    return sorted(values, key=size)


def plot_series(records: list[dict], axis: str) -> dict[str, dict[str, list]]:
    """Throughput records grouped for plots against `axis`, one plot per unit.

    Returns {unit: {series label: [(x, value), ...]}}, keeping only series with at least two x
    values. A series is one record name at a fixed combination of the other descriptive fields;
    fields that change only along with x (e.g. a verdict per batch size) do not split series.
    """
    rates = [r for r in measured(records) if axis in r and r["unit"].endswith("/s")]
    out: dict[str, dict[str, list]] = {}
    for unit in dict.fromkeys(r["unit"] for r in rates):
        group = [r for r in rates if r["unit"] == unit]
        names = list(dict.fromkeys(r["name"] for r in group))
        splitting = [f for f in descriptive_fields(group)
                     if f not in (axis, *FREE_TEXT) and _varies_at_fixed_x(group, f, axis)]
        series: dict[str, list] = {}
        for rec in group:
            parts = ([rec["name"]] if len(names) > 1 else []) + [f"{f}={rec.get(f)}" for f in splitting]
            series.setdefault(", ".join(parts) or rec["name"], []).append((rec[axis], rec["value"]))
        series = {k: v for k, v in series.items() if len({x for x, _ in v}) > 1}
        if series:
            out[unit] = series
    return out


def _varies_at_fixed_x(records: list[dict], field: str, axis: str) -> bool:
    seen: dict[str, set] = {}
    for rec in records:
        seen.setdefault(_cell(rec[axis]), set()).add(_cell(rec.get(field)))
    return any(len(values) > 1 for values in seen.values())


def write_plots(mode: str, records: list[dict], out_dir: Path) -> list[str]:
    """One PNG per (unit, axis) that has a series with two or more points; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for axis in PLOT_AXES:
        for unit, series in plot_series(records, axis).items():
            xs = _axis_order(axis, list({x for points in series.values() for x, _ in points}))
            categorical = not all(isinstance(x, (int, float)) for x in xs)
            fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
            for label, points in series.items():
                points = sorted(points, key=lambda p: xs.index(p[0]))
                px = [xs.index(x) if categorical else x for x, _ in points]
                ax.plot(px, [v for _, v in points], marker="o", label=label)
            if not categorical and axis == "batch_size" and max(xs) / max(min(xs), 1) >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(range(len(xs)) if categorical else xs, [str(x) for x in xs],
                          rotation=15 if categorical else 0)
            ax.set_xlabel(axis)
            ax.set_ylabel(unit)
            ax.set_title(f"{mode}: {unit} vs {axis}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            file = f"{mode}-{_slug(unit)}-vs-{axis}.png"
            fig.savefig(out_dir / file)
            plt.close(fig)
            files.append(file)
    return files


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# ---------------------------------------------------------------------------------------------
# Files


def write_report(report: dict, out_dir: Path) -> None:
    """Write report.json and report.md into out_dir (plots are written per mode beforehand)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
