"""The data package's dependencies point one way: dali_pipelines (every module, DALI ones
included) needs nothing from the model package, and the modules the trainer imports without a
loader (budget, normalize, masks) need no DALI. (No cycle among its modules and none over 500
lines: tests/test_layout.py, for every package.)"""

import subprocess
import sys
from pathlib import Path

from tests.import_graph import import_graph

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (ROOT / "dali_pipelines").glob("*.py") if p.stem != "__init__")


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import dali_pipelines.{m}\n" for m in modules) +
            "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_no_dali_pipelines_module_imports_the_model_package():
    assert "pretrain_loader" in MODULES and "masks" in MODULES
    assert "mvd" not in _loaded_after_import(MODULES)


def test_the_modules_the_trainer_imports_without_a_loader_need_no_dali():
    assert "nvidia" not in _loaded_after_import(["budget", "normalize", "masks"])


def test_the_options_and_reader_config_modules_depend_on_nothing_of_the_package():
    graph = import_graph("dali_pipelines")
    assert graph["dali_pipelines.pretrain_loader"]  # the parse sees the imports
    for module, allowed in (("options", set()), ("reader_config", set()),
                            ("storage", set()), ("shard_files", {"storage"}),  # its object-store backend
                            ("outputs", {"reader_config"})):
        assert graph[f"dali_pipelines.{module}"] == {f"dali_pipelines.{a}" for a in allowed}, module
    loaded = _loaded_after_import(["options"])
    assert not {"nvidia", "torch", "numpy"} & loaded
