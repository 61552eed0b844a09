"""GPU checks (``@pytest.mark.cuda``: skipped without a GPU; ``python -m pytest -m cuda`` on one):
flash SDPA on the real attention shapes, torch's fused AdamW, a bf16 MVD step, FSDP2 with the
frozen teachers, ``torch.compile`` under bf16, the full MVD-S step at 16x224 with its peak memory,
and that step's steady state under ``torch.cuda.set_sync_debug_mode("error")``.

They build tensors directly: the GPU machine has no DALI, PyAV or webdataset (see
the GPU machine as the project describes it), so nothing here imports dali_pipelines or needs shards, and they run on the
torch there (2.11) as well as here. ``-s`` (or ``-rP``) shows the MVD-S step's peak memory line.
The loop's own code (``Trainer.train_step``) is checked for host syncs on CPU in
tests/mvd/engine/test_host_sync.py; :func:`mvd_step` here mirrors it (forward under autocast,
backward, foreach clipping, optimizer step, zero_grad) to catch syncs that only CUDA kernels or
the fused optimizer would add.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mvd.config import OptimConfig, load_config
from mvd.distill import mvd_forward
from mvd.engine import distributed as D
from mvd.engine.optim import IMPLEMENTATIONS, build_optimizer
from mvd.engine.precision import Precision, plan_precision
from mvd.engine.tasks import PretrainMVD, build_task
from mvd.layers.attention import Attention
from mvd.losses import unnormalize_video
from mvd.models.pretrain import VideoMAEPretrain
from dali_pipelines.masks import masked_tokens, tube_mask
from mvd.models import create_model

pytestmark = pytest.mark.cuda

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEVICE = torch.device("cuda", 0)
BF16 = torch.bfloat16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32 (robust to the few large elementwise bf16 errors)."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def assert_bf16_close(got: dict, low: dict, ref: dict, *, slack: float = 3.0,
                      floor: float = 2e-2) -> None:
    """Each tensor in ``got`` (the fast path in bf16) is as close to the fp32 ``ref`` as the
    plain bf16 path ``low`` is, within ``slack`` times its error or ``floor``: bf16 tolerance
    measured, not guessed (a LayerNorm bias gradient, summed over many tokens, is a few percent
    off in bf16 on any path; a wrong kernel is off by O(1))."""
    bad = {}
    for k in ref:
        e, b = rel_err(got[k], ref[k]), rel_err(low[k], ref[k])
        if e > max(slack * b, floor):
            bad[k] = f"{e:.3g} (bf16 reference path {b:.3g})"
    assert not bad, f"relative errors against fp32 beyond bf16 tolerance: {bad}"


def tensors(out, x: torch.Tensor | None, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of outputs, the input's grad and every parameter's grad, to compare."""
    outs = out if isinstance(out, tuple) else (out,)
    found = {f"out{i}": o for i, o in enumerate(outs)}
    if x is not None:
        found["grad input"] = x.grad
    found.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    return found


def mvd_task(config: Path, *overrides: str, precision: Precision) -> PretrainMVD:
    """The pretrain_mvd task of a recipe on the GPU (student + frozen teachers), no checkpoints
    read (teachers randomly initialised)."""
    cfg = load_config(config, ["data.dir=unused", "run.dir=unused", "dist.device=cuda",
                               *overrides])
    return build_task(cfg, DEVICE, precision=precision, load=False)


def mvd_batch(task: PretrainMVD, batch_size: int, seed: int) -> dict:
    """What the pretrain loader yields: a normalised clip and its tube mask, on the GPU."""
    d = task.cfg.data
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    video = torch.randn(batch_size, 3, d.num_frames, d.input_size, d.input_size, device=DEVICE,
                        generator=g)
    mask = tube_mask(batch_size, task.model.grid, d.mask_ratio, generator=g, device=DEVICE)
    return {"video": video, "mask": mask}


