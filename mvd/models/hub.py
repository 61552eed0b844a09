"""Checkpoints in the layouts of the Hugging Face hub: transformers' VideoMAE / ViTMAE models and
timm's ``save_for_hf`` directories.

``convert_hf(state, config, model)`` renames a transformers state dict (``VideoMAEModel``,
``VideoMAEForPreTraining``, ``VideoMAEForVideoClassification``, ``ViTMAEModel``,
``ViTMAEForPreTraining``) to this project's keys, fusing the separate query / key / value
projections into ``qkv``, and returns what the checkpoint implies for the model: the position
tables its model used (transformers computes VideoMAE's 1D sinusoid tables and never saves them),
its class names (``id2label``) and notes. With a ``config.json`` it checks every size the config
gives against the model (the number of heads cannot be seen in the weights' shapes). Key names
are those ``save_pretrained`` writes (the hub's names, e.g. ``attention.attention.query``) and
those transformers 5 modules use in memory (``layers.N.attention.q_proj``).

Every key must be understood: an unknown one is a ``HubError`` naming it, never a partial load.
The caller (``mvd.models.checkpoint.load_checkpoint``) names the file in the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from mvd.layers import LN_EPS
from mvd.models.classifier import VideoViT
from mvd.models.pretrain import MAEPretrain, VideoMAEPretrain
from mvd.models.teachers import MAETeacher, VideoMAETeacher
from mvd.models.vit import MaskedDecoder


class HubError(ValueError):
    """A hub-layout checkpoint that does not fit the model, or has keys this module does not know."""


# the registry families each transformers architecture loads into (for the error that says so)
FITS = {
    "VideoMAEModel": (VideoMAETeacher, VideoViT),
    "VideoMAEForPreTraining": (VideoMAETeacher, VideoMAEPretrain, VideoViT),
    "VideoMAEForVideoClassification": (VideoViT, VideoMAETeacher),
    "ViTMAEModel": (MAETeacher,),
    "ViTMAEForPreTraining": (MAETeacher, MAEPretrain),
}
_FAMILY = {VideoMAETeacher: "videomae_teacher_*", VideoViT: "video_vit_*", VideoMAEPretrain: "videomae_pretrain_*",
           MAETeacher: "mae_teacher_*", MAEPretrain: "mae_pretrain_*"}
MODEL_TYPES = {"videomae": "VideoMAE", "vit_mae": "ViTMAE"}
_PATCH_PROJ = re.compile(r"(^|\.)embeddings\.patch_embeddings\.projection\.weight$")

# top-level keys (after the ``videomae.`` / ``vit.`` prefix) -> ours
_TOP = [(re.compile(p), r) for p, r in (
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"fc_norm\.(weight|bias)", r"fc_norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
    (r"encoder_to_decoder\.weight", "decoder.proj.weight"),
    (r"(?:decoder\.)?mask_token", "decoder.mask_token"),
    (r"decoder\.decoder_embed\.(weight|bias)", r"decoder.proj.\1"),
    (r"decoder\.decoder_pos_embed", "decoder.pos_embed"),
    (r"decoder\.(?:decoder_)?norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"decoder\.(?:head|decoder_pred)\.(weight|bias)", r"decoder.head.\1"),
)]
# transformer layers: encoder (hub and transformers-5 names), decoder (hub and transformers-5 save names)
_LAYER = [
    (re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)"), "blocks."),
    (re.compile(r"decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)"), "decoder.blocks."),
]
_IN_LAYER = [(re.compile(p), r) for p, r in (
    (r"attention\.(?:attention\.query|q_proj)\.weight", "attn.q.weight"),  # fused into attn.qkv.weight
    (r"attention\.(?:attention\.key|k_proj)\.weight", "attn.k.weight"),
    (r"attention\.(?:attention\.value|v_proj)\.weight", "attn.v.weight"),
    (r"attention\.(?:attention\.q_bias|attention\.query\.bias|q_proj\.bias)", "attn.q_bias"),
    (r"attention\.(?:attention\.v_bias|attention\.value\.bias|v_proj\.bias)", "attn.v_bias"),
    (r"attention\.(?:attention\.key\.bias|k_proj\.bias)", "attn.k_bias"),  # dropped: softmax ignores it
    (r"attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"attn.proj.\1"),
    (r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"mlp.fc1.\1"),
    (r"(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"mlp.fc2.\1"),
    (r"layernorm_before\.(weight|bias)", r"norm1.\1"),
    (r"layernorm_after\.(weight|bias)", r"norm2.\1"),
)]


@dataclass
class HubCheckpoint:
    """A transformers checkpoint in this project's key names, and what it implies for the model."""

    layout: str  # e.g. "Hugging Face VideoMAEForPreTraining"
    state: dict[str, torch.Tensor]
    pos_tables: dict[str, str] = field(default_factory=dict)  # table -> kind its model used (not saved)
    classes: list[str] | None = None  # id2label, unless transformers' placeholder names
    notes: list[str] = field(default_factory=list)


