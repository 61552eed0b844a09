"""Loading model weights from what users point at: a run directory, a training checkpoint, a
released / exported weights file, or a hub checkpoint directory (handed to
``mvd.models.load_checkpoint``)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mvd.config import ConfigError

log = logging.getLogger("mvd.train")

EXPORT_NAME = "model.safetensors"  # what a finished run leaves in its run dir (trained model only)


def resolve_weights(path: str, what: str) -> str | dict:
    """A run dir -> its exported model, or else its newest valid training checkpoint (the whole
    checkpoint: ``load_checkpoint`` reads its ``model`` and ``model_meta``); any other directory
    (a transformers ``save_pretrained`` / timm ``save_for_hf`` one) or a file -> itself."""
    from mvd.engine.checkpoint import find_latest_valid

    p = Path(path)
    if p.is_dir():
        if (p / EXPORT_NAME).is_file() or not (p / "checkpoints").is_dir():
            return str(p)
        found = find_latest_valid(p / "checkpoints")
        if found is None:
            raise ConfigError(f"{what}={path}: a run directory with neither {EXPORT_NAME} nor a valid "
                              f"checkpoint in checkpoints/")
        return found[1]
    if not p.is_file():
        raise ConfigError(f"{what}={path}: no such file or directory")
    return str(p)


def load_weights(model: nn.Module, path: str, what: str = "checkpoint"):
    """Load ``path`` into ``model``; returns the ``LoadReport`` (logged on one line). A checkpoint
    that does not fit is a ConfigError naming the config key."""
    from mvd.models import CheckpointError, load_checkpoint

    try:
        report = load_checkpoint(model, resolve_weights(path, what))
    except CheckpointError as e:
        raise ConfigError(f"{what}={path}: {e}") from e
    log.info("%s: loaded %s into %s (%s)", what, path, type(model).__name__,
             str(report).replace("\n", "; "))
    return report
