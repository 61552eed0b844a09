"""Timing primitives the step benchmarks share: timed windows synchronised with the device at
both ends, the loader fed epoch after epoch, and the bf16 matmul ceiling MFU is quoted against."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch


def matmul_ceiling(dev: torch.device, n: int = 8192, iters: int = 20, rounds: int = 3) -> dict:
    """The record of the best rate of an n x n x n bf16 matmul on `dev` over `rounds` timed
    windows of `iters` calls (after a warm-up): the ceiling MFU is quoted against, measured on
    the same device in the same run rather than taken from a data sheet."""
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    mm = lambda: torch.mm(a, b, out=out)  # noqa: E731
    timed(mm, 3, dev)  # warm-up: clocks up, cuBLAS heuristics chosen
    seconds = min(timed(mm, iters, dev) for _ in range(rounds))
    del a, b, out
    return {"name": "bf16_matmul_ceiling", "value": 2 * n**3 * iters / seconds / 1e12,
            "unit": "TFLOP/s", "shape": f"{n}x{n}x{n}",
            "note": f"bf16 torch.mm, random normal inputs, best of {rounds} x {iters} calls"}


def endless(loader) -> Iterator[dict]:
    """Batches from epoch after epoch (iterating the loader again yields the next epoch)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the loader yielded no batch: too few samples for the batch size")


def end_to_end(step: Callable[[dict], None], batches: Iterator[dict], n: int,
               dev: torch.device) -> tuple[float, float]:
    """(seconds, seconds blocked on next(batches)) for n steps fed by the loader.

    No sync per step: the host waits in next() only when the loader has nothing ready, which
    is when the device starves too.
    """
    wait = 0.0
    synchronize(dev)
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        step(batch)
    synchronize(dev)
    return time.perf_counter() - start, wait


def timed(fn: Callable[[], object], n: int, dev: torch.device) -> float:
    """Seconds for n calls of fn, with the device synchronised at both ends."""
    synchronize(dev)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(dev)
    return time.perf_counter() - start


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # host-device sync: only at the ends of a timed window
