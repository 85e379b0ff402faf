"""Commands that send increments through the flow: init, run, retry, demo, land, run-pending, backfill."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lepton import demo as demo_data
from lepton.cli.common import (
    JsonOption,
    QuietOption,
    SetOption,
    WorkspaceOption,
    check_config,
    console,
    embedded_environment,
    err,
    fail,
    flag,
    in_warm_worker,
    no_tracebacks,
    open_workspace,
    paths_shown,
    percent,
    quiet_libraries,
    shown,
    told,
    typed_overrides,
)
from lepton.cli.progress import Mode, mode_for, watch
from lepton.secrets import mask_logging
from lepton.server import ServerError, in_process_flows, temporary
from lepton.workspace import Workspace


def _initialise(ws: Workspace, label: str, name: str, settings: dict[str, Any] | None = None) -> bool:
    """Make ``ws`` a workspace, saying what the operator should know; False when it already was one."""
    from lepton.tasks.initialise import initialise

    done = initialise(ws, label, name, settings)
    if done.note:
        err.print(f"[yellow]note:[/yellow] {done.note}", soft_wrap=True)
    return done.created


def init(
    directory: Annotated[Path, typer.Argument(help="Directory to make a workspace (created if needed).")],
    label: Annotated[str, typer.Option(help="Name of the label column.")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "lepton",
    from_: Annotated[str | None, typer.Option("--from", metavar="models:/NAME@ALIAS", help="Start the first model from this registered model's feature layers (train.transfer_from).")] = None,
    from_registry: Annotated[str | None, typer.Option(help="Tracking URI of the registry holding --from, e.g. sqlite:////path/other/.lepton/mlflow.db (train.transfer_registry).")] = None,
) -> None:
    """Make DIR a workspace: git, DVC with a local remote, lepton.yaml, and data/ tracked by data.dvc."""
    if from_registry and not from_:
        raise fail("--from-registry names where --from is: give --from models:/NAME@champion too")
    from lepton.models.settings import MODEL_URI  # what train.transfer_from takes, checked before the workspace is made

    if from_ and not re.fullmatch(MODEL_URI, from_):
        raise fail(f"--from {from_!r} is not a registered model: give models:/NAME@ALIAS (models:/churn@champion) or models:/NAME/VERSION")
    settings = {"train": {"transfer_from": from_, **({"transfer_registry": from_registry} if from_registry else {})}} if from_ else None
    ws = open_workspace(directory, must_exist=False, quiet=True)
    if not _initialise(ws, label, name, settings):
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
    from lepton.flows.handback import result_of

    result = result_of(state)
    if state.is_failed() or isinstance(result, BaseException):
        raise RuntimeError(str(result) if isinstance(result, BaseException) else state.message or "the flow failed")
    return result, state.state_details.flow_run_id


@contextmanager
def _ctrl_c_ends_it() -> Iterator[None]:
    """A Ctrl-C during a flow ends the command as an interrupt (exit 130), whatever Prefect made of it.

    An interrupt that lands while Prefect creates a task run reaches its crash handler before the run
    exists, and the flow fails with that handler's own error ("Task run is not set") instead.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:  # signals reach the main thread only
        yield
        return
    seen = False

    def noted(signum: int, frame: Any) -> None:
        nonlocal seen
        seen = True
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, noted)
    try:
        yield
    except Exception:
        if seen:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:  # a series flow records the failure in its state and returns it
        raise KeyboardInterrupt


def _watched_run(ws: Workspace, path: Path, overrides: list[str], mode: Mode, *, dry_run: bool = False) -> tuple[Any, dict[str, Any]]:
    """One flow run under the progress display: its outcome, and the ``seconds`` of its --json outcome
    (the total, and each step's, importing the pipeline first)."""
    started = time.perf_counter()
    with _watching(ws, mode, validating_only=dry_run) as watched, _ctrl_c_ends_it():
        outcome, flow_run_id = _run_flow(ws, path, overrides, dry_run=dry_run)
    steps = {"import the pipeline": round(watched.imported - started, 3)} | watched.seconds(flow_run_id)
    return outcome, {"total": round(time.perf_counter() - started, 3), "steps": steps}


