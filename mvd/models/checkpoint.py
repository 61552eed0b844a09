"""Checkpoint interop: this project's checkpoints and the MAE / VideoMAE / MVD release layouts.

``load_checkpoint(model, path_or_dict)`` reads the file safely, unwraps it, renames release keys
to ours, splits a full qkv bias into q/v biases, rebuilds (or interpolates) position tables,
loads, and returns a ``LoadReport`` of what it did. It raises ``CheckpointError`` naming the key
on a shape mismatch or when the model needs a weight the checkpoint lacks.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from mvd.layers import FixedPosEmbed, build_table, resize_grid_table
from mvd.models.teachers import unwrap

# Releases pickle these next to the weights (VideoMAE/MAE save ``args`` as an argparse Namespace,
# numpy scalars for metrics); they are plain data, so weights_only loading may build them.
def _safe_globals() -> list:
    allowed: list = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, np.dtype]
        allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    except (ImportError, AttributeError):
        pass
    return allowed


_WRAPPERS = ("model", "module", "state_dict", "model_state")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "encoder.")  # DDP, torch.compile, VideoMAE pretrain encoder
_PREFIX_RENAMES = (  # release name -> ours (MAE decoder, VideoMAE decoder, MVD student decoders)
    ("encoder_to_decoder.", "decoder.proj."),
    ("decoder_embed.", "decoder.proj."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.head."),
    ("down_img.", "decoder_img.proj."),
    ("down_vid.", "decoder_vid.proj."),
)
_EXACT_RENAMES = {
    "mask_token": "decoder.mask_token",
    "mask_token_img": "decoder_img.mask_token",
    "mask_token_vid": "decoder_vid.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "pos_embed_img": "decoder_img.pos_embed",
    "pos_embed_vid": "decoder_vid.pos_embed",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the given model (names the file or key)."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did. Keys are in this project's naming."""

    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    new: list[str] = field(default_factory=list)  # model keys left at their fresh initialisation
    tables: dict[str, str] = field(default_factory=dict)  # position table -> what happened
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.new:
            lines.append(f"newly initialised: {', '.join(self.new)}")
        lines += [f"position table {k}: {v}" for k, v in self.tables.items()]
        lines += [f"ignored {k}: {v}" for k, v in self.ignored.items()]
        return "\n".join(lines + self.notes)


def read_checkpoint(path_or_dict, *, trusted: bool = False) -> Mapping:
    """The raw object of a checkpoint file (``.safetensors`` or a torch pickle) or the dict itself.

    Pickles load with ``weights_only=True`` plus an allow-list of plain-data classes; anything
    else is refused unless ``trusted=True``, which unpickles fully after a warning.
    """
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    path = os.fspath(path_or_dict)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted:
            reason = str(e).strip().splitlines()[0]
            raise CheckpointError(
                f"{path} holds objects outside the safe allow-list ({reason}). Loading it would run "
                "arbitrary code from the file; if you trust its source, pass trusted=True") from e
    warnings.warn(f"{path}: unpickling with weights_only=False because trusted=True; this runs code "
                  "stored in the file", stacklevel=3)
    return torch.load(path, map_location="cpu", weights_only=False)


def extract_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Unwrap ``model`` / ``module`` / ``state_dict`` wrappers down to a {name: tensor} dict."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise CheckpointError(f"no state dict found: top-level keys {sorted(map(str, obj))[:12]}, none of "
                                  f"them a wrapper {_WRAPPERS} holding tensors")
        obj = obj[key]
    return dict(obj)


