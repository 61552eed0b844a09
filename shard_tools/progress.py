"""What a sharding run shows a person: a rich progress bar and a final summary table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from shard_tools.rejections import count_by_category


class _RateColumn(ProgressColumn):
    """Videos/s and MB/s of the packed output since the bar started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.completed - task.fields.get("skipped", 0)
        if elapsed <= 0:
            return Text("-- videos/s", style="progress.data.speed")
        mb = task.fields.get("bytes", 0) / 1e6
        return Text(f"{done / elapsed:.1f} videos/s {mb / elapsed:.1f} MB/s", style="progress.data.speed")


class BuildProgress:
    """``with BuildProgress(total, done, enabled) as bar: bar.advance(nbytes)`` per video."""

    def __init__(self, total: int, completed: int, *, enabled: bool = True, description: str = "sharding"):
        self.enabled = enabled
        self.start_time = time.perf_counter()
        self.processed = 0
        self.bytes = 0
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task(description, total=total, completed=completed,
                                                 skipped=completed, bytes=0)

    def __enter__(self) -> BuildProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, nbytes: int = 0) -> None:
        self.processed += 1
        self.bytes += nbytes
        if self._progress is not None:
            self._progress.update(self._task, advance=1, bytes=self.bytes)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._progress is not None:
            self._progress.stop()


def print_summary(manifest: dict, *, processed: int, packed_bytes: int, elapsed: float,
                  console: Console | None = None) -> None:
    """The final table: what the manifest holds, rejected counts by reason, and this run's speed."""
    console = console or Console()
    table = Table(title=f"mvd-shard {manifest['dataset']}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("samples", str(manifest["samples"]))
    table.add_row("shards", str(len(manifest["shards"])))
    table.add_row("MB", f"{sum(s['bytes'] for s in manifest['shards']) / 1e6:.1f}")
    table.add_row("codecs", ", ".join(f"{c}: {n}" for c, n in manifest["codecs"].items()) or "-")
    streams = manifest.get("streams", {})
    reencoded = streams.get("reencoded", {})
    table.add_row(f"re-encoded for {streams.get('target', 'the target')}", str(sum(reencoded.values())))
    for why, n in reencoded.items():
        table.add_row(f"  {why}", str(n))
    table.add_row("rejected", str(len(manifest["rejected"])))
    for category, n in count_by_category(manifest["rejected"]).items():
        table.add_row(f"  {category}", str(n))
    rate = processed / elapsed if elapsed > 0 else 0.0
    table.add_row("videos probed this run", str(processed))
    table.add_row("time this run", f"{elapsed:.1f} s")
    table.add_row("videos/s", f"{rate:.1f}")
    table.add_row("MB/s", f"{packed_bytes / 1e6 / elapsed if elapsed > 0 else 0.0:.1f}")
    console.print(table)
