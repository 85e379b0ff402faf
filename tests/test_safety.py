"""Safety under misuse: a restore that cannot happen changes nothing, a fence that holds, SIGTERM that stops a run, commits that say what a version was built from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_workspace

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of data/ and data.dvc, by path, with its bytes."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
    files["data.dvc"] = (root / "data.dvc").read_bytes()
    return files


def _two_versions(root: Path):
    from lepton.config import load
    from tasks.versioning import version

    ws = make_workspace(root, "digit", "digits", DIGITS)
    config = load(ws.root).dvc
    (ws.data / "increments").mkdir(parents=True, exist_ok=True)
    (ws.data / "increments" / "a.csv").write_text("x,digit\n1,0\n")
    old = version(ws, config)
    (ws.data / "increments" / "b.csv").write_text("x,digit\n2,1\n")
    new = version(ws, config)
    assert old != new
    return ws, config, old


def test_restore_of_unavailable_data_changes_nothing(clean_dir):
    """Remote gone and cache collected: the restore fails with the reason and data/ and data.dvc stay byte for byte."""
    from tasks.versioning import restore

    ws, config, old = _two_versions(clean_dir)
    shutil.rmtree(ws.dvc_remote)
    subprocess.run([str(Path(os.sys.executable).parent / "dvc"), "gc", "-w", "-f"], cwd=ws.root, check=True, capture_output=True)
    before = _snapshot(ws.root)
    with pytest.raises(Exception) as failed:
        restore(ws, old, config)
    assert _snapshot(ws.root) == before
    assert f"data version {old} is not available" in str(failed.value)


def test_restore_from_the_remote_after_gc(clean_dir):
    """Cache collected but the remote intact: the old version comes back, and data.dvc names it."""
    from tasks.versioning import current_hash, restore

    ws, config, old = _two_versions(clean_dir)
    subprocess.run([str(Path(os.sys.executable).parent / "dvc"), "gc", "-w", "-f"], cwd=ws.root, check=True, capture_output=True)
    restore(ws, old, config)
    assert current_hash(ws) == old
    assert sorted(p.name for p in (ws.data / "increments").iterdir()) == ["a.csv"]
