"""Fixtures of the shard_tools tests: a folder of good and broken videos and a list file over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_videos import BROKEN_VIDEOS, GOOD_VIDEOS, make_mixed_videos


@pytest.fixture(scope="session")
def mixed_videos(tmp_path_factory) -> Path:
    """A folder with every good and broken kind of input (see GOOD_VIDEOS / BROKEN_VIDEOS)."""
    return make_mixed_videos(tmp_path_factory.mktemp("mixed_videos"))


@pytest.fixture(scope="session")
def mixed_list(mixed_videos: Path) -> Path:
    """A list file over ``mixed_videos`` with labels, plus a missing file and an unknown label.

    Labels: the i-th good video gets ``i % 3``; broken ones get 0.
    """
    lines = ["# relative/path label_index", ""]
    for i, name in enumerate(GOOD_VIDEOS):
        lines.append(f"{name} {i % 3}")
    lines += [f"{name} 0" for name in BROKEN_VIDEOS]
    lines += ["does_not_exist.mp4 1", "h264_a.mp4 notanumber", "justonefield"]
    path = mixed_videos.parent / f"{mixed_videos.name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
