"""shard_tools: pack video datasets into WebDataset shards in the ``mvd-shards/1`` format.

The format is described in ARCHITECTURE.md ("Shards (mvd-shards/1)"). Entry points:

- ``mvd-shard`` / ``python -m shard_tools`` (see :mod:`shard_tools.cli`);
- :func:`shard_tools.build.build_shards` packs a :class:`shard_tools.sources.SourceSet`;
- :func:`shard_tools.synth.make_synth_dataset` writes the synthetic dataset;
- :func:`shard_tools.verify.verify_shards` checks a shard directory against its manifest.
"""

from shard_tools.sample import FORMAT

__all__ = ["FORMAT"]
