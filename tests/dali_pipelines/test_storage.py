"""Shard directories in object storage (s3://), against a real S3-compatible server on
127.0.0.1: the same table, batches, resume and rank coverage as from the local folder; missing
prefixes, objects and buckets, and denied access, are errors naming the URL before any decoding;
transient errors are retried."""

from __future__ import annotations

import http.client
import http.server
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import TINY

from dali_pipelines import EvalLoader, PretrainLoader, ShardDirError, load_shard_dir
from dali_pipelines.manifest import read_sample_json
from dali_pipelines.shard_files import read_range


@pytest.fixture(scope="module")
def s3_shards(s3_store, synth_shards):
    return s3_store.put(synth_shards, "s3://mvd-test/synth/train")


def _batches(loader, n):
    out = []
    for i, b in enumerate(loader):
        if i == n:
            break
        out.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in b.items()})
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        for k in ("video", "teacher_video", "mask", "label", "index", "valid"):
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0, msg=k)


def test_the_table_from_s3_is_the_table_from_disk(s3_shards, synth_shards):
    local, remote = load_shard_dir(synth_shards).table, load_shard_dir(s3_shards).table
    assert remote.shard_paths == (f"{s3_shards}/shard-000000.tar", f"{s3_shards}/shard-000001.tar")
    assert remote.keys == local.keys
    for field in ("shard", "offset", "size", "num_frames", "width", "height", "label", "json_offset", "json_size"):
        np.testing.assert_array_equal(getattr(remote, field), getattr(local, field), err_msg=field)
    assert read_sample_json(remote, 5) == read_sample_json(local, 5)
    for i in (0, 30):  # the video bytes themselves, by ranged read
        r, lo = ((t.shard_paths[t.shard[i]], int(t.offset[i]), int(t.size[i])) for t in (remote, local))
        assert read_range(*r) == read_range(*lo)


@pytest.mark.slow
def test_batches_resume_and_ranks_from_s3_equal_those_from_disk(s3_shards, synth_shards):
    kw = {**TINY, "reader_workers": 1}  # one reader worker process: the store is read from a child too
    _assert_same(_batches(PretrainLoader(s3_shards, 4, device="cpu", seed=3, **kw), 3),
                 _batches(PretrainLoader(synth_shards, 4, device="cpu", seed=3, **kw), 3))
    full = PretrainLoader(synth_shards, 4, device="cpu", seed=3, **TINY)
    state = {**full.state_dict(), "step": 2}
    resumed = PretrainLoader(s3_shards, 4, device="cpu", seed=3, **TINY)
    resumed.load_state_dict(state)
    _assert_same(_batches(resumed, 1), _batches(full, 3)[2:])
    for rank in range(2):
        a = PretrainLoader(s3_shards, 4, device="cpu", seed=3, shard_id=rank, num_shards=2, **TINY)
        b = PretrainLoader(synth_shards, 4, device="cpu", seed=3, shard_id=rank, num_shards=2, **TINY)
        assert [x["index"].tolist() for x in _batches(a, 2)] == [x["index"].tolist() for x in _batches(b, 2)]
    eval_kw = dict(num_frames=8, sampling_rate=2, input_size=32, num_clips=2, num_crops=1, reader_workers=0)
    a, b = (_batches(EvalLoader(src, 4, device="cpu", **eval_kw), 2) for src in (s3_shards, synth_shards))
    for x, y in zip(a, b):
        assert x["key"] == y["key"]
        torch.testing.assert_close(x["video"], y["video"], rtol=0, atol=0)


def test_missing_prefix_object_and_bucket_are_errors_naming_the_url(s3_store, synth_shards, tmp_path):
    for url in ("s3://mvd-test/no/such/prefix", "s3://no-such-bucket-here/shards"):
        with pytest.raises(ShardDirError, match=re.escape(url)) as e:
            load_shard_dir(url)
        assert "no such prefix" in str(e.value)
    partial = tmp_path / "partial"
    shutil.copytree(synth_shards, partial)
    (partial / "shard-000001.idx").unlink()
    url = s3_store.put(partial, "s3://mvd-test/partial")
    with pytest.raises(ShardDirError, match=f"{url}/shard-000001.idx"):
        load_shard_dir(url)
    with pytest.raises(ShardDirError, match="unsupported scheme gs://.*gcsfs"):
        load_shard_dir("gs://bucket/shards")


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Forwards to the S3 server, answering every third request 503 (a transient store error)."""

    upstream = ""
    count = failed = 0

    def _forward(self):
        cls = type(self)
        cls.count += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if cls.count % 3 == 0:
            cls.failed += 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        conn = http.client.HTTPConnection(cls.upstream.split("://", 1)[1], timeout=30)
        conn.request(self.command, self.path, body=body,
                     headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args):
        pass


@pytest.mark.slow  # botocore backs off (seconds) between attempts
def test_transient_errors_are_retried_with_backoff(s3_store, s3_shards, synth_shards, monkeypatch):
    _Flaky.upstream, _Flaky.count, _Flaky.failed = s3_store.endpoint, 0, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        remote = load_shard_dir(s3_shards).table
        data = [read_range(remote.shard_paths[remote.shard[i]], int(remote.offset[i]), int(remote.size[i]))
                for i in range(0, 48, 7)]
    finally:
        server.shutdown()
    assert _Flaky.failed >= 3, (_Flaky.count, _Flaky.failed)
    local = load_shard_dir(synth_shards).table
    assert remote.keys == local.keys
    for i, d in zip(range(0, 48, 7), data):
        with open(local.shard_paths[local.shard[i]], "rb") as f:
            f.seek(int(local.offset[i]))
            assert d == f.read(int(local.size[i]))


def test_denied_access_is_an_error_naming_the_url_and_the_credentials(tmp_path):
    pytest.importorskip("s3fs", reason="s3:// shard directories need s3fs (the s3 / dev extras)")
    pytest.importorskip("moto.server", reason="the S3 tests run moto's server (moto[server], dev extra)")
    from benchmarks.storage import local_s3_server

    # a server that checks credentials (moto knows none of ours)
    with local_s3_server(tmp_path / "moto.log", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}):
        with pytest.raises(ShardDirError, match="s3://guarded/shards: access denied .* check the AWS credentials"):
            load_shard_dir("s3://guarded/shards")
