"""``mvd-train --config FILE [dotted.key=value ...]`` (also ``python -m mvd.train``, and under
``torchrun``): stage-1 teachers, stage-2 MVD distillation, fine-tuning, evaluation and AVA action
detection, by the config's ``task``. ``--help-config`` lists every config key with its default and
meaning."""

from __future__ import annotations

import json
import logging
import os
import sys

USAGE = """usage: mvd-train --config FILE [dotted.key=value ...]
       torchrun --nproc_per_node N -m mvd.train --config FILE [dotted.key=value ...]
       mvd-train --config FILE --dry-run [dotted.key=value ...]
                                   (the run's plan on shapes alone: no data, checkpoint or GPU;
                                    last line is JSON; exit 2 naming every inconsistent key)
       mvd-train --help-config     (every key, its default and meaning)
       mvd-train --list-configs    (the shipped recipes: --config FILE also takes their NAME)

tasks: {tasks}
exit status: 0 done; 2 config error; 3 non-finite loss; 4 more videos failed to decode than
             data.max_failure_fraction allows (every rank stops at the same step, the log names
             the shards and keys); 130 interrupted (a checkpoint was written)
examples: mvd-train --config configs/tiny/pretrain_mvd.yaml data.dir=shards run.dir=runs/x
          train.max_steps=10 checkpoint.every_steps=5 seed=1 checkpoint.resume=auto"""


def usage() -> str:
    from mvd.engine.tasks import TASKS  # the registry imports torch and the models: only for help

    return USAGE.format(tasks=", ".join(TASKS))


def parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(config file, overrides, dry run?)"""
    config, overrides, dry_run, it = None, [], False, iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        if arg == "--help-config":
            from mvd.config import describe

            print("\n".join(describe()))
            raise SystemExit(0)
        if arg == "--list-configs":
            from mvd.recipes import listing

            print("\n".join(listing()))
            raise SystemExit(0)
        if arg == "--dry-run":
            dry_run = True
        elif arg == "--config":
            config = next(it, None)
            if config is None:
                raise SystemExit("mvd-train: --config needs a file\n" + usage())
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("-") and "=" not in arg:
            raise SystemExit(f"mvd-train: unknown option {arg}; the only options are --config, "
                             f"--dry-run, --list-configs and dotted.key=value overrides\n{usage()}")
        else:
            overrides.append(arg)
    return config, overrides, dry_run


def setup_logging(rank: int) -> None:
    if rank == 0 and sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler],
                            force=True)
    elif rank == 0:  # a log file or CI: plain lines, no wrapping
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S", force=True)
    else:
        logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s "
                            f"%(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    from mvd.config import ConfigError, load_config
    from mvd.recipes import resolve

    config, overrides, dry_run = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(int(os.environ.get("RANK", "0")))
    log = logging.getLogger("mvd.train")
    if config is None:
        print("mvd-train: --config FILE is required\n" + usage(), file=sys.stderr)
        return 2
    try:
        config = resolve(config)
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"mvd-train: config error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        return dry_run_main(cfg, config)  # (the plan collects the task's own checks)
    from dali_pipelines.failures import DecodeFailureError
    from mvd.engine import distributed as D
    from mvd.engine.tasks import task_class
    from mvd.engine.trainer import NonFiniteLoss, Trainer, run_eval

    try:
        task = task_class(cfg)  # the task's own checks, before any work
    except ConfigError as e:
        print(f"mvd-train: config error: {e}", file=sys.stderr)
        return 2
    try:
        result = Trainer(cfg).train() if task.trains else run_eval(cfg)
    except ConfigError as e:
        print(f"mvd-train: config error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        log.error("%s", e)
        return 3
    except DecodeFailureError as e:  # raised on every rank at the same step
        log.error("%s", e)
        return 4
    finally:
        D.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"task": cfg.task, "run_dir": cfg.run.dir, **result}))
    return 130 if result.get("status") == "interrupted" else 0


def dry_run_main(cfg, config_path: str) -> int:
    from mvd.engine.dryrun import make_plan, render

    plan, notes = make_plan(cfg)
    if plan is None:
        for e in notes.errors:
            print(f"mvd-train: config error: {e}", file=sys.stderr)
        print(f"mvd-train --dry-run: {config_path}: {len(notes.errors)} inconsistent "
              f"setting(s), see above", file=sys.stderr)
        return 2
    print(render(plan))
    print(json.dumps({"config": config_path, **plan}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
