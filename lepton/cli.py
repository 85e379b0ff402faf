"""The ``lepton`` command line. Heavy libraries are imported inside commands, so ``--help`` is instant."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lepton import demo as demo_data
from lepton.bench import bench_app
from lepton.progress import Mode, mode_for, watch
from lepton.secrets import credentials_out_of_uris, mask_logging, redact, redacted
from lepton.workspace import Workspace

app = typer.Typer(help="Continual training: version, validate, fine-tune, gate and promote each data increment.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Data versions of the workspace.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
# Piped output (CI logs, `make demo | tee`) gets room for the summary table.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def flag(*names: str, help: str, **extra: Any) -> Any:
    """A boolean option shown in ``--help`` as a flag: typer prints ``<bool>`` after it unless its metavar is set (empty: nothing)."""
    return typer.Option(*names, metavar="", help=help, **extra)


WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace directory.", show_default="current directory")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")]
JsonOption = Annotated[bool, flag("--json", help="Only the result, as JSON on stdout (for machines).")]
QuietOption = Annotated[bool, flag("--quiet", "-q", help="No progress: only the last line, and errors (for cron).")]


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
    credentials_out_of_uris(os.environ)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


def _quiet_libraries() -> None:
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


def _workspace(path: Path, *, must_exist: bool = True) -> Workspace:
    ws = Workspace.at(path)
    if must_exist and not ws.is_initialised:
        raise fail(f"{ws.root} is not a Lepton workspace: run `lepton init {path} --label COLUMN` first")
    embedded_environment(ws)
    return ws


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to make a workspace (created if needed).")],
    label: Annotated[str, typer.Option(help="Name of the label column.")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "lepton",
) -> None:
    """Make DIR a workspace: git, DVC with a local remote, lepton.yaml, and data/ tracked by data.dvc."""
    ws = _workspace(directory, must_exist=False)
    _quiet_libraries()
    from lepton.tasks.initialise import initialise

    done = initialise(ws, label, name)
    if done.note:
        err.print(f"[yellow]note:[/yellow] {done.note}", soft_wrap=True)
    if not done.created:
        console.print(f"{ws.root / 'lepton.yaml'} already exists; left as it is")
    console.print(f"workspace ready at {ws.root} (label column {label!r}, model {name!r})")
    console.print(f"next: lepton run PATH/TO/increment.parquet --workspace {directory}")


def _run_flow(ws: Workspace, path: Path, overrides: list[str], *, dry_run: bool = False) -> Any:
    """Run the flow once (inside ``_watching``); returns its outcome or raises the failure with a readable message."""
    if dry_run:
        from lepton.config import ConfigOverrides
        from lepton.flows.deployments import run_increment
        from lepton.landing import trusting

        with trusting(path.parent):
            state = run_increment(str(path), str(ws.root), ConfigOverrides.from_list(overrides), dry_run=True, return_state=True)
    else:
        from lepton.flows.continual import continual_training

        state = continual_training(str(path), str(ws.root), overrides, return_state=True)
    result = state.result(raise_on_failure=False)
    if state.is_failed() or isinstance(result, BaseException):
        raise RuntimeError(str(result) if isinstance(result, BaseException) else state.message or "the flow failed")
    return result


@app.command()
def run(
    path: Annotated[Path, typer.Argument(help="Increment file, CSV or Parquet.")],
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    dry_run: Annotated[bool, flag("--dry-run", help="Only validate: nothing is copied, versioned, trained or registered.")] = False,
) -> None:
    """Send one increment through the whole flow. Exit 0 processed, 2 rejected (or no such file), 1 failed."""
    ws = _workspace(workspace)
    overrides = list(set_ or [])
    _check_config(ws, overrides)
    if not path.is_file():  # a bad increment like any other: exit 2, and nothing to quarantine
        what = "is a directory, not an increment file" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise fail(f"{path} {what}", code=2)
    _run_and_show(ws, path, overrides, mode_for(console, quiet=quiet, as_json=as_json), dry_run=dry_run)


@app.command()
def retry(
    increment_id: Annotated[str, typer.Argument(metavar="INCREMENT_ID", help="A rejected increment's id, as `lepton status` lists it.")],
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Validate a rejected increment again, from its quarantined copy, under the current configuration; exit codes as `run`."""
    ws = _workspace(workspace)
    overrides = list(set_ or [])
    _check_config(ws, overrides)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    _quiet_libraries()
    from lepton.tasks.ingest import IncrementError, quarantined

    try:
        path = quarantined(ws, increment_id)
    except IncrementError as error:
        raise fail(str(error), code=2) from None
    # The copy has the increment's content, so the flow knows it as the rejected increment and tries it again.
    _run_and_show(ws, path, overrides, mode)


