"""The project's layout: no module of a shipped package is over 500 lines, and no package has an
import cycle among its modules (imports read from the source, anywhere in a module)."""

import pytest

from tests.import_graph import PACKAGES, find_cycle, import_graph, imported_modules, package_modules

MAX_LINES = 500


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_of_the_package_is_over_500_lines(package):
    modules = package_modules(package)
    assert len(modules) > 1, f"no modules found under {package}/"
    long = {m: n for m, path in modules.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_among_the_packages_modules(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_graph_resolves_absolute_relative_and_function_local_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n\n"
                              "def f():\n    from .sub.b import X\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom pkg import c\n")
    (pkg / "c.py").write_text("import pkg.sub\n")
    graph = import_graph("pkg", tmp_path)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.c": {"pkg.sub"},
                     "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.a", "pkg.c"}}
    assert imported_modules(pkg / "c.py", "pkg.c", {"pkg.c"}) == set()
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None