def run(
    path: Annotated[Path, typer.Argument(help="Increment file, CSV or Parquet; or a folder of images with one CSV naming them.")],
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    dry_run: Annotated[bool, flag("--dry-run", help="Only validate: nothing is copied, versioned, trained or registered.")] = False,
) -> None:
    """Send one increment through the whole flow. Exit 0 processed, 2 rejected (or no such file), 1 failed."""
    overrides = list(set_ or [])
    ws = open_workspace(workspace, check="run", overrides=overrides)
    if path.is_dir():  # images and a CSV naming them: packed into one Parquet file, the increment the flow sees
        in_warm_worker(ws)  # where it runs, it packs them once
        from lepton.landing import FolderError, pack_image_folder

        try:
            path = pack_image_folder(path, ws.scratch / "folders")
        except (FolderError, OSError, ValueError) as error:
            raise fail(str(error), code=2) from None
    if not path.is_file():  # a bad increment like any other: exit 2, and nothing to quarantine
        what = "is not a regular file" if path.exists() else "does not exist"
        raise fail(f"{path} {what}", code=2)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    started = time.perf_counter()
    repeated = None if dry_run else _finished_duplicate(ws, path, overrides)
    if repeated is not None:
        _show(ws, repeated, mode, {"total": round(time.perf_counter() - started, 3), "steps": {}})
    _run_and_show(ws, path, overrides, mode, dry_run=dry_run)


def _finished_duplicate(ws: Workspace, path: Path, overrides: list[str]) -> Any:
    """The duplicate outcome of content whose run finished before, told without a flow (no Prefect, MLflow or torch
    to import); None when the flow must look: new or rejected content, or a run that did not finish."""
    from lepton.config import load
    from lepton.landing import source_name
    from lepton.tasks.outcome import RunOutcome
    from lepton.tasks.tracking import registry_key_of
    from lepton.workspace import content_id

    known = ws.read_manifest().find(content_id(path))
    config = load(ws.root, overrides)
    if known is None or known.state != "accepted" or not ws.is_finished(known.id, registry_key_of(ws, config.registry)):
        return None
    ws.note_duplicate(known.id, source_name(path))
    return RunOutcome.duplicate(known.id, known, ws.declared_otherwise(config.data.columns, config.data.task))


