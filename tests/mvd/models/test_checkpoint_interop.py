"""load_checkpoint with this project's layout and the MAE / VideoMAE / MVD release layouts."""

import argparse
import warnings

import pytest
import torch

from mvd.layers import build_table
from dali_pipelines.masks import random_mask, tube_mask
from mvd.models import CheckpointError, create_model, freeze, load_checkpoint, save_safetensors

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=2, num_heads=4,
            drop_path_rate=0.0)
DEC = dict(decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2)
STUDENT = dict(TINY, **DEC, image_target_dim=24, video_target_dim=20)


def randomized(name, seed=0, **kw):
    model = create_model(name, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def clip(seed=1):
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def tmask(seed=2):
    return tube_mask(2, (2, 4, 4), 0.75, generator=torch.Generator().manual_seed(seed))


def videomae_release(sd):
    """Our videomae_pretrain keys -> VideoMAE's: encoder. prefix, encoder_to_decoder, mask_token."""
    out = {}
    for k, v in sd.items():
        if k.startswith("decoder.proj."):
            out["encoder_to_decoder." + k[len("decoder.proj."):]] = v
        elif k == "decoder.mask_token":
            out["mask_token"] = v
        elif k.startswith("decoder."):
            out[k] = v
        else:
            out["encoder." + k] = v
    return out


def mae_release(sd, dim, with_decoder=True, k_bias_seed=7):
    """Our mae_pretrain keys -> MAE's: full qkv.bias (with a nonzero key part), decoder_* names, tables present."""
    g = torch.Generator().manual_seed(k_bias_seed)
    out = {"pos_embed": build_table("sincos_2d", (4, 4), dim, cls_token=True)}
    renames = {"decoder.proj.": "decoder_embed.", "decoder.blocks.": "decoder_blocks.", "decoder.norm.": "decoder_norm.",
               "decoder.head.": "decoder_pred."}
    for k, v in sd.items():
        if k.endswith("attn.v_bias"):
            continue
        if k.endswith("attn.q_bias"):
            base = k[: -len("q_bias")]
            v = torch.cat([v, torch.randn(v.shape, generator=g), sd[base + "v_bias"]])
            k = base + "qkv.bias"
        if k.startswith("decoder."):
            if not with_decoder:
                continue
            if k == "decoder.mask_token":
                k = "mask_token"
            for old, new in renames.items():
                k = new + k[len(old):] if k.startswith(old) else k
        out[k] = v
    if with_decoder:
        out["decoder_pos_embed"] = build_table("sincos_2d", (4, 4), 16, cls_token=True)
    return out


def mvd_release(sd):
    """Our student keys -> the MVD release's: down_img / mask_token_img / pos_embed_img, tables present."""
    out = {"pos_embed": build_table("sincos_3d", (2, 4, 4), 32),
           "pos_embed_img": build_table("sincos_3d", (2, 4, 4), 16),
           "pos_embed_vid": build_table("sincos_3d", (2, 4, 4), 16)}
    for k, v in sd.items():
        for tag in ("img", "vid"):
            k = k.replace(f"decoder_{tag}.proj.", f"down_{tag}.").replace(f"decoder_{tag}.mask_token", f"mask_token_{tag}")
        out[k] = v
    return out


def test_videomae_release_checkpoint_file_loads_into_pretrain_and_teacher(tmp_path):
    src = randomized("videomae_pretrain_small", **TINY, **DEC)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": videomae_release(src.state_dict()), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 799, "scaler": {"scale": 1024.0}, "args": argparse.Namespace(model="x", lr=1e-3)}, path)

    again = create_model("videomae_pretrain_small", **TINY, **DEC).eval()
    report = load_checkpoint(again, path)
    assert not report.ignored and not report.new
    video, mask = clip(), tmask()
    assert torch.equal(again(video, mask), src(video, mask))

    teacher = create_model("videomae_teacher_small", **TINY)
    report = load_checkpoint(teacher, path)
    assert set(report.ignored) == {k for k in src.state_dict() if k.startswith(("decoder.", "norm."))}
    with torch.no_grad():
        assert torch.equal(teacher(video), src.forward_blocks(src.embed(video)))


@pytest.mark.parametrize("with_decoder", [True, False])
def test_mae_release_layout_with_full_qkv_bias_loads_into_teacher(with_decoder):
    src = randomized("mae_pretrain_base", **TINY, **DEC)
    teacher = create_model("mae_teacher_base", **TINY)
    report = load_checkpoint(teacher, {"model": mae_release(src.state_dict(), 32, with_decoder)})
    assert "fixed sincos_2d table" in report.tables["pos_embed"]
    assert "norm.weight" in report.ignored and ("decoder.head.weight" in report.ignored) == with_decoder
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = src.forward_blocks(src.prepend_cls(src.embed(frames)))[:, 1:]
    torch.testing.assert_close(teacher(frames), want, atol=1e-6, rtol=1e-6)  # key bias dropped: same up to rounding


def test_mae_release_layout_roundtrips_the_pretrain_model():
    src = randomized("mae_pretrain_base", **TINY, **DEC)
    again = create_model("mae_pretrain_base", **TINY, **DEC).eval()
    report = load_checkpoint(again, {"model": mae_release(src.state_dict(), 32)})
    assert not report.ignored and not report.new and "decoder.pos_embed" in report.tables
    frames, mask = torch.randn(2, 3, 32, 32), random_mask(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again(frames, mask), src(frames, mask), atol=1e-6, rtol=1e-6)


def test_mvd_release_student_under_module_wrapper_reproduces_outputs():
    src = randomized("mvd_student_small", **STUDENT)
    student = create_model("mvd_student_small", **STUDENT).eval()
    report = load_checkpoint(student, {"module": mvd_release(src.state_dict()), "epoch": 3})
    assert set(report.tables) == {"pos_embed", "decoder_img.pos_embed", "decoder_vid.pos_embed"}
    video, mask = clip(), tmask()
    for got, want in zip(student(video, mask), src(video, mask)):
        assert torch.equal(got, want)


def test_student_loads_into_video_vit_encoder_only_with_new_head():
    src = randomized("mvd_student_small", **STUDENT)
    vit = create_model("video_vit_small", **TINY, num_classes=5).eval()
    head = vit.head.weight.clone()
    report = load_checkpoint(vit, {"model": src.state_dict()})
    assert sorted(report.new) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "norm.weight" in report.ignored and "decoder_img.head.weight" in report.ignored
    assert torch.equal(vit.head.weight, head)
    video = clip()
    with torch.no_grad():
        assert torch.equal(vit.forward_blocks(vit.embed(video)), src.forward_blocks(src.embed(video)))


def test_stage1_encoder_loads_into_teacher_classes():
    vmae = randomized("videomae_pretrain_small", **TINY, **DEC)
    teacher = create_model("videomae_teacher_small", **TINY)
    load_checkpoint(teacher, vmae.state_dict())
    video = clip()
    with torch.no_grad():
        assert torch.equal(teacher(video), vmae.forward_blocks(vmae.embed(video)))
    mae = randomized("mae_pretrain_base", **TINY, **DEC)
    image_teacher = create_model("mae_teacher_base", **TINY)
    load_checkpoint(image_teacher, mae.state_dict())
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(image_teacher(frames), mae.forward_blocks(mae.prepend_cls(mae.embed(frames)))[:, 1:])


def test_position_tables_rebuilt_for_another_frame_count_and_learned_tables_interpolated():
    src = randomized("video_vit_small", **TINY, num_classes=3)
    sd = dict(src.state_dict(), pos_embed=build_table("sincos_3d", (2, 4, 4), 32))
    longer = create_model("video_vit_small", **dict(TINY, num_frames=8), num_classes=3)
    report = load_checkpoint(longer, sd)
    assert "rebuilt" in report.tables["pos_embed"] and "(2, 4, 4)" in report.tables["pos_embed"]
    torch.testing.assert_close(longer.pos_embed.table, build_table("sincos_3d", (4, 4, 4), 32))

    learned = torch.randn(1, 32, 32)
    report = load_checkpoint(longer, dict(sd, pos_embed=learned))
    assert "interpolated from grid (2, 4, 4) to (4, 4, 4)" in report.tables["pos_embed"]
    want = torch.nn.functional.interpolate(learned.reshape(1, 2, 4, 4, 32).permute(0, 4, 1, 2, 3), size=(4, 4, 4),
                                           mode="trilinear", align_corners=False).permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(longer.pos_embed.table, want.reshape(1, 64, 32))


def test_safetensors_round_trip(tmp_path):
    src = randomized("mvd_student_small", **STUDENT)
    path = tmp_path / "student.safetensors"
    save_safetensors(src, path)
    again = create_model("mvd_student_small", **STUDENT).eval()
    load_checkpoint(again, path)
    video, mask = clip(), tmask()
    for got, want in zip(again(video, mask), src(video, mask)):
        assert torch.equal(got, want)


class NotAllowListed:
    def __init__(self):
        self.x = 1


def test_pickle_outside_the_allow_list_is_refused_unless_trusted(tmp_path):
    model = create_model("videomae_teacher_small", **TINY)
    path = tmp_path / "odd.pth"
    torch.save({"model": model.state_dict(), "extra": NotAllowListed()}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_checkpoint(model, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        load_checkpoint(model, path, trusted=True)


def test_shape_mismatch_names_the_key():
    sd = create_model("videomae_teacher_small", **TINY).state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 32)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(3, 32\)"):
        load_checkpoint(create_model("videomae_teacher_small", **TINY), sd)


def test_missing_weight_names_the_key():
    sd = create_model("videomae_teacher_small", **TINY).state_dict()
    del sd["blocks.0.attn.q_bias"]
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.q_bias"):
        load_checkpoint(create_model("videomae_teacher_small", **TINY), sd)


def test_frozen_teacher_stays_in_eval_and_loads_through_the_wrapper():
    teacher = freeze(create_model("videomae_teacher_small", **TINY))
    holder = torch.nn.ModuleDict({"t": teacher, "s": torch.nn.Linear(2, 2)})
    holder.train()
    assert not teacher.training and not teacher.module.training
    assert all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    load_checkpoint(teacher, {"state_dict": create_model("videomae_teacher_small", **TINY).state_dict()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        teacher(clip())


def test_video_vit_pos_embed_option_and_its_export_bring_the_table_back(tmp_path):
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        create_model("video_vit_small", **TINY, pos_embed="sincos_2d")
    src = randomized("video_vit_small", **TINY, num_classes=3, pos_embed="sinusoid_1d")
    path = tmp_path / "ft.safetensors"
    save_safetensors(src, path, classes=["a", "b", "c"])
    again = create_model("video_vit_small", **TINY, num_classes=3).eval()  # the default sincos_3d
    report = load_checkpoint(again, path)
    assert again.pos_embed.kind == "sinusoid_1d"
    assert "recorded in the checkpoint's metadata" in report.tables["pos_embed"]
    assert report.classes == ["a", "b", "c"] and report.layout == "mvd video_vit_small"
    with torch.no_grad():
        assert torch.equal(again(clip()), src(clip()))


def test_own_videomae_stage1_export_initialises_video_vit_with_its_1d_table(tmp_path):
    src = randomized("videomae_pretrain_small", **TINY, **DEC)
    save_safetensors(src, tmp_path / "vmae.safetensors")
    vit = create_model("video_vit_small", **TINY, num_classes=3).eval()
    report = load_checkpoint(vit, tmp_path / "vmae.safetensors")
    assert vit.pos_embed.kind == "sinusoid_1d" and "switched from sincos_3d" in report.tables["pos_embed"]
    with torch.no_grad():
        assert torch.equal(vit.forward_blocks(vit.embed(clip())), src.forward_blocks(src.embed(clip())))


def test_a_table_the_model_cannot_switch_to_is_an_error(tmp_path):
    save_safetensors(randomized("videomae_teacher_small", **TINY), tmp_path / "t.safetensors")
    with pytest.raises(CheckpointError, match="sinusoid_1d position table.*MVDStudent uses sincos_3d"):
        load_checkpoint(create_model("mvd_student_small", **STUDENT), tmp_path / "t.safetensors")


def test_checkpoint_without_tables_says_which_table_the_model_keeps():
    src = randomized("video_vit_small", **TINY, num_classes=3)
    report = load_checkpoint(create_model("video_vit_small", **TINY, num_classes=3), src.state_dict())
    assert report.tables["pos_embed"] == ("not in the checkpoint: the model's own sincos_3d; pos_embed option: "
                                          "sincos_3d, sinusoid_1d")


def test_attention_without_any_qkv_bias_loads_as_zero_biases_but_a_partly_missing_one_fails():
    src = randomized("videomae_teacher_small", **TINY)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
    teacher = create_model("videomae_teacher_small", **TINY).eval()
    report = load_checkpoint(teacher, sd)
    assert any("no q/v biases" in n for n in report.notes)
    with torch.no_grad():
        for blk in src.blocks:
            blk.attn.q_bias.zero_()
            blk.attn.v_bias.zero_()
        assert torch.equal(teacher(clip()), src(clip()))
    partly = dict(sd, **{"blocks.0.attn.q_bias": torch.zeros(32), "blocks.0.attn.v_bias": torch.zeros(32)})
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.q_bias"):
        load_checkpoint(create_model("videomae_teacher_small", **TINY), partly)


def test_a_run_directory_loads_through_its_export(tmp_path):
    src = randomized("videomae_teacher_small", **TINY)
    save_safetensors(src, tmp_path / "model.safetensors")
    again = create_model("videomae_teacher_small", **TINY).eval()
    load_checkpoint(again, tmp_path)
    assert torch.equal(again(clip()), src(clip()))
