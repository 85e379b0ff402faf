"""``lepton server start|stop|status``: a real Prefect server in the background that every command in the workspace uses."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from lepton import worker
from lepton.server import running, use_if_running
from tests.conftest import gone, make_workspace, run_cli

QUICK = ["--set", "train.epochs=3", "--set", "train.hidden=[32]", "--set", "gate.bootstrap_samples=200"]


def _flow_runs(api_url: str) -> list[dict]:
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=json.dumps({"limit": 50}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the test's own loopback server
        return json.loads(response.read())


@pytest.mark.integration
def test_server_start_is_used_by_every_command_and_stops_by_pid(clean_dir, tmp_path):
    from lepton.models.datasets import class_incremental

    ws = make_workspace(clean_dir / "ws", "digit", "server-digits")
    increment = tmp_path / "digits-1.parquet"
    class_incremental()[0].to_parquet(increment, index=False)
    pid = None
    try:
        down = run_cli(["server", "status", "-w", str(ws.root)], api_url=None)
        assert down.returncode == 3 and "not running" in down.stdout

        started = run_cli(["server", "start", "-w", str(ws.root), "--json"], api_url=None, timeout=180)
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        pid = info["pid"]
        assert info["running"] and info["started_now"] and info["url"].startswith("http://127.0.0.1:")
        worker_pid = info["worker"]["pid"]
        with urllib.request.urlopen(f"{info['api_url']}/health", timeout=10) as response:  # noqa: S310
            assert response.status == 200
        assert (ws.state / "server.json").exists() and running(ws).pid == pid

        again = run_cli(["server", "start", "-w", str(ws.root), "--json"], api_url=None)
        assert json.loads(again.stdout)["pid"] == pid and not json.loads(again.stdout)["started_now"]

        # No PREFECT_API_URL given: the run goes to the workspace's server, where its flow run is recorded.
        before = len(_flow_runs(info["api_url"]))
        run = run_cli(["run", str(increment), "-w", str(ws.root), "--json", *QUICK], api_url=None)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["status"] == "promoted"
        runs = _flow_runs(info["api_url"])
        assert len(runs) == before + 1 and runs[0]["state_type"] == "COMPLETED"

        # A URL in the environment wins over the workspace's server.
        environ = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
        assert use_if_running(ws, environ) is None and environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
        environ = {}
        assert use_if_running(ws, environ).pid == pid and environ["PREFECT_API_URL"] == info["api_url"]

        up = run_cli(["server", "status", "-w", str(ws.root)], api_url=None)
        assert up.returncode == 0 and info["url"] in up.stdout

        stopped = run_cli(["server", "stop", "-w", str(ws.root), "--json"], api_url=None)
        assert json.loads(stopped.stdout) == {"stopped": True, "pid": pid, "worker_stopped": True}
        assert gone(worker_pid)
        assert gone(pid)
        pid = None
        assert not (ws.state / "server.json").exists() and running(ws) is None
        assert run_cli(["server", "status", "-w", str(ws.root)], api_url=None).returncode == 3
        assert "no Prefect server was running" in run_cli(["server", "stop", "-w", str(ws.root)], api_url=None).stdout
        # Without it, a run starts Prefect's temporary server and ends cleanly: its logs reach the API before it stops.
        again = run_cli(["run", str(increment), "-w", str(ws.root), "--quiet", *QUICK], api_url=None)
        assert again.returncode == 0 and again.stdout.startswith("duplicate of increment"), again.stderr[-2000:]
        assert "Error logging to API" not in again.stderr and "connection attempts failed" not in again.stderr, again.stderr[-2000:]
    finally:
        if pid is not None:
            worker.stop(ws)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.integration
def test_a_server_that_died_is_not_used_and_status_says_so(clean_dir):
    ws = make_workspace(clean_dir / "ws", "digit", "server-gone")
    started = run_cli(["server", "start", "-w", str(ws.root), "--json", "--no-worker"], api_url=None, timeout=180)
    pid = json.loads(started.stdout)["pid"]
    try:
        os.killpg(pid, signal.SIGKILL)
        assert gone(pid)
        environ: dict[str, str] = {}
        assert use_if_running(ws, environ) is None and "PREFECT_API_URL" not in environ
        status = run_cli(["server", "status", "-w", str(ws.root)], api_url=None)
        assert status.returncode == 3 and f"pid {pid}" in status.stdout and "has gone" in status.stdout
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_flows_run_in_process_without_heartbeats_unless_the_operator_sets_them(monkeypatch):
    # Prefect's heartbeat thread sleeps in whole seconds and every flow waits for it at its end.
    from prefect.settings import get_current_settings

    from lepton.server import HEARTBEAT_VARIABLES, in_process_flows

    for name in HEARTBEAT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    configured = get_current_settings().flows.heartbeat_frequency
    assert configured is not None  # Prefect's default sends them
    with in_process_flows():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == configured
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with in_process_flows():
        assert get_current_settings().flows.heartbeat_frequency == configured


# A command that will run a flow and finds no server starts Prefect's temporary one itself, before importing the
# pipeline, so the two starts overlap; run in a child process, as the command would, before Prefect is imported.
TEMPORARY = """
import json, os, sys, time
from lepton.server import temporary
from lepton.workspace import Workspace
server = temporary(Workspace.at(sys.argv[1]))
print(json.dumps({"pid": server.process.pid, "api_url": server.api_url, "env": os.environ["PREFECT_API_URL"],
                  "again": temporary(Workspace.at(sys.argv[1])) is server, "prefect_imported": "prefect" in sys.modules}), flush=True)
