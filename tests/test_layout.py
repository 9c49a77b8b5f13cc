"""The shape of the package: the library never imports the lessons, modules stay readable, and the
real save path has no switch for tests."""

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
