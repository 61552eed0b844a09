"""The analytical FLOP count agrees with torch's FlopCounterMode on tiny models, whichever SDPA
kernel torch picks on this machine (the fused CPU kernel of torch >= 2.14, or the math path)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dali_pipelines.masks import tube_mask
from mvd.models import create_model, freeze
from mvd.models.flops import count_flops, mvd_step_flops, student_flops, teacher_flops

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=4)


def counted_both_ways(fn) -> int:
    """The counter on the default kernel, checked against the math kernel (plain bmm + softmax,
    which every counter covers): attention must be counted, not silently dropped."""
    default = count_flops(fn)
    with sdpa_kernel([SDPBackend.MATH]):
        math_path = count_flops(fn)
    assert default == math_path, (default, math_path)
    return default


@torch.no_grad()
def test_student_and_teacher_flops_match_flop_counter():
    student = create_model("mvd_student_small", **TINY, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2,
                           image_target_dim=48, video_target_dim=40)
    mask = tube_mask(2, student.grid, 0.75, generator=torch.Generator().manual_seed(0))
    got = counted_both_ways(lambda: student(torch.randn(2, 3, 4, 32, 32), mask))
    assert abs(got - 2 * student_flops(student, 24)) <= 0.03 * got

    image_teacher = create_model("mae_teacher_base", **TINY)
    got = counted_both_ways(lambda: image_teacher(torch.randn(4, 3, 32, 32)))
    assert abs(got - 2 * teacher_flops(image_teacher, frames_per_clip=2)) <= 0.03 * got

    video_teacher = freeze(create_model("videomae_teacher_base", **TINY))
    got = counted_both_ways(lambda: video_teacher(torch.randn(2, 3, 4, 32, 32)))
    assert abs(got - 2 * teacher_flops(video_teacher)) <= 0.03 * got

    step = mvd_step_flops(student, image_teacher, video_teacher, mask_ratio=0.75, batch=2)
    assert step["total"] == step["student_forward"] * 3 + step["teachers_forward"]


def test_attention_is_a_share_the_tolerance_would_catch():
    """Without attention the count would miss more than the 3 % the test above allows."""
    teacher = create_model("mae_teacher_base", **TINY)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        total = count_flops(lambda: teacher(x))
        n, d = teacher.num_patches + 1, teacher.embed_dim
        attention = teacher.depth * 2 * 2 * n * n * d  # QK^T and AV per block
    assert attention > 0.03 * total


@pytest.mark.parametrize("backend", [SDPBackend.MATH, None])
def test_count_flops_counts_attention_backward(backend):
    q = torch.randn(2, 4, 16, 8, requires_grad=True)

    def run():
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    if backend is None:
        got = count_flops(run)
    else:
        with sdpa_kernel([backend]):
            got = count_flops(run)
    forward = 2 * (2 * 2 * 4 * 16 * 16 * 8)  # two (16x8)@(8x16)-sized matmuls per head
    assert got >= 3 * forward  # backward is at least twice the forward
