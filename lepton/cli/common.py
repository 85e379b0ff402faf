"""What every command shares: the consoles, the options, the workspace and its environment, one-line errors."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from lepton.secrets import credentials_out_of_uris, redact
from lepton.server import use_if_running
from lepton.workspace import Workspace

# Piped output (CI logs, `make demo | tee`) gets room for the summary table.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


class _HelpAsFlag:
    """``--help`` shown as a flag, like the other flags (typer prints ``<bool>`` after it)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_HelpAsFlag, TyperCommand):
    """A command of ``lepton``."""


class Group(_HelpAsFlag, TyperGroup):
    """A group of commands: ``lepton``, ``lepton data``, ``lepton bench``."""


def flag(*names: str, help: str, **extra: Any) -> Any:
    """A boolean option shown in ``--help`` as a flag: typer prints ``<bool>`` after it unless its metavar is set (empty: nothing)."""
    return typer.Option(*names, metavar="", help=help, **extra)


WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace directory.", show_default="current directory")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")]
JsonOption = Annotated[bool, flag("--json", help="Only the result, as JSON on stdout (for machines).")]
QuietOption = Annotated[bool, flag("--quiet", "-q", help="No progress: only the last line, and errors (for cron).")]


def embedded_environment(ws: Workspace) -> None:
    """Point the embedded defaults at ``.lepton/`` unless the environment already names real servers.

    Must run before prefect or mlflow is imported: both read their settings at import.
    """
    defaults = {
        "PREFECT_HOME": str(ws.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        # Prefect's INFO lines (its temporary server starting and stopping, a flow's story) go
        # to the log file while a run is shown; the terminal gets its warnings and errors only.
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        # The temporary server shares the terminal; a request it fails (a locked or full
        # database) reaches the run as a failed call, which the run's error line reports.
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # `lepton server start` keeps one up for the workspace: no temporary server per command.
    use_if_running(ws, os.environ)
    credentials_out_of_uris(os.environ)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
    # The flow's own log lines tell the story; per-task state changes, DVC's git hints
    # and MLflow's pickling notice are noise here.
    for name in ("prefect.task_runs", "alembic", "great_expectations", "dvc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Importing dvc installs its own console handlers at INFO (`dvc init`'s notices); its
    # records must not also reach the root handlers, which would print each one twice.
    import dvc  # noqa: F401

    dvc_logger = logging.getLogger("dvc")
    dvc_logger.setLevel(logging.WARNING)
    dvc_logger.propagate = False
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    # Prefect's queue services (loggers named after their classes) say at exit that they are still sending events or
    # logs to its API, a warning on stderr that a quiet nightly run would mail every time; they finish regardless.
    for name in ("EventsWorker", "APILogWorker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one readable, credential-free error line (and, under --json, an error object on stdout)."""
    try:
        from typer._click.globals import get_current_context  # typer 0.2x runs its own copy of click
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context

    message = one_line(redact(message))
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    context = get_current_context(silent=True)
    if context is not None and context.params.get("as_json"):
        print(json.dumps({"error": message, "exit_code": code}, indent=2))
    return typer.Exit(code)


# What SQLAlchemy appends to a database error: the statement, its parameters, a link.
_SQL_DETAIL = re.compile(r"\n\[SQL: .*?(?:\n\(Background on this error at: [^)\s]*\)|\Z)|\s*\(Background on this error at: [^)\s]*\)", re.DOTALL)


def one_line(message: str) -> str:
    """``message`` without SQLAlchemy's statement dump, on one line; a full disk says so."""
    text = " ".join(_SQL_DETAIL.sub("", message).split())
    if "disk is full" in text and "No space left on device" not in text:
        text += " (No space left on device, or the database reached its size limit)"
    return text


def open_workspace(
    path: Path, *, must_exist: bool = True, check: Literal["run", "config"] | None = None, overrides: list[str] | None = None, quiet: bool = False,
) -> Workspace:
    """The preamble commands share: the workspace (refused in one line unless it is one) with its embedded environment;
    ``check``: its config, with ``overrides``, loads (``"run"``: and the workspace is fit for a run), before any work;
    ``quiet``: the libraries' own noise turned down (it imports dvc: the read-only commands that skip it answer faster)."""
    ws = Workspace.at(path)
    if must_exist and not ws.is_initialised and path == Path("."):
        # Run from inside a workspace (its data/, say): the workspace is the nearest folder above that is one, as git finds
        # its repository. Told to `lepton init .` there, an operator made a workspace inside the workspace's data/.
        ws = next((above for above in map(Workspace.at, ws.root.parents) if above.is_initialised), ws)
    if must_exist and not ws.is_initialised:
        where = "" if path != Path(".") else f" (the folder the command ran in, nor one above it, is; pass --workspace PATH for another)"
        raise fail(f"{ws.root} is not a Lepton workspace{where}: run `lepton init {path} --label COLUMN` first")
    embedded_environment(ws)
    if check is not None:
        check_config(ws, list(overrides or []), for_run=check == "run")
    if quiet:
        quiet_libraries()
    return ws


def in_warm_worker(ws: Workspace) -> None:
    """Hand this command to the workspace's warm worker (`lepton server start`) when it is up, and exit with its
    status: the pipeline is imported there already. Otherwise (or when it says why not) return, to run here."""
    from lepton.worker import hand_off

    code = hand_off(ws, note=lambda line: err.print(f"[yellow]note:[/yellow] {line}", soft_wrap=True))
    if code is not None:
        raise typer.Exit(code)


def shown(ws: Workspace, path: str | Path | None) -> str:
    """A path the workspace records (relative to it) as the user can use it from where they stand: relative to the
    current directory when inside it, else absolute. JSON output keeps the workspace's form."""
    if path is None:
        return ""
    full = (ws.root / path).resolve()
    here = Path.cwd().resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)


# The workspace's files as the flow's lines name them (relative to the workspace).
WORKSPACE_FILES = re.compile(r"(?<![\w/.])data/(?:quarantine|increments)/[\w.\-]+")


def paths_shown(ws: Workspace, line: str) -> str:
    """A progress line with the workspace's file paths in it as ``shown`` gives them."""
    return WORKSPACE_FILES.sub(lambda found: shown(ws, found.group(0)), line)


def told(ws: Workspace, outcome: Any) -> str:
    """An outcome's sentence with the paths in it (a quarantined copy) as ``shown`` gives them."""
    return outcome.message.replace(outcome.file, shown(ws, outcome.file)) if outcome.file else outcome.message


def check_config(ws: Workspace, overrides: list[str], *, for_run: bool = True) -> None:
    """Fail in one line, before any work, on a config (or, ``for_run``, a workspace) that a run could not use."""
    from lepton.config import ConfigError, load

    try:
        load(ws.root, overrides)
    except ConfigError as error:
        raise fail(str(error)) from None
    problem = ws.unusable() if for_run else None
    if problem:
        raise fail(problem)


def no_tracebacks() -> None:
    """Prefect logs a failed run's traceback; at the command line the one-line message says enough."""
    import logging

    class DropTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine", "prefect.task_engine"):
        logging.getLogger(name).addFilter(DropTraceback())


def typed_overrides(ws: Workspace, set_: list[str] | None) -> Any:
    """``--set`` pairs as the typed overrides the deployment flows take; a bad one fails readably."""
    from lepton.config import ConfigError, ConfigOverrides

    overrides = list(set_ or [])
    check_config(ws, overrides)
    try:
        return ConfigOverrides.from_list(overrides)
    except ConfigError as error:
        raise fail(str(error)) from None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