def _our_name(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    if key in _EXACT_RENAMES:
        return _EXACT_RENAMES[key]
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_state_dict(state: Mapping[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    """Release names -> ours; a full ``attn.qkv.bias`` becomes ``attn.q_bias`` + ``attn.v_bias``."""
    out: dict[str, torch.Tensor] = {}
    dropped_k = []
    for key, value in state.items():
        name = _our_name(key)
        if name.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3)
            base = name[: -len("qkv.bias")]
            out[base + "q_bias"], out[base + "v_bias"] = q, v
            if k.abs().max() > 0:
                dropped_k.append(base + "qkv.bias")
            continue
        if name in out:
            raise CheckpointError(f"checkpoint keys {key!r} and another both map to {name!r}")
        out[name] = value
    if dropped_k:
        report.notes.append(f"dropped the key part of {len(dropped_k)} qkv biases (softmax is invariant to it)")
    return out


def _infer_grid(n: int, grid: tuple[int, ...]) -> tuple[int, ...] | None:
    """The grid a checkpoint table of n rows was made for, assuming square frames."""
    if n == math.prod(grid):
        return tuple(grid)
    if len(grid) == 2:
        s = math.isqrt(n)
        return (s, s) if s * s == n else None
    t, h, w = grid
    if n % t == 0 and math.isqrt(n // t) ** 2 == n // t:
        s = math.isqrt(n // t)
        return (t, s, s)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    return None


def _load_table(key: str, module: FixedPosEmbed, value: torch.Tensor) -> str:
    """Check a checkpoint position table against ``module``; returns what was done."""
    value = value.reshape(1, -1, value.shape[-1]).float()
    if value.shape[-1] != module.dim:
        raise CheckpointError(f"{key}: checkpoint table width {value.shape[-1]} != model width {module.dim}")
    prefix = 1 if module.cls_token else 0  # a model with a cls slot expects one in the checkpoint too
    body = value[:, prefix:]
    src = _infer_grid(body.shape[1], module.grid)
    if src is None:
        raise CheckpointError(f"{key}: cannot map a table of {body.shape[1]} positions onto grid {module.grid}")
    if torch.allclose(body, build_table(module.kind, src, module.dim), atol=1e-5):
        where = "" if src == module.grid else f" (checkpoint grid {src}, model grid {module.grid})"
        return f"fixed {module.kind} table, rebuilt from the formula{where}"
    table = body if src == module.grid else resize_grid_table(body, src, module.grid)
    with torch.no_grad():
        module.table[:, prefix:] = table.to(module.table)
    how = "copied" if src == module.grid else f"interpolated from grid {src} to {module.grid}"
    return f"not the fixed {module.kind} formula: {how} (kept until the model is rebuilt)"


def load_checkpoint(model: nn.Module, path_or_dict, *, trusted: bool = False) -> LoadReport:
    """Load weights into ``model`` (any mvd.models model, or a ``Frozen`` teacher) and report.

    Accepts this project's state dicts and checkpoints, ``.safetensors`` files, and the release
    layouts: ``model`` / ``module`` / ``state_dict`` wrappers, VideoMAE's ``encoder.`` prefix and
    decoder, MAE with or without its decoder, MVD students (into a ``video_vit_*``: encoder only,
    head new). Keys the model lacks are ignored and listed; a mismatched shape, or a weight the
    model needs and the checkpoint lacks, raises ``CheckpointError`` naming the key.
    """
    model = unwrap(model)
    report = LoadReport()
    state = convert_state_dict(extract_state_dict(read_checkpoint(path_or_dict, trusted=trusted)), report)
    own = model.state_dict()
    tables = {name: m for name, m in model.named_modules() if isinstance(m, FixedPosEmbed)}
    to_load = {}
    for key, value in state.items():
        if key.endswith("pos_embed") and key in tables:
            report.tables[key] = _load_table(key, tables[key], value)
        elif key not in own:
            report.ignored[key] = "not part of this model"
        elif tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape "
                                  f"{tuple(own[key].shape)} (built with other sizes?)")
        else:
            to_load[key] = value
    fresh = getattr(model, "fresh_init_prefixes", ())  # e.g. a classifier's head when loading a pretrained encoder
    fresh = tuple(p for p in fresh if not any(k.startswith(p) for k in state))
    missing = [k for k in own if k not in to_load]
    needed = [k for k in missing if not k.startswith(fresh)]
    if needed:
        more = f" (and {len(needed) - 1} more)" if len(needed) > 1 else ""
        raise CheckpointError(f"checkpoint lacks {needed[0]!r}{more}, which {type(model).__name__} needs")
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.new = missing
    return report


def save_safetensors(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s weights (not its fixed position tables) to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    model = unwrap(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path), metadata={"format": "pt", "mvd_model": getattr(model, "model_name", "")})
