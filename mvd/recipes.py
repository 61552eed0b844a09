"""The shipped recipes: every YAML file of the repository's ``configs/`` folder, found by name.

``mvd-train --config NAME`` takes a recipe's name (``pretrain_mvd_base_k400``,
``tiny/pretrain_mvd``, with or without ``.yaml``) wherever mvd is installed; a path to a file
always wins, so ``--config configs/x.yaml`` and ``--config my_run.yaml`` work as before.

How a wheel carries them: ``configs/`` stays at the top of the repository, where a reader looks
for the recipes, and ``mvd/configs`` is a symbolic link to it (``../configs``). setup.cfg ships
it as ``mvd`` package data, so a wheel holds real copies under ``mvd/configs/`` and the recipes
sit beside this module in every kind of install: a wheel (venv, system, ``--user``,
``--target``), an editable install or a checkout on ``PYTHONPATH`` (where the link points at the
checkout's files, so an edited recipe is the one that runs). setuptools' alternatives do not fit:
package data must live inside a package folder, a ``package_dir`` mapping needs an explicit
package list instead of ``find:``, and ``data_files`` is deprecated, lost by ``--target`` and
copied (so stale) by an editable install. The project runs on Linux only (DALI), where git keeps
symbolic links.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from mvd.config import ConfigError, yaml_load

_PACKAGE = Path(__file__).resolve().parent
# A copy of a checkout that keeps only regular files (some file-transfer tools drop links) still
# has the top-level folder the link points at.
CONFIGS = next((d for d in (_PACKAGE / "configs", _PACKAGE.parent / "configs") if d.is_dir()),
               _PACKAGE / "configs")
SUFFIX = ".yaml"


def names() -> list[str]:
    """Every shipped recipe's name, sorted: its path under ``configs/`` without ``.yaml``."""
    return sorted(p.relative_to(CONFIGS).with_suffix("").as_posix()
                  for p in CONFIGS.rglob(f"*{SUFFIX}"))


def resolve(config: str) -> str:
    """``--config``'s value -> a config file: the file itself if it exists, else the shipped
    recipe of that name. ConfigError (naming both readings) when it is neither."""
    if Path(config).is_file():
        return config
    if Path(config).exists():
        raise ConfigError(f"config {config} is not a file; --config takes a YAML file or the name "
                          f"of a shipped recipe (`mvd-train --list-configs`)")
    stem = config.removesuffix(SUFFIX)
    if stem in names():
        return str(CONFIGS / f"{stem}{SUFFIX}")
    shipped = Path(stem).relative_to("configs").as_posix() if stem.startswith("configs/") else stem
    hint = (f" (the shipped recipe is --config {shipped})" if shipped in names()
            else _did_you_mean(stem))
    raise ConfigError(f"config file {config} does not exist, and no shipped recipe has that "
                      f"name{hint}; `mvd-train --list-configs` lists the {len(names())} shipped "
                      f"recipes")


def listing() -> list[str]:
    """``mvd-train --list-configs``: one line per shipped recipe, its name and its task."""
    width = max(map(len, names()))
    lines = [f"shipped recipes (mvd-train --config NAME; files in {CONFIGS}):"]
    for name in names():
        task = (yaml_load((CONFIGS / f"{name}{SUFFIX}").read_text()) or {}).get("task", "?")
        lines.append(f"  {name:<{width}}  {task}")
    return lines


def _did_you_mean(stem: str) -> str:
    close = difflib.get_close_matches(stem, names(), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""
