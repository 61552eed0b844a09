"""Run under ``torchrun --nproc_per_node 2`` by test_train_s3.py: the same tiny MVD pretraining
from the local shard folder and from its s3:// copy, in one process group (start-up paid once).

usage: torchrun --nproc_per_node 2 tests/mvd/train_s3_worker.py OUT LOCAL_SHARDS S3_URL

Each run writes OUT/local or OUT/s3 (metrics.jsonl on rank 0).
"""

import sys
from pathlib import Path

import torch.distributed as dist

from mvd.config import load_config
from mvd.engine.trainer import Trainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def main(out: Path, local: str, url: str) -> None:
    for where, data in (("local", local), ("s3", url)):
        cfg = load_config(TINY / "pretrain_mvd.yaml", [f"data.dir={data}", f"run.dir={out / where}",
                                                      "train.max_steps=3", "run.log_every=1",
                                                      "checkpoint.every_steps=0", "run.progress=false"])
        Trainer(cfg).train()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
