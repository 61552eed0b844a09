"""Session-wide fixtures shared by every test package.

``synth_shards`` and ``h264_shards`` are small sharded synthetic datasets in the
``mvd-shards/1`` format (see ARCHITECTURE.md), made once per test session:

- 48 clips of 40 frames at 64x48 (not square), 12 fps, 8 classes (4 shapes x 2 directions),
  split ``"train"``, seed 0, 24 samples per shard -> exactly 2 shards;
- ``synth_shards``: VP9 in ``.webm`` (DALI decodes it on the CPU);
- ``h264_shards``: H.264 in ``.mp4`` (for the PyAV fallback paths).

Both return the shard directory (holding ``manifest.json``, ``shard-00000{0,1}.tar/.idx``).

``ava_shards``, ``ava_val_shards`` and ``ava_no_proposals`` are synthetic AVA shard sets
(``shard_tools.synth_ava``: 16-frame 64x64 VP9 clips around each keyframe), made once per session
for the detection loader and the detect task; each is a ``SynthAvaShards`` (``out_dir``,
``manifest``, ``files``: the AVA-format CSV / pbtxt files it was sharded from).

``s3_store`` is a real S3-compatible server (moto's standalone server, a subprocess on 127.0.0.1),
with the standard AWS environment pointed at it (``AWS_ENDPOINT_URL``, test credentials) for
this process and every process it starts; ``s3_store.put(folder, "s3://bucket/prefix")``
uploads a folder. Skipped, with the reason, where moto[server] or s3fs is not installed.

Treat every one as read-only: they are shared by all tests of the session.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def ava_shards(tmp_path_factory):
    """Train split: 58 keyframes (4 movies x 15 s, 2 excluded), with proposals."""
    from shard_tools.synth_ava import make_synth_ava_shards

    return make_synth_ava_shards(tmp_path_factory.mktemp("ava") / "train", split="train", workers=1)


@pytest.fixture(scope="session")
def ava_val_shards(tmp_path_factory):
    """Val split: 28 keyframes of 2 movies, with proposals."""
    from shard_tools.synth_ava import make_synth_ava_shards

    return make_synth_ava_shards(tmp_path_factory.mktemp("ava") / "val", split="val", movies=2, workers=1)


@pytest.fixture(scope="session")
def ava_no_proposals(tmp_path_factory):
    """Val split of 2 movies x 6 s without proposals (every sample's proposal list is empty)."""
    from shard_tools.synth_ava import make_synth_ava_shards

    return make_synth_ava_shards(tmp_path_factory.mktemp("ava") / "noprop", split="val", movies=2,
                                 seconds=6, proposals=False, workers=1)


class S3Store:
    """The test S3 server: its endpoint, and uploads of folders to s3:// prefixes."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def put(self, folder: Path, url: str) -> str:
        from benchmarks.storage import upload

        return upload(folder, url)


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    pytest.importorskip("s3fs", reason="s3:// shard directories need s3fs (the s3 / dev extras)")
    pytest.importorskip("moto.server", reason="the S3 tests run moto's server (moto[server], dev extra)")
    from benchmarks.storage import local_s3_server

    with local_s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield S3Store(endpoint)


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
