"""What a wheel carries. Every top-level folder of modules but tests/ is in setup.cfg's include list
and every folder of modules is a package that setuptools finds; the built wheel
holds every module, the shipped recipes and the package data, and nothing else; installed (not
editable) in a fresh venv and used from another folder, every module imports from the install and
the console scripts run, ``mvd-train --config NAME`` planning a shipped recipe.

An editable install or ``PYTHONPATH`` hides what a wheel lacks: these tests build one. The fresh
venv borrows this interpreter's third-party packages (torch, DALI, ...) through a ``.pth`` line
instead of installing the lock, so that the check takes seconds; README's "Check a wheel" gives
the full check from a clean clone with ``-c constraints.txt``."""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
# what `pip wheel` reads besides the packages (setup.cfg's long_description is README.md)
BUILD_FILES = ["setup.cfg", "pyproject.toml", "README.md"]
# folders of modules that are not packages by design (shipped as package data, never imported)
NOT_PACKAGES = {"benchmarks.gpu.offline": "a sitecustomize.py that the GPU check's CPU rehearsal puts "
                                          "first on PYTHONPATH to hide DALI, PyAV and webdataset"}


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def include_patterns() -> list[str]:
    return setup_cfg()["options.packages.find"]["include"].split()


def package_roots() -> list[Path]:
    """The top-level folders setup.cfg's ``packages = find:`` include list ships."""
    return sorted(p for p in ROOT.iterdir()  # (not mvd.egg-info/, which an editable install leaves)
                  if p.is_dir() and p.name.isidentifier()
                  and any(fnmatch.fnmatch(p.name, pat) for pat in include_patterns()))


def module_folders() -> dict[str, Path]:
    """Dotted name -> folder, for every folder under the package roots that holds a .py file."""
    folders = {}
    for root in package_roots():
        for py in root.rglob("*.py"):
            if "__pycache__" not in py.parts:
                folders[".".join(py.parent.relative_to(ROOT).parts)] = py.parent
    return folders


def source_modules() -> set[str]:
    return {py.relative_to(ROOT).as_posix() for d in module_folders().values() for py in d.glob("*.py")}


def test_every_top_level_folder_of_modules_but_tests_is_in_the_include_list():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier()
               and any("__pycache__" not in py.parts for py in p.rglob("*.py"))}
    assert folders - {"tests"} == {p.name for p in package_roots()}, \
        "add the new top-level package to [options.packages.find] include in setup.cfg"


def test_every_folder_of_modules_is_a_package_that_setuptools_finds():
    found = set(find_packages(str(ROOT), include=include_patterns()))
    folders = module_folders()
    assert {"mvd", "mvd.engine", "dali_pipelines", "shard_tools", "benchmarks"} <= set(folders)
    missing = sorted(name for name in folders if name not in found and name not in NOT_PACKAGES)
    assert not missing, f"folders of modules without an __init__.py (a wheel leaves them out): {missing}"
    assert all(name.split(".")[0] in {r.name for r in package_roots()} for name in found), found


def console_scripts() -> dict[str, str]:
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(map(str.strip, line.split("=", 1)) for line in lines)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (``pip wheel --no-build-isolation``) from a copy of the source tree: the build
    files and the package roots (links kept), no build/ or egg-info left over from other builds."""
    src = tmp_path_factory.mktemp("wheel_src") / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for root in [*package_roots(), ROOT / "configs"]:
        shutil.copytree(root, src / root.name, symlinks=True, ignore=skip)
    out = src.parent / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("mvd-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_holds_every_module_the_recipes_and_the_package_data_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    recipes = {f"mvd/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")}
    data = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shard_tools" / "data").glob("*.txt")}
    data |= {"benchmarks/gpu/pack-sizes.json"}
    assert "mvd/engine/trainer.py" in source_modules() and "mvd/configs/pretrain_mvd_base_k400.yaml" in recipes
    assert data, "shard_tools/data has no class lists"
    expected = source_modules() | recipes | data
    assert sorted(expected - names) == [], "missing from the wheel"
    assert sorted(names - info - expected) == [], "in the wheel but not a module, recipe or package data"
    (entry_points,) = (n for n in info if n.endswith("/entry_points.txt"))
    ep = configparser.ConfigParser(interpolation=None)
    ep.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(ep["console_scripts"]) == console_scripts()


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_imports_every_module_and_plans_a_shipped_recipe(wheel, tmp_path):
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
         str(wheel)], elsewhere, env, timeout=300)
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    elsewhere, env).stdout.strip())
    # the third-party packages come from this interpreter, after the venv's own site-packages
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "borrowed-site-packages.pth").write_text("".join(f"{p}\n" for p in borrowed))

    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__")
                     for n in zipfile.ZipFile(wheel).namelist()
                     if n.endswith(".py") and not n.endswith("__main__.py")
                     and n.rsplit("/", 1)[0].replace("/", ".") not in NOT_PACKAGES)
    check = ("import importlib, json, sys\n"
             f"site = {str(site)!r}\n"
             "outside = [m for m in json.loads(sys.argv[1])\n"
             "           if not importlib.import_module(m).__file__.startswith(site)]\n"
             "assert not outside, f'imported from outside the install: {outside}'\n"
             "print(len(json.loads(sys.argv[1])))\n")
    assert run([str(py), "-c", check, json.dumps(modules)], elsewhere, env).stdout.split() == [str(len(modules))]

    listed = run([str(bin_dir / "mvd-train"), "--list-configs"], elsewhere, env).stdout
    assert f"files in {site / 'mvd' / 'configs'}" in listed
    assert {"pretrain_mvd_base_k400", "tiny/pretrain_mvd"} <= {line.split()[0] for line in listed.splitlines()[1:]}
    plan = run([str(bin_dir / "mvd-train"), "--config", "pretrain_mvd_base_k400", "--dry-run"], elsewhere, env)
    last = json.loads(plan.stdout.strip().splitlines()[-1])
    assert last["config"] == str(site / "mvd" / "configs" / "pretrain_mvd_base_k400.yaml")
    assert last["task"] == "pretrain_mvd"
    # a file path keeps working, relative to the working folder
    shutil.copy(site / "mvd" / "configs" / "tiny" / "pretrain_mvd.yaml", elsewhere / "mine.yaml")
    tiny = run([str(bin_dir / "mvd-train"), "--config", "mine.yaml", "--dry-run", "data.dir=shards",
                "data.expected_samples=48"],
               elsewhere, env)
    assert json.loads(tiny.stdout.strip().splitlines()[-1])["config"] == "mine.yaml"
    for script in sorted(set(console_scripts()) - {"mvd-train"}):  # every other entry point starts
        assert "usage" in run([str(bin_dir / script), "--help"], elsewhere, env).stdout.lower(), script
