"""Feature and pixel losses against hand computations."""

import pytest
import torch

from torch.utils._python_dispatch import TorchDispatchMode

from dali_pipelines.normalize import IMAGENET_MEAN, IMAGENET_STD
from mvd.losses import (FeatureLossConfig, distill_loss, feature_loss, normalize_patch_pixels,
                        normalize_pixels_mae, unnormalize_video)
from mvd.models.pretrain import VideoMAEPretrain


def test_feature_losses_by_hand():
    pred = torch.tensor([[[0.0, 3.0], [0.5, -1.0]]])
    target = torch.tensor([[[0.2, 0.0], [0.0, 1.0]]])
    d = (pred - target).abs()  # 0.2, 3, 0.5, 2
    smooth = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()  # beta 1
    assert torch.allclose(feature_loss(pred, target, "smooth_l1"), smooth)
    assert torch.allclose(feature_loss(pred, target, "l1"), d.mean())
    assert torch.allclose(feature_loss(pred, target, "l2"), (d ** 2).mean())


def test_distill_loss_weights_normalisation_and_single_teacher():
    g = torch.Generator().manual_seed(0)
    pi, ti, pv, tv = (torch.randn(2, 5, 6, generator=g) for _ in range(4))
    cfg = FeatureLossConfig(image_weight=0.5, video_weight=2.0, normalize_targets=True)
    loss, parts = distill_loss(pi, pv, ti, tv, cfg)
    ln = lambda t: (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-6)
    want_i = torch.nn.functional.smooth_l1_loss(pi, ln(ti))
    want_v = torch.nn.functional.smooth_l1_loss(pv, ln(tv))
    torch.testing.assert_close(loss, 0.5 * want_i + 2.0 * want_v)
    torch.testing.assert_close(parts["loss_img"], want_i)
    loss, parts = distill_loss(None, pv, None, tv)
    assert set(parts) == {"loss_vid"}
    with pytest.raises(ValueError, match="without its counterpart"):
        distill_loss(pi, None, None, None)


def test_pixel_normalisations_by_hand():
    x = torch.randn(1, 2, 8, 3)
    y = normalize_patch_pixels(x)
    p = x[0, 1, :, 2]
    torch.testing.assert_close(y[0, 1, :, 2], (p - p.mean()) / (p.std() + 1e-6))
    z = normalize_pixels_mae(x.flatten(2))
    q = x[0, 0].flatten()
    torch.testing.assert_close(z[0, 0], (q - q.mean()) / (q.var() + 1e-6) ** 0.5)


class _Ops(TorchDispatchMode):
    """The aten ops run inside the block (what reaches the kernels, factories included)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_stage1_pixel_target_builds_no_tensor_from_host_data_in_the_step():
    """A tensor made from a Python list at every step is a host-to-device copy per step on a GPU
    (a sync `set_sync_debug_mode("error")` rejects). The ImageNet constants are the model's
    unsaved buffers: a VideoMAE stage-1 step makes no tensor from host data, the buffers are not
    in the state dict, and un-normalising is x * std + mean by hand."""
    model = VideoMAEPretrain(img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=1, num_heads=2,
                             decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
    assert not any(k.startswith("pixel_") for k in model.state_dict())
    video = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :6] = True
    with _Ops() as seen:
        model(video, mask, num_masked=6)
    assert not [op for op in seen.ops if "lift_fresh" in op or "aten.tensor" in op], seen.ops
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(unnormalize_video(video, model.pixel_mean, model.pixel_std), video * std + mean)