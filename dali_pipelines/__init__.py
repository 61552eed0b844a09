"""Shards -> batches: DALI loaders (CPU and GPU, PyAV fallback) and the PyTorch baseline.

`PretrainLoader`, `FinetuneLoader`, `EvalLoader` (and `DetectLoader`, AVA keyframes with their
person boxes) read a shard directory written by mvd-shard;
see ARCHITECTURE.md ("Loaders") for the batch contract.

The names below are loaded on first use: the loaders import DALI, while `dali_pipelines.options`
(the loaders' options), `dali_pipelines.manifest` (the shard directory's manifest),
`dali_pipelines.budget` (the per-rank CPU split) and `dali_pipelines.normalize` (the step's
normalisation) are plain Python, numpy and torch, imported by the trainer without DALI.
"""

from importlib import import_module

_EXPORTS = {
    "PretrainLoader": "dali_pipelines.pretrain_loader",
    "FinetuneLoader": "dali_pipelines.finetune_loader",
    "EvalLoader": "dali_pipelines.eval_loader",
    "DetectLoader": "dali_pipelines.detect_loader",
    "LoaderOptions": "dali_pipelines.options",
    "DecodeFailureError": "dali_pipelines.failures",
    "ShardDirError": "dali_pipelines.manifest",
    "load_shard_dir": "dali_pipelines.manifest",
    "read_manifest": "dali_pipelines.manifest",
    "load_ava": "dali_pipelines.manifest",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dali_pipelines' has no attribute {name!r}")
