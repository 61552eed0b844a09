"""The analytical FLOP count agrees with torch's FlopCounterMode on tiny models."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvd.masking import tube_mask
from mvd.models import create_model, freeze
from mvd.models.flops import mvd_step_flops, student_flops, teacher_flops

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=4)


def counted(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_student_and_teacher_flops_match_flop_counter():
    student = create_model("mvd_student_small", **TINY, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2,
                           image_target_dim=48, video_target_dim=40)
    mask = tube_mask(2, student.grid, 0.75, generator=torch.Generator().manual_seed(0))
    got = counted(lambda: student(torch.randn(2, 3, 4, 32, 32), mask))
    assert abs(got - 2 * student_flops(student, 24)) <= 0.03 * got

    image_teacher = create_model("mae_teacher_base", **TINY)
    got = counted(lambda: image_teacher(torch.randn(4, 3, 32, 32)))
    assert abs(got - 2 * teacher_flops(image_teacher, frames_per_clip=2)) <= 0.03 * got

    video_teacher = freeze(create_model("videomae_teacher_base", **TINY))
    got = counted(lambda: video_teacher(torch.randn(2, 3, 4, 32, 32)))
    assert abs(got - 2 * teacher_flops(video_teacher)) <= 0.03 * got

    step = mvd_step_flops(student, image_teacher, video_teacher, mask_ratio=0.75, batch=2)
    assert step["total"] == step["student_forward"] * 3 + step["teachers_forward"]
