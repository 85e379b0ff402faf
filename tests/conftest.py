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
    from lepton.tasks.initialise import initialise
    from lepton.workspace import Workspace

    ws = Workspace.at(path)
    initialise(ws, label, name, settings)
    return ws


@pytest.fixture
def clean_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ws")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Real servers started by tests (Prefect, MLflow, PostgreSQL, the scoring server): each in
# its own process group, listening on 127.0.0.1 only, and stopped by its PID at teardown.


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gone(pid: int, within: float = 15.0) -> bool:
    """Whether process ``pid`` ends within ``within`` seconds (reaped when this test process started it)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop_process(proc: subprocess.Popen, sig: int | None = None, timeout: float = 30) -> None:
    """Stop a server started by ``start_process``: signal its process group (led by its PID), then kill what is left."""
    import signal

    sig = signal.SIGTERM if sig is None else sig
    try:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Workers the server forked may outlive it; they are in its group.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_process(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None, user: str | None = None) -> subprocess.Popen:
    """A long-running process in its own process group (so its workers can be stopped with it), output to ``log``."""
    handle = log.open("w")
    try:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, user=user, group=user, extra_groups=[] if user else None,
        )
    finally:
        handle.close()


def invoke(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """POST a body (JSON unless ``content_type`` says otherwise) to a scoring server's /invocations on 127.0.0.1:
    (HTTP status, response text), errors included."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or the time runs out."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def write_increments(folder: Path, count: int, name: str = "day-{}.parquet") -> list[Path]:
    """The first ``count`` class-incremental digits increments as Parquet files, named ``name`` with 1, 2, ..."""
    from lepton.models.datasets import class_incremental

    files = []
    for i, frame in enumerate(class_incremental()[:count], start=1):
        path = folder / name.format(i)
        frame.to_parquet(path, index=False)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def increments(tmp_path_factory) -> list[Path]:
    """Two class-incremental digits increments as Parquet files (classes 0-1, then 2-3)."""
    return write_increments(tmp_path_factory.mktemp("increments"), 2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: on busy cores, thread synchronisation costs far more than it saves."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
