"""`python -m benchmarks` is `mvd-bench`."""

import sys

from benchmarks.cli import main

sys.exit(main())
