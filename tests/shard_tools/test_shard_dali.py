"""DALI's webdataset reader accepts the shards and their index files."""

import json

import numpy as np
from nvidia.dali import fn, pipeline_def

from shard_tools.sample import unpack_meta


def test_dali_reader_reads_every_sample_through_the_index(synth_shards):
    manifest = json.loads((synth_shards / "manifest.json").read_text())
    tars = [str(synth_shards / s["name"]) for s in manifest["shards"]]
    idxs = [str(synth_shards / s["index"]) for s in manifest["shards"]]

    @pipeline_def(batch_size=16, num_threads=1, device_id=None)
    def pipe():
        cls, meta, video = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["cls", "meta", "webm"],
                                                 missing_component_behavior="error", name="reader")
        return cls, meta, video

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == manifest["samples"]
    labels = []
    for _ in range(manifest["samples"] // 16):
        cls, meta, video = p.run()
        for i in range(len(cls)):
            label = int(bytes(np.array(cls[i])))
            frames, width, height, meta_label = unpack_meta(np.array(meta[i]).tobytes())
            assert (frames, width, height, meta_label) == (40, 64, 48, label)
            assert np.array(video[i]).size > 100
            labels.append(label)
    assert sorted(labels) == sorted(c for c in range(8) for _ in range(6))
