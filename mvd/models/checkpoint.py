"""Checkpoint interop: this project's checkpoints, the MAE / VideoMAE / MVD release layouts and
the Hugging Face hub's (transformers and timm, see ``mvd.models.hub``).

``load_checkpoint(model, path_or_dict)`` reads the file (or checkpoint directory) safely, unwraps
it, renames release / hub keys to ours, splits a full qkv bias into q/v biases, rebuilds (or
interpolates) position tables, switches the model's table where the checkpoint says its model used
another one, loads, and returns a ``LoadReport`` of what it did. It raises ``CheckpointError``
naming the key on a shape mismatch, an unknown hub key, or when the model needs a weight the
checkpoint lacks.

Files this project writes carry metadata (``model_metadata``): the registry name, the kind of
every position table and, for classifiers, the class names. safetensors files keep it in their
header, training checkpoints under ``model_meta``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from mvd.layers import FixedPosEmbed, build_table, resize_grid_table
from mvd.models import hub
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


# what a checkpoint directory may hold, in order of preference (transformers' and timm's names)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_SHARD_FILE = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
META_KEY = "model_meta"  # where a training checkpoint keeps model_metadata()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the given model (names the file or key)."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did. Keys are in this project's naming."""

    layout: str = "mvd / release state dict"
    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason
    new: list[str] = field(default_factory=list)  # model keys left at their fresh initialisation
    tables: dict[str, str] = field(default_factory=dict)  # position table -> what happened
    classes: list[str] | None = None  # class names the checkpoint carries (a classifier's), if any
    classes_from: str = ""  # where they were read
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.layout}: loaded {len(self.loaded)} tensors"]
        if self.new:
            lines.append(f"newly initialised: {', '.join(self.new)}")
        lines += [f"position table {k}: {v}" for k, v in self.tables.items()]
        lines += [f"ignored {k}: {v}" for k, v in self.ignored.items()]
        if self.classes is not None:
            lines.append(f"{len(self.classes)} class names ({self.classes_from})")
        return "\n".join(lines + self.notes)


@dataclass
class CheckpointSource:
    """What a checkpoint path holds: the raw object, its config.json (hub directories) and metadata."""

    obj: Mapping
    where: str
    config: dict | None = None
    metadata: dict[str, str] = field(default_factory=dict)


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