def retry(
    increment_id: Annotated[str, typer.Argument(metavar="INCREMENT_ID", help="A rejected increment's id, as `lepton status` lists it.")],
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Validate a rejected increment again, from its quarantined copy, under the current configuration; exit codes as `run`."""
    overrides = list(set_ or [])
    ws = open_workspace(workspace, check="run", overrides=overrides, quiet=True)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    in_warm_worker(ws)
    temporary(ws)  # before the import below, which imports Prefect
    from lepton.tasks.ingest import IncrementError, quarantined

    try:
        path = quarantined(ws, increment_id)
    except IncrementError as error:
        raise fail(str(error), code=2) from None
    # The copy has the increment's content, so the flow knows it as the rejected increment and tries it again.
    _run_and_show(ws, path, overrides, mode)


def _run_and_show(ws: Workspace, path: Path, overrides: list[str], mode: Mode, *, dry_run: bool = False) -> None:
    """Run the flow on ``path`` with the progress display, print its outcome and exit with its code."""
    in_warm_worker(ws)
    try:
        outcome, seconds = _watched_run(ws, path, overrides, mode, dry_run=dry_run)
    except typer.Exit:  # said already
        raise
    except Exception as error:  # the operator needs the cause and a non-zero exit, not a traceback
        raise fail(f"run failed: {error}{_whose(ws, error)} (the run's log: {shown(ws, ws.run_log)})") from None
    _show(ws, outcome, mode, seconds, dry_run=dry_run)


def _whose(ws: Workspace, error: Exception) -> str:
    """Which file a database error is about, when it is the workspace's own MLflow store: SQLite does not say."""
    text = str(error)
    if "sqlite3.OperationalError" not in text or f"sqlite:///{ws.mlflow_db}" != ws.tracking_uri(None):
        return ""
    return f" (in MLflow's database {shown(ws, ws.mlflow_db.relative_to(ws.root))}: is it writable, and its disk not full?)"


def _show(ws: Workspace, outcome: Any, mode: Mode, seconds: dict[str, Any], *, dry_run: bool = False) -> None:
    """Print a run's outcome as ``mode`` asks and exit with its code."""
    if mode == "json":
        print(json.dumps({**outcome.model_dump(mode="json"), "exit_code": outcome.exit_code, "seconds": seconds}, indent=2))
    else:
        if mode != "quiet" and not dry_run:
            console.print(_outcome_table(ws, outcome))
        console.print(told(ws, outcome), soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


@contextmanager
def _watching(ws: Workspace, mode: Mode, *, validating_only: bool = False) -> Iterator[watch]:
    """The progress display for flow runs run in this process; Prefect's console lines go to .lepton/logs/lepton.log.
    ``validating_only``: a dry run, which needs nothing imported beyond its validation."""
    server = temporary(ws)  # without a server up, Prefect's temporary one starts while the pipeline imports
    quiet_libraries()
    no_tracebacks()
    # Importing prefect configures its logging (dictConfig); the display must take over after that.
    import lepton.flows.continual  # noqa: F401
    from lepton import validation_aside
    from lepton.worker import import_ahead

    # Great Expectations imports in a child that will validate, on the core the server's start leaves, while this
    # process goes on to the flow's first steps; while it validates, this process imports what the next steps need
    # (MLflow's store for the champion, the part of torch its optimiser imports at its first step).
    skip = ("great_expectations",)
    aside = validation_aside.prepare(None if validating_only else lambda until: import_ahead(until=until, skip=skip))
    if server is not None:
        # Seconds of its start may be left (more on a new workspace, which creates its database): this core would
        # wait idle, so it imports meanwhile what the steps import anyway, and stops once the server answers (or fails).
        import_ahead(until=server.settled, skip=skip if aside else ())
    imported = time.perf_counter()
    mask_logging()  # Prefect's console and API handlers: the terminal and the Prefect database
    with in_process_flows(), watch(console, mode, ws.run_log, said=lambda line: paths_shown(ws, line)) as watched:
        watched.imported = imported  # the import ends here; waiting for the server is Prefect's start, shown as such
        try:
            if server is not None:
                try:
                    server.wait(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
                except ServerError as error:
                    raise fail(str(error)) from None
            yield watched
        finally:  # a run that did not validate (a duplicate, a resumed run) leaves no child importing GX behind it
            validation_aside.discard()


def _outcome_table(ws: Workspace, outcome: Any) -> Table:
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
        show = percent if metric == "accuracy" else (lambda v: "-" if v is None else f"MAE {v:.4g}")
        table.add_row("new holdout", f"candidate {show(m.get(f'candidate_new_{metric}'))}, champion {show(m.get(f'champion_new_{metric}'))}")
        table.add_row("earlier holdouts", f"candidate {show(m.get(f'candidate_old_{metric}'))}, champion {show(m.get(f'champion_old_{metric}'))}")
    for note in getattr(outcome, "notes", []):
        table.add_row("column kinds", note)
    if getattr(outcome, "concept_change", False):
        table.add_row("concept change", "[yellow]the champion did much worse on this increment than on earlier ones: forgetting judged from here on[/yellow]")
    failed, noted = set(outcome.failures), set(getattr(outcome, "gate_notes", []))
    for reason in outcome.reasons:
        if reason in noted:  # says something of the judgement, checks nothing
            table.add_row("note", f"· {reason}")
        else:
            table.add_row("check", f"[red]✗[/red] {reason}" if reason in failed else f"[green]✓[/green] {reason}")
    for warning in getattr(outcome, "warnings", []):
        table.add_row("warning", f"[yellow]{warning}[/yellow]")
    drift = getattr(outcome, "drift", None)
    if drift is not None:
        drifted = [row["feature"] for row in drift if row["drifted"]]
        features = sum(not row.get("label") for row in drift)
        tested = (f"{features} feature(s)" if features else "no feature (too few history rows to compare with)") + (" and the label" if features < len(drift) else "")
        table.add_row("drift", f"[yellow]{len(drifted)} drifted: {', '.join(drifted[:8])}{' ...' if len(drifted) > 8 else ''} (action {outcome.drift_action})[/yellow]" if drifted else f"none; tested {tested}")
    elif getattr(outcome, "drift_skipped", None) and outcome.status != "rejected":
        table.add_row("drift", f"not measured: {outcome.drift_skipped}")
    if getattr(outcome, "training_note", None):
        table.add_row("training", outcome.training_note)
    if outcome.data_hash:
        table.add_row("data version", outcome.data_hash)
    report = getattr(outcome, "report", None)
    if report:
        table.add_row("report", shown(ws, report))
    elif getattr(outcome, "finished_earlier", False):  # the run that trained the version wrote none before it stopped
        table.add_row("report", "none: the run that trained this version stopped before writing it; this one moved the champion")
    elif outcome.status in ("promoted", "kept_out", "rejected"):  # the run happened; its page could not be written
        table.add_row("report", f"[red]not written: why is in {shown(ws, ws.run_log)}[/red]")
    return table


def demo(
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Class-incremental handwritten digits, 5 increments and a broken one, through the whole flow."""
    ws = Workspace.at(workspace)
    refused = _not_the_demos(ws)
    if refused:
        raise fail(refused)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    talk = mode in ("live", "plain")
    if talk:
        console.print(f"[bold]Lepton demo[/bold] in {ws.root}: starting from a fresh embedded state (removing .lepton/ and data/)")
    shutil.rmtree(ws.state, ignore_errors=True)
    shutil.rmtree(ws.data, ignore_errors=True)
    embedded_environment(ws)
    quiet_libraries()
    _initialise(ws, demo_data.LABEL, demo_data.MODEL, demo_data.SETTINGS)
    overrides = list(set_ or [])
    check_config(ws, overrides)

    files = demo_data.write_increments(ws.state / "landing")

    rows = []
    for n, path in enumerate(files, start=1):
        if talk:
            console.print(f"[bold]increment {n}/{len(files)}[/bold]: {path.name}")
        try:
            outcome, seconds = _watched_run(ws, path, overrides, mode)
        except typer.Exit:  # said already
            raise
        except Exception as error:
            raise fail(f"demo failed on {path.name}: {error}") from None
        if talk:
            console.print(f"  -> {told(ws, outcome)}", soft_wrap=True)
        rows.append((path.name, outcome, seconds))
    final = next((o.champion_version for _, o, _ in reversed(rows) if o.champion_version), None)
    if mode == "json":
        runs = [{"file": name, **o.model_dump(mode="json"), "seconds": seconds} for name, o, seconds in rows]
        print(json.dumps({"champion_version": final, "runs": runs}, indent=2))
        return
    if talk:
        console.print(_summary_table([(name, o) for name, o, _ in rows]))
        for outcome in (o for _, o, _ in rows if o.status == "rejected"):
            console.print(f"quarantined: {shown(ws, outcome.file)} ({'; '.join(outcome.reasons)})", soft_wrap=True)
    if final is None:
        raise fail(f"the demo promoted no model: see the table above and {shown(ws, ws.run_log)}")
    console.print(
        f"consumers: mlflow.set_tracking_uri('sqlite:///{ws.mlflow_db}'); "
        f"mlflow.pyfunc.load_model('models:/{demo_data.MODEL}@champion') -> version {final}", soft_wrap=True,
    )


def _not_the_demos(ws: Workspace) -> str | None:
    """Why the demo must not clear ``ws`` (it removes .lepton/ and data/ to start afresh): a workspace of another
    model, or a data/ folder where no workspace is. None for an empty folder, or one the demo ran in before."""
    import yaml

    elsewhere = "run the demo in a folder of its own: lepton demo --workspace /tmp/lepton-demo"
    settings = ws.root / "lepton.yaml"
    if settings.is_file():
        try:
            read = yaml.safe_load(settings.read_text()) or {}
            label, name = (read.get("data") or {}).get("label"), (read.get("registry") or {}).get("model_name", "lepton")
        except (yaml.YAMLError, AttributeError):
            label, name = None, None
        if (label, name) != (demo_data.LABEL, demo_data.MODEL):
            return (f"{ws.root} is a workspace of model {name!r} (label {label!r}): the demo starts from a fresh state and would "
                    f"remove its .lepton/ and data/; {elsewhere}")
    elif ws.data.exists() and any(ws.data.iterdir()):
        return f"{ws.root} holds a data/ folder and is no workspace: the demo starts from a fresh state and would remove it; {elsewhere}"
    return None


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
            percent(m.get("candidate_new_accuracy")), percent(m.get("champion_new_accuracy")),
            percent(m.get("candidate_old_accuracy")), percent(m.get("champion_old_accuracy")),
            gate, f"v{champion}" if champion else "-",
        )
    return table


def _finish_series(ws: Workspace, state: Any, mode: Mode, what: str, watched: watch, started: float) -> None:
    """Print a series of runs (run-pending, backfill) and exit 0 all processed, 2 one rejected, 1 stopped at a failure."""
    from lepton.flows.deployments import SeriesStopped
    from lepton.flows.handback import result_of

    report = result_of(state)
    if isinstance(report, SeriesStopped):
        report = report.report
    elif report is None or isinstance(report, BaseException):
        raise fail(f"{what} failed: {report if report is not None else state.message}")
    if mode == "json":
        series = report.model_dump(mode="json")
        for item in series["processed"]:  # each increment's steps, as `lepton run --json` gives them
            item["seconds"] = {"total": item.pop("seconds"), "steps": watched.seconds(item.pop("flow_run_id"), start=False)}
        print(json.dumps({**series, "message": report.message, "exit_code": report.exit_code,
                          "seconds": {"total": round(time.perf_counter() - started, 3)}}, indent=2))
        raise typer.Exit(report.exit_code)
    if mode != "quiet" and (report.processed or report.failed):
        table = Table("file", "status", "outcome", title=what)
        for item in report.processed:
            table.add_row(item.file, item.outcome.status, told(ws, item.outcome))
        if report.failed:
            table.add_row(report.failed, "[red]failed[/red]", report.error or "")
        console.print(table)
    if report.failed:  # on stderr, as every failure is: a cron wrapper that alerts on it must see the night's
        raise fail(f"{report.message} (the runs' log: {shown(ws, ws.run_log)})", report.exit_code)
    console.print(report.message, soft_wrap=True)
    raise typer.Exit(report.exit_code)


def land(
    paths: Annotated[list[Path], typer.Argument(help="Increment files, CSV or Parquet, in arrival order.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Put increments into the landing folder, where the nightly run (or `lepton run-pending`) picks them up.
    Exit 0 landed, 2 a path that is not an increment file (as `run`), 1 a copy that failed."""
    from lepton import landing
    from lepton.config import ConfigError, load

    ws = open_workspace(workspace)
    try:
        folder = landing.folder(ws, load(ws.root).landing)
    except ConfigError as error:
        raise fail(str(error)) from None
    for path in paths:
        try:
            target = landing.land(path, folder)
        except (FileNotFoundError, ValueError) as error:  # the path, not the machine: bad input, as `run` says it
            raise fail(str(error), code=2) from None
        except OSError as error:
            raise fail(str(error)) from None
        console.print(f"landed {path} as {target}", soft_wrap=True)


def run_pending(
    workspace: WorkspaceOption = Path("."),
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every increment landed since the last run, in arrival order, stopping at the first failure (the nightly deployment by hand)."""
    ws = open_workspace(workspace)
    overrides = typed_overrides(ws, set_)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    started = time.perf_counter()
    if _nothing_landed(ws):
        # Said without Prefect, the pipeline or a flow run (14 s on 2 cores): a cron job may look every few minutes.
        if mode == "json":
            print(json.dumps({**NOTHING_LANDED, "seconds": {"total": round(time.perf_counter() - started, 3)}}, indent=2))
        else:
            console.print(NOTHING_LANDED["message"])
        raise typer.Exit(0)
    in_warm_worker(ws)
    with _watching(ws, mode) as watched, _ctrl_c_ends_it():
        from lepton.flows.deployments import run_pending as pending_flow

        state = pending_flow(str(ws.root), overrides, return_state=True)
    _finish_series(ws, state, mode, "run-pending", watched, started)


# run-pending's answer for an empty landing folder, as the flow's SeriesReport gives it (tests/test_cli.py compares them).
NOTHING_LANDED = {"processed": [], "failed": None, "error": None, "remaining": [], "message": "0 increment(s) processed (nothing to do)", "exit_code": 0}


def _nothing_landed(ws: Workspace) -> bool:
    """Whether the landing folder holds no increment (its location is lepton.yaml's alone: a run cannot move it)."""
    from lepton import landing
    from lepton.config import ConfigError, load

    try:
        return not landing.pending(landing.folder(ws, load(ws.root).landing))
    except ConfigError:
        return False  # the flow says what is wrong with the configuration


def backfill(
    folder: Annotated[Path, typer.Argument(help="Folder of increments, named so that name order is arrival order.")],
    workspace: WorkspaceOption = Path("."),
    pattern: Annotated[str, typer.Option(help="Glob of the files to take.")] = "*",
    set_: SetOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run every CSV and Parquet file of FOLDER in name order, stopping at the first failure; run again to resume."""
    ws = open_workspace(workspace)
    if not folder.is_dir():
        raise fail(f"{folder} {'is not a folder' if folder.exists() else 'does not exist'}", code=2)
    overrides = typed_overrides(ws, set_)
    mode = mode_for(console, quiet=quiet, as_json=as_json)
    from lepton.landing import trusting

    in_warm_worker(ws)
    started = time.perf_counter()
    with _watching(ws, mode) as watched, trusting(folder), _ctrl_c_ends_it():
        from lepton.flows.deployments import backfill as backfill_flow

        state = backfill_flow(str(folder.resolve()), str(ws.root), overrides, pattern, return_state=True)
    _finish_series(ws, state, mode, "backfill", watched, started)
