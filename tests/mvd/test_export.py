"""mvd-export --format hf: each export loads in transformers with no missing, unexpected or
mismatched key, computes our outputs (within 1e-4), reads back through our loader as the original
weights; a tiny fine-tuned run's export evaluates to the run's own top-1; refusals name what is
missing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the export targets transformers (the dev extra)")

from mvd.config import dump_yaml, load_config  # noqa: E402
from mvd.export import main  # noqa: E402
from mvd.models import create_model, load_checkpoint, save_safetensors  # noqa: E402
from mvd.train import main as train_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny"
CLASSES = [f"class {i}" for i in range(5)]


def _run_dir(tmp_path, config, model, classes=None, overrides=()):
    """A run dir as mvd-train leaves it (config.yaml + model.safetensors), without training."""
    run = tmp_path / config
    run.mkdir()
    cfg = load_config(TINY / f"{config}.yaml", ["data.dir=unused", *overrides])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    save_safetensors(model, run / "model.safetensors", classes)
    return run


def _tiny(name, cfg_name, overrides=(), **kw):
    cfg = load_config(TINY / f"{cfg_name}.yaml", ["data.dir=unused", *overrides])
    torch.manual_seed(0)
    model = create_model(name, img_size=cfg.data.input_size, num_frames=cfg.data.num_frames,
                         **cfg.model.overrides, **kw)
    with torch.no_grad():  # non-trivial biases and norms, so a swapped tensor shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _load_hf(arch, out, **kw):
    model, info = getattr(transformers, arch).from_pretrained(out, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_videomae_stage1_exports_as_videomae_model_with_our_encoder_outputs(tmp_path):
    ours = _tiny("videomae_pretrain_small", "pretrain_videomae")
    run = _run_dir(tmp_path, "pretrain_videomae", ours)
    out = tmp_path / "hf"
    assert main([str(run), "--format", "hf", "--out", str(out)]) == 0
    hf = _load_hf("VideoMAEModel", out)
    assert hf.config.use_mean_pooling is False and hf.config.layer_norm_eps == 1e-6
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        want = ours.norm(ours.forward_blocks(ours.embed(x)))
        got = hf(pixel_values=x.transpose(1, 2)).last_hidden_state  # transformers: (B, T, C, H, W)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "pixel decoder is dropped" in card and "videomae_pretrain_small" in card
    back = create_model("videomae_teacher_small", img_size=32, num_frames=8, patch_size=8, embed_dim=32,
                        depth=2, num_heads=2)
    load_checkpoint(back, out)
    enc = {k: v for k, v in ours.state_dict().items() if not k.startswith(("decoder.", "norm."))}
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, enc[k], rtol=0, atol=0, msg=k)


def test_mae_stage1_exports_as_vitmae_model_with_our_encoder_outputs(tmp_path):
    ours = _tiny("mae_pretrain_base", "pretrain_mae")
    run = _run_dir(tmp_path, "pretrain_mae", ours)
    out = tmp_path / "hf"
    assert main([str(run), "--format", "hf", "--out", str(out)]) == 0
    hf = _load_hf("ViTMAEModel", out, mask_ratio=0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ours.norm(ours.forward_blocks(ours.prepend_cls(ours.embed(x))))
        noise = torch.arange(16.0).expand(2, -1)  # ascending noise: every patch, in raster order
        got = hf(pixel_values=x, noise=noise).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["mask_ratio"] == 0.75
    back = create_model("mae_teacher_base", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    load_checkpoint(back, out)  # the teacher is the encoder without its final norm
    enc = ours.state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, enc[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("what", ["student", "sincos_classifier", "no_classes", "no_config"])
def test_refusals_name_what_is_missing(tmp_path, capsys, what):
    if what == "student":
        run = _run_dir(tmp_path, "pretrain_mvd", _tiny("mvd_student_small", "pretrain_mvd"))
        expect = "3D sincos position table"
    elif what == "sincos_classifier":
        run = _run_dir(tmp_path, "finetune", _tiny("video_vit_small", "finetune", num_classes=5), CLASSES)
        expect = "model.overrides.pos_embed=sinusoid_1d"
    elif what == "no_classes":
        over = ["model.overrides.pos_embed=sinusoid_1d"]
        run = _run_dir(tmp_path, "finetune", _tiny("video_vit_small", "finetune", over, num_classes=5),
                       overrides=over)
        expect = "no class names"
    else:
        path = tmp_path / "alone.safetensors"
        save_safetensors(_tiny("videomae_pretrain_small", "pretrain_videomae"), path)
        run, expect = path, "no config.yaml"
    assert main([str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(run) in err, err
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # a fresh interpreter importing torch
def test_cli_module_prints_its_usage():
    out = subprocess.run([sys.executable, "-m", "mvd.export", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "RUN_OR_CHECKPOINT" in out and "VideoMAEForVideoClassification" in out


@pytest.mark.slow
def test_tiny_finetune_export_loads_in_transformers_and_evaluates_to_the_runs_top1(synth_shards, tmp_path):
    run = tmp_path / "ft"
    assert train_main(["--config", str(TINY / "finetune.yaml"), f"data.dir={synth_shards}",
                       f"eval.dir={synth_shards}", f"run.dir={run}", "train.max_steps=6",
                       "model.overrides.pos_embed=sinusoid_1d", "run.progress=false"]) == 0
    top1 = json.loads((run / "eval.json").read_text())["top1"]
    classes = json.loads((synth_shards / "manifest.json").read_text())["classes"]
    out = tmp_path / "hf"
    assert main([str(run), "--format", "hf", "--out", str(out)]) == 0

    hf = _load_hf("VideoMAEForVideoClassification", out)
    assert [hf.config.id2label[i] for i in range(len(classes))] == classes
    assert hf.config.label2id == {c: i for i, c in enumerate(classes)}
    ours = create_model("video_vit_small", img_size=32, num_frames=8, num_classes=len(classes), patch_size=8,
                        embed_dim=32, depth=2, num_heads=2, pos_embed="sinusoid_1d")
    load_checkpoint(ours, run / "model.safetensors")
    ours.eval()
    x = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x.transpose(1, 2)).logits, ours(x), rtol=0, atol=1e-4)

    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["image_processor_type"] == "VideoMAEImageProcessor"
    assert proc["image_mean"] == [0.485, 0.456, 0.406] and proc["image_std"] == [0.229, 0.224, 0.225]
    assert proc["crop_size"] == {"height": 32, "width": 32} and proc["size"] == {"shortest_edge": 32}
    card = (out / "README.md").read_text()
    assert f"{len(classes)} classes" in card and "48 samples" in card and f"top1 {top1}" in card

    back = create_model("video_vit_small", img_size=32, num_frames=8, num_classes=len(classes), patch_size=8,
                        embed_dim=32, depth=2, num_heads=2)  # sincos_3d: the load switches the table
    report = load_checkpoint(back, out)
    assert back.pos_embed.kind == "sinusoid_1d" and report.classes == classes
    _same_weights(back, ours)

    ev = tmp_path / "ev"
    assert train_main(["--config", str(TINY / "eval.yaml"), f"eval.dir={synth_shards}", f"run.dir={ev}",
                       f"model.init={out}"]) == 0
    assert json.loads((ev / "eval.json").read_text())["top1"] == top1
