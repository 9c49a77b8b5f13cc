"""The shape of the package: the library never imports the lessons, modules stay readable, and the
real save path has no switch for tests."""

import argparse
import ast
import inspect
from pathlib import Path

import pytest

import sftlib

PACKAGE = Path(sftlib.__file__).parent
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "lessons" not in p.relative_to(PACKAGE).parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, absolute names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_the_library_never_imports_the_lessons():
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("sftlib.lessons"))
                 for p in LIBRARY}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(LIBRARY) > 10 and (PACKAGE / "lessons" / "toy.py").is_file(), "the walk saw both layers"


def test_the_import_check_sees_lazy_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from sftlib.lessons import toy\n    import sftlib.lessons.demo\n")
    assert {"sftlib.lessons.toy", "sftlib.lessons.demo"} <= imported_modules(sample)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_main_reads_as_named_steps():
    from sftlib import train

    lines = inspect.getsource(train.main).splitlines()
    assert len(lines) <= 90
    body = inspect.getsource(train.main)
    steps = ["validate_args", "setup_distributed", "build_ds_config", "build_model", "build_dataloaders",
             "build_engine", "evaluate", "train_one_epoch", "save_model"]
    positions = [body.index(f"{s}(") for s in steps]
    assert positions == sorted(positions), "main() calls its steps in DeepSpeed-Chat's order"


def save_path_functions():
    from sftlib import utils, zero

    return [zero.save_zero_three_model, zero.gather_state_dict, zero.remove_stale_temporaries, utils.write_hf_folder,
            utils.save_hf_format, utils.check_output_dir]


@pytest.mark.parametrize("func", save_path_functions(), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_the_save_path_reads_no_environment_variable(func):
    names = {n.attr if isinstance(n, ast.Attribute) else n.id
             for n in ast.walk(ast.parse(inspect.getsource(func).strip()))
             if isinstance(n, (ast.Attribute, ast.Name))}
    assert not names & {"environ", "getenv", "environb"}


ENV_WRITERS = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
ALLOWED_ENV_WRITES = {("dist.py", "local_rank_for_deepspeed")}  # DeepSpeed's engine reads LOCAL_RANK (see there)


def _is_environ(node) -> bool:
    """``os.environ`` (or a bare ``environ`` imported from os)."""
    return (isinstance(node, ast.Attribute) and node.attr in ("environ", "environb")) or (
        isinstance(node, ast.Name) and node.id in ("environ", "environb"))


def environ_writes(source: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of every write to the process environment in ``source``: item assignment
    or deletion, the dict methods that change it, ``os.putenv``/``os.unsetenv``."""
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            targets = child.targets if isinstance(child, (ast.Assign, ast.Delete)) else \
                [child.target] if isinstance(child, (ast.AugAssign, ast.AnnAssign)) else []
            if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
                found.append((func, child.lineno))
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and (
                    (child.func.attr in ENV_WRITERS and _is_environ(child.func.value))
                    or child.func.attr in ("putenv", "unsetenv")):
                found.append((func, child.lineno))
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def test_the_environment_check_sees_every_kind_of_write():
    sample = ("import os\nfrom os import environ\nos.environ['A'] = '1'\ndef f():\n    os.environ.update(B='2')\n"
              "    os.environ.setdefault('C', '3')\n    del os.environ['A']\n    os.environ.pop('B')\n"
              "    os.putenv('D', '4')\n    environ['E'] = '5'\n"
              "    env = dict(os.environ)\n    env['F'] = '6'\n    child = {**os.environ, 'G': '7'}\n")
    assert environ_writes(sample) == [("<module>", 3), ("f", 5), ("f", 6), ("f", 7), ("f", 8), ("f", 9), ("f", 10)]


def test_the_library_writes_no_environment_variable_outside_the_named_place():
    """Rank, world size and device travel as values (dist.RankContext); lessons that start jobs build
    the child's environment as a dict, which is no write."""
    writes = {(str(p.relative_to(PACKAGE)), func): line for p in sorted(PACKAGE.rglob("*.py"))
              for func, line in environ_writes(p.read_text())}
    assert set(writes) <= ALLOWED_ENV_WRITES, {k: v for k, v in writes.items() if k not in ALLOWED_ENV_WRITES}
    assert set(writes) == ALLOWED_ENV_WRITES, "the named place still exists (else drop it from the list)"


def functions(path: Path):
    """(qualified name, lines from its first decorator to its end) of every function in a file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            owner = getattr(node, "parent", None)
            prefix = f"{owner.name}." if isinstance(owner, ast.ClassDef) else ""
            yield prefix + node.name, node.end_lineno - start + 1


def test_the_length_check_counts_decorators_and_nested_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("@decorator\ndef f():\n    def g():\n        return 1\n    return g\n\n"
                      "class C:\n    def h(self):\n        pass\n")
    assert sorted(functions(sample)) == [("C.h", 2), ("f", 5), ("g", 2)]


def test_no_function_over_50_lines():
    """Every function in sftlib, lessons included, reads on one screen."""
    long = {f"{p.relative_to(PACKAGE)}:{name}": n for p in sorted(PACKAGE.rglob("*.py"))
            for name, n in functions(p) if n > 50}
    assert long == {}


def test_every_flag_of_the_training_command_line_has_help():
    from sftlib.arguments import build_parser

    actions = [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 40, "the walk saw the whole parser"
    assert [a.option_strings[0] for a in actions if not (a.help or "").strip() or a.help == argparse.SUPPRESS] == []