def is_hf_layout(state: Mapping, config: Mapping | None) -> bool:
    """Whether ``state`` is a transformers VideoMAE / ViTMAE state dict (by its keys or config.json);
    a config.json of another transformers model type is an error naming it."""
    if config is not None and config.get("model_type") is not None:
        if config["model_type"] not in MODEL_TYPES:
            raise HubError(f"config.json model_type {config['model_type']!r} is not one mvd.models reads "
                           f"({', '.join(MODEL_TYPES)}, or a timm save_for_hf directory)")
        return True
    return any(_PATCH_PROJ.search(k) for k in state)


def our_key(key: str) -> str | None:
    """A transformers key (saved or in-memory name) -> ours, or None if not understood. Both
    directions use it: loading renames the hub's keys, ``mvd.export`` asks it which of our tensors
    fills each key of the transformers model it builds (so the key tables live here only). The
    separate ``attn.q/k/v.weight`` and ``attn.k_bias`` it returns are slices of (or beside) our
    fused ``attn.qkv.weight``."""
    for prefix in ("videomae.", "vit."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for pattern, ours in _TOP:
        if pattern.fullmatch(key):
            return pattern.sub(ours, key)
    for pattern, base in _LAYER:
        m = pattern.fullmatch(key)
        if m:
            for inner, ours in _IN_LAYER:
                if inner.fullmatch(m.group(2)):
                    return f"{base}{m.group(1)}." + inner.sub(ours, m.group(2))
            return None
    return None


def _rename_all(state: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    out, unknown, separate = {}, [], {}
    for key, value in state.items():
        name = our_key(key)
        if name is None:
            unknown.append(key)
        elif name in out or name in separate:
            raise HubError(f"keys {key!r} and another both map to {name!r}")
        elif name.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.k_bias")):
            separate[name] = value
        else:
            out[name] = value
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise HubError(f"keys not understood as a transformers VideoMAE / ViTMAE layout: "
                       f"{', '.join(map(repr, unknown[:3]))}{more}")
    bases = sorted({name.rsplit("attn.", 1)[0] for name in separate})
    nonzero_k = 0
    for base in bases:
        parts = [separate.get(f"{base}attn.{p}.weight") for p in "qkv"]
        if any(p is None for p in parts):
            lacking = [p for p, t in zip("qkv", parts) if t is None]
            raise HubError(f"layer {base!r} lacks its {'/'.join(lacking)} projection weight")
        out[f"{base}attn.qkv.weight"] = torch.cat(parts, dim=0)
        k_bias = separate.get(f"{base}attn.k_bias")
        nonzero_k += int(k_bias is not None and bool(k_bias.abs().max() > 0))
    if nonzero_k:
        notes.append(f"dropped the key bias of {nonzero_k} attention layers (softmax is invariant to it)")
    return out


def _architecture(state: Mapping[str, torch.Tensor], config: Mapping | None) -> tuple[str, str]:
    """(model_type, architecture) from config.json, else from the keys."""
    if config is not None and config.get("model_type") is not None:
        model_type = config["model_type"]  # one of MODEL_TYPES (is_hf_layout checked it)
    else:
        proj = next(v for k, v in state.items() if _PATCH_PROJ.search(k))
        model_type = "videomae" if proj.dim() == 5 else "vit_mae"
    archs = (config or {}).get("architectures") or []
    if archs:
        if archs[0] not in FITS:
            raise HubError(f"config.json architecture {archs[0]!r} is not one mvd.models reads ({', '.join(FITS)})")
        return model_type, archs[0]
    prefix = MODEL_TYPES[model_type]
    if any(k.startswith("classifier.") for k in state):
        return model_type, f"{prefix}ForVideoClassification"
    if any(k.startswith(("decoder.", "encoder_to_decoder.")) for k in state):
        return model_type, f"{prefix}ForPreTraining"
    return model_type, f"{prefix}Model"


def _class_names(config: Mapping | None) -> list[str] | None:
    id2label = (config or {}).get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        names = [str(name) for _, name in sorted((int(i), n) for i, n in id2label.items())]
    except (TypeError, ValueError):
        raise HubError(f"config.json id2label keys must be class indices, got {sorted(id2label)[:3]}") from None
    return None if all(re.fullmatch(r"LABEL_\d+", n) for n in names) else names


def _check_sizes(config: Mapping, model: nn.Module, has_decoder: bool, has_head: bool) -> list[str]:
    """Mismatches between config.json and the model, each as 'config field=value vs model option=value'."""
    pe, mlp_hidden = model.patch_embed, model.blocks[0].mlp.fc1.out_features
    pairs = [("hidden_size", "embed_dim", model.embed_dim), ("num_hidden_layers", "depth", model.depth),
             ("num_attention_heads", "num_heads", model.num_heads),
             ("intermediate_size", "mlp_ratio", mlp_hidden), ("patch_size", "patch_size", pe.patch_size),
             ("num_channels", "in_chans", pe.in_chans)]
    if pe.num_frames is not None:
        pairs.append(("tubelet_size", "tubelet_size", pe.tubelet_size))
    decoder = getattr(model, "decoder", None)
    if has_decoder and isinstance(decoder, MaskedDecoder):
        pairs += [("decoder_hidden_size", "decoder_embed_dim", decoder.embed_dim),
                  ("decoder_num_hidden_layers", "decoder_depth", decoder.depth),
                  ("decoder_num_attention_heads", "decoder_num_heads", decoder.num_heads),
                  ("decoder_intermediate_size", "mlp_ratio", decoder.blocks[0].mlp.fc1.out_features)]
    if has_head and hasattr(model, "num_classes") and isinstance(config.get("id2label"), Mapping):
        pairs.append(("num_labels", "num_classes", model.num_classes))
    wrong = []
    for hf_name, ours, value in pairs:
        theirs = len(config["id2label"]) if hf_name == "num_labels" else config.get(hf_name)
        if isinstance(theirs, (list, tuple)) and len(set(theirs)) == 1:
            theirs = theirs[0]
        if theirs is None or theirs == value:
            continue
        if ours == "mlp_ratio":
            hidden = config.get("decoder_hidden_size" if hf_name.startswith("decoder") else "hidden_size")
            want = f"mlp_ratio={theirs / hidden:g}" if hidden else "another mlp_ratio"
            wrong.append(f"{hf_name}={theirs} (the model's MLP width is {value}; needs {want})")
        else:
            wrong.append(f"{hf_name}={theirs} (the model has {ours}={value})")
    if config.get("hidden_act", "gelu") != "gelu":
        wrong.append(f"hidden_act={config['hidden_act']!r} (the model's MLP uses exact GELU, 'gelu')")
    return wrong


def _config_notes(config: Mapping, model: nn.Module) -> list[str]:
    notes, pe = [], model.patch_embed
    size, frames = config.get("image_size"), config.get("num_frames")
    if isinstance(size, (list, tuple)):
        size = size[0]
    if (size is not None and size != pe.img_size) or (frames is not None and pe.num_frames is not None
                                                       and frames != pe.num_frames):
        notes.append(f"config.json image_size={size}, num_frames={frames}; the model: img_size={pe.img_size}, "
                     f"num_frames={pe.num_frames} (position tables follow the model)")
    eps = config.get("layer_norm_eps")
    if eps is not None and eps != LN_EPS:
        notes.append(f"config.json layer_norm_eps={eps:g}; this model's LayerNorms use {LN_EPS:g} (the "
                     "original releases'), a relative difference of about eps / (2 var) per LayerNorm")
    ours = getattr(model, "norm_pix_loss", None)
    theirs = config.get("norm_pix_loss")
    if ours is not None and theirs is not None and bool(theirs) != ours:
        notes.append(f"config.json norm_pix_loss={str(bool(theirs)).lower()}, the model trains with "
                     f"norm_pix_loss={ours} (set model.overrides.norm_pix_loss to continue the "
                     "checkpoint's own objective)")
    return notes


def _model_label(model: nn.Module) -> str:
    return getattr(model, "model_name", "") or type(model).__name__


def convert_hf(state: Mapping[str, torch.Tensor], config: Mapping | None, model: nn.Module) -> HubCheckpoint:
    """A transformers VideoMAE / ViTMAE state dict (+ its config.json, if any) for ``model``."""
    model_type, arch = _architecture(state, config)
    layout = f"Hugging Face {arch}" + ("" if config is not None else " (by its keys; no config.json)")
    fits = FITS[arch]
    if not isinstance(model, fits):
        raise HubError(f"a {layout} checkpoint loads into {', '.join(_FAMILY[c] for c in fits)}; "
                       f"{_model_label(model)} is not one of them")
    notes: list[str] = []
    ours = _rename_all(state, notes)
    has_decoder = any(k.startswith("decoder.") for k in ours)
    has_final_norm = "norm.weight" in ours
    has_head = "head.weight" in ours
    label = _model_label(model)
    if has_head and isinstance(model, VideoViT) and "fc_norm.weight" not in ours:
        raise HubError(f"this {arch} has use_mean_pooling=false: it classifies the first token after a "
                       f"final LayerNorm, while {label} classifies the mean of all tokens (fc_norm). Load it "
                       "as a videomae_teacher_* or use a checkpoint with use_mean_pooling=true")
    if has_decoder and isinstance(model, VideoMAEPretrain) and has_final_norm != isinstance(model.norm, nn.LayerNorm):
        want = "true" if has_final_norm else "false"
        raise HubError(f"the checkpoint's encoder {'has' if has_final_norm else 'has no'} final LayerNorm before "
                       f"its decoder (use_mean_pooling={str(not has_final_norm).lower()}): build {label} "
                       f"with final_norm={want} (model.overrides.final_norm={want})")
    if config is not None:
        wrong = _check_sizes(config, model, has_decoder, has_head)
        if wrong:
            raise HubError(f"config.json does not describe {label}: {'; '.join(wrong)}. Create the model with "
                           "the checkpoint's sizes (model.overrides / teachers.<kind>.overrides in a config)")
        notes += _config_notes(config, model)
    tables = {}
    if model_type == "videomae":  # transformers builds VideoMAE's 1D sinusoid tables, never saves them
        tables["pos_embed"] = "sinusoid_1d"
        if has_decoder:
            tables["decoder.pos_embed"] = "sinusoid_1d"
    return HubCheckpoint(layout, ours, tables, _class_names(config), notes)


def check_timm_config(config: Mapping, model: nn.Module) -> str:
    """A timm ``save_for_hf`` config.json against the model; returns the layout's description."""
    arch = config.get("architecture", "?")
    width = config.get("num_features")
    if width is not None and width != model.embed_dim:
        raise HubError(f"config.json is timm's {arch} with num_features={width}, but {_model_label(model)} has "
                       f"embed_dim={model.embed_dim}; create the model with the checkpoint's sizes")
    return f"timm {arch} (save_for_hf)"


def is_timm_config(config: Mapping | None) -> bool:
    return config is not None and "architecture" in config and "model_type" not in config


def read_config(path) -> dict:
    """A config.json as a dict (raises HubError naming the file when it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise HubError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise HubError(f"{path} is not a JSON object")
    return config
