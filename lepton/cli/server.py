"""``lepton server start|stop|status``: Prefect's server in the background for one workspace, so no command pays a temporary one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from lepton import worker
from lepton.cli.common import Group, JsonOption, WorkspaceOption, console, fail, open_workspace
from lepton.server import DEFAULT_PORT, Server, ServerError, recorded, running, start, stop

server_app = typer.Typer(
    help="Prefect's server in the background for this workspace, and the warm worker: every command uses them while they run, instead of starting a temporary server and importing the pipeline.",
    no_args_is_help=True,
    cls=Group,
)


def _record(server: Server, ws_root: str, up: bool) -> dict:
    return {"running": up, "url": server.url, "api_url": server.api_url, "pid": server.pid, "port": server.port,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(server.started)), "log": server.log, "workspace": ws_root}


@server_app.command("start")
def server_start(
    workspace: WorkspaceOption = Path("."),
    port: Annotated[int | None, typer.Option("--port", help=f"Port on 127.0.0.1 (default {DEFAULT_PORT}, or a free one when it is taken).")] = None,
    warm: Annotated[bool, typer.Option("--worker/--no-worker", help="Also start the warm worker: runs start with the pipeline imported.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Start Prefect's server for this workspace (its UI at the printed address) and the warm worker; a no-op for what already runs."""
    ws = open_workspace(workspace)
    if not as_json:
        console.print("starting Prefect's server (a few seconds, once) ...")
    try:
        server, started = start(ws, port=port)
    except ServerError as error:
        raise fail(str(error)) from None
    helper = None
    if warm:
        if not as_json:
            console.print("starting the warm worker (it imports the pipeline once, a few seconds) ...")
        busy = worker.in_flight(ws)
        if busy and not as_json:
            console.print(f"the warm worker is out of date; it is replaced once its {busy} run(s) in flight finish ...")
        try:
            helper = worker.start(ws, server.api_url)
        except RuntimeError as error:  # the server is up and used; runs just import the pipeline themselves
            console.print(f"[yellow]note:[/yellow] {error}; runs import the pipeline themselves", soft_wrap=True)
    if as_json:
        print(json.dumps(_record(server, str(ws.root), True) | {"started_now": started, "worker": _worker_record(helper)}, indent=2))
        return
    verb = "started" if started else "already running"
    console.print(f"Prefect server {verb} at {server.url} (pid {server.pid}); commands in {ws.root} use it until `lepton server stop`")
    if helper is not None:
        console.print(f"warm worker ready (pid {helper['pid']}): runs, and reads of the registry, start there; log {helper['log']}", soft_wrap=True)


def _worker_record(state: dict | None) -> dict | None:
    return None if state is None else {"pid": state["pid"], "socket": state["socket"], "log": state["log"]}


@server_app.command("stop")
def server_stop(workspace: WorkspaceOption = Path("."), as_json: JsonOption = False) -> None:
    """Stop this workspace's background server; commands go back to a temporary one each."""
    ws = open_workspace(workspace)
    busy = worker.in_flight(ws)
    if busy and not as_json:
        console.print(f"the warm worker takes no new run; waiting for the {busy} in flight to finish ...")
    helper = worker.stop(ws)
    server = stop(ws)
    if as_json:
        print(json.dumps({"stopped": server is not None, "pid": server.pid if server else None, "worker_stopped": helper is not None}, indent=2))
        return
    if helper is not None:
        console.print(f"stopped the warm worker (pid {helper['pid']})")
    console.print(f"stopped the Prefect server (pid {server.pid})" if server else "no Prefect server was running for this workspace")


@server_app.command("status")
def server_status(workspace: WorkspaceOption = Path("."), as_json: JsonOption = False) -> None:
    """Whether this workspace's background server runs (exit 0) or not (exit 3), and where."""
    ws = open_workspace(workspace)
    server = running(ws)
    shown = server or recorded(ws)
    helper = worker.running(ws)
    if as_json:
        record = _record(shown, str(ws.root), server is not None) if shown else {"running": False, "workspace": str(ws.root)}
        print(json.dumps(record | {"worker": _worker_record(helper)}, indent=2))
    elif server is not None:
        console.print(f"running at {server.url} (pid {server.pid}); log {server.log}")
        console.print(f"warm worker: pid {helper['pid']}, log {helper['log']}" if helper else "warm worker: not running (runs import the pipeline themselves)")
    elif shown is not None:
        console.print(f"not running (pid {shown.pid} on port {shown.port} has gone); `lepton server start` starts it again")
    else:
        console.print("not running: each command starts Prefect's temporary server; `lepton server start` keeps one up")
    if server is None:
        raise typer.Exit(3)