def _run_and_show(ws: Workspace, path: Path, overrides: list[str], mode: Mode, *, dry_run: bool = False) -> None:
    """Run the flow on ``path`` with the progress display, print its outcome and exit with its code."""
    try:
        with _watching(ws, mode):
            outcome = _run_flow(ws, path, overrides, dry_run=dry_run)
    except Exception as error:  # the operator needs the cause and a non-zero exit, not a traceback
        raise fail(f"run failed: {error}") from None
    if mode == "json":
        print(outcome.model_dump_json(indent=2))
    else:
        if mode != "quiet" and not dry_run:
            console.print(_outcome_table(outcome))
        console.print(outcome.message, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


def _watching(ws: Workspace, mode: Mode) -> watch:
    """The progress display for flow runs; Prefect's console lines go to .lepton/logs/lepton.log."""
    _quiet_libraries()
    _no_tracebacks()
    # Importing prefect configures its logging (dictConfig); the display must take over after that.
    import lepton.flows.continual  # noqa: F401

    mask_logging()  # Prefect's console and API handlers: the terminal and the Prefect database
    return watch(console, mode, ws.state / "logs" / "lepton.log")


def _outcome_table(outcome: Any) -> Table:
    """One run at a glance: what happened, the accuracies that decided it, and where to look next."""
    table = Table(title=f"increment {outcome.increment_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    verdict = {"promoted": "[green]promoted[/green]", "kept_out": "[yellow]kept out by the gate[/yellow]", "rejected": "[red]rejected[/red]", "duplicate": "duplicate"}
    table.add_row("outcome", verdict[outcome.status])
    if outcome.version is not None:
        table.add_row("model version", str(outcome.version))
    if outcome.champion_version is not None:
        moved = outcome.parent_version and outcome.parent_version != outcome.champion_version
        table.add_row("champion", f"version {outcome.champion_version}" + (f" (was {outcome.parent_version})" if moved else ""))
    m = outcome.metrics
    if m:
        metric = "mae" if "candidate_new_mae" in m else "accuracy"
        show = _fmt if metric == "accuracy" else (lambda v: "-" if v is None else f"MAE {v:.4g}")
        table.add_row("new holdout", f"candidate {show(m.get(f'candidate_new_{metric}'))}, champion {show(m.get(f'champion_new_{metric}'))}")
        table.add_row("earlier holdouts", f"candidate {show(m.get(f'candidate_old_{metric}'))}, champion {show(m.get(f'champion_old_{metric}'))}")
    for note in getattr(outcome, "notes", []):
        table.add_row("column kinds", note)
    if getattr(outcome, "concept_change", False):
        table.add_row("concept change", "[yellow]the champion did much worse on this increment than on earlier ones: forgetting judged from here on[/yellow]")
    failed = set(outcome.failures)
    for reason in outcome.reasons:
        table.add_row("check", f"[red]✗[/red] {reason}" if reason in failed else f"[green]✓[/green] {reason}")
    for warning in getattr(outcome, "warnings", []):
        table.add_row("warning", f"[yellow]{warning}[/yellow]")
    drift = getattr(outcome, "drift", None)
    if drift is not None:
        drifted = [row["feature"] for row in drift if row["drifted"]]
        table.add_row("drift", f"[yellow]{len(drifted)} drifted: {', '.join(drifted[:8])}{' ...' if len(drifted) > 8 else ''} (action {outcome.drift_action})[/yellow]" if drifted else f"none in {len(drift)} test(s)")
    if outcome.data_hash:
        table.add_row("data version", outcome.data_hash)
    report = getattr(outcome, "report", None)
    if report:
        table.add_row("report", str(report))
    return table


def _check_config(ws: Workspace, overrides: list[str], *, for_run: bool = True) -> None:
    """Fail in one line, before any work, on a config (or, ``for_run``, a workspace) that a run could not use."""
    from lepton.config import ConfigError, load

    try:
        load(ws.root, overrides)
    except ConfigError as error:
        raise fail(str(error)) from None
    problem = ws.unusable() if for_run else None
    if problem:
        raise fail(problem)


def gather_status(ws: Workspace) -> dict[str, Any]:
    from lepton.config import load
    from lepton.tasks.ingest import duplicates
    from lepton.tasks.registry import describe

    config = load(ws.root)
    info = describe(ws, config.registry)
    increments = [{"id": r.id, "file": r.file, "state": r.state, "source": r.source, "reasons": r.reasons} for r in ws.read_manifest().increments]
    by_id = {r["id"]: r for r in increments}
    for entry in duplicates(ws):
        original = by_id.get(entry["id"], {})
        increments.append({"id": entry["id"], "file": original.get("file"), "state": "duplicate", "source": entry["source"], "reasons": []})
    info["increments"] = increments
    schema = ws.read_schema()
    info["columns"] = (
        {"label": schema["label"], "task": schema.get("task", "classification"), "kinds": schema.get("kinds", {}), "why": schema.get("why", {})}
        if schema else None
    )
    return info


@app.command()
def status(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """The registered model, the champion with its lineage and metrics, and the increments seen."""
    ws = _workspace(workspace)
    _check_config(ws, [], for_run=False)
    _quiet_libraries()
    try:
        info = redacted(gather_status(ws))
    except Exception as error:  # a tracking server that is down, a locked database, a full disk
        raise fail(f"could not read the registry: {error}") from None
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    console.print(f"model [bold]{info['model_name']}[/bold] at {redact(info['tracking_uri'])}: {info['versions']} version(s) (each one: `lepton versions`)")
    champion = info["champion"]
    if champion is None:
        console.print("no champion yet")
    else:
        table = Table("", "", title=f"champion: version {champion['version']}", show_header=False, title_justify="left")
        for key, value in champion["lineage"].items():
            if key == "gate_reasons":
                for reason in json.loads(value):
                    table.add_row("gate check", f"[green]✓[/green] {reason}")
            elif key != "config":
                table.add_row(key.replace("_", " "), str(value))
        for key, value in champion["metrics"].items():
            table.add_row(key.replace("_", " "), f"{value:.1%}" if "accuracy" in key or "forgetting" in key else f"{value:.4g}")
        console.print(table)
    columns = info["columns"]
    if columns and columns["kinds"]:
        kinds = Table("column", "kind", "why", title=f"columns (label {columns['label']!r}: {columns['task']})", title_justify="left")
        for column, kind in columns["kinds"].items():
            kinds.add_row(column, kind, columns["why"].get(column, ""))
        console.print(kinds)
    states = {"accepted": "green", "rejected": "red", "duplicate": "dim"}
    table = Table("id", "state", "file", "arrived as", "why", title="increments", title_justify="left")
    for item in info["increments"]:
        colour = states.get(item["state"], "white")
        table.add_row(item["id"], f"[{colour}]{item['state']}[/{colour}]", str(item["file"]), item["source"], "; ".join(item["reasons"]))
    console.print(table)


@data_app.command("checkout")
def data_checkout(
    model_version: Annotated[int, typer.Option("--model-version", help="Registered model version whose training data to restore.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Restore data/ to exactly what a model version was trained at, from its tags alone."""
    ws = _workspace(workspace)
    _quiet_libraries()
    from mlflow.exceptions import MlflowException

    from lepton.config import load
    from lepton.lineage import TAG
    from lepton.tasks.tracking import version_tags
    from lepton.tasks.versioning import restore

    config = load(ws.root)
    try:
        tags = version_tags(ws, config.registry, model_version)
    except MlflowException:
        raise fail(f"model {config.registry.model_name!r} has no version {model_version}") from None
    digest = tags.get(TAG + "data_hash")
    if not digest:
        raise fail(f"version {model_version} carries no {TAG}data_hash tag")
    try:
        restore(ws, digest, config.dvc)
    except Exception as error:
        raise fail(f"could not restore data version {digest}: {error}") from None
    console.print(f"data/ restored to {digest} (model version {model_version}, increment {tags.get(TAG + 'increment_id')})")


@app.command()
def demo(
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Class-incremental handwritten digits, 5 increments and a broken one, through the whole flow."""
    ws = Workspace.at(workspace)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    talk = mode in ("live", "plain")
    if talk:
        console.print(f"[bold]Lepton demo[/bold] in {ws.root}: starting from a fresh embedded state (removing .lepton/ and data/)")
    shutil.rmtree(ws.state, ignore_errors=True)
    shutil.rmtree(ws.data, ignore_errors=True)
    embedded_environment(ws)
    _quiet_libraries()
    from lepton.tasks.initialise import initialise

    note = initialise(ws, demo_data.LABEL, demo_data.MODEL, demo_data.SETTINGS).note
    if note:
        err.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    overrides = list(set_ or [])
    _check_config(ws, overrides)

    files = demo_data.write_increments(ws.state / "landing")

    rows = []
    for n, path in enumerate(files, start=1):
        if talk:
            console.print(f"[bold]increment {n}/{len(files)}[/bold]: {path.name}")
        try:
            with _watching(ws, mode):
                outcome = _run_flow(ws, path, overrides)
        except Exception as error:
            raise fail(f"demo failed on {path.name}: {error}") from None
        if talk:
            console.print(f"  -> {outcome.message}", soft_wrap=True)
        rows.append((path.name, outcome))
    final = next((o.champion_version for _, o in reversed(rows) if o.champion_version), None)
    if mode == "json":
        print(json.dumps({"champion_version": final, "runs": [{"file": name, **o.model_dump(mode="json")} for name, o in rows]}, indent=2))
        return
    if talk:
        console.print(_summary_table(rows))
        for outcome in (o for _, o in rows if o.status == "rejected"):
            console.print(f"quarantined: {outcome.file} ({'; '.join(outcome.reasons)})")
    console.print(f"consumers: mlflow.pyfunc.load_model('models:/{demo_data.MODEL}@champion') -> version {final}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _summary_table(rows: list[tuple[str, Any]]) -> Table:
    table = Table(title="Lepton demo: class-incremental digits")
    for column in ("#", "file", "validation", "cand. new", "champ. new", "cand. old", "champ. old", "gate", "champion after"):
        table.add_column(column)
    champion = None
    for n, (name, outcome) in enumerate(rows, start=1):
        m = outcome.metrics
        champion = outcome.champion_version or champion
        if outcome.status == "rejected":
            gate = "not run"
        elif outcome.status == "promoted":
            gate = "passed"
        else:
            gate = "failed: " + "; ".join(outcome.failures)
        table.add_row(
            str(n), Path(name).stem, "rejected" if outcome.status == "rejected" else "passed",
            _fmt(m.get("candidate_new_accuracy")), _fmt(m.get("champion_new_accuracy")),
            _fmt(m.get("candidate_old_accuracy")), _fmt(m.get("champion_old_accuracy")),
            gate, f"v{champion}" if champion else "-",
        )
    return table


def _no_tracebacks() -> None:
    """Prefect logs a failed run's traceback; at the command line the one-line message says enough."""
    import logging

    class DropTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine", "prefect.task_engine"):
        logging.getLogger(name).addFilter(DropTraceback())


def _move_champion(move_flow: Any, ws: Workspace, args: tuple, what: str) -> Any:
    """Run a rollback or promotion flow; its move (None: nothing moved), or a one-line failure (refused or failed)."""
    _quiet_libraries()
    _no_tracebacks()
    state = move_flow(str(ws.root), *args, return_state=True)
    result = state.result(raise_on_failure=False)
    if state.is_failed() or isinstance(result, BaseException):
        detail = result if isinstance(result, BaseException) else state.message
        raise fail(f"{what} refused: {state.message}" if state.name == "Refused" else f"{what} failed: {detail}")
    return result


@app.command()
def rollback(
    to: Annotated[int | None, typer.Option("--to", min=1, help="Former champion to make champion again.", show_default="the previous champion in the history")] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the history on the registered model.")] = "rolled back by hand",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Move the champion back to a former champion (a Prefect flow) and record why; any other version takes `lepton promote`."""
    ws = _workspace(workspace)
    if not reason.strip():
        raise fail("--reason is empty: say why the champion moves back")
    from lepton.flows.rollback import rollback as rollback_flow

    result = _move_champion(rollback_flow, ws, (to, reason), "rollback")
    if result is None:
        console.print(f"version {to} is already the champion: nothing moved")
        return
    console.print(f"champion moved back from version {result.from_version} to version {result.to_version} ({result.reason})")


@app.command()
def promote(
    version: Annotated[int, typer.Argument(min=1, help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the history as a promotion by hand.")],
    force: Annotated[bool, flag("--force", help="Promote a version the gate kept out.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Make a version champion by hand (a Prefect flow), recorded as a manual promotion; refused if the gate kept it out, unless --force."""
    ws = _workspace(workspace)
    if not reason.strip():
        raise fail("--reason is empty: say why this version becomes champion")
    from lepton.flows.rollback import promote as promote_flow

    result = _move_champion(promote_flow, ws, (version, reason, force), "promotion")
    if result is None:
        console.print(f"version {version} is already the champion: nothing moved")
        return
    was = f"version {result.from_version}" if result.from_version is not None else "none"
    console.print(f"champion moved from {was} to version {result.to_version} by hand ({result.reason})", soft_wrap=True)


@app.command()
def history(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Every move of the champion: from which version to which, when, by which run, and why."""
    ws = _workspace(workspace)
    _check_config(ws, [], for_run=False)
    _quiet_libraries()
    from lepton.config import load
    from lepton.tasks.promotion import history as champion_moves

    config = load(ws.root)
    try:
        moves = champion_moves(ws, config.registry)
    except Exception as error:  # a tracking server that is down, say
        raise fail(f"could not read the history of {config.registry.model_name!r}: {error}") from None
    if as_json:
        print(json.dumps([m.model_dump(mode="json") for m in moves], indent=2))
        return
    if not moves:
        console.print(f"no champion moves recorded for {config.registry.model_name!r} yet")
        return
    table = Table("#", "when (UTC)", "kind", "from", "to", "by", "reason", title=f"champion history of {config.registry.model_name}")
    for m in moves:
        by = " ".join(filter(None, [m.flow_run_name, f"({m.user})" if m.user else None])) or "-"
        table.add_row(
            str(m.seq), f"{m.at:%Y-%m-%d %H:%M:%S}", m.kind + (" (manual)" if m.manual else ""), "-" if m.from_version is None else f"v{m.from_version}",
            f"v{m.to_version}", by, m.reason,
        )
    console.print(table)



# `versions` and `compare` only read the registry: they talk to MLflow directly, without
# tasks.registry, whose Prefect import would cost them more than their whole work.
def _read_registry(ws: Workspace) -> tuple[Any, str]:
    """An MLflow client on the workspace's registry and the model's name."""
    from mlflow import MlflowClient

    from lepton.config import load

    config = load(ws.root).registry
    uri = ws.tracking_uri(config.tracking_uri)
    if uri.startswith("sqlite:"):
        ws.state.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), config.model_name


def _version_record(version: Any, current: int | None, moves: list[Any]) -> dict[str, Any]:
    """One model version as plain data: gate verdict, key metrics, lineage and its part in the champion history."""
    from lepton.history import was_champion

    tags, number = dict(version.tags), int(version.version)
    parent = tags.get("lepton.parent_version", "none")
    gate = tags.get("lepton.gate_passed")
    return {
        "version": number,
        "increment_id": tags.get("lepton.increment_id"),
        "increment_file": tags.get("lepton.increment_file"),
        "parent_version": None if parent == "none" else int(parent),
        "gate_passed": None if gate is None else gate == "true",
        "gate_reasons": json.loads(tags.get("lepton.gate_reasons", "[]")),
        "champion": "current" if number == current else "former" if was_champion(moves, current, number) else "never",
        "metrics": json.loads(tags.get("lepton.metrics", "{}")),
        "strategy": tags.get("lepton.strategy"),
        "data_hash": tags.get("lepton.data_hash"),
        "git_commit": tags.get("lepton.git_commit"),
        "superseded_by": tags.get("lepton.superseded_by"),
        "run_id": version.run_id,
        "registered_at": datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(tags.get("lepton.config", "{}")),
    }


def _versions(ws: Workspace) -> tuple[str, list[dict[str, Any]], Any]:
    """The model's name, every version of it oldest first, and the client that read them."""
    from mlflow.exceptions import MlflowException

    from lepton.history import parse

    client, name = _read_registry(ws)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return name, [], client
        raise
    current = model.aliases.get("champion")
    current = int(current) if current is not None else None
    moves = parse(model.tags, "champion")
    found = client.search_model_versions(f"name='{name}'")
    return name, sorted((_version_record(v, current, moves) for v in found), key=lambda r: r["version"]), client


def _score(metrics: dict[str, float], which: str) -> str:
    """``candidate_new``, say, as accuracy in percent or as MAE, whichever the version was judged by."""
    if f"{which}_mae" in metrics:
        return f"MAE {metrics[f'{which}_mae']:.4g}"
    return _fmt(metrics.get(f"{which}_accuracy"))


@app.command()
def versions(
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Every model version: its gate verdict, key metrics, increment, parent, and whether it is or was champion."""
    ws = _workspace(workspace)
    _check_config(ws, [], for_run=False)
    try:
        name, records, _ = _versions(ws)
    except Exception as error:  # a tracking server that is down, a locked database
        raise fail(f"could not read the registry: {error}") from None
    if as_json:
        print(json.dumps(redacted([{k: v for k, v in r.items() if k != "config"} for r in records]), indent=2))
        return
    if not records:
        console.print(f"model {name!r} has no versions yet: run an increment first")
        return
    gate = {True: "[green]passed[/green]", False: "[yellow]kept out[/yellow]", None: "-"}
    champion = {"current": "[bold green]champion[/bold green]", "former": "former", "never": "-"}
    table = Table("version", "increment", "parent", "gate", "new holdout", "earlier holdouts", "champion", "registered (UTC)", title=f"versions of {name}", title_justify="left")
    for r in records:
        table.add_row(
            f"v{r['version']}", r["increment_id"] or "-", "-" if r["parent_version"] is None else f"v{r['parent_version']}", gate[r["gate_passed"]],
            _score(r["metrics"], "candidate_new"), _score(r["metrics"], "candidate_old"), champion[r["champion"]], r["registered_at"][:19].replace("T", " "),
        )
    console.print(table)
    console.print(f"side by side: lepton compare A B --workspace {workspace}", soft_wrap=True)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"gate": {"policy": ...}}`` as ``{"gate.policy": ...}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def comparison(a: dict[str, Any], b: dict[str, Any], run_metrics: tuple[dict[str, float], dict[str, float]]) -> dict[str, Any]:
    """Two version records side by side: each value as ``[a, b]``; configuration keys only where they differ."""
    lineage = ("increment_id", "increment_file", "data_hash", "parent_version", "strategy", "git_commit", "gate_passed", "champion")
    holdout = re.compile(r"holdout_(\d+)_candidate_(\w+)")
    holdouts: dict[str, list[float | None]] = {}
    for i, metrics in enumerate(run_metrics):
        for key, value in metrics.items():
            match = holdout.fullmatch(key)
            if match:
                holdouts.setdefault(f"holdout {match[1]} {match[2]}", [None, None])[i] = value
    summary = sorted(set(a["metrics"]) | set(b["metrics"]))
    config_a, config_b = _flatten(a["config"]), _flatten(b["config"])
    return {
        "versions": [a["version"], b["version"]],
        "lineage": {k: [a[k], b[k]] for k in lineage},
        "metrics": {k: [a["metrics"].get(k), b["metrics"].get(k)] for k in summary},
        "holdouts": dict(sorted(holdouts.items(), key=lambda item: int(item[0].split()[1]))),
        "config_differences": {k: [config_a.get(k), config_b.get(k)] for k in sorted(set(config_a) | set(config_b)) if config_a.get(k) != config_b.get(k)},
    }


@app.command()
def compare(
    a: Annotated[int, typer.Argument(metavar="A", help="A model version.")],
    b: Annotated[int, typer.Argument(metavar="B", help="Another model version.")],
    workspace: WorkspaceOption = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Two model versions side by side: metrics per holdout, configuration differences, and lineage."""
    ws = _workspace(workspace)
    _check_config(ws, [], for_run=False)
    try:
        name, records, client = _versions(ws)
        by_number = {r["version"]: r for r in records}
        missing = [v for v in (a, b) if v not in by_number]
        if missing:
            raise fail(f"model {name!r} has no version {missing[0]} (it has {', '.join(map(str, by_number)) or 'none yet'}: see `lepton versions`)")
        pair = by_number[a], by_number[b]
        run_metrics = tuple(client.get_run(r["run_id"]).data.metrics if r["run_id"] else {} for r in pair)
    except typer.Exit:
        raise
    except Exception as error:
        raise fail(f"could not read the registry: {error}") from None
    result = redacted(comparison(*pair, run_metrics))
    if as_json:
        print(json.dumps(result, indent=2))
        return

    def show(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1%}" if "accuracy" in key or "forgetting" in key else f"{value:.4g}"
        return json.dumps(value) if isinstance(value, list | dict) else str(value)

    titles = {"lineage": "lineage", "metrics": "metrics", "holdouts": "per holdout, oldest first", "config_differences": "configuration differences"}
    for rows, title in titles.items():
        if not result[rows]:
            console.print(f"{title}: none" if rows == "config_differences" else f"{title}: not recorded")
            continue
        table = Table("", f"v{a}", f"v{b}", title=title, title_justify="left")
        for key, (left, right) in result[rows].items():
            marker = "" if left == right or rows == "config_differences" else "[yellow]*[/yellow] "
            table.add_row(marker + (key if rows == "config_differences" else key.replace("_", " ")), show(key, left), show(key, right))
        console.print(table)
    console.print("* differs", style="dim")


def _typed_overrides(ws: Workspace, set_: list[str] | None) -> Any:
    """``--set`` pairs as the typed overrides the deployment flows take; a bad one fails readably."""
    from lepton.config import ConfigError, ConfigOverrides

    overrides = list(set_ or [])
    _check_config(ws, overrides)
    try:
        return ConfigOverrides.from_list(overrides)
    except ConfigError as error:
        raise fail(str(error)) from None


def _finish_series(state: Any, mode: Mode, what: str) -> None:
    """Print a series of runs (run-pending, backfill) and exit 0 all processed, 2 one rejected, 1 stopped at a failure."""
    from lepton.flows.deployments import SeriesStopped

    report = state.result(raise_on_failure=False)
    if isinstance(report, SeriesStopped):
        report = report.report
    elif report is None or isinstance(report, BaseException):
        raise fail(f"{what} failed: {report if report is not None else state.message}")
    if mode == "json":
        print(json.dumps({**report.model_dump(mode="json"), "message": report.message, "exit_code": report.exit_code}, indent=2))
        raise typer.Exit(report.exit_code)
    if mode != "quiet" and (report.processed or report.failed):
        table = Table("file", "status", "outcome", title=what)
        for item in report.processed:
            table.add_row(item.file, item.outcome.status, item.outcome.message)
        if report.failed:
            table.add_row(report.failed, "[red]failed[/red]", report.error or "")
        console.print(table)
    console.print(report.message, soft_wrap=True)
    raise typer.Exit(report.exit_code)


@app.command()
def land(
    paths: Annotated[list[Path], typer.Argument(help="Increment files, CSV or Parquet, in arrival order.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Put increments into the landing folder, where the nightly run (or `lepton run-pending`) picks them up."""
    from lepton import landing
    from lepton.config import ConfigError, load

    ws = _workspace(workspace)
    try:
        folder = landing.folder(ws, load(ws.root).landing)
    except ConfigError as error:
        raise fail(str(error)) from None
    for path in paths:
        try:
            target = landing.land(path, folder)
        except (OSError, ValueError) as error:
            raise fail(str(error)) from None
        console.print(f"landed {path} as {target}", soft_wrap=True)


@app.command("run-pending")
def run_pending(
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every increment landed since the last run, in arrival order, stopping at the first failure (the nightly deployment by hand)."""
    ws = _workspace(workspace)
    overrides = _typed_overrides(ws, set_)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    with _watching(ws, mode):
        from lepton.flows.deployments import run_pending as pending_flow

        state = pending_flow(str(ws.root), overrides, return_state=True)
    _finish_series(state, mode, "run-pending")


@app.command()
def backfill(
    folder: Annotated[Path, typer.Argument(help="Folder of increments, named so that name order is arrival order.")],
    workspace: WorkspaceOption = Path("."),
    pattern: Annotated[str, typer.Option(help="Glob of the files to take.")] = "*",
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every CSV and Parquet file of FOLDER in name order, stopping at the first failure; run again to resume."""
    ws = _workspace(workspace)
    if not folder.is_dir():
        raise fail(f"{folder} is not a folder")
    overrides = _typed_overrides(ws, set_)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    from lepton.landing import trusting

    with _watching(ws, mode), trusting(folder):
        from lepton.flows.deployments import backfill as backfill_flow

        state = backfill_flow(str(folder.resolve()), str(ws.root), overrides, pattern, return_state=True)
    _finish_series(state, mode, "backfill")



@app.command()
def serve(
    workspace: WorkspaceOption = Path("."),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5001,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it beyond this machine.")] = "127.0.0.1",
) -> None:
    """Serve the champion with MLflow's scoring server: POST raw feature columns to /invocations, get labels."""
    import socket

    ws = _workspace(workspace)
    _check_config(ws, [], for_run=False)
    _quiet_libraries()
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



@app.command()
def report(
    model_version: Annotated[int | None, typer.Option("--model-version", min=1, help="Registered model version whose run to show.", show_default="the latest run")] = None,
    workspace: WorkspaceOption = Path("."),
    open_: Annotated[bool, flag("--open", help="Also open the page in a web browser, if one is available.")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="Also render the page to this PNG with headless Chromium.")] = None,
) -> None:
    """Print the path of a run's report: the HTML page with validation, drift, training, gate and lineage."""
    import webbrowser

    from lepton.report import RenderError, ReportNotFound, find, screenshot

    ws = _workspace(workspace)
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


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
