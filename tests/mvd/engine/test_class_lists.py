"""Class lists cannot drift between shards, checkpoints and runs: a fine-tune whose data.dir and
eval.dir lists differ, and an eval of a checkpoint trained on another list, stop before any work,
naming both sources and the first difference; checkpoints and exports carry their class names."""

import json
import sys
from pathlib import Path

import pytest

from mvd.config import ConfigError, load_config
from mvd.engine.class_lists import first_difference
from mvd.engine.trainer import Trainer, run_eval
from mvd.models import create_model, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from engine_fakes import fake_loaders, fake_manifest, no_loader  # noqa: E402

TINY = Path(__file__).resolve().parents[3] / "configs" / "tiny"
CLASSES = ["c0", "c1", "c2", "c3"]


def shards(path, classes, source="kinetics400"):
    return fake_manifest(path, classes, class_list={"source": source})


def config(name, tmp_path, *overrides):
    return load_config(TINY / f"{name}.yaml", [f"run.dir={tmp_path / 'run'}", "run.progress=false",
                                               "finetune.mixup=0", "finetune.cutmix=0", *overrides]
                       if name == "finetune" else [f"run.dir={tmp_path / 'eval'}", *overrides])


def test_first_difference_names_the_index_and_both_names():
    assert first_difference(["a", "b"], ["a", "b"]) is None
    assert first_difference(["a", "b", "c"], ["a", "x", "c"]) == "index 1: 'b' vs 'x'"
    assert first_difference(["a", "b"], ["a"]) == "index 1: 'b' vs (end of list)"
    assert first_difference([], ["a"]) == "index 0: (end of list) vs 'a'"


def test_finetune_with_train_and_eval_shards_of_different_lists_stops_before_any_work(tmp_path, monkeypatch):
    fake_loaders(monkeypatch, make=no_loader)
    train = shards(tmp_path / "train", CLASSES)
    val = shards(tmp_path / "val", ["c0", "c2", "c3"], source="csv")  # a val CSV missing c1
    cfg = config("finetune", tmp_path, f"data.dir={train}", f"eval.dir={val}")
    with pytest.raises(ConfigError) as err:
        Trainer(cfg)
    msg = str(err.value)
    assert f"data.dir={train} (4 classes, class list: kinetics400)" in msg
    assert f"eval.dir={val} (3 classes, class list: csv)" in msg
    assert "first difference at index 1: 'c1' vs 'c2'" in msg and "--classes" in msg


@pytest.fixture
def finetuned(tmp_path, monkeypatch):
    """A 2-step fine-tune on the fake loader; returns its run dir (export + checkpoint)."""
    fake_loaders(monkeypatch)
    train = shards(tmp_path / "train", CLASSES)
    Trainer(config("finetune", tmp_path, f"data.dir={train}", f"eval.dir={train}", "train.max_steps=2",
                   "checkpoint.every_steps=2")).train()
    return tmp_path / "run"


def test_finetune_export_and_checkpoint_carry_the_class_names(finetuned):
    from mvd.engine.checkpoint import find_latest_valid

    vit = create_model("video_vit_small", patch_size=8, embed_dim=32, depth=2, num_heads=2, num_frames=8,
                       img_size=32, num_classes=4)
    report = load_checkpoint(vit, finetuned / "model.safetensors")
    assert report.classes == CLASSES and report.classes_from == "checkpoint metadata"
    _, ckpt = find_latest_valid(finetuned / "checkpoints")
    assert json.loads(ckpt["model_meta"]["mvd_classes"]) == CLASSES
    assert load_checkpoint(vit, ckpt).classes == CLASSES


@pytest.mark.parametrize("init", ["export", "checkpoint"])
def test_eval_of_a_checkpoint_trained_on_another_list_stops_naming_both(finetuned, tmp_path, monkeypatch, init):
    if init == "checkpoint":  # an interrupted run: no export, the newest training checkpoint
        (finetuned / "model.safetensors").unlink()
    fake_loaders(monkeypatch, make=no_loader)
    other = shards(tmp_path / "other_val", ["c0", "c1", "c3", "c2"], source="file")
    cfg = config("eval", tmp_path, f"model.init={finetuned}", f"eval.dir={other}")
    with pytest.raises(ConfigError) as err:
        run_eval(cfg)
    msg = str(err.value)
    assert f"model.init={finetuned} (4 classes in its checkpoint metadata)" in msg
    assert f"eval.dir={other} (4 classes, class list: file)" in msg
    assert "first difference at index 2: 'c2' vs 'c3'" in msg


def test_eval_on_shards_of_the_same_list_runs(finetuned, tmp_path, monkeypatch):
    fake_loaders(monkeypatch)
    same = shards(tmp_path / "same_val", CLASSES)
    result = run_eval(config("eval", tmp_path, f"model.init={finetuned}", f"eval.dir={same}"))
    assert result["videos"] > 0
