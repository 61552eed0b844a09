"""The training engine: the loop (``trainer``), the tasks, the dry run, checkpoints, data plumbing,
distributed setup, precision, optimiser, metrics and evaluation. ``mvd.train`` is its entry point."""
