"""Each model against an independent re-computation from the formulas, to 1e-5 in fp32.

The ``ref_*`` reference below uses explicit loops for position tables and patches,
explicit softmax attention, boolean-index gathers and MAE-style full-sequence decoders, and
uses nothing from mvd.
"""

import math

import pytest
import torch

from mvd.layers import sincos_2d_table, sincos_3d_table, sinusoid_1d_table
from dali_pipelines.masks import random_mask, tube_mask
from mvd.models import create_model

# ---- reference, from the formulas ----

REF_MEAN = (0.485, 0.456, 0.406)
REF_STD = (0.229, 0.224, 0.225)


def ref_sincos_1d(pos: float, dim: int) -> list[float]:
    omegas = [1.0 / 10000 ** (i / (dim / 2)) for i in range(dim // 2)]
    return [math.sin(pos * o) for o in omegas] + [math.cos(pos * o) for o in omegas]


def ref_table_2d(h: int, w: int, dim: int, cls: bool = False) -> torch.Tensor:
    rows = [[0.0] * dim] if cls else []
    rows += [ref_sincos_1d(j, dim // 2) + ref_sincos_1d(i, dim // 2) for i in range(h) for j in range(w)]  # w first (MAE)
    return torch.tensor(rows, dtype=torch.float64).float()


def ref_table_3d(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    dt, ds = dim // 4, dim - dim // 4
    rows = [ref_sincos_1d(k, dt) + ref_sincos_1d(j, ds // 2) + ref_sincos_1d(i, ds // 2)
            for k in range(t) for i in range(h) for j in range(w)]
    return torch.tensor(rows, dtype=torch.float64).float()


def ref_table_sinusoid(n: int, dim: int) -> torch.Tensor:
    rows = []
    for pos in range(n):
        angles = [pos / 10000 ** (2 * (j // 2) / dim) for j in range(dim)]
        rows.append([math.sin(a) if j % 2 == 0 else math.cos(a) for j, a in enumerate(angles)])
    return torch.tensor(rows, dtype=torch.float64).float()


def ref_layer_norm(x, w=None, b=None, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y if w is None else y * w + b


def ref_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_attention(x, sd, pre, heads):
    B, N, D = x.shape
    W = sd[pre + "qkv.weight"]
    q = x @ W[:D].T + sd[pre + "q_bias"]
    k = x @ W[D:2 * D].T  # no key bias
    v = x @ W[2 * D:].T + sd[pre + "v_bias"]
    hd = D // heads
    q, k, v = (z.reshape(B, N, heads, hd).transpose(1, 2) for z in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    a = e / e.sum(-1, keepdim=True)
    o = (a @ v).transpose(1, 2).reshape(B, N, D)
    return o @ sd[pre + "proj.weight"].T + sd[pre + "proj.bias"]


def ref_block(x, sd, pre, heads):
    x = x + ref_attention(ref_layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"]), sd, pre + "attn.", heads)
    h = ref_layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
    h = ref_gelu(h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
    return x + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]


def ref_blocks(x, sd, pre, depth, heads):
    for i in range(depth):
        x = ref_block(x, sd, f"{pre}blocks.{i}.", heads)
    return x


def ref_video_patches(video, u, p):
    """(B, C, T, H, W) -> (B, N, C*u*p*p) flattened like the conv weight, tokens in (t, h, w) order."""
    B, C, T, H, W = video.shape
    out = [video[:, :, t * u:(t + 1) * u, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(B, -1)
           for t in range(T // u) for i in range(H // p) for j in range(W // p)]
    return torch.stack(out, 1)


def ref_image_patches(img, p):
    B, C, H, W = img.shape
    out = [img[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(B, -1) for i in range(H // p) for j in range(W // p)]
    return torch.stack(out, 1)


def ref_embed(patches, sd, pre=""):
    w = sd[pre + "patch_embed.proj.weight"]
    return patches @ w.reshape(w.shape[0], -1).T + sd[pre + "patch_embed.proj.bias"]


def ref_full_sequence_decoder(enc_vis, mask, sd, pre, depth, heads, pos, cls_out=None):
    """MAE-style: project, put visible tokens back in place and mask tokens elsewhere (raster order),
    add positions, run the blocks on the whole sequence, predict at the masked positions."""
    y = enc_vis @ sd[pre + "proj.weight"].T
    if pre + "proj.bias" in sd:
        y = y + sd[pre + "proj.bias"]
    B, N = mask.shape
    full = sd[pre + "mask_token"].expand(B, N, -1).clone()
    full[~mask] = y.reshape(-1, y.shape[-1])
    full = full + pos
    if cls_out is not None:  # MAE: projected cls token in front, its table row is zeros
        c = cls_out @ sd[pre + "proj.weight"].T + sd[pre + "proj.bias"]
        full = torch.cat([c, full], 1)
    x = ref_blocks(full, sd, pre, depth, heads)
    if cls_out is not None:
        x = x[:, 1:]
    x = ref_layer_norm(x[mask].reshape(B, -1, x.shape[-1]), sd[pre + "norm.weight"], sd[pre + "norm.bias"])
    return x @ sd[pre + "head.weight"].T + sd[pre + "head.bias"]


# ---- tests ----


TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=4,
            drop_path_rate=0.0)
GRID = (2, 4, 4)
N = 32
ATOL = 1e-5


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def clip(b=2, size=32, frames=4, seed=1):
    return torch.randn(b, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_position_tables_match_the_release_formulas():
    torch.testing.assert_close(sincos_3d_table(2, 3, 4, 32), ref_table_3d(2, 3, 4, 32), atol=1e-6, rtol=0)
    torch.testing.assert_close(sincos_2d_table(3, 4, 16), ref_table_2d(3, 4, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(sincos_2d_table(4, 4, 16, cls_token=True), ref_table_2d(4, 4, 16, cls=True),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(sinusoid_1d_table(40, 24), ref_table_sinusoid(40, 24), atol=1e-6, rtol=0)


@pytest.mark.parametrize("targets", [("image", "video"), ("image",), ("video",)])
def test_student_predictions_match_reference(targets):
    model = randomize(create_model("mvd_student_small", **TINY, decoder_depth=1, decoder_embed_dim=16,
                                   decoder_num_heads=2, image_target_dim=24, video_target_dim=20, targets=targets))
    video = clip()
    mask = tube_mask(2, GRID, 0.75, generator=torch.Generator().manual_seed(3))
    pred_img, pred_vid = model(video, mask)

    sd = model.state_dict()
    x = ref_embed(ref_video_patches(video, 2, 8), sd) + ref_table_3d(*GRID, 32)
    vis = x[~mask].reshape(2, -1, 32)
    enc = ref_layer_norm(ref_blocks(vis, sd, "", 2, 4), sd["norm.weight"], sd["norm.bias"])
    for pred, name, target in ((pred_img, "decoder_img.", "image"), (pred_vid, "decoder_vid.", "video")):
        if target not in targets:
            assert pred is None
            continue
        want = ref_full_sequence_decoder(enc, mask, sd, name, 1, 2, ref_table_3d(*GRID, 16))
        assert pred.shape == (2, 24, want.shape[-1])
        torch.testing.assert_close(pred, want, atol=ATOL, rtol=ATOL)


def test_mae_teacher_matches_reference():
    model = randomize(create_model("mae_teacher_base", **TINY))
    frames = torch.randn(3, 3, 32, 32)
    sd = model.state_dict()
    x = ref_embed(ref_image_patches(frames, 8), sd)
    table = ref_table_2d(4, 4, 32, cls=True)
    x = torch.cat([(sd["cls_token"] + table[:1]).expand(3, -1, -1), x + table[1:]], 1)
    want = ref_blocks(x, sd, "", 2, 4)[:, 1:]  # last block, no final norm, cls dropped
    torch.testing.assert_close(model(frames), want, atol=ATOL, rtol=ATOL)


def test_videomae_teacher_matches_reference():
    model = randomize(create_model("videomae_teacher_small", **TINY))
    video = clip()
    sd = model.state_dict()
    x = ref_embed(ref_video_patches(video, 2, 8), sd) + ref_table_sinusoid(N, 32)
    torch.testing.assert_close(model(video), ref_blocks(x, sd, "", 2, 4), atol=ATOL, rtol=ATOL)


def test_video_vit_matches_reference():
    model = randomize(create_model("video_vit_small", **TINY, num_classes=7))
    video = clip()
    sd = model.state_dict()
    x = ref_embed(ref_video_patches(video, 2, 8), sd) + ref_table_3d(*GRID, 32)
    x = ref_blocks(x, sd, "", 2, 4).mean(1)
    want = ref_layer_norm(x, sd["fc_norm.weight"], sd["fc_norm.bias"]) @ sd["head.weight"].T + sd["head.bias"]
    torch.testing.assert_close(model(video), want, atol=ATOL, rtol=ATOL)


def test_videomae_pretrain_loss_matches_reference():
    model = randomize(create_model("videomae_pretrain_small", **TINY, decoder_embed_dim=16, decoder_num_heads=2,
                                   decoder_depth=1))
    video = clip()
    mask = tube_mask(2, GRID, 0.75, generator=torch.Generator().manual_seed(4))
    sd = model.state_dict()
    x = ref_embed(ref_video_patches(video, 2, 8), sd) + ref_table_sinusoid(N, 32)
    enc = ref_layer_norm(ref_blocks(x[~mask].reshape(2, -1, 32), sd, "", 2, 4), sd["norm.weight"], sd["norm.bias"])
    pred = ref_full_sequence_decoder(enc, mask, sd, "decoder.", 1, 2, ref_table_sinusoid(N, 16))
    # target: un-normalise, cut tubelets as (dt, dh, dw, c), normalise each channel of each patch
    unnorm = video * torch.tensor(REF_STD).view(1, 3, 1, 1, 1) + torch.tensor(REF_MEAN).view(1, 3, 1, 1, 1)
    targets = []
    for b in range(2):
        for t in range(2):
            for i in range(4):
                for j in range(4):
                    patch = unnorm[b, :, 2 * t:2 * t + 2, 8 * i:8 * i + 8, 8 * j:8 * j + 8]  # (C, 2, 8, 8)
                    patch = patch.permute(1, 2, 3, 0).reshape(-1, 3)  # (P, C)
                    patch = (patch - patch.mean(0)) / (patch.std(0, unbiased=True) + 1e-6)
                    targets.append(patch.reshape(-1))
    target = torch.stack(targets).reshape(2, N, -1)[mask].reshape(2, -1, pred.shape[-1])
    want = ((pred - target) ** 2).mean()
    torch.testing.assert_close(model(video, mask), want, atol=ATOL, rtol=ATOL)


def test_mae_pretrain_loss_matches_reference():
    model = randomize(create_model("mae_pretrain_base", **TINY, decoder_embed_dim=16, decoder_num_heads=2,
                                   decoder_depth=1))
    frames = torch.randn(2, 3, 32, 32)
    mask = random_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(5))
    sd = model.state_dict()
    table = ref_table_2d(4, 4, 32, cls=True)
    x = ref_embed(ref_image_patches(frames, 8), sd) + table[1:]
    x = torch.cat([(sd["cls_token"] + table[:1]).expand(2, -1, -1), x[~mask].reshape(2, -1, 32)], 1)
    enc = ref_layer_norm(ref_blocks(x, sd, "", 2, 4), sd["norm.weight"], sd["norm.bias"])
    pred = ref_full_sequence_decoder(enc[:, 1:], mask, sd, "decoder.", 1, 2, ref_table_2d(4, 4, 16),
                                     cls_out=enc[:, :1])
    patches = frames.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, -1)  # MAE patchify
    patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    target = patches[mask].reshape(2, -1, patches.shape[-1])
    torch.testing.assert_close(model(frames, mask), ((pred - target) ** 2).mean(), atol=ATOL, rtol=ATOL)


def test_attention_dropout_is_off_in_eval_and_outputs_deterministic():
    model = create_model("videomae_teacher_small", **TINY).eval()
    for blk in model.blocks:
        blk.attn.attn_drop = 0.5
    video = clip()
    torch.testing.assert_close(model(video), model(video), atol=0, rtol=0)
