"""Shared fixtures: a real Prefect API (the test harness), real workspaces with git, DVC and MLflow on SQLite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Set before prefect, mlflow or dvc are imported: they read these at import.
os.environ.update(
    {
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "TQDM_DISABLE": "1",
        "GIT_AUTHOR_NAME": "Lepton Tests",
        "GIT_AUTHOR_EMAIL": "tests@lepton.invalid",
        "GIT_COMMITTER_NAME": "Lepton Tests",
        "GIT_COMMITTER_EMAIL": "tests@lepton.invalid",
    }
)
# Tests use the embedded defaults of their own temporary workspaces, never a real server.
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
    os.environ.pop(_var, None)
os.environ.setdefault("PREFECT_HOME", str(Path(__file__).resolve().parent.parent / ".lepton" / "test-prefect-home"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

ROOT = Path(__file__).resolve().parent.parent
LEPTON = str(Path(sys.executable).parent / "lepton")
FAST = ["train.epochs=15", "gate.bootstrap_samples=200"]


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server for the whole session; yields its URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


def run_cli(args: list[str], *, api_url: str | None, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """The real ``lepton`` command in a subprocess, against the session's Prefect API."""
    env = dict(os.environ)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([LEPTON, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, check=False)


def make_workspace(path: Path, label: str, name: str, settings: dict | None = None):
    """A fresh workspace: git, DVC with its local remote, lepton.yaml and data.dvc."""
    from lepton.cli import initialise
    from lepton.workspace import Workspace

    ws = Workspace.at(path)
    initialise(ws, label, name, settings)
    return ws


@pytest.fixture
def clean_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ws")
    yield path
    shutil.rmtree(path, ignore_errors=True)
