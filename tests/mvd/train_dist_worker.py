"""Run under ``torchrun --nproc_per_node 2`` by test_train_dist.py: every task of the method in
one process group, stage feeding stage, so the group's start-up is paid once.

usage: torchrun --nproc_per_node 2 tests/mvd/train_dist_worker.py OUT TRAIN_SHARDS VAL_SHARDS

Writes OUT/results.json (rank 0) with each run's result, and OUT/nonfinite-rank{R}.txt with what
each rank saw when rank 1 alone produced a NaN loss.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from mvd.config import load_config
from mvd.engine.trainer import NonFiniteLoss, Trainer, run_eval

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


def cfg(task, run_dir, *overrides):
    return load_config(TINY / f"{task}.yaml", [f"data.dir={TRAIN}", f"run.dir={OUT / run_dir}",
                                              "run.progress=false", *overrides])


def main():
    results = {}
    common = ["checkpoint.every_steps=2", "run.log_every=2"]
    results["mae"] = Trainer(cfg("pretrain_mae", "mae", "train.max_steps=4", *common)).train()
    # the same run as test_train_dist's killed-and-resumed one: 14 steps of pretrain_videomae
    results["videomae"] = Trainer(cfg("pretrain_videomae", "videomae", "train.max_steps=14",
                                      *common)).train()
    # FSDP2 (fully_shard) instead of DDP: full state dicts gathered for the checkpoint, resumable
    fsdp = ["dist.fsdp=true", *common]
    results["fsdp"] = Trainer(cfg("pretrain_videomae", "fsdp", "train.max_steps=4", *fsdp)).train()
    Trainer(cfg("pretrain_videomae", "fsdp_resumed", "train.max_steps=2", *fsdp)).train()
    results["fsdp_resumed"] = Trainer(cfg("pretrain_videomae", "fsdp_resumed", "train.max_steps=4",
                                          *fsdp)).train()
    teachers = [f"teachers.image.checkpoint={OUT / 'mae'}",
                f"teachers.video.checkpoint={OUT / 'videomae' / 'checkpoints' / 'step-00000014.pt'}"]
    results["mvd"] = Trainer(cfg("pretrain_mvd", "mvd", "train.max_steps=6", *teachers,
                                 *common)).train()
    Trainer(cfg("pretrain_mvd", "mvd_resumed", "train.max_steps=3", *teachers, *common)).train()
    resumed = Trainer(cfg("pretrain_mvd", "mvd_resumed", "train.max_steps=6", *teachers, *common))
    results["mvd_resumed_from"] = resumed.step
    results["mvd_resumed"] = resumed.train()
    results["finetune"] = Trainer(cfg("finetune", "finetune", "train.max_steps=4",
                                      f"model.init={OUT / 'mvd'}", f"eval.dir={VAL}",
                                      *common)).train()
    results["eval"] = run_eval(cfg("eval", "eval", f"model.init={OUT / 'finetune'}",
                                   f"eval.dir={VAL}"))

    # A NaN on rank 1 only: both ranks must stop at the same sync with the same message.
    t = Trainer(cfg("pretrain_videomae", "nonfinite", "train.max_steps=8", *common))
    real = t.task.loss

    def loss(model, batch, micro):
        value, parts = real(model, batch, micro)
        return (value * float("nan") if micro == 2 and dist.get_rank() == 1 else value), parts

    t.task.loss = loss
    try:
        t.train()
        seen = "no error"
    except NonFiniteLoss as e:
        seen = str(e)
    (OUT / f"nonfinite-rank{dist.get_rank()}.txt").write_text(seen)
    if dist.get_rank() == 0:
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    OUT, TRAIN, VAL = (Path(a) for a in sys.argv[1:4])
    main()
