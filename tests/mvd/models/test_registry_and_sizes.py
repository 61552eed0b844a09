"""Registry names, overrides, and the release parameter counts of every size."""

import pytest
import timm
import torch

from mvd.models import create_model, list_models, model_defaults

TINY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=32, depth=1, num_heads=2,
            mlp_ratio=2.0, drop_path_rate=0.1)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_with_the_common_overrides(name):
    model = create_model(name, **TINY)
    assert model.model_name == name and model.embed_dim == 32 and len(model.blocks) == 1
    assert model.blocks[0].mlp.fc1.out_features == 64


def test_registry_is_the_projects_own():
    assert not any(name in timm.list_models() for name in list_models())
    with pytest.raises(KeyError, match="unknown model"):
        create_model("mvd_student_gigantic")
    with pytest.raises(TypeError, match="bad override"):
        create_model("video_vit_small", no_such_option=1)


@pytest.mark.parametrize("size,millions,real", [("small", 22, True), ("base", 87, True), ("large", 305, False),
                                                ("huge", 633, False)])
def test_classifier_parameter_counts_match_the_release(size, millions, real):
    if real:
        model = create_model(f"video_vit_{size}", num_classes=400)
    else:
        with torch.device("meta"):  # L/H: shapes only, no memory or init time
            model = create_model(f"video_vit_{size}", num_classes=400)
    assert abs(n_params(model) / 1e6 - millions) / millions < 0.02


def test_size_defaults_follow_the_spec():
    assert model_defaults("mvd_student_huge")["decoder_depth"] == 8
    assert model_defaults("mvd_student_large")["decoder_embed_dim"] == 512
    assert model_defaults("mvd_student_huge")["drop_path_rate"] == 0.2
    assert model_defaults("mae_teacher_huge")["patch_size"] == 14
    assert model_defaults("videomae_pretrain_base")["decoder_embed_dim"] == 384
    with torch.device("meta"):
        teacher = create_model("mae_teacher_huge")
    assert teacher.grid == (14, 14)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("video_vit_small", **dict(TINY, drop_path_rate=0.0), num_classes=3)
    video = torch.randn(2, 3, 4, 32, 32)
    model(video).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(video).sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)
