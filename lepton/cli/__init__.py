"""The ``lepton`` command line: the shell on top of the flows. Heavy libraries are imported inside commands, so ``--help`` is instant.

The commands live by what they are about (``runs``, ``versions``, ``serving``); what they
share is in ``common``; here they are assembled, in the order ``--help`` lists them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lepton.cli import runs, serving, versions
from lepton.cli.bench import bench_app
from lepton.cli.common import Command, Group, console, flag, one_line  # noqa: F401 - one_line: the CLI's error wording, used by tests
from lepton.cli.server import server_app

app = typer.Typer(help="Continual training: version, validate, fine-tune, gate and promote each data increment.", no_args_is_help=True, add_completion=False, cls=Group)
data_app = typer.Typer(help="Data versions of the workspace.", no_args_is_help=True, cls=Group)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(server_app, name="server")


def _print_version(value: bool) -> None:
    """``--version``: the installed package's version, then exit 0 before any command runs."""
    if value:
        from importlib.metadata import version

        console.print(f"lepton {version('lepton')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool | None, flag("--version", is_eager=True, callback=_print_version, help="Print Lepton's version and exit.")] = None,
) -> None:
    """Options of ``lepton`` itself (only ``--version``)."""


# The commands, in the order --help lists them.
app.command(cls=Command)(runs.init)
app.command(cls=Command)(runs.run)
app.command(cls=Command)(runs.retry)
app.command(cls=Command)(versions.status)
data_app.command("checkout", cls=Command)(versions.data_checkout)
app.command(cls=Command)(runs.demo)
app.command(cls=Command)(versions.rollback)
app.command(cls=Command)(versions.promote)
app.command(cls=Command)(versions.history)
app.command(cls=Command)(versions.versions)
app.command(cls=Command)(versions.archive)
app.command(cls=Command)(versions.compare)
app.command(cls=Command)(runs.land)
app.command("run-pending", cls=Command)(runs.run_pending)
app.command(cls=Command)(runs.backfill)
app.command(cls=Command)(serving.serve)
app.command(cls=Command)(serving.report)


def main() -> None:
    """The ``lepton`` console script: the app, then an exit that skips tearing the interpreter down."""
    import os

    os._exit(finished_command())


def finished_command() -> int:
    """Run the command ``sys.argv`` names to its end; its exit status (what the warm worker's runs report too).

    A run leaves torch, MLflow, Prefect and GX loaded, and Python's teardown of them (modules,
    garbage, native thread pools) took 2.4 s after a run's last line. Threads' exit hooks and the
    exit handlers still run, in Python's order (Prefect drains its log and event workers while its
    API is up, logging flushes its files), and the streams are flushed; then ``main`` ends the
    process with the command's exit status.
    """
    import atexit
    import threading

    try:
        app()
        code: object = 0
    except SystemExit as done:
        code = done.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    # What Python's own shutdown does first, in its order: threads' exit hooks and joins (Prefect's
    # log and event workers drain there, while the API is still up), then the exit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing left to say
            pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
