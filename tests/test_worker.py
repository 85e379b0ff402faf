"""The warm worker `lepton server start` keeps beside the server: commands run in a fork of it, as themselves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lepton import worker
from tests.conftest import LEPTON, gone, make_workspace, run_cli

QUICK = ["--set", "train.epochs=5", "--set", "gate.bootstrap_samples=200"]


def _runs(ws) -> list[tuple[int, str]]:
    """The runs the worker's log says it forked: each one's pid and command."""
    log = worker.log_path(ws)
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        said = line.split(" | ", 1)[-1]
        if said.startswith("run ") and ": " in said:
            pid, command = said.removeprefix("run ").split(": ", 1)
            out.append((int(pid), command))
    return out


def _served(ws) -> list[str]:
    return [command for _, command in _runs(ws)]


@pytest.fixture
def served_workspace(clean_dir):
    """A workspace with its server and warm worker up; both stopped by PID afterwards."""
    ws = make_workspace(clean_dir / "ws", "digit", "worker-digits")
    started = run_cli(["server", "start", "-w", str(ws.root), "--json"], api_url=None, timeout=240)
    assert started.returncode == 0, started.stderr[-2000:]
    info = json.loads(started.stdout)
    try:
        yield ws, info
    finally:
        worker.stop(ws)
        try:
            os.killpg(info["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.integration
def test_runs_go_to_the_warm_worker_with_the_callers_output_directory_and_exit_status(served_workspace, tmp_path):
    from lepton.models.datasets import class_incremental

    ws, info = served_workspace
    assert info["worker"] is not None and worker.running(ws)["pid"] == info["worker"]["pid"]
    assert oct(Path(info["worker"]["socket"]).stat().st_mode & 0o777) == "0o600"
    first, second = class_incremental()[:2]
    first.to_parquet(tmp_path / "one.parquet", index=False)
    # From another directory, with a relative path: the run resolves it where the caller stands.
    ran = run_cli(["run", "one.parquet", "-w", str(ws.root), "--json", *QUICK], api_url=None, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    outcome = json.loads(ran.stdout)
    assert outcome["status"] == "promoted" and outcome["seconds"]["steps"]["import the pipeline"] < 2.0, ran.stderr[-3000:]
    assert _served(ws) == [f"run one.parquet -w {ws.root} --json {' '.join(QUICK)} (in {tmp_path})"]

    # status reads the registry there when its kept answer is stale, and keeps the answer for the next one.
    shutil.rmtree(ws.state / "cache", ignore_errors=True)
    shown = run_cli(["status", "-w", str(ws.root), "--json"], api_url=None, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["champion"]["version"] == 1
    assert _served(ws)[-1] == f"status -w {ws.root} --json (in {tmp_path})"
    assert run_cli(["status", "-w", str(ws.root)], api_url=None).returncode == 0 and len(_served(ws)) == 2

    # A rejected increment exits 2 through the worker, as it does in the caller's own process.
    broken = second.drop(columns=["digit"])
    broken.to_parquet(tmp_path / "broken.parquet", index=False)
    rejected = run_cli(["run", str(tmp_path / "broken.parquet"), "-w", str(ws.root), "--quiet", *QUICK], api_url=None)
    assert rejected.returncode == 2 and rejected.stdout.startswith("rejected"), rejected.stdout + rejected.stderr[-2000:]
    assert len(_served(ws)) == 3

    # Settings the libraries read at import that differ from the worker's: the run happens in the caller's process, and says why.
    second.to_parquet(tmp_path / "two.parquet", index=False)
    env = dict(os.environ) | {"MLFLOW_HTTP_REQUEST_TIMEOUT": "77"}
    here = subprocess.run([LEPTON, "run", str(tmp_path / "two.parquet"), "-w", str(ws.root), "--quiet", *QUICK], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert here.returncode == 0 and here.stdout.startswith("promoted"), here.stderr[-2000:]
    assert "the warm worker did not take this run (MLFLOW_HTTP_REQUEST_TIMEOUT differs from the worker's" in " ".join(here.stderr.split())
    assert len(_served(ws)) == 3

    # Code installed since the worker started: it refuses, and `server start` replaces it with one that imports the new code.
    notes: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(worker, "code_fingerprint", lambda: "changed")
        assert worker.hand_off(ws, note=notes.append) is None
        assert "Lepton's code changed since it started" in notes[0]
        replaced = worker.start(ws, info["api_url"])
    assert replaced["pid"] != info["worker"]["pid"] and gone(info["worker"]["pid"], within=30)
    info["worker"] = replaced

    status = run_cli(["server", "status", "-w", str(ws.root), "--json"], api_url=None)
    assert json.loads(status.stdout)["worker"]["pid"] == info["worker"]["pid"]
    stopped = run_cli(["server", "stop", "-w", str(ws.root), "--json"], api_url=None)
    assert json.loads(stopped.stdout)["worker_stopped"] is True
    assert gone(info["worker"]["pid"], within=30) and not Path(info["worker"]["socket"]).exists() and worker.running(ws) is None


@pytest.mark.integration
def test_ctrl_c_reaches_the_run_in_the_worker_and_the_worker_serves_on(served_workspace, tmp_path):
    from sklearn.datasets import load_digits

    ws, _ = served_workspace
    digits = load_digits(as_frame=True).frame.rename(columns={"target": "digit"})
    digits.columns = [f"pixel_{i}" for i in range(64)] + ["digit"]
    digits.to_parquet(tmp_path / "long.parquet", index=False)
    caller = subprocess.Popen([LEPTON, "run", str(tmp_path / "long.parquet"), "-w", str(ws.root), "--quiet", "--set", "train.epochs=2000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _runs(ws) and time.monotonic() < deadline:
            time.sleep(0.2)
        child = _runs(ws)[0][0]
        time.sleep(8)  # well into the run: 2,000 epochs take minutes
        assert caller.poll() is None
        caller.send_signal(signal.SIGINT)
        _, stderr = caller.communicate(timeout=120)
    finally:
        if caller.poll() is None:
            caller.kill()
    # The interrupt reached the forked run, which ended as one interrupted (130, as a shell says it), and the worker takes the next command.
    assert caller.returncode == 130, stderr[-2000:]
    assert gone(child, within=30) and f"run {child} exited 130" in worker.log_path(ws).read_text()
    assert worker.running(ws) is not None
    ready = tmp_path / "short.parquet"
    digits.iloc[:300].to_parquet(ready, index=False)
    again = run_cli(["run", str(ready), "-w", str(ws.root), "--quiet", *QUICK], api_url=None)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_runs(ws)) == 2

    # A caller killed outright (its terminal closed, a CI job cancelled) takes its run with it: nothing goes on unseen.
    versions_before = json.loads(run_cli(["versions", "-w", str(ws.root), "--json"], api_url=None).stdout)
    caller = subprocess.Popen([LEPTON, "run", str(tmp_path / "long.parquet"), "-w", str(ws.root), "--quiet", "--set", "train.epochs=2000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_runs(ws)) < 4 and time.monotonic() < deadline:  # the versions listing above was a run of the worker's too
        time.sleep(0.2)
    child = _runs(ws)[-1][0]
    time.sleep(5)
    caller.kill()
    caller.wait(timeout=30)
    assert gone(child, within=60)
    assert json.loads(run_cli(["versions", "-w", str(ws.root), "--json"], api_url=None).stdout) == versions_before


def test_the_worker_imports_the_pipeline_but_not_the_cli_and_starts_no_thread():
    """The CLI's consoles are made for the terminal they find, so each run imports it on its caller's; and a fork
    copies only the thread that forks, so the worker must hold no other Python thread when it does."""
    probe = (
        "import json, sys, threading\n"
        "from lepton import worker\n"
        "worker.warm()\n"
        "print(json.dumps({'cli': sorted(m for m in sys.modules if m.startswith('lepton.cli')), 'threads': threading.active_count(),"
        " 'flows': 'lepton.flows.continual' in sys.modules, 'gx': 'great_expectations' in sys.modules, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([str(Path(LEPTON).with_name("python")), "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"cli": [], "threads": 1, "flows": True, "gx": True, "torch": True}
