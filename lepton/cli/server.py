"""``lepton server start|stop|status``: Prefect's server in the background for one workspace, so no command pays a temporary one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from lepton.cli.common import Group, JsonOption, WorkspaceOption, console, fail, open_workspace
from lepton.server import DEFAULT_PORT, Server, ServerError, recorded, running, start, stop

server_app = typer.Typer(
    help="Prefect's server in the background for this workspace: every command uses it while it runs, instead of starting a temporary one.",
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
    as_json: JsonOption = False,
) -> None:
    """Start Prefect's server for this workspace (its UI at the printed address); a no-op when it already runs."""
    ws = open_workspace(workspace)
    if not as_json:
        console.print("starting Prefect's server (a few seconds, once) ...")
    try:
        server, started = start(ws, port=port)
    except ServerError as error:
        raise fail(str(error)) from None
    if as_json:
        print(json.dumps(_record(server, str(ws.root), True) | {"started_now": started}, indent=2))
        return
    verb = "started" if started else "already running"
    console.print(f"Prefect server {verb} at {server.url} (pid {server.pid}); commands in {ws.root} use it until `lepton server stop`")


@server_app.command("stop")
def server_stop(workspace: WorkspaceOption = Path("."), as_json: JsonOption = False) -> None:
    """Stop this workspace's background server; commands go back to a temporary one each."""
    ws = open_workspace(workspace)
    server = stop(ws)
    if as_json:
        print(json.dumps({"stopped": server is not None, "pid": server.pid if server else None}, indent=2))
        return
    console.print(f"stopped the Prefect server (pid {server.pid})" if server else "no Prefect server was running for this workspace")


@server_app.command("status")
def server_status(workspace: WorkspaceOption = Path("."), as_json: JsonOption = False) -> None:
    """Whether this workspace's background server runs (exit 0) or not (exit 3), and where."""
    ws = open_workspace(workspace)
    server = running(ws)
    shown = server or recorded(ws)
    if as_json:
        print(json.dumps(_record(shown, str(ws.root), server is not None) if shown else {"running": False, "workspace": str(ws.root)}, indent=2))
    elif server is not None:
        console.print(f"running at {server.url} (pid {server.pid}); log {server.log}")
    elif shown is not None:
        console.print(f"not running (pid {shown.pid} on port {shown.port} has gone); `lepton server start` starts it again")
    else:
        console.print("not running: each command starts Prefect's temporary server; `lepton server start` keeps one up")
    if server is None:
        raise typer.Exit(3)
