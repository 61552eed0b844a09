"""The task registry: one module per task, one list of them, and no code outside the task package
that asks which task a run is (a task-name comparison, a membership test on task names, an
isinstance on a task class); task construction calls no overridable method from ``__init__``."""

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

from mvd.engine import tasks
from mvd.engine.tasks import TASKS
from mvd.engine.tasks.base import Task

MVD = Path(tasks.__file__).resolve().parents[2]
PACKAGE = Path(tasks.__file__).resolve().parent
NAMES = set(TASKS)
CLASSES = {cls.__name__ for cls in TASKS.values()}


def task_name_branches(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every place that decides by a task's name or class."""

    def names_a_task(node) -> bool:
        if isinstance(node, ast.Constant) and node.value in NAMES:
            return True
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_task(e) for e in node.elts)
        return isinstance(node, ast.Attribute) and node.attr == "task"  # cfg.task == ...

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(names_a_task(n) for n in [node.left, *node.comparators]):
            found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass") \
                and any(isinstance(n, ast.Name) and n.id in CLASSES
                        for a in node.args[1:] for n in ast.walk(a)):
            found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Match) and names_a_task(node.subject):
            found.append((node.lineno, "match " + ast.unparse(node.subject)))
    return found


def test_no_code_outside_the_task_package_branches_on_a_tasks_name():
    found = []
    for path in sorted(MVD.rglob("*.py")):
        if PACKAGE in path.parents:
            continue
        for line, what in task_name_branches(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(MVD.parent)}:{line}: {what}")
    assert not found, "decide by asking the task, not by its name:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_branch():
    code = textwrap.dedent("""
        if cfg.task == "eval": pass
        if name in ("finetune", "detect"): pass
        if isinstance(task, (Finetune, Detect)): pass
        views = 2 if kind == "finetune" else 1
    """)
    assert [line for line, _ in task_name_branches(ast.parse(code))] == [2, 3, 4, 5]
    assert task_name_branches(ast.parse("if task.trains: pass\nx = cfg.data.dir == 'eval'")) == [(2, "cfg.data.dir == 'eval'")]


def test_every_task_module_is_registered_once_under_its_own_name():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "base"}
    registered = {inspect.getmodule(cls).__name__.rsplit(".", 1)[1]: name for name, cls in TASKS.items()}
    assert set(registered) == modules
    for module, name in registered.items():
        assert TASKS[name].name == name and module == name
        assert issubclass(TASKS[name], Task)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_construction_calls_no_overridable_method_from_init(name):
    """``build`` makes the parts; ``__init__`` stores them (no ``self.method(...)`` in it)."""
    for cls in TASKS[name].__mro__:
        if "__init__" not in vars(cls) or cls is object:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(vars(cls)["__init__"])))
        calls = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                 and n.func.value.id == "self"]
        assert not calls, f"{cls.__name__}.__init__ calls {calls}"
    assert inspect.getmodule(TASKS[name]) is importlib.import_module(f"mvd.engine.tasks.{name}")
