"""Initialisation as the releases do it: the patch embedding keeps PyTorch's Conv3d default in
the VideoMAE / MVD models and MAE's xavier in the MAE ones; mask tokens are truncated at one
std (+-0.02) where the VideoMAE / MVD releases' trunc_normal_ wrapper truncates them."""

import math

import pytest
import torch

from mvd.models import create_model

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DEC = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def fan_in(conv: torch.nn.Module) -> int:
    return conv.weight[0].numel()


@pytest.mark.parametrize("name, kw", [
    ("mvd_student_small", {**DEC, "num_frames": 8, "image_target_dim": 32, "video_target_dim": 32}),
    ("videomae_pretrain_small", {**DEC, "num_frames": 8}),
    ("video_vit_small", {"num_frames": 8, "num_classes": 5}),
])
def test_video_patch_embedding_keeps_pytorchs_conv3d_init(name, kw):
    torch.manual_seed(0)
    proj = create_model(name, **TINY, **kw).patch_embed.proj
    bound = 1 / math.sqrt(fan_in(proj))  # kaiming_uniform(a=sqrt(5)) and its bias rule
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound
    assert proj.bias.abs().max() <= bound and proj.bias.abs().max() > 0  # not zeroed


def test_mae_patch_embedding_is_xavier_like_a_linear():
    torch.manual_seed(0)
    proj = create_model("mae_pretrain_base", **TINY, **DEC).patch_embed.proj
    xavier = math.sqrt(6 / (fan_in(proj) + proj.weight.shape[0]))
    assert 1 / math.sqrt(fan_in(proj)) < proj.weight.abs().max() <= xavier
    assert proj.bias.abs().max() > 0  # MAE keeps the conv's default bias


def test_mask_tokens_are_truncated_at_one_std_except_maes():
    torch.manual_seed(0)
    student = create_model("mvd_student_small", **TINY, **DEC, num_frames=8, image_target_dim=32,
                           video_target_dim=32)
    videomae = create_model("videomae_pretrain_small", **TINY, **DEC, num_frames=8)
    for token in (student.decoder_img.mask_token, student.decoder_vid.mask_token,
                  videomae.decoder.mask_token):
        assert 0 < token.abs().max() <= 0.02
    mae = create_model("mae_pretrain_base", **TINY, **DEC)
    assert mae.decoder.mask_token.abs().max() > 0.02  # MAE: normal_(std=.02), not truncated
