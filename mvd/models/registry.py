"""The project's own model registry: ``create_model(name, **overrides)`` and ``list_models()``.

Names are ``<family>_<size>``. Each family has a class and per-size defaults (the spec's
reference recipe); overrides replace any default. Nothing is registered into timm.
"""

from __future__ import annotations

from types import MappingProxyType

from torch import nn

from mvd.models.classifier import VideoViT
from mvd.models.detector import VideoViTDetector
from mvd.models.pretrain import MAEPretrain, VideoMAEPretrain
from mvd.models.student import MVDStudent
from mvd.models.teachers import MAETeacher, VideoMAETeacher

# encoder dim / depth / heads
_ENCODERS = {
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
_STUDENT = {  # decoders per the spec; target dims of the reference teachers (B for S/B, L for L, H for H)
    "small": dict(decoder_depth=2, decoder_embed_dim=384, decoder_num_heads=6, drop_path_rate=0.1,
                  image_target_dim=768, video_target_dim=768),
    "base": dict(decoder_depth=2, decoder_embed_dim=768, decoder_num_heads=12, drop_path_rate=0.1,
                 image_target_dim=768, video_target_dim=768),
    "large": dict(decoder_depth=4, decoder_embed_dim=512, decoder_num_heads=8, drop_path_rate=0.1,
                  image_target_dim=1024, video_target_dim=1024),
    "huge": dict(decoder_depth=8, decoder_embed_dim=640, decoder_num_heads=8, drop_path_rate=0.2,
                 image_target_dim=1280, video_target_dim=1280),
}
_VIDEOMAE_DECODER = {  # VideoMAE release: decoder depth 4, width/heads by size
    "small": dict(decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(decoder_embed_dim=384, decoder_num_heads=6),
    "large": dict(decoder_embed_dim=512, decoder_num_heads=8),
    "huge": dict(decoder_embed_dim=640, decoder_num_heads=8),
}
_CLASSIFIER = {  # fine-tuning recipe: drop path 0.1 (0.3 for L/H), dropout 0.5 before the head for L/H
    "small": dict(drop_path_rate=0.1), "base": dict(drop_path_rate=0.1),
    "large": dict(drop_path_rate=0.3, head_drop_rate=0.5), "huge": dict(drop_path_rate=0.3, head_drop_rate=0.5),
}
_DETECTOR = {  # AVA recipe (VideoMAE-Action-Detection scripts/ava/*): drop path 0.2 at every size
    s: dict(drop_path_rate=0.2) for s in ("small", "base", "large", "huge")
}
# MAE huge is ViT-H/14; the MVD recipe feeds it a 196x196 view so its 14x14 grid lines up with the student's
_MAE_HUGE = dict(patch_size=14, img_size=196)


def _family(cls, sizes: dict[str, dict]) -> tuple[type, MappingProxyType]:
    return cls, MappingProxyType({s: MappingProxyType({**_ENCODERS[s], **extra}) for s, extra in sizes.items()})


_FAMILIES = MappingProxyType({
    "mvd_student": _family(MVDStudent, _STUDENT),
    "mae_teacher": _family(MAETeacher, {"base": {}, "large": {}, "huge": _MAE_HUGE}),
    "videomae_teacher": _family(VideoMAETeacher, {s: {} for s in _ENCODERS}),
    "video_vit": _family(VideoViT, _CLASSIFIER),
    "video_vit_det": _family(VideoViTDetector, _DETECTOR),
    "videomae_pretrain": _family(VideoMAEPretrain, _VIDEOMAE_DECODER),
    "mae_pretrain": _family(MAEPretrain, {"base": {}, "large": {}, "huge": {"patch_size": 14}}),
})


def list_models() -> list[str]:
    """All registered names, sorted."""
    return sorted(f"{family}_{size}" for family, (_, sizes) in _FAMILIES.items() for size in sizes)


def model_defaults(name: str) -> dict:
    """The constructor arguments ``create_model(name)`` uses before overrides."""
    family, _, size = name.rpartition("_")
    if family not in _FAMILIES or size not in _FAMILIES[family][1]:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return dict(_FAMILIES[family][1][size])


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace the per-size defaults (img_size, depth, ...)."""
    kwargs = {**model_defaults(name), **overrides}  # raises on an unknown name
    cls = _FAMILIES[name.rpartition("_")[0]][0]
    try:
        model = cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"{name}: bad override ({e}); {cls.__name__} takes the arguments of its constructor") from e
    model.model_name = name
    return model
