"""The data package's dependencies point one way: dali_pipelines (every module, DALI ones
included) needs nothing from the model package, and the modules the trainer imports without a
loader (budget, normalize, masks) need no DALI."""

import ast
import subprocess
import sys
from pathlib import Path

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


def _package_imports(path: Path) -> set[str]:
    """The dali_pipelines modules one module imports (anywhere in it), by parsing its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dali_pipelines" and len(parts) > 1 and parts[1] in MODULES:
                found.add(parts[1])
    return found - {path.stem}


def test_no_import_cycle_among_the_packages_modules():
    graph = {m: _package_imports(ROOT / "dali_pipelines" / f"{m}.py") for m in MODULES}
    assert graph["pretrain_loader"]  # the parse sees the imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_the_options_and_reader_config_modules_depend_on_nothing_of_the_package():
    for module, allowed in (("options", set()), ("reader_config", set()),
                            ("storage", set()), ("shard_files", {"storage"}),  # its object-store backend
                            ("outputs", {"reader_config"})):
        assert _package_imports(ROOT / "dali_pipelines" / f"{module}.py") == allowed, module
    loaded = _loaded_after_import(["options"])
    assert not {"nvidia", "torch", "numpy"} & loaded


def test_no_module_of_the_package_is_over_500_lines():
    long = {m: n for m in MODULES
            if (n := len((ROOT / "dali_pipelines" / f"{m}.py").read_text().splitlines())) > 500}
    assert not long, long
