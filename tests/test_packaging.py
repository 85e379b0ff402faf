"""One installable package: the wheel holds lepton and nothing else, the design card's folders inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    """models/, tasks/ and flows/ ship as lepton.models, lepton.tasks and lepton.flows; benchmarks stay in the checkout."""
    # Built from a copy of the sources, so no build/ folder left by an earlier build can add to it.
    source = tmp_path / "source"
    for folder in ("lepton", "models", "tasks", "flows", "benchmarks"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("lepton-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"lepton", wheel.name.split("-py3")[0] + ".dist-info"}
    for inside in ("lepton/models/bundle.py", "lepton/tasks/registry.py", "lepton/flows/continual.py", "lepton/runtime.py", "lepton/templates/report.html.j2"):
        assert inside in names, inside
    assert not [n for n in names if "benchmarks" in n or n.startswith("tests/")]
    # Every module of the checkout's package folders, under its installed name: a new subpackage cannot be left out.
    folders = {"lepton": "lepton", "models": "lepton/models", "tasks": "lepton/tasks", "flows": "lepton/flows"}
    modules = {f"{installed}/{p.relative_to(ROOT / folder)}" for folder, installed in folders.items() for p in (ROOT / folder).rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
