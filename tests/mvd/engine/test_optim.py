"""Parameter groups (no decay on 1-D params, positions, tokens), layer-wise lr decay, the
optimizer implementation choice, and the per-step cosine schedule with warm-up."""

import math

import pytest
import torch

from mvd.config import ConfigError, OptimConfig
from mvd.engine.optim import CosineSchedule, build_optimizer, param_groups
from mvd.models import create_model

TINY = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=32, depth=3, num_heads=2)


def _by_name(groups):
    return {n: g for g in groups for n in g["names"]}


def test_no_weight_decay_for_biases_norms_positions_and_tokens():
    model = create_model("mae_pretrain_base", **{k: v for k, v in TINY.items() if k != "num_frames"},
                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    groups = _by_name(param_groups(model, 0.05))
    for name, p in model.named_parameters():
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name
        assert groups[name]["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert groups["cls_token"]["weight_decay"] == 0.0
    assert groups["decoder.mask_token"]["weight_decay"] == 0.0
    assert groups["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05


def test_layer_decay_scales_by_depth_from_the_head_down():
    model = create_model("video_vit_small", **TINY, num_classes=5)
    groups = _by_name(param_groups(model, 0.05, layer_decay=0.5))
    # 3 blocks: embedding layer 0 -> 0.5^4, block i -> 0.5^(3-i), head/fc_norm -> 1
    assert groups["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5 ** 4)
    assert groups["blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5 ** 3)
    assert groups["blocks.2.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5 ** 1)
    assert groups["head.weight"]["lr_scale"] == 1.0 and groups["fc_norm.weight"]["lr_scale"] == 1.0


def test_frozen_parameters_are_left_out():
    model = create_model("video_vit_small", **TINY, num_classes=5)
    model.head.requires_grad_(False)
    names = {n for g in param_groups(model, 0.05) for n in g["names"]}
    assert "head.weight" not in names and "blocks.0.attn.qkv.weight" in names


def test_cpu_optimizer_is_foreach_adamw_and_the_choice_is_reported():
    model = create_model("video_vit_small", **TINY, num_classes=5)
    opt, impl = build_optimizer(model, OptimConfig(), torch.device("cpu"), lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW) and "foreach" in impl
    assert opt.defaults["betas"] == (0.9, 0.95)
    with pytest.raises(ConfigError, match="apex"):
        build_optimizer(model, OptimConfig(implementation="apex"), torch.device("cpu"), lr=1e-3)


def test_cosine_schedule_warms_up_linearly_then_decays_to_min_and_resumes_on_the_same_curve():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr_scale": 0.5}], lr=1.0)
    s = CosineSchedule(opt, lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert s.value(0) == 0.0 and s.value(5) == pytest.approx(0.5) and s.value(10) == 1.0
    assert s.value(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.value(110) == pytest.approx(0.1) and s.value(500) == pytest.approx(0.1)
    for _ in range(7):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * s.value(7))
    t = CosineSchedule(opt, lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    t.load_state_dict(s.state_dict())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * s.value(7))


def test_mvd_student_decays_its_mask_tokens_as_the_release():
    """The MVD release's skip list names 'mask_token' (exact match) while its parameters are
    'mask_token_img' / 'mask_token_vid': AdamW decays them. VideoMAE's top-level 'mask_token'
    is skipped, and so is ours (test above for MAE's)."""
    student = create_model("mvd_student_small", **TINY, decoder_embed_dim=16, decoder_depth=1,
                           decoder_num_heads=2, image_target_dim=16, video_target_dim=16)
    groups = _by_name(param_groups(student, 0.05))
    assert groups["decoder_img.mask_token"]["weight_decay"] == 0.05
    assert groups["decoder_vid.mask_token"]["weight_decay"] == 0.05
    assert groups["decoder_img.norm.weight"]["weight_decay"] == 0.0
    videomae = create_model("videomae_pretrain_small", **TINY, decoder_embed_dim=16,
                            decoder_depth=1, decoder_num_heads=2)
    assert _by_name(param_groups(videomae, 0.05))["decoder.mask_token"]["weight_decay"] == 0.0
