"""Training metrics: buffered on the device, brought to the host once per ``run.log_every`` steps.

The flush is the loop's only routine host sync: the buffered per-step values of every rank are
stacked, averaged across ranks in one all-reduce, written to ``run.dir/metrics.jsonl`` (one JSON
object per optimizer step: step, epoch, loss, loss parts, lr, grad_norm) and shown on rank 0's
rich progress bar (step, loss parts, lr, clips/s, data-wait share, ETA); TensorBoard optionally,
and Weights & Biases with ``run.wandb`` (rank 0: the config, every row, clips/s, data-wait share,
peak memory, eval results; one W&B run per run dir, resumed with it). Every validation's scalar
results are a row of ``run.dir/evals.jsonl`` (``eval.json`` holds the last one whole).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import uuid
from pathlib import Path

import torch

from mvd.config import ConfigError, RunConfig
from mvd.engine import distributed as D

log = logging.getLogger("mvd.train")


def _finite_or_none(v: float):
    return v if math.isfinite(v) else None


WANDB_ID_FILE = "wandb-run-id"  # in run.dir: a resumed run continues the same W&B run
EVALS_FILE = "evals.jsonl"  # in run.dir: one row per validation (step and its scalar results)


def _truncate_after(path: Path, step: int) -> None:
    """Drop the rows of a JSON-lines file past ``step`` (a resumed run replays them), so the file
    reads as one run."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(path)


def _import_wandb():
    """wandb, or a ConfigError saying how to install it (every rank asks, so all stop together)."""
    try:
        import wandb  # heavy optional dependency (the wandb extra): only with run.wandb=true
    except ImportError:
        raise ConfigError("run.wandb=true but wandb is not installed: pip install 'mvd[wandb]' "
                          "(or set run.wandb=false)") from None
    return wandb


def _peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: allocated CUDA memory on a GPU, else the resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsLogger:
    def __init__(self, cfg: RunConfig, run_dir: Path, info: D.DistInfo, *, total_steps: int,
                 start_step: int, clips_per_step: int, config: dict | None = None):
        """``config``: the run's whole config (a plain dict), recorded by W&B."""
        self.cfg = cfg
        self.info = info
        self.path = Path(run_dir) / "metrics.jsonl"
        self.evals_path = Path(run_dir) / EVALS_FILE
        self.clips_per_step = clips_per_step
        self.total_steps = total_steps
        self.pending: list[tuple[int, int, float, dict, torch.Tensor]] = []
        self.window_start = time.perf_counter()
        self.window_data_wait = 0.0
        self.window_steps = 0
        self.last: dict = {}
        self.progress = self.task = self.tb = self.wandb = None
        wandb = _import_wandb() if cfg.wandb else None
        if info.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for path in (self.path, self.evals_path):
                _truncate_after(path, start_step)
            if cfg.progress and sys.stderr.isatty():
                self._start_progress(start_step)
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
                except ImportError:
                    log.warning("run.tensorboard=true but tensorboard is not installed "
                                "(pip install 'mvd[tensorboard]'); logging to metrics.jsonl only")
            if wandb is not None:
                self.wandb = self._start_wandb(wandb, Path(run_dir), config)

    def _start_wandb(self, wandb, run_dir: Path, config: dict | None):
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        run = wandb.init(project=self.cfg.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                         dir=str(run_dir), config=config)
        log.info("W&B run %s (project %s, mode %s)", run.id, self.cfg.wandb_project, run.settings.mode)
        return run

    def _start_progress(self, start_step: int) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=self.total_steps, completed=start_step,
                                           stats="")
        self.progress.start()

    def record(self, step: int, epoch: int, lr: float, values: dict[str, torch.Tensor],
               data_wait: float) -> None:
        """Buffer one optimizer step's scalars (device tensors: no sync here)."""
        self.pending.append((step, epoch, lr, values))
        self.window_data_wait += data_wait
        self.window_steps += 1

    def flush(self, extra_flag: float = 0.0) -> tuple[list[dict], float]:
        """HOST SYNC (the marked logging sync): bring the buffered steps to the host, averaged over
        ranks. Collective: every rank calls it at the same step. ``extra_flag`` is summed across
        ranks and returned (the trainer uses it for a stop request). Returns (rows, flag)."""
        keys = sorted({k for _, _, _, v in self.pending for k in v})
        if self.pending:
            dev = next(iter(self.pending[0][3].values())).device
            table = torch.stack([torch.stack([v[k].detach().float().reshape(()) for k in keys])
                                 for _, _, _, v in self.pending]).flatten()  # (n_steps * n_keys,)
            table = torch.cat([table, torch.tensor([extra_flag], device=dev)])
        else:
            table = torch.tensor([extra_flag], device=self.info.device)
        D.all_reduce_sum(table)
        values = table.cpu().tolist()  # host sync
        flag = values.pop()
        n = self.info.world_size
        rows = []
        for i, (step, epoch, lr, v) in enumerate(self.pending):
            row = {"step": step, "epoch": epoch}
            for j, k in enumerate(keys):
                x = values[i * len(keys) + j]
                # grad_norm is identical on every rank (after the all-reduce of grads); the rest
                # are per-rank values averaged here.
                row[k] = _finite_or_none(x / n)
            row["lr"] = lr
            rows.append(row)
        self.pending = []
        if self.info.is_main and rows:
            self._write(rows)
        return rows, flag

    def _write(self, rows: list[dict]) -> None:
        with open(self.path, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        now = time.perf_counter()
        elapsed = max(now - self.window_start, 1e-9)
        last = rows[-1]
        self.last = {"clips_per_s": self.window_steps * self.clips_per_step / elapsed,
                     "data_wait": self.window_data_wait / elapsed}
        self.window_start, self.window_data_wait, self.window_steps = now, 0.0, 0
        parts = " ".join(f"{k}={last[k]:.4g}" for k in last
                         if k.startswith("loss") and last[k] is not None)
        stats = (f"{parts} lr={last['lr']:.3g} {self.last['clips_per_s']:.1f} clips/s "
                 f"data {100 * self.last['data_wait']:.0f}%")
        if self.progress is not None:
            self.progress.update(self.task, completed=last["step"], stats=stats)
        if self.progress is None:
            log.info("step %d/%d %s", last["step"], self.total_steps, stats)
        if self.tb is not None:
            for r in rows:
                for k, v in r.items():
                    if k not in ("step", "epoch") and v is not None:
                        self.tb.add_scalar(f"train/{k}", v, r["step"])
        if self.wandb is not None:
            for r in rows[:-1]:
                self.wandb.log({f"train/{k}": v for k, v in r.items() if k != "step" and v is not None},
                               step=r["step"])
            window = {"train/clips_per_s": self.last["clips_per_s"], "train/data_wait": self.last["data_wait"],
                      "train/peak_memory_gib": _peak_memory_gib(self.info.device)}
            self.wandb.log({**{f"train/{k}": v for k, v in last.items() if k != "step" and v is not None},
                            **window}, step=last["step"])

    def log_eval(self, step: int, result: dict) -> None:
        """An evaluation's scalar numbers (of what eval.json holds) at ``step``: a row of
        run.dir/evals.jsonl, so every validation of the run stays on record, and on W&B (rank 0)."""
        if not self.info.is_main:
            return
        scalars = {k: v for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        with open(self.evals_path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"eval/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        # the W&B run stays open for the validation after training (Trainer.validate logs it);
        # wandb finishes it when the process exits, or when a later wandb.init starts another
