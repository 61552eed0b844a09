"""``python -m shard_tools`` is the same as ``mvd-shard``."""

from shard_tools.cli import main

raise SystemExit(main())
