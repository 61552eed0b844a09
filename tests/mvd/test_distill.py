"""mvd_forward: targets from the frozen teachers, gradients only into the student."""

import pytest
import torch

from mvd.distill import mvd_forward
from mvd.losses import FeatureLossConfig
from dali_pipelines.masks import tube_mask
from mvd.models import create_model, freeze

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=1, num_heads=2)
DEC = dict(decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2, image_target_dim=24, video_target_dim=20)


def setup(targets=("image", "video")):
    torch.manual_seed(0)
    student = create_model("mvd_student_small", **TINY, **DEC, targets=targets)
    image_teacher = freeze(create_model("mae_teacher_base", **dict(TINY, embed_dim=24, num_heads=2)))
    video_teacher = freeze(create_model("videomae_teacher_base", **dict(TINY, embed_dim=20, num_heads=2)))
    video = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, student.grid, 0.75, generator=torch.Generator().manual_seed(1))
    return student, image_teacher, video_teacher, video, mask


def test_loss_matches_explicit_computation_and_grads_reach_only_the_student():
    student, it, vt, video, mask = setup()
    loss, parts = mvd_forward(student, it, vt, video, video, mask)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in list(it.parameters()) + list(vt.parameters()))

    with torch.no_grad():
        pred_img, pred_vid = student(video, mask)
        frames = video[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32)
        img = it(frames).reshape(2, 2, 16, 24).reshape(2, 32, 24)  # (B, T'*L, D): (t, h, w) order
        vid = vt(video)
        want_i = torch.nn.functional.smooth_l1_loss(pred_img, img[mask].reshape(2, -1, 24))
        want_v = torch.nn.functional.smooth_l1_loss(pred_vid, vid[mask].reshape(2, -1, 20))
    torch.testing.assert_close(parts["loss_img"], want_i)
    torch.testing.assert_close(parts["loss_vid"], want_v)
    torch.testing.assert_close(loss.detach(), want_i + want_v)


@pytest.mark.parametrize("targets", [("image",), ("video",)])
def test_single_teacher(targets):
    student, it, vt, video, mask = setup(targets)
    loss, parts = mvd_forward(student, it if "image" in targets else None, vt if "video" in targets else None,
                              video, None, mask, loss_cfg=FeatureLossConfig(kind="l2", normalize_targets=True))
    loss.backward()
    assert set(parts) == {"loss_img" if targets == ("image",) else "loss_vid"}


def test_teacher_and_student_disagreeing_is_an_error():
    student, it, vt, video, mask = setup(("image",))
    with pytest.raises(ValueError, match="no video decoder"):
        mvd_forward(student, it, vt, video, None, mask)
    student, it, vt, video, mask = setup()
    wide = freeze(create_model("videomae_teacher_base", **dict(TINY, embed_dim=32, num_heads=2)))
    with pytest.raises(ValueError, match="target dim"):
        mvd_forward(student, it, wide, video, None, mask)
