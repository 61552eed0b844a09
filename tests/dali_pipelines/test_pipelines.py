"""Several decode pipelines per loader (gpu_decoders, the CPU share of cpu_decode_share): each
decodes whole samples at fixed positions of every batch, and the loader assembles the batch in
the planned order, so the batches are exactly those of one pipeline, across a resume too."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from test_pretrain_loader import assert_same_batches, collect

from dali_pipelines import FinetuneLoader, PretrainLoader
from dali_pipelines.budget import nvdec_engines
from dali_pipelines.runner import plan_pipelines


def test_plan_splits_every_batch_into_whole_samples():
    plans = plan_pipelines(8, device_pipelines=3, device_decode="dali", device_decode_on="gpu",
                           host_share=0.25, host_decode="pyav", dali_threads=8, reader_workers=3)
    assert [p.positions for p in plans] == [(0, 3), (1, 4), (2, 5), (6, 7)]
    assert [(p.decode, p.decode_on) for p in plans] == [("dali", "gpu")] * 3 + [("pyav", "cpu")]
    assert [p.dali_threads for p in plans] == [2, 2, 2, 2]
    assert [p.reader_workers for p in plans] == [0, 0, 0, 3]  # the PyAV pipeline decodes
    # more pipelines than samples: the empty ones are dropped; the whole batch on the host
    assert len(plan_pipelines(2, device_pipelines=7, device_decode="dali", device_decode_on="gpu",
                              host_share=0.0, host_decode="dali", dali_threads=1,
                              reader_workers=0)) == 2
    (host,) = plan_pipelines(4, device_pipelines=2, device_decode="dali", device_decode_on="gpu",
                             host_share=1.0, host_decode="dali", dali_threads=1,
                             reader_workers=2)
    assert host.positions == (0, 1, 2, 3) and host.decode_on == "cpu" and host.reader_workers == 2


def test_nvdec_engines_by_gpu_name():
    assert nvdec_engines("NVIDIA H100 80GB HBM3") == nvdec_engines("NVIDIA H200") == 7
    assert nvdec_engines("NVIDIA GH200 480GB") == 7
    assert nvdec_engines("NVIDIA A100-SXM4-80GB") == 5
    assert nvdec_engines("NVIDIA L4") == 4
    assert nvdec_engines("NVIDIA L40S") == nvdec_engines("Tesla T4") == 2  # not in the table


@pytest.mark.parametrize("shards", ["synth_shards", "counter_h264_shards"])
def test_n_pipelines_and_a_cpu_share_give_the_batches_of_one_across_a_resume(shards, request):
    data_dir = request.getfixturevalue(shards)
    batch = 8 if shards == "synth_shards" else 3
    kw = dict(device="cpu", seed=9, **{**TINY, "teacher_input_size": 48})
    reference = collect(PretrainLoader(data_dir, batch, **kw), epochs=2)
    split = dict(gpu_decoders=3, cpu_decode_share=0.25)
    loader = PretrainLoader(data_dir, batch, **kw, **split)
    assert len(loader.pipelines) == (4 if batch == 8 else 3)
    first = [next(iter(loader))]
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (0, 1)
    loader.close()
    resumed = PretrainLoader(data_dir, batch, **kw, **split)
    resumed.load_state_dict(state)
    assert_same_batches(reference, first + collect(resumed, epochs=2))


def test_finetune_views_and_erasing_are_the_same_with_two_pipelines(synth_shards):
    kw = dict(device="cpu", seed=1, repeated_aug=2, num_frames=8, sampling_rate=2, input_size=32,
              reader_workers=0)
    one = collect(FinetuneLoader(synth_shards, 4, **kw))[:3]
    two = collect(FinetuneLoader(synth_shards, 4, gpu_decoders=2, **kw))[:3]
    for x, y in zip(one, two):
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])


def test_bad_pipeline_settings_fail_at_construction(synth_shards):
    with pytest.raises(ValueError, match="gpu_decoders"):
        PretrainLoader(synth_shards, 4, device="cpu", gpu_decoders=-1, **TINY)
    with pytest.raises(ValueError, match="cpu_decode_share"):
        PretrainLoader(synth_shards, 4, device="cpu", cpu_decode_share=1.5, **TINY)


@pytest.mark.parametrize("shards, loader, kw", [
    ("synth_shards", PretrainLoader, {}),
    ("synth_shards", FinetuneLoader, {"repeated_aug": 2, "erase_prob": 0.5}),
    ("h264_shards", PretrainLoader, {}),  # PyAV: the reader's frames are the clip itself
])
def test_no_pipeline_returns_an_external_source_output_as_it_is(shards, loader, kw, request):
    """DALI 2.1.1's known issue (parallel external source, dynamic executor, an output returned
    directly, one contiguous chunk): every output the graph returns comes out of an operator
    other than the source (`fn.copy` for the pass-through ones). Batch size 1 per pipeline, one
    worker each: the case gpu_decoders gives when it splits a small batch."""
    made = loader(request.getfixturevalue(shards), 2, device="cpu", gpu_decoders=2, seed=1,
                  **{**TINY, "reader_workers": 2, **kw})
    next(iter(made))
    for pipe in made._pipe:
        # the pipeline's output DataNodes (DALI's private graph, read-only here)
        sources = {node.name: type(node.source._op).__name__ for node in pipe._graph_out}
        assert "ExternalSource" not in sources.values(), sources
    made.close()


@pytest.mark.slow
def test_one_sample_pipelines_with_worker_readers_pass_the_right_info_and_error(corrupt_h264):
    """gpu_decoders splitting a batch of 2 gives pipelines of batch size 1, each reading in a
    worker process (a parallel external source): the case DALI 2.1.1 lists as corrupting the
    source's outputs returned directly. The rows (sample, failure) and the failure's message
    are those of one in-process pipeline."""
    data_dir, key = corrupt_h264
    kw = dict(device="cpu", seed=3, max_failure_fraction=0.05, **TINY)
    whole = PretrainLoader(data_dir, 2, **kw)
    reference = collect(whole)
    split = PretrainLoader(data_dir, 2, gpu_decoders=2, **{**kw, "reader_workers": 2})
    assert [(p.positions, p.reader_workers) for p in split.pipelines] == [((0,), 1), ((1,), 1)]
    assert_same_batches(reference, collect(split))
    assert split.failed_keys == whole.failed_keys and key in split.failed_keys[0]
    assert split.bad == whole.bad and split.num_failures == whole.num_failures == 1
