"""LoaderOptions: one object, one name per option, checked when made; the loaders take it or its
fields as keywords (no second name)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from conftest import TINY

from dali_pipelines import EvalLoader, FinetuneLoader, LoaderOptions, PretrainLoader


def test_each_option_has_one_name():
    names = {f.name for f in fields(LoaderOptions)}
    assert {"repeated_aug", "dali_threads", "reader_workers", "gpu_decoders"} <= names
    assert not {"num_sample", "num_views", "num_threads", "num_workers"} & names


def test_a_loader_refuses_a_second_name_for_an_option(synth_shards):
    for old in ("num_workers", "num_threads", "num_sample"):
        with pytest.raises(ValueError, match=rf"'{old}': not a loader option"):
            FinetuneLoader(synth_shards, 2, device="cpu", **{old: 1})


def test_bad_values_name_the_option():
    for field, value, match in (("repeated_aug", 0, "repeated_aug must be an integer >= 1"),
                                ("reader_workers", -2, "reader_workers must be an integer >= -1"),
                                ("device", "tpu", "device must be one of"),
                                ("rand_augment", (4, 7.0), "rand_augment must be"),
                                ("shard_id", 2, "shard_id 2 not in"),
                                ("erase_prob", 1.5, "erase_prob must be in")):
        with pytest.raises(ValueError, match=match):
            LoaderOptions(**{field: value})
    assert LoaderOptions(jitter=[0.1, 0.1, 0.1, 0.1]).jitter == (0.1, 0.1, 0.1, 0.1)  # YAML lists
    assert LoaderOptions(input_size=32).teacher_size == LoaderOptions(input_size=32).eval_short_side == 32


def test_an_options_object_and_its_keywords_make_the_same_loader(synth_shards):
    options = LoaderOptions(device="cpu", seed=3, **TINY)
    a = next(iter(PretrainLoader(synth_shards, 2, options)))
    b = next(iter(PretrainLoader(synth_shards, 2, device="cpu", seed=3, **TINY)))
    c = next(iter(PretrainLoader(synth_shards, 2, LoaderOptions(device="cpu"), seed=3, **TINY)))
    for x in (b, c):
        assert a["key"] == x["key"] and (a["video"] == x["video"]).all()
    loader = EvalLoader(synth_shards, 3, LoaderOptions(device="cpu", num_clips=1, **TINY))
    assert loader.options.num_crops == 3 and loader.num_views == 48 * 3
