"""Imports flow one way: models <- tasks <- flows. models/ is plain PyTorch and NumPy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORCHESTRATION = {"prefect", "mlflow", "dvc", "great_expectations"}


def imported_roots(path: Path, *, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_no_orchestration(path: Path) -> None:
    """Nothing in models/ imports prefect, mlflow, dvc, great_expectations, tasks or flows."""
    assert imported_roots(path).isdisjoint(ORCHESTRATION | {"tasks", "flows"})


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").glob("*.py")), ids=lambda p: p.name)
def test_tasks_do_not_import_flows(path: Path) -> None:
    """Tasks never reach up into flows."""
    assert "flows" not in imported_roots(path)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The parser notices an orchestration import, including a nested one."""
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from mlflow.pyfunc import load_model\n")
    assert "mlflow" in imported_roots(sample)


def test_lepton_help_needs_no_heavy_imports() -> None:
    """`lepton --help` stays instant: the CLI module imports no heavy library at module level."""
    assert imported_roots(ROOT / "lepton" / "cli.py", module_level_only=True).isdisjoint(ORCHESTRATION | {"torch", "pandas"})
