"""Imports flow one way: models <- tasks <- flows <- the shell (CLI, progress, benchmarks), each layer a folder.

models/ is plain PyTorch and NumPy and depends on nothing of Lepton's outside itself; the kernel
(config, workspace, history, ...) in lepton/ on models only; the model runtime that every
version ships imports nothing of Lepton at all but itself, relatively.
"""

from __future__ import annotations

import ast
import sys
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


SHELL = {"lepton.cli", "lepton.worker"}  # the commands, their progress display, `lepton bench`, and the warm worker that runs them
# The warm worker sits beside the CLI, not in it: importing lepton.cli makes its consoles, for the terminal of the
# process that imports it, and the worker must not have them before it forks a run for a caller's terminal.
SHELL_BESIDE_CLI = ["worker"]
KERNEL = ["config", "workspace", "history", "lineage", "faults", "secrets", "landing", "runtime", "serving", "server", "demo", "report/__init__", "report/data",
          "report/plots", "report/page", "report/store", "report/screenshot", "validation", "validation_aside"]
RUNTIME = ["models/columns.py", "models/preprocessing.py", "models/network.py", "models/bundle.py", "lepton/serving.py"]


def lepton_imports(path: Path) -> set[str]:
    """The Lepton modules ``path`` imports (absolute imports; ``from lepton import x`` counts as lepton.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in ("lepton", "benchmarks")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in ("lepton", "benchmarks"):
            found |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "lepton" else {node.module}
    return found


def reaches(imports: set[str], layers: set[str]) -> set[str]:
    return {m for m in imports if any(m == layer or m.startswith(layer + ".") for layer in layers)}


def py_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", py_files("models"), ids=lambda p: p.name)
def test_models_import_no_orchestration(path: Path) -> None:
    """Nothing in models/ imports prefect, mlflow, dvc, great_expectations, or any of Lepton outside lepton.models."""
    assert imported_roots(path).isdisjoint(ORCHESTRATION | {"tasks", "flows", "models"})
    assert not {m for m in lepton_imports(path) if not m.startswith("lepton.models")}


@pytest.mark.parametrize("name", KERNEL)
def test_the_kernel_imports_models_only(name: str) -> None:
    """config, workspace, history and the rest of the ground floor never reach up into tasks, flows or the shell."""
    assert not reaches(lepton_imports(ROOT / "lepton" / f"{name}.py"), {"lepton.tasks", "lepton.flows", "benchmarks"} | SHELL)


@pytest.mark.parametrize("path", py_files("tasks"), ids=lambda p: p.name)
def test_tasks_do_not_import_flows_or_the_shell(path: Path) -> None:
    """Tasks never reach up into flows, the CLI or the benchmarks."""
    assert imported_roots(path).isdisjoint({"tasks", "flows", "models"})
    assert not reaches(lepton_imports(path), {"lepton.flows", "benchmarks"} | SHELL)


@pytest.mark.parametrize("path", py_files("flows"), ids=lambda p: p.name)
def test_flows_do_not_import_the_shell(path: Path) -> None:
    assert not reaches(lepton_imports(path), {"benchmarks"} | SHELL)


@pytest.mark.parametrize("path", py_files("benchmarks"), ids=lambda p: p.name)
def test_benchmarks_sit_on_top_without_the_cli(path: Path) -> None:
    """Benchmarks use the layers below, never the CLI that runs them (no import circle)."""
    assert not reaches(lepton_imports(path), SHELL)


@pytest.mark.parametrize("name", RUNTIME)
def test_the_model_runtime_imports_nothing_of_lepton_but_itself(name: str) -> None:
    """The files every model version ships import each other relatively, and no other part of Lepton."""
    path = ROOT / name
    assert not lepton_imports(path)
    assert imported_roots(path) <= {"__future__", "base64", "binascii", "collections", "importlib", "io", "json", "re", "zlib", "typing", "dataclasses", "pathlib", "warnings", "numpy", "pandas", "torch", "mlflow", "PIL"}


def test_the_runtime_ships_what_the_import_test_checks() -> None:
    """The list above is the runtime's own: a file added to it is checked too."""
    from lepton import runtime

    assert sorted(str(source.relative_to(ROOT)) for source, _ in runtime._files()) == sorted(RUNTIME)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The parser notices an orchestration import, including a nested one."""
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from mlflow.pyfunc import load_model\n")
    assert "mlflow" in imported_roots(sample)


@pytest.mark.parametrize("path", sorted((ROOT / "lepton" / "cli").glob("*.py")), ids=lambda p: p.name)
def test_lepton_help_needs_no_heavy_imports(path: Path) -> None:
    """`lepton --help` stays instant: no module of the CLI imports a heavy library at module level."""
    assert imported_roots(path, module_level_only=True).isdisjoint(ORCHESTRATION | {"torch", "pandas"})
    assert not reaches(_module_level_lepton(path), {"lepton.tasks", "lepton.flows", "lepton.models"})


def _module_level_lepton(path: Path) -> set[str]:
    """Lepton modules imported at module level (the kernel is light; tasks, flows and models are not)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("lepton"):
            found |= {f"{node.module}.{a.name}" for a in node.names} if node.module == "lepton" else {node.module}
    return found


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """``from lepton import cli`` inside a function counts as an import of the shell."""
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from lepton import cli\n    import lepton.flows.continual\n")
    assert reaches(lepton_imports(sample), SHELL | {"lepton.flows"}) == {"lepton.cli", "lepton.flows.continual"}


def test_every_kernel_module_is_checked() -> None:
    """A module added to lepton/ outside the CLI is held to the kernel's rule too."""
    found = {str(p.relative_to(ROOT / "lepton").with_suffix("")) for p in (ROOT / "lepton").rglob("*.py") if "cli" not in p.parts}
    assert found - {"__init__"} - set(SHELL_BESIDE_CLI) == set(KERNEL)


def test_the_warm_worker_imports_the_cli_only_inside_its_runs() -> None:
    """At module level it needs the standard library and the workspace only: the CLI checks for it before any import."""
    path = ROOT / "lepton" / "worker.py"
    assert imported_roots(path, module_level_only=True) - set(sys.stdlib_module_names) <= {"__future__", "lepton"}
    tree = ast.parse(path.read_text())
    module_level = {f"{n.module}" for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert module_level & {"lepton.cli"} == set() and "lepton.workspace" in module_level