def mvd_step(task: PretrainMVD, model: torch.nn.Module, optimizer, batch: dict,
             precision: Precision, clip_grad: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step the way Trainer.train_step runs it (one micro-batch, no host sync);
    returns device scalars (loss, grad norm before clipping)."""
    with precision.autocast():
        loss, _ = task.loss(model, batch, 0)
    loss.backward()
    params = [p for p in task.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, clip_grad, foreach=True)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), norm.detach()


# ---------------------------------------------------------------------- (a) flash attention

# (embed dim, heads) of ViT-S/B/L/H: head dims 64, 64, 64, 80
WIDTHS = {"S": (384, 6), "B": (768, 12), "L": (1024, 16), "H": (1280, 16)}
# 16x224 clips: 1568 tubelets, 160 of them visible at 90% tube masking; 196 patches + cls
TOKENS = {"student_visible": 160, "teacher_video": 1568, "image_with_cls": 197}


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("size", WIDTHS)
def test_flash_sdpa_runs_the_models_attention_within_bf16_tolerance_of_math(size, tokens):
    dim, heads = WIDTHS[size]
    n = TOKENS[tokens]
    torch.manual_seed(0)
    ref = Attention(dim, heads).to(DEVICE)
    with torch.no_grad():
        ref.q_bias.normal_(std=0.02)
        ref.v_bias.normal_(std=0.02)
    fast = copy.deepcopy(ref).to(BF16)
    plain = copy.deepcopy(fast)
    x = torch.randn(2, n, dim, device=DEVICE)
    cotangent = torch.randn(2, n, dim, device=DEVICE)
    results = {}
    # flash only: "No available kernel" would be raised if it could not take the shape
    for name, module, dtype, backend in (("flash", fast, BF16, SDPBackend.FLASH_ATTENTION),
                                         ("math bf16", plain, BF16, SDPBackend.MATH),
                                         ("math fp32", ref, torch.float32, SDPBackend.MATH)):
        xi = x.to(dtype, copy=True).requires_grad_()
        with sdpa_kernel(backend):
            out = module(xi)
            out.backward(cotangent.to(dtype))
        assert out.dtype == dtype and out.shape == (2, n, dim)
        results[name] = tensors(out, xi, module)
    assert_bf16_close(results["flash"], results["math bf16"], results["math fp32"])


# ---------------------------------------------------------------------- (b) fused AdamW


def test_fused_adamw_steps_like_foreach_adamw():
    torch.manual_seed(0)
    model = create_model("mvd_student_small", img_size=32, num_frames=8, patch_size=8,
                         embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64,
                         decoder_depth=1, decoder_num_heads=2).to(DEVICE)
    ref = copy.deepcopy(model)
    initial = [p.detach().clone() for p in model.parameters()]
    fused, impl = build_optimizer(model, OptimConfig(implementation="fused"), DEVICE, lr=1e-3)
    foreach, ref_impl = build_optimizer(ref, OptimConfig(implementation="foreach"), DEVICE, lr=1e-3)
    assert (impl, ref_impl) == (IMPLEMENTATIONS["fused"], IMPLEMENTATIONS["foreach"])
    assert all(g["fused"] for g in fused.param_groups)
    assert {g["weight_decay"] for g in fused.param_groups} == {0.0, 0.05}  # both groups present
    g = torch.Generator(device=DEVICE).manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), ref.parameters()):
            p.grad = torch.randn(p.shape, device=DEVICE, generator=g)
            q.grad = p.grad.clone()
        fused.step()
        foreach.step()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert all((p - p0).abs().max().item() > 0 for p, p0 in zip(model.parameters(), initial))


# ---------------------------------------------------------------------- (c) a bf16 MVD step


@pytest.mark.parametrize("teacher_weights, dtype", [("fp32", torch.float32), ("autocast", BF16)])
def test_bf16_mvd_step_gives_a_finite_loss_and_grads_only_on_the_student(teacher_weights, dtype):
    precision = plan_precision("bf16", "cuda", teacher_weights=teacher_weights)
    task = mvd_task(CONFIGS / "tiny" / "pretrain_mvd.yaml", "train.precision=bf16",
                    precision=precision)
    assert precision.teacher_dtype == dtype
    for teacher in task.teachers:
        assert {p.dtype for p in teacher.parameters()} == {dtype}
        assert not any(p.requires_grad for p in teacher.parameters())
    assert {p.dtype for p in task.model.parameters()} == {torch.float32}
    batch = mvd_batch(task, 4, seed=0)
    with precision.autocast():
        loss, parts = mvd_forward(task.model, task.image_teacher, task.video_teacher,
                                  batch["video"], None, batch["mask"], loss_cfg=task.loss_cfg,
                                  num_masked=task.num_masked)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss).item(), loss
    assert set(parts) == {"loss_img", "loss_vid"}
    assert all(torch.isfinite(v).item() for v in parts.values()), parts
    missing = [n for n, p in task.model.named_parameters() if p.grad is None]
    assert not missing, f"student parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all().item() for p in task.model.parameters())
    assert all(p.grad is None for t in task.teachers for p in t.parameters())


# ---------------------------------------------------------------------- (d) FSDP2


def test_fsdp2_sharded_student_steps_with_fused_adamw_beside_both_teachers():
    """Single-process NCCL group; wrap_model shards only when world_size > 1, so the student is
    sharded here the way it does it: fully_shard per block, then the root, with the precision
    plan's MixedPrecisionPolicy (bf16 params, fp32 reductions)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.cuda.set_device(DEVICE)
    dist.init_process_group("nccl", rank=0, world_size=1, store=dist.HashStore(),
                            device_id=DEVICE)
    try:
        precision = plan_precision("bf16", "cuda", fsdp=True)
        task = mvd_task(CONFIGS / "tiny" / "pretrain_mvd.yaml", "train.precision=bf16",
                        "dist.fsdp=true", precision=precision)
        model = task.model
        blocks = D.transformer_blocks(model)
        assert len(blocks) == 2 + 2 * 1  # encoder depth 2, two decoders of depth 1
        mp = precision.fsdp_policy()
        for block in blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert not any(isinstance(p, DTensor) for t in task.teachers for p in t.parameters())
        optimizer, impl = build_optimizer(model, OptimConfig(implementation="fused"), DEVICE,
                                          lr=1e-3, fsdp=True)
        assert impl == IMPLEMENTATIONS["fused"]
        before = [p.full_tensor().clone() for p in model.parameters()]
        losses = [mvd_step(task, model, optimizer, mvd_batch(task, 4, seed=s), precision)
                  for s in range(2)]
        for loss, norm in losses:
            assert torch.isfinite(loss).item() and torch.isfinite(norm).item(), (loss, norm)
        after = [p.full_tensor() for p in model.parameters()]
        assert all(p.dtype == torch.float32 for p in after)  # fp32 master weights
        assert any((a - b).abs().max().item() > 0 for a, b in zip(after, before))
        assert all(p.grad is None for t in task.teachers for p in t.parameters())
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- (e) compile


def test_student_compiled_fullgraph_with_inductor_matches_eager_in_bf16():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("mvd_student_small", img_size=112, num_frames=8, depth=2,
                         decoder_depth=1, drop_path_rate=0.0).to(DEVICE).train()
    eager, fp32 = copy.deepcopy(model), copy.deepcopy(model)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    video = torch.randn(2, 3, 8, 112, 112, device=DEVICE, generator=g)
    mask = tube_mask(2, model.grid, 0.9, generator=g, device=DEVICE)
    num_masked = masked_tokens(model.grid, 0.9, "tube")  # 4 x 44 of 4 x 49 tokens
    bf16 = plan_precision("bf16", "cuda")
    try:
        model.compile(fullgraph=True)  # inductor; a graph break raises
        results = {}
        for name, m, autocast in (("compiled", model, bf16.autocast),
                                  ("eager bf16", eager, bf16.autocast),
                                  ("eager fp32", fp32, contextlib.nullcontext)):
            with autocast():
                pred_img, pred_vid = m(video, mask, num_masked)
            (pred_img.float().square().mean() + pred_vid.float().square().mean()).backward()
            results[name] = tensors((pred_img, pred_vid), None, m)
        assert results["compiled"]["out0"].shape == (2, num_masked, 768)
        assert results["compiled"]["out0"].dtype == BF16
        assert_bf16_close(results["compiled"], results["eager bf16"], results["eager fp32"])
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------- (f, g) MVD-S at 16x224


@pytest.fixture(scope="module")
def mvd_s():
    """The MVD-S recipe (configs/pretrain_mvd_small_k400.yaml: mvd_student_small, MAE-B and
    VideoMAE-B teachers, 16 x 224, tube mask 0.9) at batch 2 in bf16 with fused AdamW, and
    four batches on the GPU."""
    precision = plan_precision("bf16", "cuda")
    task = mvd_task(CONFIGS / "pretrain_mvd_small_k400.yaml", "train.precision=bf16",
                    "data.batch_size=2", "optim.implementation=fused",
                    precision=precision)
    optimizer, impl = build_optimizer(task.model, task.cfg.optim, DEVICE, lr=1e-4)
    assert impl == IMPLEMENTATIONS["fused"]
    batches = [mvd_batch(task, 2, seed=s) for s in range(4)]
    yield task, optimizer, precision, batches
    del task, optimizer, batches
    torch.cuda.empty_cache()


def test_mvd_s_step_at_16x224_runs_in_bf16_and_reports_peak_memory(mvd_s, record_property):
    task, optimizer, precision, batches = mvd_s
    assert [type(t.module).__name__ for t in task.teachers] == ["MAETeacher", "VideoMAETeacher"]
    assert task.model.grid == (8, 14, 14)
    assert task.num_masked == masked_tokens(task.model.grid, 0.9, "tube") == 8 * 176
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss, norm = mvd_step(task, task.model, optimizer, batches[0], precision)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    record_property("mvd_s_16x224_batch2_bf16_peak_gib", round(peak, 3))
    print(f"\nMVD-S step, 16x224, batch 2, bf16, fused AdamW: loss {loss.item():.4f}, grad norm "
          f"{norm.item():.4f}, peak allocated {peak:.2f} GiB on {torch.cuda.get_device_name()}")
    assert torch.isfinite(loss).item() and torch.isfinite(norm).item(), (loss, norm)
    assert 0 < peak < 40, f"peak {peak:.2f} GiB for batch 2 is far above what MVD-S needs"


def test_sync_debug_mode_error_catches_a_host_sync():
    """The check below cannot pass vacuously: the mode does raise on an ``.item()``."""
    x = torch.ones((), device=DEVICE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            x.item()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_steady_state_mvd_s_step_makes_no_host_sync(mvd_s):
    """Two warm-up steps (the task counts the first batch's mask once, the optimizer creates its
    state, the allocator caches its blocks), then a third step under
    ``set_sync_debug_mode("error")``: any synchronising call in it raises."""
    task, optimizer, precision, batches = mvd_s
    for batch in batches[1:3]:
        mvd_step(task, task.model, optimizer, batch, precision)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, norm = mvd_step(task, task.model, optimizer, batches[3], precision)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item() and torch.isfinite(norm).item(), (loss, norm)


def test_stage1_pixel_target_makes_no_host_copy_in_the_steady_state():
    """The stage-1 pixel target's ImageNet constants are the model's buffers on the GPU:
    `unnormalize_video` with them runs under ``set_sync_debug_mode("error")`` (a tensor from a
    Python list there would be a pageable host-to-device copy, which the mode rejects)."""
    model = VideoMAEPretrain(img_size=32, patch_size=16, num_frames=4, embed_dim=32, depth=1, num_heads=2,
                             decoder_depth=1, decoder_embed_dim=16, decoder_num_heads=2).to(DEVICE)
    video = torch.randn(2, 3, 4, 16, 16, device=DEVICE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = unnormalize_video(video, model.pixel_mean, model.pixel_std)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == video.shape