"""``mvd-export RUN_OR_CHECKPOINT --format hf --out DIR``: a model trained here as a folder that
transformers' ``from_pretrained`` reads, with a model card.

- a fine-tuned classifier (``video_vit_*``) -> ``VideoMAEForVideoClassification`` (config.json
  with id2label from the run's class names, model.safetensors, preprocessor_config.json for
  ``VideoMAEImageProcessor`` with the training mean / std and sizes);
- a VideoMAE stage-1 model (``videomae_pretrain_*``) -> ``VideoMAEModel`` (the encoder; the pixel
  decoder is dropped); an MAE stage-1 model (``mae_pretrain_*``) -> ``ViTMAEModel`` (likewise).

transformers' VideoMAE computes its position table (the 1D sinusoid) and loads none, so only a
model with that table is exported: a classifier fine-tuned with the MVD default 3D sincos table,
and the MVD student (always 3D sincos), would compute other outputs in transformers, and are
refused with the reason and the fix. The key names come from ``mvd.models.hub.our_key``, the
mapping the loader uses the other way; exporting builds the transformers model, fills every one
of its tensors from ours and lets ``save_pretrained`` write it.

transformers is a heavy optional dependency (the ``hf`` extra): imported inside the functions
that need it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mvd.config import Config, ConfigError, from_dict, load_config
from mvd.engine.weights import resolve_weights
from mvd.layers import LN_EPS
from mvd.models import CheckpointError, MAEPretrain, VideoMAEPretrain, VideoViT, create_model, load_checkpoint
from mvd.models.checkpoint import open_checkpoint
from mvd.models.hub import our_key
from mvd.models.student import MVDStudent
from dali_pipelines.manifest import ShardDirError, read_manifest
from dali_pipelines.normalize import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("hf",)


class ExportError(ValueError):
    """A source that cannot be exported; the message names what is missing and how to fix it."""


@dataclass
class Source:
    """What the export reads: the run's config, the weights to load, the run dir (for its card)."""

    cfg: Config
    weights: str | dict  # a path, or a run's newest training checkpoint (read)
    where: str  # what the user named
    run_dir: Path | None
    classes: list[str] | None


