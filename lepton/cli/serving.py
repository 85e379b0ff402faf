"""Commands for the champion's consumers and readers: serve, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lepton.cli.common import (
    WorkspaceOption,
    console,
    err,
    fail,
    flag,
    open_workspace,
)


def serve(
    workspace: WorkspaceOption = Path("."),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5001,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it beyond this machine.")] = "127.0.0.1",
) -> None:
    """Serve the champion with MLflow's scoring server: POST raw feature columns to /invocations, get labels."""
    import socket

    ws = open_workspace(workspace, check="config", quiet=True)
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise fail(f"cannot listen on {host}:{port}: {error.strerror}") from None
    import mlflow.pyfunc
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from lepton.config import load
    from lepton.tasks.tracking import champion_version, connect

    registry = load(ws.root).registry
    name = registry.model_name
    try:
        client, _ = connect(ws, registry)
        version = champion_version(client, name)
        if version is None:
            raise fail(f"model {name!r} has no champion yet: run an increment first")
        # Pinned at start: a promotion meanwhile does not change what this process answers with.
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except typer.Exit:
        raise
    except Exception as error:
        raise fail(f"could not load models:/{name}@champion: {error}") from None
    console.print(f"serving {name} version {version} (champion) on http://{host}:{port}/invocations", soft_wrap=True)
    uvicorn.run(scoring_server.init(model), host=host, port=port, log_level="warning")


def report(
    model_version: Annotated[int | None, typer.Option("--model-version", min=1, help="Registered model version whose run to show.", show_default="the latest run")] = None,
    workspace: WorkspaceOption = Path("."),
    open_: Annotated[bool, flag("--open", help="Also open the page in a web browser, if one is available.")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="Also render the page to this PNG with headless Chromium.")] = None,
) -> None:
    """Print the path of a run's report: the HTML page with validation, drift, training, gate and lineage."""
    import webbrowser

    from lepton.report import RenderError, ReportNotFound, find, screenshot

    ws = open_workspace(workspace)
    try:
        page = find(ws.state, model_version)
    except ReportNotFound as error:
        raise fail(str(error)) from None
    print(page)
    if png is not None:
        try:
            err.print(f"rendered {screenshot(page, png)}", soft_wrap=True)
        except RenderError as error:
            raise fail(str(error)) from None
    if open_ and not webbrowser.open(page.as_uri()):
        err.print("no web browser available here: open the path above on a machine with one", soft_wrap=True)
