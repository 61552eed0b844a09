"""Run under ``torchrun --nproc_per_node 2`` by test_train_detect.py: task detect on synthetic AVA
shards in one gloo group (DDP, then FSDP2), validating at the end on the held-out shards.

usage: torchrun --nproc_per_node 2 tests/mvd/train_detect_dist_worker.py OUT TRAIN_SHARDS VAL_SHARDS

Writes OUT/results.json (rank 0): the runs' results and the eval result rank 1 got.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from mvd.config import load_config
from mvd.engine.distributed import all_gather_objects
from mvd.engine.trainer import Trainer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def config(run_dir: Path, *overrides: str):
    return load_config(TINY / "detect.yaml", [
        f"data.dir={TRAIN}", f"eval.dir={VAL}", f"run.dir={run_dir}", "run.progress=false",
        "checkpoint.every_steps=3", "run.log_every=2", *overrides])


def main():
    result = Trainer(config(OUT / "detect", "train.max_steps=6")).train()
    evals = all_gather_objects(result["eval"])
    # the ViT-H recipe's wrapping: FSDP2, the evaluation running the sharded model on every rank
    fsdp = Trainer(config(OUT / "fsdp", "train.max_steps=2", "dist.fsdp=true")).train()
    if dist.get_rank() == 0:
        results = {"detect": result, "rank1_eval": evals[1], "fsdp": fsdp}
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    OUT, TRAIN, VAL = (Path(a) for a in sys.argv[1:4])
    main()