def open_source(path: str) -> Source:
    """A run dir (config.yaml + model.safetensors or a checkpoint), a run's model.safetensors or a
    training checkpoint (step-*.pt, which carries its config)."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{path}: no such run directory or checkpoint")
    try:
        weights = resolve_weights(path, "RUN_OR_CHECKPOINT")
    except ConfigError as e:
        raise ExportError(str(e)) from None
    src = open_checkpoint(weights)  # a path, or a run's newest checkpoint already read
    obj = src.obj
    run_dir = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else p.parent)
    cfg_path = run_dir / "config.yaml"
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        cfg = from_dict(Config, obj["config"], source=f"{path} (its config)")
    elif cfg_path.is_file():
        cfg = load_config(cfg_path)
    else:
        raise ExportError(f"{path}: no config.yaml beside it and no config inside it; mvd-export needs "
                          "the run's config (model.name, model.overrides, data.input_size, "
                          "data.num_frames) to rebuild the model: point it at the run directory")
    classes = src.metadata.get("mvd_classes")
    return Source(cfg, weights, path, run_dir if run_dir.is_dir() else None,
                  json.loads(classes) if isinstance(classes, str) else classes)


def build_model(src: Source) -> nn.Module:
    """Our model, rebuilt from the run's config, with the source's weights (all of them)."""
    cfg = src.cfg
    kw = {"img_size": cfg.data.input_size, "num_frames": cfg.data.num_frames, **cfg.model.overrides}
    if cfg.model.name.startswith("video_vit_") and not cfg.model.name.startswith("video_vit_det_"):
        if not src.classes:
            raise ExportError(f"{src.where}: a classifier with no class names (model.safetensors metadata "
                              "'mvd_classes' / a checkpoint's model_meta): the export's id2label needs them. "
                              "Export the run directory of a fine-tune made by mvd-train, which records them")
        kw["num_classes"] = len(src.classes)
    model = create_model(cfg.model.name, **kw)
    try:
        report = load_checkpoint(model, src.weights)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if report.new:
        raise ExportError(f"{src.where} lacks {', '.join(report.new)}: not a trained {cfg.model.name}")
    return model.eval()


def _hf_target(model: nn.Module, name: str) -> str:
    """The transformers architecture the model becomes; refusals say why and what would work."""
    table = getattr(getattr(model, "pos_embed", None), "kind", None)
    if isinstance(model, MVDStudent):
        raise ExportError(f"{name}: the MVD student's encoder uses the fixed 3D sincos position table; "
                          "transformers' VideoMAEModel always computes the 1D sinusoid table (it loads "
                          "none), so it would compute other features. Export the fine-tuned classifier "
                          "instead (fine-tuned with model.overrides.pos_embed=sinusoid_1d)")
    if type(model) is VideoViT:
        if table != "sinusoid_1d":
            raise ExportError(f"{name}: this classifier uses the {table} position table; transformers' "
                              "VideoMAEForVideoClassification always computes the 1D sinusoid table (it "
                              "loads none), so its logits would differ. Fine-tune with "
                              "model.overrides.pos_embed=sinusoid_1d to publish the model")
        return "VideoMAEForVideoClassification"
    if isinstance(model, VideoMAEPretrain):
        return "VideoMAEModel"
    if isinstance(model, MAEPretrain):
        return "ViTMAEModel"
    raise ExportError(f"{name}: no transformers architecture for {type(model).__name__}; mvd-export "
                      "writes video_vit_* (VideoMAEForVideoClassification), videomae_pretrain_* "
                      "(VideoMAEModel) and mae_pretrain_* (ViTMAEModel)")


def hf_config(model: nn.Module, arch: str, classes: list[str] | None, cfg: Config):
    """The transformers config that describes ``model`` exactly."""
    from transformers import VideoMAEConfig, ViTMAEConfig

    pe, attn = model.patch_embed, model.blocks[0].attn
    common = dict(image_size=pe.img_size, patch_size=pe.patch_size, num_channels=pe.in_chans,
                  hidden_size=model.embed_dim, num_hidden_layers=model.depth,
                  num_attention_heads=model.num_heads,
                  intermediate_size=model.blocks[0].mlp.fc1.out_features, hidden_act="gelu",
                  layer_norm_eps=LN_EPS, qkv_bias=attn.q_bias is not None, architectures=[arch])
    if arch == "ViTMAEModel":
        # ViTMAEModel masks at random in forward (config.mask_ratio): the run's training ratio;
        # mask_ratio=0.0 keeps every patch (in an order given by its `noise` argument)
        return ViTMAEConfig(**common, mask_ratio=cfg.data.mask_ratio, norm_pix_loss=model.norm_pix_loss)
    extra = dict(num_frames=pe.num_frames, tubelet_size=pe.tubelet_size)
    if arch == "VideoMAEForVideoClassification":
        return VideoMAEConfig(**common, **extra, use_mean_pooling=True,
                              id2label={i: c for i, c in enumerate(classes)},
                              label2id={c: i for i, c in enumerate(classes)})
    # VideoMAEModel: use_mean_pooling=False is the layout with a final LayerNorm
    return VideoMAEConfig(**common, **extra, use_mean_pooling=not isinstance(model.norm, nn.LayerNorm),
                          norm_pix_loss=model.norm_pix_loss)


def _ours(key: str, state: dict[str, torch.Tensor], model: nn.Module) -> tuple[str, torch.Tensor]:
    """(the name of our tensor it came from, the tensor) for one transformers key."""
    name = our_key(key)
    if name is None:
        raise ExportError(f"transformers key {key!r} has no counterpart in mvd.models.hub's key tables")
    base, _, leaf = name.rpartition("attn.")
    if leaf in ("q.weight", "k.weight", "v.weight"):
        fused = f"{base}attn.qkv.weight"
        return fused, state[fused].chunk(3)[" qkv".index(leaf[0]) - 1]
    if leaf == "k_bias":  # ours has none (softmax ignores it): zero
        return f"{base}attn.q_bias", torch.zeros_like(state[f"{base}attn.q_bias"])
    if name == "pos_embed":  # ViTMAE stores its (fixed) table: ours is a buffer
        return name, model.pos_embed.table
    if name not in state:
        raise ExportError(f"transformers key {key!r} maps to {name!r}, which {type(model).__name__} lacks")
    return name, state[name]


def to_hf_model(model: nn.Module, arch: str, config):
    """The transformers model of ``arch`` holding ``model``'s weights; every transformers tensor is
    filled and every one of ours is used (a decoder's are dropped, and said so by the caller)."""
    import transformers

    hf = getattr(transformers, arch)(config).eval()
    state = model.state_dict()
    filled, used = {}, set()
    for key, value in hf.state_dict().items():
        name, ours = _ours(key, state, model)
        if tuple(ours.shape) != tuple(value.shape):
            raise ExportError(f"{key}: ours ({name}) is {tuple(ours.shape)}, transformers' is {tuple(value.shape)}")
        filled[key] = ours.detach().to(value.dtype).clone()
        used.add(name)
    unused = [k for k in state if k not in used and not k.startswith("decoder.")]
    if unused:
        raise ExportError(f"{arch} has no place for {', '.join(unused[:3])}: the export would lose them")
    hf.load_state_dict(filled, strict=True)
    return hf


def _read_json_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def _data_line(directory: str, what: str) -> str:
    if not directory:
        return f"- {what}: none"
    try:
        m = read_manifest(directory, missing_ok=True)
    except ShardDirError as exc:
        return f"- {what}: `{directory}` (its manifest was not readable at export time: {exc})"
    if m is None:
        return f"- {what}: `{directory}` (no manifest.json there at export time)"
    return (f"- {what}: `{directory}` (dataset `{m.get('dataset')}`, {len(m.get('classes') or [])} classes, "
            f"{m.get('samples')} samples, {len(m.get('shards') or [])} shards)")


def model_card(src: Source, model: nn.Module, arch: str, dropped: list[str]) -> str:
    cfg = src.cfg
    run = src.run_dir
    metrics = _read_json_lines(run / "metrics.jsonl") if run else []
    evaluation = json.loads((run / "eval.json").read_text()) if run and (run / "eval.json").is_file() else None
    lines = [f"# {cfg.model.name} ({cfg.task}), exported from mvd-train", "",
             f"A transformers `{arch}`, trained with this project's `{cfg.task}` task "
             "(Masked Video Distillation training system) and exported by `mvd-export --format hf`.", ""]
    if arch == "VideoMAEForVideoClassification":
        lines += ["```python",
                  "from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor",
                  "model = VideoMAEForVideoClassification.from_pretrained(DIR)",
                  "processor = VideoMAEImageProcessor.from_pretrained(DIR)",
                  "```", ""]
    else:
        lines += ["```python", f"from transformers import {arch}", f"model = {arch}.from_pretrained(DIR)",
                  "```", ""]
    lines += ["## Model", "",
              f"- {model.depth} blocks, width {model.embed_dim}, {model.num_heads} heads, patch "
              f"{model.patch_embed.patch_size}"
              + (f", tubelet {model.patch_embed.tubelet_size}, {model.patch_embed.num_frames} frames"
                 if model.patch_embed.num_frames else "")
              + f", input {model.patch_embed.img_size} px",
              f"- position table: {model.pos_embed.kind} (what transformers computes for this architecture)"]
    if dropped:
        lines.append(f"- the encoder only: the training model's {' and '.join(dropped)} "
                     f"{'is' if len(dropped) == 1 else 'are'} dropped")
    if arch == "VideoMAEForVideoClassification":
        lines.append("- transformers' classifier LayerNorm (fc_norm) uses eps 1e-5, ours 1e-6: logits agree to "
                     "about 1e-5 on the exporting run's test")
    if arch == "ViTMAEModel":
        lines.append(f"- ViTMAEModel masks patches at random in forward: config mask_ratio={cfg.data.mask_ratio} "
                     "(the training ratio); set mask_ratio=0.0 for features of every patch")
    lines += ["", "## Recipe", "", f"- task `{cfg.task}`, model `{cfg.model.name}`, overrides "
              f"`{json.dumps(cfg.model.overrides)}`",
              f"- {cfg.data.num_frames} frames every {cfg.data.sampling_rate} ({cfg.data.sampling}), "
              f"{cfg.data.input_size} px, per-process batch {cfg.data.batch_size}",
              f"- AdamW base lr {cfg.optim.base_lr}, betas {list(cfg.optim.betas)}, weight decay "
              f"{cfg.optim.weight_decay}; {cfg.schedule.epochs} epochs ({cfg.schedule.warmup_epochs} warm-up)",
              "", "## Data", "", _data_line(cfg.data.dir, "training shards"),
              _data_line(cfg.eval.dir, "evaluation shards")]
    if src.classes:
        shown = ", ".join(src.classes[:10]) + (", ..." if len(src.classes) > 10 else "")
        lines.append(f"- {len(src.classes)} classes: {shown}")
    lines += ["", "## Metrics", ""]
    if metrics:
        last = metrics[-1]
        parts = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("loss") and v is not None)
        lines.append(f"- training: {len(metrics)} logged steps; last step {last['step']}: {parts}")
    else:
        lines.append("- training: no metrics.jsonl beside the checkpoint")
    if evaluation:
        shown = ", ".join(f"{k} {v}" for k, v in evaluation.items() if k in ("top1", "top5", "videos", "views", "step"))
        lines.append(f"- evaluation (eval.json): {shown}")
    return "\n".join(lines) + "\n"