server.wait(90)
print("healthy", flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


def _temporary(ws_root, how: str, **env):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", TEMPORARY, str(ws_root), how], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in {**os.environ, **env}.items() if v is not None})


@pytest.mark.integration
def test_a_commands_temporary_server_answers_at_its_address_and_ends_with_the_command(clean_dir):
    ws = make_workspace(clean_dir / "ws", "digit", "temporary")
    child = _temporary(ws.root, "exit", PREFECT_API_URL=None)
    started = json.loads(child.stdout.readline())
    assert started["env"] == started["api_url"] and started["again"] and not started["prefect_imported"]
    assert child.stdout.readline().strip() == "healthy"
    child.wait(timeout=60)
    assert child.returncode == 0 and gone(started["pid"]), "the server outlived its command"
    assert (ws.state / "logs" / "prefect-server.log").exists()

    # Killed outright (a cron timeout, SIGKILL): the kernel ends its server too.
    child = _temporary(ws.root, "hang", PREFECT_API_URL=None)
    started = json.loads(child.stdout.readline())
    assert child.stdout.readline().strip() == "healthy"
    with urllib.request.urlopen(f"{started['api_url']}/health", timeout=10) as response:  # noqa: S310 - loopback
        assert response.status == 200
    child.kill()
    child.wait(timeout=30)
    assert gone(started["pid"]), "a killed command left its temporary server running"


def test_no_temporary_server_where_one_is_configured_or_prefect_has_read_its_settings(clean_dir):
    from lepton.server import _configured_elsewhere, temporary
    from lepton.workspace import Workspace

    ws = Workspace.at(clean_dir)
    environ = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    assert temporary(ws, environ) is None and environ == {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    # A profile or a settings file may name the API (`prefect cloud login` writes a profile): Prefect decides, as it would.
    profiles = clean_dir / "profiles.toml"
    profiles.write_text('active = "cloud"\n[profiles.cloud]\nPREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"\n')
    assert _configured_elsewhere({"PREFECT_PROFILES_PATH": str(profiles)})
    assert _configured_elsewhere({"PREFECT_HOME": str(clean_dir)})
    assert _configured_elsewhere({"PREFECT_HOME": str(clean_dir / "none"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"})
    assert not _configured_elsewhere({"PREFECT_HOME": str(clean_dir / "none")})
    import prefect  # noqa: F401 - this test process has it: a server started now would not be the one Prefect uses

    environ = {}
    assert temporary(ws, environ) is None and environ == {}


def _temporary_servers(prefect_home) -> list[int]:
    """PIDs of temporary servers (uvicorn on a handed-over socket) running with this Prefect home."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in cmdline and b"--fd" in cmdline and f"PREFECT_HOME={prefect_home}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.mark.integration
def test_ctrl_c_stops_a_run_on_the_temporary_server_at_once_and_leaves_no_server(clean_dir, increments):
    """The terminal's Ctrl-C reaches the command, not its temporary server: the flow is recorded as interrupted and
    the command exits 130 at once (a server that died with it left the command retrying its events for minutes)."""
    import subprocess
    import time

    from tests.conftest import LEPTON

    ws = make_workspace(clean_dir / "ws", "digit", "interrupted")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(ws.prefect_home)}
    child = subprocess.Popen([LEPTON, "run", str(increments[0]), "-w", str(ws.root), "--set", "train.epochs=5000"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    try:
        for line in child.stdout:
            if "validate" in line:  # the flow is under way against the server
                break
        assert _temporary_servers(ws.prefect_home), "no temporary server of this workspace was found"
        os.killpg(child.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground process group
        interrupted = time.monotonic()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 130, (child.returncode, err[-2000:])
        assert time.monotonic() - interrupted < 30
        assert "Error logging to API" not in err and "Connection refused" not in err, err[-2000:]
        deadline = time.monotonic() + 15
        while _temporary_servers(ws.prefect_home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _temporary_servers(ws.prefect_home), "the temporary server outlived its command"
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


CTRL_C_SCRIPT = r"""
import os, signal, sys
import prefect.task_engine as engine
from prefect import flow, task

from lepton.cli.runs import _ctrl_c_ends_it

create = engine._create_task_run_locally


def creating(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, landing as Prefect creates the task run
    return create(*args, **kwargs)


engine._create_task_run_locally = creating


@task
def step() -> int:
    return 1


@flow
def pipeline() -> int:
    return step()


def run() -> None:  # as lepton's run does: a failed flow is raised with its message
    state = pipeline(return_state=True)
    if state.is_failed():
        raise RuntimeError(str(state.result(raise_on_failure=False)))


try:
    run()
    print("not failed")
except RuntimeError as error:
    print("failed:", "Task run is not set" in str(error))
except KeyboardInterrupt:  # Prefect let it through: the guard below is no longer needed for this
    print("interrupted as it is")
for attempt in (run, lambda: pipeline(return_state=True).is_failed() or sys.exit("not failed")):  # backfill's flow returns the failed state
    try:
        with _ctrl_c_ends_it():
            attempt()
        print("guard: no interrupt")
    except KeyboardInterrupt:
        print("guard: interrupted")
print("handler restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_a_ctrl_c_while_prefect_creates_a_task_run_still_ends_the_command_as_an_interrupt(prefect_api):
    """Prefect's crash handler fails on an interrupt that lands before the task run exists, and the flow fails with
    "Task run is not set": the command must still exit as interrupted (130), not as a failed run (1). In a process of
    its own that a Ctrl-C reaches, as a terminal starts `lepton run`: a suite started in the background (`make test &`)
    inherits SIGINT ignored, and the interrupt then never arrives."""
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    done = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT], capture_output=True, text=True, env=env, timeout=300, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.splitlines()
    assert said[0] != "interrupted as it is", "the interrupt reached the caller as it is: Prefect no longer loses it"
    assert said == ["failed: True", "guard: interrupted", "guard: interrupted", "handler restored: True"], (said, done.stderr[-3000:])


@pytest.mark.integration
def test_a_temporary_server_that_cannot_start_says_why(clean_dir):
    """A database it cannot open: the command is told at once, with the server's own words, not after 90 s."""
    import subprocess
    import sys

    ws = make_workspace(clean_dir / "ws", "digit", "unstartable")
    bad = {"PREFECT_API_URL": None, "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{clean_dir / 'missing' / 'dir' / 'prefect.db'}"}
    child = subprocess.run([sys.executable, "-c", TEMPORARY, str(ws.root), "exit"], capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in {**os.environ, **bad}.items() if v is not None})
    assert child.returncode != 0
    assert "Prefect's temporary server exited with code" in child.stderr and "unable to open database file" in child.stderr, child.stderr[-2000:]
    assert (ws.state / "logs" / "prefect-server.log").read_text().strip(), "the server's log says nothing"
