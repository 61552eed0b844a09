"""``torch.compile`` with ``fullgraph=True`` (a graph break raises) on every model a task runs, on
CPU: the student, both teachers (under ``torch.inference_mode``, as the step runs them), the
stage-1 models and the classifier give eager's outputs and gradients; and the trainer with
``model.compile=true`` trains (``wrap_model`` compiles the student in place, ``compile_teacher``
the teachers), also with drop path and activation checkpointing.

Graph breaks are a dynamo-level property, so most tests use ``backend="aot_eager"`` (dynamo +
AOT autograd, no code generation: seconds); the student's forward and backward also go through
the default inductor backend once (~35 s cold on 2 cores, seconds with a warm inductor cache).
The trainer-level tests force ``aot_eager`` on ``Module.compile`` for the same reason (the whole
tiny MVD step under inductor took ~76 s cold here). The CUDA compile check is in test_cuda.py.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from mvd.config import load_config
from mvd.engine.distributed import compile_teacher
from mvd.engine.trainer import Trainer
from mvd.layers import Block
from dali_pipelines.masks import masked_tokens, num_to_mask, random_mask, tube_mask
from mvd.models import create_model
from mvd.models.teachers import freeze

# every test compiles (seconds each on CPU, the inductor one half a minute): the full suite's
pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
# the tiny recipes' shapes (configs/tiny/*.yaml): 8 frames of 32 px, patch 8, tubelet 2
CLIP = dict(img_size=32, num_frames=8)
ENCODER = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
B = 2


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch, and leaves no compiled code behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def compiled(monkeypatch):
    """``Module.compile`` records (class, fullgraph) and uses aot_eager through a backend that
    counts the graphs it is given; returns {"calls": [...], "graphs": [...]}."""
    seen = {"calls": [], "graphs": []}
    aot_eager = lookup_backend("aot_eager")
    original = torch.nn.Module.compile

    def counting_backend(gm, example_inputs):
        seen["graphs"].append(gm)
        return aot_eager(gm, example_inputs)

    def compile_with_aot_eager(self, *args, **kwargs):
        seen["calls"].append((type(self).__name__, kwargs.get("fullgraph", False)))
        kwargs["backend"] = counting_backend
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    return seen


def clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 3, 8, 32, 32, generator=torch.Generator().manual_seed(seed))


def loss_of(out) -> torch.Tensor:
    """A scalar from a model's output (a loss, logits, or the student's prediction pair)."""
    if isinstance(out, tuple):
        return sum(o.float().square().mean() for o in out if o is not None)
    return out.float().square().mean() if out.dim() else out


def student():
    return create_model("mvd_student_small", **CLIP, **ENCODER, **DECODER, drop_path_rate=0.0,
                        image_target_dim=32, video_target_dim=32)


def student_inputs(model):
    mask = tube_mask(B, model.grid, 0.9, generator=torch.Generator().manual_seed(1))
    return clip(), mask, masked_tokens(model.grid, 0.9, "tube")  # num_masked: a host int


def videomae_pretrain():
    return create_model("videomae_pretrain_small", **CLIP, **ENCODER, **DECODER, drop_path_rate=0.0)


def mae_pretrain():
    return create_model("mae_pretrain_base", img_size=32, **ENCODER, **DECODER)


def frames_inputs(model):
    frames = clip()[:, :, ::2].transpose(1, 2).flatten(0, 1)  # (B*T/2, 3, H, W)
    n = model.num_patches
    mask = random_mask(frames.shape[0], n, 0.75, generator=torch.Generator().manual_seed(1))
    return frames, mask, num_to_mask(n, 0.75)


def classifier():
    return create_model("video_vit_small", **CLIP, **ENCODER, drop_path_rate=0.0, num_classes=8)


# name -> (build, inputs): the trained models of the four tasks
TRAINED = {
    "mvd_student_small": (student, student_inputs),
    "videomae_pretrain_small": (videomae_pretrain, student_inputs),
    "mae_pretrain_base": (mae_pretrain, frames_inputs),
    "video_vit_small": (classifier, lambda m: (clip(),)),
}


def compiled_matches_eager(build, inputs, backend: str, *, rtol=1e-4, atol=1e-5) -> None:
    """Forward and backward of ``build()`` compiled in place (fullgraph) against an eager copy
    with the same weights: outputs and every parameter's gradient agree."""
    torch.manual_seed(0)
    model = build().train()
    eager = copy.deepcopy(model)
    args = inputs(model)
    model.compile(fullgraph=True, backend=backend)
    out, ref = model(*args), eager(*args)
    loss_of(out).backward()
    loss_of(ref).backward()
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol)
    grads = {n: p.grad for n, p in model.named_parameters()}
    ref_grads = {n: p.grad for n, p in eager.named_parameters()}
    assert grads.keys() == ref_grads.keys()
    missing = [n for n, g in grads.items() if g is None]
    assert missing == [n for n, g in ref_grads.items() if g is None], missing
    for n, g in grads.items():
        if g is not None:
            torch.testing.assert_close(g, ref_grads[n], rtol=rtol, atol=atol, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", TRAINED)
def test_trained_model_compiles_fullgraph_and_matches_eager(name):
    compiled_matches_eager(*TRAINED[name], backend="aot_eager")


def test_student_compiles_fullgraph_with_inductor_and_matches_eager():
    compiled_matches_eager(student, student_inputs, backend="inductor", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, inputs", [
    ("mae_teacher_base", lambda: clip()[:, :, ::2].transpose(1, 2).flatten(0, 1)),  # frames
    ("videomae_teacher_small", clip),
])
def test_teacher_compiles_fullgraph_under_inference_mode_and_matches_eager(name, inputs,
                                                                          compiled):
    kw = {"img_size": 32, **ENCODER} if name.startswith("mae") else {**CLIP, **ENCODER}
    torch.manual_seed(0)
    teacher = freeze(create_model(name, **kw))
    eager = copy.deepcopy(teacher)
    x = inputs()
    compile_teacher(teacher)  # the trainer's path (aot_eager here, see `compiled`)
    with torch.inference_mode():
        out, ref = teacher(x), eager(x)
    assert compiled["calls"] == [(type(teacher.module).__name__, True)]
    assert len(compiled["graphs"]) == 1
    assert out.shape == (x.shape[0], teacher.module.num_patches, 32)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- the trainer


