"""Training checkpoints: written atomically, the last K kept, and resumed from the newest valid one.

A checkpoint is one file ``run.dir/checkpoints/step-XXXXXXXX.pt`` (``torch.save``, loadable with
``weights_only=True``)::

    {"format": "mvd-train-ckpt/1", "step", "epoch", "model", "model_meta", "optimizer", "scheduler",
     "scaler", "loader": [state per rank], "rng": [state per rank], "config", "derived", "counters",
     "complete": True}

``model_meta`` is ``mvd.models.model_metadata``: the model's registry name, position table kinds
and, when fine-tuning, its class names (what an eval of the checkpoint checks its shards against).

Only the trained model is in it: teachers are never saved here. The file is written to a
temporary name, flushed, fsync'ed and renamed, so a reader never sees half a checkpoint; on resume
each candidate is opened memory-mapped and checked for every key above before it is trusted (only
the zip directory and the pickle are read; tensor bytes are paged in when restored, from a page
cache the ranks of a node share), and a damaged newest file is skipped for the one before it with
a warning. Temporary files a killed run left behind are removed when the next run starts.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from mvd.config import CheckpointConfig
from mvd.engine import distributed as D
from mvd.models import model_metadata

log = logging.getLogger("mvd.train")

FORMAT = "mvd-train-ckpt/1"
REQUIRED = ("format", "step", "epoch", "model", "optimizer", "scheduler", "loader", "rng",
            "config", "complete")
_NAME = re.compile(r"^step-(\d{8})\.pt$")
_TMP_GLOB = ".*.tmp-*"  # what atomic_write leaves behind when the process is killed mid-write


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states, as plain picklable values.

    CUDA: the current device's generator only. Each rank draws on its own device, and
    ``get_rng_state_all`` would create a CUDA context on every visible GPU in every rank."""
    np_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda, device = state["cuda"], torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):  # written by get_rng_state_all (older checkpoints)
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def plain(x: Any) -> Any:
    """numpy scalars/arrays -> python values, recursively (so weights_only loading accepts it)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(plain(v) for v in x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temporary file next to ``path``, fsync it, rename it to ``path``, fsync
    the directory: a reader (or a crash) sees the old file or the whole new one, never a part.
    The temporary name is ``.NAME.tmp-PID``; :func:`remove_stale_tmp` removes a killed writer's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable only once the directory is
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_tmp(directory: Path) -> int:
    """Delete the temporary files :func:`atomic_write` left in ``directory`` (a run killed
    mid-save); returns how many. Call it only while nothing writes there (run start, rank 0)."""
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.glob(_TMP_GLOB) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def load_valid(path: Path) -> dict:
    """Open a training checkpoint memory-mapped and check it is complete; raises ValueError
    saying why not.

    Only the zip directory and the pickle are read here; tensors are views of the mapping
    (private: writing to them never touches the file) and are read when first used."""
    try:
        # A file cut short at any point has lost the zip directory, which is written last, so
        # a torn write fails here although no tensor bytes are read (pinned by the tests).
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # a truncated or overwritten file fails in the zip reader or unpickler
        raise ValueError(f"cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise ValueError("is not a training checkpoint (not a dict)")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing or ckpt.get("complete") is not True or ckpt.get("format") != FORMAT:
        raise ValueError(f"is incomplete or of another format (missing {missing})")
    return ckpt


def find_latest_valid(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads and is complete, warning about each
    newer one skipped; None when there is none."""
    for step, path in list_checkpoints(directory):
        try:
            return path, load_valid(path)
        except ValueError as e:
            log.warning("checkpoint %s %s; skipping it for the one before", path, e)
    return None


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Saves and restores the whole training state (model, optimizer, schedule, scaler, loader,
    RNG) every ``cfg.every_steps`` optimizer steps and at the end; rank 0 writes."""

    def __init__(self, cfg: CheckpointConfig, run_dir: Path, info: D.DistInfo, *, fsdp: bool):
        self.cfg = cfg
        self.dir = Path(run_dir) / "checkpoints"
        self.info = info
        self.fsdp = fsdp
        self.last_saved_step = -1
        if info.is_main:  # before any save of this run, so no live writer's file is removed
            removed = remove_stale_tmp(self.dir)
            if removed:
                log.info("removed %d stale temporary checkpoint file(s) from %s (left by a run "
                         "killed while saving)", removed, self.dir)

    def due(self, step: int) -> bool:
        return self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0

    # The trainer hands in its pieces; "model" is the wrapped model.
    def save(self, *, step: int, epoch: int, model, optimizer, scheduler, scaler, loader,
             config: dict, derived: dict, counters: dict, classes: list[str] | None = None) -> Path | None:
        """Collective: every rank must call it (states are gathered to rank 0, which writes).
        ``classes``: the class names a classifier is trained on (kept in ``model_meta``)."""
        if step == self.last_saved_step:
            return None
        model_sd, optim_sd = self.full_state_dicts(model, optimizer)
        loaders = D.all_gather_objects(plain(loader.state_dict()))
        rngs = D.all_gather_objects(rng_state())
        path = self.dir / f"step-{step:08d}.pt"
        if self.info.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_save({"format": FORMAT, "step": step, "epoch": epoch, "model": model_sd,
                         "model_meta": model_metadata(D.unwrap(model), classes),
                         "optimizer": optim_sd, "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "loader": loaders, "rng": rngs, "config": config, "derived": derived,
                         "counters": counters, "complete": True}, path)
            for _, old in list_checkpoints(self.dir)[self.cfg.keep_last:]:
                old.unlink(missing_ok=True)
        D.barrier()
        self.last_saved_step = step
        return path

    def full_state_dicts(self, model, optimizer) -> tuple[dict, dict]:
        """(model, optimizer) state dicts, gathered whole under FSDP (collective then)."""
        if self.fsdp and self.info.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            return get_state_dict(model, optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        return D.unwrap(model).state_dict(), optimizer.state_dict()

    def find_resume(self) -> dict | None:
        """The checkpoint to resume from (per ``cfg.resume``), opened on every rank, or None.

        With ``auto`` rank 0 validates the candidates and keeps the one it picked; the other ranks
        open only that one. Every open is memory-mapped, so the tensor bytes are read once per
        node (page cache), when restored."""
        choice = self.cfg.resume
        if choice == "none":
            return None
        if choice != "auto":
            path = Path(choice)
            try:
                return load_valid(path)
            except ValueError as e:
                raise ValueError(f"checkpoint.resume={choice}: {path} {e}") from None
        picked, ckpt = None, None
        if self.info.is_main:
            found = find_latest_valid(self.dir)
            if found:
                picked, ckpt = str(found[0]), found[1]
        picked = D.broadcast_object(picked)
        if picked is None:
            return None
        log.info("resuming from %s", picked)
        return ckpt if ckpt is not None else load_valid(Path(picked))

    def restore(self, ckpt: dict, *, model, optimizer, scheduler, scaler, loader) -> None:
        """Load a checkpoint from :meth:`find_resume` into the live training pieces."""
        if self.fsdp and self.info.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(model, optimizer, model_state_dict=ckpt["model"],
                           optim_state_dict=ckpt["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            D.unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        r = self.info.rank
        same_world = len(ckpt["loader"]) == self.info.world_size
        if not same_world:
            log.warning("checkpoint was written by %d processes, this run has %d: every rank "
                        "takes rank 0's loader state and re-seeds its RNGs; the run will not "
                        "replay the same batches", len(ckpt["loader"]), self.info.world_size)
        loader.load_state_dict(ckpt["loader"][r if same_world else 0])
        if same_world:
            set_rng_state(ckpt["rng"][r])
        self.last_saved_step = int(ckpt["step"])
