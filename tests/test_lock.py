"""constraints.txt (the lock README and .ci/run install with) pins every direct dependency
inside setup.cfg's range, and under CI the installed versions are the pinned ones."""

import configparser
import os
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def direct_requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["dev"].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def pins() -> dict[str, Version]:
    out = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt:{n}: {line!r} is not an exact pin NAME==VERSION"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"constraints.txt:{n}: {name} pinned twice"
        out[name] = Version(m.group(2))
    return out


def test_every_direct_dependency_is_pinned_inside_its_setup_cfg_range():
    locked = pins()
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"setup.cfg asks for {req} but constraints.txt does not pin it"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"constraints.txt pins {name}=={locked[name]}, outside setup.cfg's {req}"


def test_ci_installs_exactly_the_lock():
    if os.environ.get("CI") != "true":  # a developer's venv may hold other versions on purpose
        return
    for name, version in pins().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # platform-specific entries (CUDA wheels) a machine may not need
        assert installed == version, f"{name} {installed} installed, constraints.txt pins {version}"
