"""Loading model weights from what users point at: a run directory, a training checkpoint, or a
released / exported weights file (handed to ``mvd.models.load_checkpoint``)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mvd.config import ConfigError

log = logging.getLogger("mvd.train")

EXPORT_NAME = "model.safetensors"  # what a finished run leaves in its run dir (trained model only)


def resolve_weights(path: str, what: str) -> str | dict:
    """A run dir -> its exported model, or else its newest valid checkpoint's model; a file ->
    itself (``load_checkpoint`` reads training checkpoints through their ``model`` key)."""
    from mvd.engine.checkpoint import find_latest_valid

    p = Path(path)
    if p.is_dir():
        if (p / EXPORT_NAME).is_file():
            return str(p / EXPORT_NAME)
        found = find_latest_valid(p / "checkpoints")
        if found is None:
            raise ConfigError(f"{what}={path}: a directory with neither {EXPORT_NAME} nor a valid "
                              f"checkpoint in checkpoints/")
        return found[1]["model"]
    if not p.is_file():
        raise ConfigError(f"{what}={path}: no such file or directory")
    return str(p)


def load_weights(model: nn.Module, path: str, what: str = "checkpoint") -> None:
    from mvd.models import load_checkpoint

    report = load_checkpoint(model, resolve_weights(path, what))
    log.info("%s: loaded %s into %s (%s)", what, path, type(model).__name__,
             str(report).replace("\n", "; "))
