"""The AVA detector (video_vit_det_*): the time-averaged token map, RoIAlign on the token grid
against a bilinear sampler written out here, loading an MVD student's or a classifier's encoder,
and the head's place in layer-wise lr decay."""

import math

import numpy as np
import pytest
import torch

from mvd.engine.optim import param_groups
from mvd.models import create_model, list_models, load_checkpoint

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=4,
            drop_path_rate=0.0)
STUDENT = dict(TINY, decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2, image_target_dim=24,
               video_target_dim=20)


def randomized(name, seed=0, **kw):
    model = create_model(name, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def clip(seed=1, batch=2):
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def bilinear(fmap: np.ndarray, y: float, x: float) -> np.ndarray:
    """fmap (D, H, W) at continuous (y, x) in cell-index units (cell centres at integers); zero
    outside [-1, H] x [-1, W], clamped to the edge within a cell of it (Detectron's rule)."""
    d, h, w = fmap.shape
    if y < -1 or y > h or x < -1 or x > w:
        return np.zeros(d)
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, x1]
            + ly * (1 - lx) * fmap[:, y1, x0] + ly * lx * fmap[:, y1, x1])


def roi_feature(fmap: np.ndarray, box, bins: int = 7) -> np.ndarray:
    """RoIAlign(aligned=True, adaptive sampling) of one box in grid units, then max over the
    bins: each bin averages ceil(size / bins) x ceil(size / bins) bilinear samples at its
    sub-cell centres, shifted by half a cell so a grid cell's centre is its index."""
    x1, y1, x2, y2 = (v - 0.5 for v in box)
    bw, bh = (x2 - x1) / bins, (y2 - y1) / bins
    ny, nx = math.ceil((y2 - y1) / bins), math.ceil((x2 - x1) / bins)
    out = np.full(fmap.shape[0], -np.inf)
    for i in range(bins):
        for j in range(bins):
            acc = sum(bilinear(fmap, y1 + i * bh + (a + 0.5) * bh / ny, x1 + j * bw + (c + 0.5) * bw / nx)
                      for a in range(ny) for c in range(nx))
            out = np.maximum(out, acc / (ny * nx))
    return out


def test_every_size_is_registered_with_the_ava_recipes_drop_path():
    names = [n for n in list_models() if n.startswith("video_vit_det_")]
    assert names == [f"video_vit_det_{s}" for s in ("base", "huge", "large", "small")]
    with torch.device("meta"):
        det = create_model("video_vit_det_base", num_classes=80)
        cls = create_model("video_vit_base", num_classes=80)
    assert det.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    # the classifier's fc_norm is the detector's final norm: the same parameter count
    assert sum(p.numel() for p in det.parameters()) == sum(p.numel() for p in cls.parameters())


def test_token_map_is_the_normed_last_block_tokens_averaged_over_time():
    model = randomized("video_vit_det_small", **TINY, num_classes=5)
    video = clip()
    with torch.no_grad():
        tokens = model.norm(model.forward_blocks(model.embed(video)))  # (B, T'*H'*W', D)
        fmap = model.feature_map(video)  # (B, D, H', W')
    assert fmap.shape == (2, 32, 4, 4)
    for h in range(4):
        for w in range(4):
            want = (tokens[:, h * 4 + w] + tokens[:, 16 + h * 4 + w]) / 2  # t = 0, 1 at cell (h, w)
            torch.testing.assert_close(fmap[:, :, h, w], want)


def test_box_features_are_roi_align_on_the_token_grid_max_pooled():
    model = randomized("video_vit_det_small", **TINY, num_classes=5)
    video = clip()
    boxes = torch.tensor([[0, 0.25, 0.25, 0.75, 0.75],  # the edges of grid cells 1..2 x 1..2
                          [1, 0.0, 0.0, 1.0, 1.0],  # the whole frame
                          [1, 0.1, 0.3, 0.45, 0.95],
                          [0, 0.6, 0.05, 0.7, 0.2]])  # under one cell
    with torch.no_grad():
        fmap = model.feature_map(video).double().numpy()
        got = model.forward_features(video, boxes)
        logits = model(video, boxes)
    assert got.shape == (4, 32) and logits.shape == (4, 5)
    for k, (b, *box) in enumerate(boxes.tolist()):
        want = roi_feature(fmap[int(b)], [v * 4 for v in box])
        np.testing.assert_allclose(got[k].double().numpy(), want, rtol=1e-5, atol=1e-5)
    # a box reads the cells under it: another one elsewhere gives other features
    assert (got[0] - got[3]).abs().max() > 0.05
    torch.testing.assert_close(logits, model.action_head(got))
    # rows follow the batch row in column 0
    swapped = boxes.clone()
    swapped[:, 0] = 1 - swapped[:, 0]
    with torch.no_grad():
        other = model.forward_features(video.flip(0), swapped)
    torch.testing.assert_close(other, got)


def test_no_boxes_give_no_logits_and_a_bad_box_shape_is_refused():
    model = create_model("video_vit_det_small", **TINY, num_classes=5)
    out = model(clip(), torch.zeros(0, 5))
    assert out.shape == (0, 5)
    out.sum().backward()  # an empty batch of boxes still backpropagates (zero gradients)
    assert model.action_head.weight.grad is not None and not model.action_head.weight.grad.any()
    with pytest.raises(ValueError, match=r"boxes must be \(K, 5\)"):
        model(clip(), torch.zeros(3, 4))


def test_mvd_student_loads_as_the_encoder_and_its_final_norm_with_a_new_head():
    src = randomized("mvd_student_small", **STUDENT)
    det = create_model("video_vit_det_small", **TINY, num_classes=7).eval()
    head = det.action_head.weight.clone()
    report = load_checkpoint(det, {"model": src.state_dict()})
    assert sorted(report.new) == ["action_head.bias", "action_head.weight"]
    assert "norm.weight" in report.loaded and "decoder_img.head.weight" in report.ignored
    assert torch.equal(det.action_head.weight, head)
    video = clip()
    with torch.no_grad():
        want = src.norm(src.forward_blocks(src.embed(video)))  # the student's encoder on all tokens
        assert torch.equal(det.norm(det.forward_blocks(det.embed(video))), want)


def test_fine_tuned_classifier_loads_its_encoder_leaving_norm_and_head_fresh():
    src = randomized("video_vit_small", **TINY, num_classes=400)
    det = create_model("video_vit_det_small", **TINY, num_classes=7)
    report = load_checkpoint(det, src.state_dict())
    assert sorted(report.new) == ["action_head.bias", "action_head.weight", "norm.bias", "norm.weight"]
    assert "fc_norm.weight" in report.ignored and "head.weight" in report.ignored
    assert torch.equal(det.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert torch.equal(det.norm.weight, torch.ones(32))  # VideoMAE's AVA model: norm at its init


def test_head_and_final_norm_take_the_top_layer_lr_like_the_classifiers_head():
    det = create_model("video_vit_det_small", **TINY, num_classes=7)
    cls = create_model("video_vit_small", **TINY, num_classes=7)

    def scales(model):
        return {n: g["lr_scale"] for g in param_groups(model, 0.05, 0.75) for n in g["names"]}

    d, c = scales(det), scales(cls)
    assert d["action_head.weight"] == d["norm.weight"] == c["head.weight"] == c["fc_norm.weight"] == 1.0
    assert d["blocks.0.attn.qkv.weight"] == c["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 2)
    assert d["patch_embed.proj.weight"] == pytest.approx(0.75 ** 3)
