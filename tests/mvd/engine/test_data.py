"""mvd.engine.data and the tasks' loader functions: the training loaders yield uint8 clips and ModelInputs turns them into the
float batches the models took before (normalised on the device, erased after normalising)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipelines import FinetuneLoader, LoaderOptions, PretrainLoader
from mvd.config import load_config
from mvd.engine.data import ModelInputs, loader_options
from mvd.engine.distributed import DistInfo
from mvd.engine.tasks import finetune, pretrain_mvd

TINY = Path(__file__).resolve().parents[3] / "configs" / "tiny"
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_training_loaders_yield_uint8_and_model_inputs_normalise_them(synth_shards):
    for task in ("pretrain_mvd", "finetune"):
        cfg = load_config(TINY / f"{task}.yaml", [f"data.dir={synth_shards}"])
        loader = finetune.train_loader(cfg, CPU) if task == "finetune" else \
            pretrain_mvd.train_loader(cfg, CPU, (8, 2))
        assert loader.normalize is False
        raw = next(iter(loader))
        loader.close()
        assert raw["video"].dtype == torch.uint8
        inputs = ModelInputs(torch.device("cpu"))(raw)
        assert inputs["video"].dtype == torch.float32 and "erase_boxes" not in inputs
        assert raw["video"].dtype == torch.uint8  # the loader's batch is left as it was
        if task == "pretrain_mvd":
            assert inputs["teacher_video"] is inputs["video"]
    assert finetune.eval_loader(cfg, CPU).normalize is True  # evaluation takes float clips


def test_model_inputs_match_the_float_loader_and_erase_after_normalising(synth_shards):
    kw = dict(device="cpu", seed=2, num_frames=8, sampling_rate=2, input_size=32, reader_workers=0)
    floats = next(iter(PretrainLoader(synth_shards, 4, teacher_input_size=48, **kw)))
    raw = next(iter(PretrainLoader(synth_shards, 4, teacher_input_size=48, normalize=False, **kw)))
    inputs = ModelInputs(torch.device("cpu"))(raw)
    for name in ("video", "teacher_video"):
        assert (inputs[name] - floats[name]).abs().max() < 1e-5
    assert inputs["mask"] is raw["mask"]

    raw = next(iter(FinetuneLoader(synth_shards, 2, erase_prob=1.0, normalize=False, **kw)))
    plain = ModelInputs(torch.device("cpu"))({**raw, "erase_boxes": None})
    erased = ModelInputs(torch.device("cpu"))(raw)
    boxes = raw["erase_boxes"]
    changed = (erased["video"] != plain["video"]).any(1)  # (B * V, T, H, W)
    area = int(sum(int(h) * int(w) for h, w in boxes[:, :, 2:].reshape(-1, 2)))
    assert int(changed.sum()) == area > 0
    noise = erased["video"][(erased["video"] != plain["video"])]
    assert abs(float(noise.mean())) < 0.2 and 0.8 < float(noise.std()) < 1.2  # N(0, 1) pixels


def test_float_batches_pass_through():
    batch = {"video": torch.zeros(1, 3, 2, 4, 4), "erase_boxes": np.zeros((1, 2, 4), np.int32)}
    assert ModelInputs(torch.device("cpu"))(batch) is batch


def test_torch_threads_and_the_loaders_split_come_from_one_budget(synth_shards, caplog):
    from dali_pipelines.budget import cpu_budget
    from mvd.engine.data import log_cpu_budgets
    from mvd.engine.distributed import cpu_threads

    for configured in (0, 3):
        assert cpu_threads(configured, 1) == cpu_budget(step_device="cpu",
                                                        torch_threads=configured).torch_threads
    cfg = load_config(TINY / "pretrain_videomae.yaml", [f"data.dir={synth_shards}"])
    loader = pretrain_mvd.train_loader(cfg, CPU, (8, 2))
    assert loader.budget == cpu_budget(step_device="cpu")  # the step's half left to torch
    with caplog.at_level("INFO", logger="mvd.train"):
        log_cpu_budgets(loader, CPU)
    assert "rank 0 CPU budget:" in caplog.text and "DALI threads" in caplog.text
    cfg = load_config(TINY / "pretrain_videomae.yaml", [f"data.dir={synth_shards}",
                                                         "data.dali_threads=3", "data.reader_workers=1"])
    loader = pretrain_mvd.train_loader(cfg, CPU, (8, 2))
    assert (loader.budget.dali_threads, loader.budget.reader_workers) == (3, 1)


def test_the_config_maps_onto_the_loader_options_field_for_field(synth_shards):
    """Every loader option the config names has the config's name and value (data, eval and
    detect sections); the options the YAML does not name keep the loaders' defaults."""
    overrides = [f"data.dir={synth_shards}", "data.repeated_aug=3", "data.dali_threads=2", "data.reader_workers=1",
                 "data.gpu_decoders=2", "data.teacher_input_size=48", "data.erase_prob=0.5",
                 "eval.num_crops=2", "eval.num_clips=4", "detect.min_crop=0.5",
                 "detect.jitter=[0.1,0.1,0.1,0.1]", "data.rand_augment=[]"]
    cfg = load_config(TINY / "finetune.yaml", overrides)
    options = loader_options(cfg, CPU, (8, 2))
    names = {f.name for f in fields(LoaderOptions)}
    shared = 0
    for section in (cfg.data, cfg.eval, cfg.detect):
        for f in fields(section):
            if f.name in names and f.name not in ("device",):
                value = getattr(section, f.name)
                assert getattr(options, f.name) == (tuple(value) if isinstance(value, list)
                                                    else value), f.name
                shared += 1
    assert shared == 24  # every data, eval and detect field the loaders take
    assert (options.repeated_aug, options.dali_threads, options.reader_workers) == (3, 2, 1)
    assert (options.patch_size, options.tubelet_size, options.device) == (8, 2, "cpu")


def test_an_unknown_loader_option_in_the_config_is_refused_naming_its_key(synth_shards):
    cfg = load_config(TINY / "pretrain_mvd.yaml",
                      [f"data.dir={synth_shards}", "data.loader_options={num_workers: 0}"])
    with pytest.raises(ValueError, match="data.loader_options 'num_workers': not a loader option"):
        pretrain_mvd.train_loader(cfg, CPU, (8, 2))