def _safetensors_metadata(path: pathlib.Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _weight_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The weight files of a checkpoint directory (the shards of an index, in order)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            return _index_shards(path) if name.endswith(".index.json") else [path]
    present = sorted(p.name for p in directory.iterdir())[:12]
    raise CheckpointError(f"checkpoint directory {directory} holds none of {', '.join(WEIGHT_FILES)} "
                          f"(it holds: {', '.join(present) or 'nothing'})")


def _index_shards(index: pathlib.Path) -> list[pathlib.Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a weights index with a weight_map ({e})") from None
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(f"{index} lists shard(s) that are not there: {', '.join(missing)}")
    return shards


def open_checkpoint(path_or_dict, *, trusted: bool = False) -> CheckpointSource:
    """Read a checkpoint file, a checkpoint directory (transformers ``save_pretrained``, timm
    ``save_for_hf``, a run's export) or a dict, with its config.json and metadata when it has them.

    A weights file named as transformers / timm name theirs (``model.safetensors``,
    ``pytorch_model.bin``, their shards and indices) also reads the ``config.json`` beside it."""
    if isinstance(path_or_dict, Mapping):
        meta = path_or_dict.get(META_KEY)
        return CheckpointSource(path_or_dict, "checkpoint dict", metadata=dict(meta) if isinstance(meta, Mapping)
                                else {})
    path = pathlib.Path(os.fspath(path_or_dict))
    if path.is_dir():
        files, config_path = _weight_files(path), path / "config.json"
    elif path.is_file():
        files = _index_shards(path) if path.name.endswith(".index.json") else [path]
        hub_named = path.name in WEIGHT_FILES or _SHARD_FILE.match(path.name)
        config_path = path.parent / "config.json" if hub_named else None
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")
    config = None
    if config_path is not None and config_path.is_file():
        try:
            config = hub.read_config(config_path)
        except hub.HubError as e:
            raise CheckpointError(str(e)) from None
    if len(files) == 1:
        obj = read_checkpoint(files[0], trusted=trusted)
    else:
        obj = {}
        for f in files:
            obj.update(extract_state_dict(read_checkpoint(f, trusted=trusted)))
    metadata = {}
    for f in files:
        if f.suffix == ".safetensors":
            metadata.update(_safetensors_metadata(f))
    if isinstance(obj, Mapping) and isinstance(obj.get(META_KEY), Mapping):
        metadata.update(obj[META_KEY])
    return CheckpointSource(obj, str(path), config, metadata)


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


def _zero_absent_qkv_biases(state: dict[str, torch.Tensor], report: LoadReport) -> None:
    """A checkpoint whose attention has no q/v biases at all (``qkv_bias=False``) equals ours with
    zero biases; a checkpoint missing them for only some layers is left to fail as incomplete."""
    bases = [k[: -len("qkv.weight")] for k in state if k.endswith("attn.qkv.weight")]
    lacking = [b for b in bases if b + "q_bias" not in state and b + "v_bias" not in state]
    if not bases or len(lacking) != len(bases):
        return
    for base in bases:
        dim = state[base + "qkv.weight"].shape[0] // 3
        state[base + "q_bias"] = state[base + "v_bias"] = torch.zeros(dim)
    report.notes.append(f"the checkpoint's attention has no q/v biases (qkv_bias=False): set to zero in "
                        f"{len(bases)} layers, which computes the same")


def _plan_table_kinds(model: nn.Module, kinds: Mapping[str, str], why: str,
                      report: LoadReport) -> dict[str, str]:
    """The tables to switch so the model has those the checkpoint's model used (tables are never
    saved): a model whose ``pos_embed`` option allows it switches (after every other check has
    passed), any other mismatch is an error now."""
    tables = {name: m for name, m in model.named_modules() if isinstance(m, FixedPosEmbed)}
    switch = {}
    for name, kind in kinds.items():
        module = tables.get(name)
        if module is None:
            continue
        if module.kind == kind:
            report.tables[name] = f"{kind}, as the checkpoint's ({why})"
        elif name == "pos_embed" and kind in getattr(model, "pos_embed_kinds", ()):
            switch[name] = kind
            report.tables[name] = (f"switched from {module.kind} to {kind}: model option pos_embed={kind!r}, "
                                   f"set because {why}")
        else:
            raise CheckpointError(f"{name}: the checkpoint's model used a {kind} position table ({why}); "
                                  f"{type(model).__name__} uses {module.kind} and has no option to change it")
    return switch


def _declared(metadata: Mapping[str, str], key: str):
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint metadata {key!r} is not JSON: {metadata[key]!r:.80}") from None


def load_checkpoint(model: nn.Module, path_or_dict, *, trusted: bool = False) -> LoadReport:
    """Load weights into ``model`` (any mvd.models model, or a ``Frozen`` teacher) and report.

    Accepts this project's state dicts, checkpoints and exports, ``.safetensors`` files, the
    release layouts (``model`` / ``module`` / ``state_dict`` wrappers, VideoMAE's ``encoder.``
    prefix and decoder, MAE with or without its decoder, MVD students into a ``video_vit_*``:
    encoder only, head new), and the hub's: transformers VideoMAE / ViTMAE models and timm ViTs,
    as a weights file or as the directory ``save_pretrained`` / ``save_for_hf`` wrote (its
    config.json is checked against the model). Checkpoint keys the model lacks are ignored and
    listed; a mismatched shape, a hub key not understood, or a weight the model needs and the
    checkpoint lacks raises ``CheckpointError`` naming the key.
    """
    model = unwrap(model)
    report = LoadReport()
    src = open_checkpoint(path_or_dict, trusted=trusted)
    try:
        state, switch = _convert(model, src, report)
    except hub.HubError as e:
        raise CheckpointError(f"{src.where}: {e}") from None
    _zero_absent_qkv_biases(state, report)
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
    for name, m in tables.items():
        if name not in report.tables:
            options = getattr(model, "pos_embed_kinds", ()) if name == "pos_embed" else ()
            hint = f"; pos_embed option: {', '.join(options)}" if len(options) > 1 else ""
            report.tables[name] = f"not in the checkpoint: the model's own {m.kind}{hint}"
    fresh = getattr(model, "fresh_init_prefixes", ())  # e.g. a classifier's head when loading a pretrained encoder
    fresh = tuple(p for p in fresh if not any(k.startswith(p) for k in state))
    missing = [k for k in own if k not in to_load]
    needed = [k for k in missing if not k.startswith(fresh)]
    if needed:
        more = f" (and {len(needed) - 1} more)" if len(needed) > 1 else ""
        raise CheckpointError(f"{src.where} ({report.layout}) lacks {needed[0]!r}{more}, which "
                              f"{type(model).__name__} needs")
    if "pos_embed" in switch:
        model.set_pos_embed(switch["pos_embed"])
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.new = missing
    return report


def _convert(model: nn.Module, src: CheckpointSource,
             report: LoadReport) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the checkpoint's tensors in our names, the position tables to switch); fills the report's
    layout, tables the checkpoint declares, class names and notes."""
    raw = extract_state_dict(src.obj)
    if hub.is_hf_layout(raw, src.config):
        converted = hub.convert_hf(raw, src.config, model)
        report.layout, report.notes = converted.layout, report.notes + converted.notes
        switch = _plan_table_kinds(model, converted.pos_tables, f"the checkpoint is a {converted.layout}, "
                                   "whose VideoMAE tables are 1D sinusoid", report)
        if converted.classes is not None:
            report.classes, report.classes_from = converted.classes, "config.json id2label"
        return dict(converted.state), switch
    if hub.is_timm_config(src.config):
        report.layout = hub.check_timm_config(src.config, model)
    elif src.metadata.get("mvd_model"):
        report.layout = f"mvd {src.metadata['mvd_model']}"
    state = convert_state_dict(raw, report)
    kinds = _declared(src.metadata, "mvd_pos_tables") or {}
    switch = _plan_table_kinds(model, kinds, "recorded in the checkpoint's metadata", report)
    classes = _declared(src.metadata, "mvd_classes")
    if classes is not None:
        report.classes, report.classes_from = [str(c) for c in classes], "checkpoint metadata"
    return state, switch


def model_metadata(model: nn.Module, classes: list[str] | None = None) -> dict[str, str]:
    """What this project records beside a model's weights (all str, as safetensors metadata must
    be): the registry name, the kind of every position table, and the class names if given."""
    model = unwrap(model)
    kinds = {name: m.kind for name, m in model.named_modules() if isinstance(m, FixedPosEmbed)}
    meta = {"mvd_model": getattr(model, "model_name", ""), "mvd_pos_tables": json.dumps(kinds)}
    if classes is not None:
        meta["mvd_classes"] = json.dumps(list(classes))
    return meta


def save_safetensors(model: nn.Module, path: str | os.PathLike, classes: list[str] | None = None) -> None:
    """Write ``model``'s weights (not its fixed position tables, whose kinds go into the metadata,
    with ``classes`` when given) to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    model = unwrap(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path), metadata={"format": "pt", **model_metadata(model, classes)})