def preprocessor(cfg: Config):
    """``VideoMAEImageProcessor`` for the evaluation views: short side to input_size, centre crop,
    rescale to [0, 1], ImageNet mean / std (the training normalisation)."""
    from transformers import VideoMAEImageProcessor

    s = cfg.data.input_size
    return VideoMAEImageProcessor(do_resize=True, size={"shortest_edge": s}, do_center_crop=True,
                                  crop_size={"height": s, "width": s}, do_rescale=True,
                                  rescale_factor=1 / 255, do_normalize=True,
                                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


def export_hf(path: str, out: str | Path) -> dict:
    """Write ``path``'s model to ``out`` as a transformers folder; returns a summary."""
    try:
        import transformers  # noqa: F401  (the hf extra)
    except ImportError:
        raise ExportError("mvd-export --format hf needs transformers: pip install 'mvd[hf]'") from None
    src = open_source(path)
    model = build_model(src)
    arch = _hf_target(model, f"{src.where} ({src.cfg.model.name})")
    hf = to_hf_model(model, arch, hf_config(model, arch, src.classes, src.cfg))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    dropped = ["pixel decoder"] if isinstance(model, (VideoMAEPretrain, MAEPretrain)) else []
    if arch == "VideoMAEForVideoClassification":
        preprocessor(src.cfg).save_pretrained(out)
    (out / "README.md").write_text(model_card(src, model, arch, dropped))
    return {"out": str(out), "architecture": arch, "model": src.cfg.model.name,
            "classes": len(src.classes or []), "dropped": dropped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mvd-export", description="Export a trained model (a run directory, its model.safetensors, "
        "or a training checkpoint) as a Hugging Face transformers folder with a model card: video_vit_* "
        "-> VideoMAEForVideoClassification, videomae_pretrain_* -> VideoMAEModel, mae_pretrain_* -> "
        "ViTMAEModel (decoders dropped). Only models whose position table transformers computes "
        "(1D sinusoid for VideoMAE) are exported; others are refused with the reason.")
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        summary = export_hf(args.source, args.out)
    except (ExportError, ConfigError) as e:
        print(f"mvd-export: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
