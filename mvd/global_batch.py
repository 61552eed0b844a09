"""A pinned global batch split over the ranks: the per-process batch and the accumulation.

A recipe that states ``train.global_batch`` trains with that many samples per optimizer step on
any world size that divides it, as the releases' ``--batch_size x --update_freq x GPUs`` does
on their clusters. Each process takes the largest batch that divides its share and fits the
recipe's ``data.batch_size`` (the most one GPU holds), and accumulates the rest:

    per_process = max { b <= data.batch_size : b divides global_batch / world }
    accum_steps = global_batch / (world x per_process)

so MVD-B's 1024 runs as 16 x 2 on 32 GPUs (the release's split), 16 x 8 on 8 and 8 x 1 on 128.
Plain arithmetic, no config: :func:`mvd.config.plan_batch` asks it and words the errors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchSplit:
    """Samples per optimizer step = per_process x world x accum_steps."""

    global_batch: int
    per_process: int  # samples per process per micro-step (the loader's batch)
    accum_steps: int  # micro-steps per optimizer step


def split_global_batch(global_batch: int, world_size: int, most_per_process: int,
                       multiple_of: int = 1) -> BatchSplit | None:
    """The split with the largest per-process batch <= ``most_per_process`` (and a multiple of
    ``multiple_of``), or None when ``world_size`` cannot reach ``global_batch`` exactly."""
    if world_size < 1 or global_batch % world_size:
        return None
    share = global_batch // world_size
    for b in range(min(most_per_process, share), 0, -1):
        if share % b == 0 and b % multiple_of == 0:
            return BatchSplit(global_batch, b, share // b)
    return None


def nearest_world_sizes(global_batch: int, world_size: int, most_per_process: int,
                        multiple_of: int = 1) -> list[int]:
    """The world sizes closest to ``world_size`` (one below, one above, where they exist) on
    which ``global_batch`` splits exactly: what an error suggests instead."""
    valid = [w for w in range(1, global_batch + 1)
             if split_global_batch(global_batch, w, most_per_process, multiple_of)]
    below = [w for w in valid if w < world_size]
    above = [w for w in valid if w > world_size]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])
