"""The shipped packages' modules and the imports between them, read from the source with ast
(nothing is imported): what the layout tests check."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mvd", "dali_pipelines", "shard_tools", "benchmarks", "video_caps")


def package_modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> source file of every module of `package`, sub-packages included (a
    package's `__init__.py` goes by the package's name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of `known` that `module` (source `path`) imports anywhere in it, function-local
    imports included; `from a.b import c` counts as `a.b.c` when that is a module, else `a.b`.
    Relative imports are resolved against `module`'s package."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            while parts and ".".join(parts) not in known:  # the deepest module the name lies in
                parts.pop()
            if parts:
                found.add(".".join(parts))
    return found - {module}


def import_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = package_modules(package, root)
    return {m: imported_modules(path, m, set(modules)) for m, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as `[a, b, ..., a]`, or None (depth-first, in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None