def train_compiled(synth_shards, run_dir, *overrides) -> Trainer:
    cfg = load_config(TINY / "pretrain_mvd.yaml", [
        f"data.dir={synth_shards}", f"run.dir={run_dir}", "run.progress=false",
        "checkpoint.resume=none", "checkpoint.every_steps=0", "run.log_every=1",
        "train.max_steps=2", "model.compile=true", *overrides])
    trainer = Trainer(cfg)
    result = trainer.train()
    assert result["status"] == "finished" and result["step"] == 2
    return trainer


def losses(run_dir: Path) -> list[float | None]:
    return [r["loss"] for r in map(json.loads, open(run_dir / "metrics.jsonl"))]


def test_trainer_with_model_compile_trains_student_and_teachers_compiled_fullgraph(
        synth_shards, tmp_path, compiled):
    trainer = train_compiled(synth_shards, tmp_path)
    assert sorted(compiled["calls"]) == [("MAETeacher", True), ("MVDStudent", True),
                                         ("VideoMAETeacher", True)]
    # one graph each for the student and the two teachers; step 2 reuses them (no recompile)
    assert len(compiled["graphs"]) == 3, compiled["graphs"]
    rows = losses(tmp_path)
    assert len(rows) == 2 and all(v is not None and math.isfinite(v) for v in rows), rows
    # compiled in place: the checkpoint and the export keep the plain parameter names
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert keys == trainer.task.model.state_dict().keys()
    assert not [k for k in keys if "_orig_mod" in k]


def test_compile_with_drop_path_and_activation_checkpointing_stays_fullgraph(
        synth_shards, tmp_path, compiled):
    trainer = train_compiled(synth_shards, tmp_path, "model.drop_path=0.2",
                             "model.activation_checkpointing=true")
    blocks = [m for m in trainer.task.model.modules() if isinstance(m, Block)]
    assert blocks and all(b.grad_checkpointing for b in blocks)
    assert any(not isinstance(b.drop_path, torch.nn.Identity) for b in blocks)
    assert ("MVDStudent", True) in compiled["calls"]
    rows = losses(tmp_path)
    assert len(rows) == 2 and all(v is not None and math.isfinite(v) for v in rows), rows
