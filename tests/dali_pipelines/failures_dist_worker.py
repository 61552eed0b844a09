"""Run under ``torchrun --nproc_per_node 2`` by test_failures_dist.py: mvd-train (``mvd.train.main``)
on shards with corrupted videos. Each rank writes OUT/rank{R}.json with its exit status and the
errors it logged, then exits with that status.

usage: torchrun --nproc_per_node 2 tests/dali_pipelines/failures_dist_worker.py OUT [mvd-train args]
"""

import json
import logging
import os
import sys
from pathlib import Path

from mvd.train import main


class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


if __name__ == "__main__":
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    errors = Errors()
    logging.getLogger("mvd.train").addHandler(errors)  # main() resets the root's handlers only
    code = main(argv)
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(json.dumps({"code": code, "errors": errors.messages}))
    sys.exit(code)
