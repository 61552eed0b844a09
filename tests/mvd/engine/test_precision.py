"""The precision owner: teacher weights fp32 under autocast by default (as the MVD release keeps
them), bf16 on request, and the teachers' residual stream in their weights' dtype."""

import pytest
import torch

from mvd.config import ConfigError, load_config
from mvd.engine.precision import plan_precision
from mvd.models import create_model
from mvd.models.teachers import freeze

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_teacher_weights_stay_fp32_under_bf16_autocast_unless_asked():
    default = plan_precision("bf16", "cuda")
    assert default.dtype == torch.bfloat16 and default.teacher_dtype == torch.float32
    assert "teacher weights float32" in default.describe(fsdp=False)
    fast = plan_precision("bf16", "cuda", teacher_weights="autocast")
    assert fast.teacher_dtype == torch.bfloat16
    assert "teacher weights bfloat16" in fast.describe(fsdp=False)
    assert plan_precision("auto", "cpu").teacher_dtype == torch.float32  # fp32 on CPU
    assert load_config(None, ["data.dir=x"]).train.teacher_weights == "fp32"


def test_unknown_teacher_weights_name_the_key():
    with pytest.raises(ConfigError, match="train.teacher_weights"):
        plan_precision("bf16", "cuda", teacher_weights="fp16")
    with pytest.raises(ConfigError, match="train.teacher_weights"):
        load_config(None, ["data.dir=x", "train.teacher_weights=half"])


@pytest.mark.parametrize("name, shape", [
    ("mae_teacher_base", (2, 3, 32, 32)),
    ("videomae_teacher_small", (2, 3, 8, 32, 32)),
])
def test_fp32_teacher_weights_keep_the_residual_stream_fp32_under_autocast(name, shape):
    torch.manual_seed(0)
    kw = {"img_size": 32, **({"num_frames": 8} if len(shape) == 5 else {}), **TINY}
    ref_model = freeze(create_model(name, **kw))
    x = torch.randn(shape)
    with torch.no_grad():
        ref = ref_model(x)
    outputs = {}
    for weights in ("fp32", "autocast"):
        plan = plan_precision("bf16", "cpu", teacher_weights=weights)  # CPU bf16 autocast
        teacher = freeze(create_model(name, **kw))
        teacher.load_state_dict(ref_model.state_dict())
        teacher = teacher.to(plan.teacher_dtype)
        with torch.no_grad(), plan.autocast():
            outputs[weights] = teacher(x)
    assert outputs["fp32"].dtype == torch.float32  # the last block's sum: fp32
    assert outputs["autocast"].dtype == torch.bfloat16
    err = {k: float((v.float() - ref).norm() / ref.norm()) for k, v in outputs.items()}
    assert 0 < err["fp32"] < err["autocast"], err
