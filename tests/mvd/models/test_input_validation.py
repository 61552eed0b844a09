"""Bad input fails at the boundary with a message that says what is wrong."""

import pytest
import torch

from dali_pipelines.masks import tube_mask
from mvd.models import create_model

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def student():
    return create_model("mvd_student_small", **TINY, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)


def good_mask():
    return tube_mask(2, (2, 4, 4), 0.5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape,message", [
    ((2, 4, 32, 32), r"expected input \(B, C, T, H, W\)"),
    ((2, 1, 4, 32, 32), "expected 3 channels"),
    ((2, 3, 4, 30, 30), "not divisible by patch_size 8"),
    ((2, 3, 3, 32, 32), "not divisible by tubelet_size 2"),
    ((2, 3, 4, 40, 40), "built for 4x32x32"),
])
def test_bad_video_shape(student, shape, message):
    with pytest.raises(ValueError, match=message):
        student(torch.randn(shape), good_mask())


def test_mask_of_wrong_length(student):
    with pytest.raises(ValueError, match=r"one entry per token"):
        student(torch.randn(2, 3, 4, 32, 32), torch.zeros(2, 30, dtype=torch.bool))


def test_mask_not_bool(student):
    with pytest.raises(ValueError, match="bool"):
        student(torch.randn(2, 3, 4, 32, 32), good_mask().float())


def test_uneven_masked_count_across_batch(student):
    mask = good_mask()
    mask[1, mask[1].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number of tokens; got between 15 and 16"):
        student(torch.randn(2, 3, 4, 32, 32), mask)


def test_image_teacher_wants_frames():
    teacher = create_model("mae_teacher_base", **TINY)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        teacher(torch.randn(2, 3, 4, 32, 32))


def test_constructor_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="img_size 30 is not divisible"):
        create_model("video_vit_small", **dict(TINY, img_size=30))
    with pytest.raises(ValueError, match="num_frames 5"):
        create_model("video_vit_small", **dict(TINY, num_frames=5))
    with pytest.raises(ValueError, match="targets"):
        create_model("mvd_student_small", **TINY, targets=("audio",))
