"""Shards -> batches: DALI loaders (CPU and GPU, PyAV fallback) and the PyTorch baseline.

`PretrainLoader`, `FinetuneLoader`, `EvalLoader` read a shard directory written by mvd-shard;
see ARCHITECTURE.md ("Loaders") for the batch contract.
"""

from dali_pipelines.loaders import DecodeFailureError, EvalLoader, FinetuneLoader, PretrainLoader
from dali_pipelines.manifest import ShardDirError, load_shard_dir

__all__ = [
    "PretrainLoader",
    "FinetuneLoader",
    "EvalLoader",
    "DecodeFailureError",
    "ShardDirError",
    "load_shard_dir",
]
