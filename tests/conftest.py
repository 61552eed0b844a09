"""Session-wide fixtures shared by every test package.

``synth_shards`` and ``h264_shards`` are small sharded synthetic datasets in the
``mvd-shards/1`` format (see ARCHITECTURE.md), made once per test session:

- 48 clips of 40 frames at 64x48 (not square), 12 fps, 8 classes (4 shapes x 2 directions),
  split ``"train"``, seed 0, 24 samples per shard -> exactly 2 shards;
- ``synth_shards``: VP9 in ``.webm`` (DALI decodes it on the CPU);
- ``h264_shards``: H.264 in ``.mp4`` (for the PyAV fallback paths).

Both return the shard directory (holding ``manifest.json``, ``shard-00000{0,1}.tar/.idx``).
Treat them as read-only: they are shared by all tests of the session.

``s3_store`` is a real S3-compatible server (moto's standalone server, a subprocess on 127.0.0.1),
with the standard AWS environment pointed at it (``AWS_ENDPOINT_URL``, test credentials) for
this process and every process it starts; ``s3_store.put(folder, "s3://bucket/prefix")``
uploads a folder. Skipped, with the reason, where moto[server] or s3fs is not installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SYNTH_FIXTURE = {"num_videos": 48, "num_frames": 40, "width": 64, "height": 48, "num_classes": 8,
                 "fps": 12.0, "seed": 0, "split": "train", "shard_samples": 24, "workers": 2}


def _make_fixture_shards(root: Path, codec: str) -> Path:
    from shard_tools.synth import make_synth_dataset

    out = root / f"synth-{codec}"
    make_synth_dataset(out, codec=codec, **SYNTH_FIXTURE)
    return out


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> Path:
    """Directory of a 48-clip, 2-shard synthetic VP9 (.webm) dataset at 64x48, 40 frames, 8 classes."""
    return _make_fixture_shards(tmp_path_factory.mktemp("synth_shards"), "vp9")


@pytest.fixture(scope="session")
def h264_shards(tmp_path_factory) -> Path:
    """Directory of the same dataset as ``synth_shards`` encoded as H.264 in .mp4."""
    return _make_fixture_shards(tmp_path_factory.mktemp("h264_shards"), "h264")


class S3Store:
    """The test S3 server: its endpoint, and uploads of folders to s3:// prefixes."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def put(self, folder: Path, url: str) -> str:
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for f in sorted(Path(folder).iterdir()):
            if f.is_file():
                fs.put_file(str(f), f"{url.split('://', 1)[1].rstrip('/')}/{f.name}")
        return url


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    pytest.importorskip("s3fs", reason="s3:// shard directories need s3fs (the s3 / dev extras)")
    pytest.importorskip("moto.server", reason="the S3 tests run moto's server (moto[server], dev extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"moto server did not start on {endpoint}")
        yield S3Store(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.cuda`` tests need a CUDA GPU: skipped (with the reason) where none is
    visible; on a GPU machine ``python -m pytest -m cuda`` runs just them."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `python -m pytest -m cuda` on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
