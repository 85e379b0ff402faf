"""The flows behind the deployments: one increment (manual), the landing folder (nightly), a folder in order (backfill).

Each runs ``continual_training`` as a subflow per increment, so every increment is a flow run
of its own in the Prefect UI, with its own logs and state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import BaseModel

from lepton import config as lepton_config
from lepton import landing
from lepton.config import ConfigOverrides
from lepton.flows.continual import continual_training
from lepton.flows.handback import keeps_return, result_of
from lepton.flows.rollback import WorkspacePath
from lepton.tasks.landing import backfill_files, clear_landed, inspect_increment, landed
from lepton.tasks.outcome import RunOutcome
from lepton.tasks.splits import read
from lepton.tasks.validate import validate
from lepton.workspace import Workspace


class DryRun(BaseModel):
    """What a dry run found: whether the increment would pass validation, and why not."""

    status: Literal["valid", "invalid", "duplicate"]
    increment_id: str
    file: str
    message: str
    problems: list[str] = []
    warnings: list[str] = []  # what a run would only report (growth, gaps read as missing, new categories, duplicates)
    notes: list[str] = []  # the column kinds a first increment would set
    rows: int = 0
    expectations: int = 0

    @property
    def exit_code(self) -> int:
        return 2 if self.status == "invalid" else 0


class Processed(BaseModel):
    file: str
    outcome: RunOutcome
    seconds: float | None = None  # the increment's run, start to end
    flow_run_id: str | None = None


class SeriesReport(BaseModel):
    """Increments run in order, and where the series stopped if one failed (the rest wait for the next run)."""

    processed: list[Processed] = []
    failed: str | None = None
    error: str | None = None
    remaining: list[str] = []

    @property
    def message(self) -> str:
        counts: dict[str, int] = {}
        for item in self.processed:
            counts[item.outcome.status] = counts.get(item.outcome.status, 0) + 1
        done = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items()) or ("nothing to do" if not self.failed else "")
        summary = f"{len(self.processed)} increment(s) processed" + (f" ({done})" if done else "")
        if self.rejected:
            summary += f"; rejected: {', '.join(self.rejected)}"
        if self.failed:
            summary += f"; stopped at {self.failed}: {self.error}; {len(self.remaining)} increment(s) left for the next run"
        return summary

    @property
    def rejected(self) -> list[str]:
        """The files whose increment was rejected (quarantined), for the operator to look at."""
        return [item.file for item in self.processed if item.outcome.status == "rejected"]

    @property
    def exit_code(self) -> int:
        if self.failed:
            return 1
        return 2 if any(item.outcome.status == "rejected" for item in self.processed) else 0


class SeriesStopped(RuntimeError):
    """A series of runs stopped at a failure; ``report`` says what was done and what waits."""

    report: SeriesReport


def _stopped(report: SeriesReport) -> State:
    error = SeriesStopped(report.message)
    error.report = report  # an attribute, not an argument: the exception still pickles
    return Failed(message=report.message, data=error)


def _in_order(files: list[Path], ws: Workspace, overrides: list[str], *, consume: bool) -> SeriesReport | State:
    """One continual-training run per file, in the given order, stopping at the first failed run."""
    log = get_run_logger()
    report = SeriesReport()
    for n, file in enumerate(files):
        name = f"increment {file.name}"
        run = continual_training.with_options(flow_run_name=lambda name=name: name)
        started = time.perf_counter()
        state = run(str(file), str(ws.root), overrides, return_state=True)
        seconds = round(time.perf_counter() - started, 3)
        result = result_of(state)
        if state.is_failed() or isinstance(result, BaseException):
            # Stop here: later increments may depend on this one, so they wait, untouched.
            report.failed = file.name
            report.error = str(result) if isinstance(result, BaseException) else (state.message or "the run failed")
            report.remaining = [f.name for f in files[n:]]
            log.error(report.message)
            return _stopped(report)
        report.processed.append(Processed(file=file.name, outcome=result, seconds=seconds, flow_run_id=str(state.state_details.flow_run_id)))
        log.info("%s: %s", file.name, result.message)
        if consume:
            clear_landed(file)
    if report.rejected:
        # Finished, but not all taken in: a state of its own that the UI shows and filters on.
        log.warning(report.message)
        return Completed(name="Rejected", message=report.message, data=report)
    log.info(report.message)
    return report


def _fenced(files: list[Path], allowed: list[Path]) -> None:
    """Refuse the whole series, before any file is read, when one resolves (a symlink, say) outside the allowed roots."""
    refused = landing.outside_all(files, allowed)
    if refused:
        raise PermissionError("; ".join(refused))


@flow(name="run-increment")
@keeps_return
def run_increment(
    path: str,
    workspace: WorkspacePath,
    overrides: ConfigOverrides = ConfigOverrides(),  # noqa: B008 - an immutable default
    dry_run: bool = False,
) -> RunOutcome | DryRun | State:
    """One increment through the whole pipeline, or only validated (the manual deployment).

    Args:
        path: Increment file (CSV or Parquet), as the worker sees it.
        workspace: Lepton workspace directory (absolute), as the worker sees it.
        overrides: Changes to the workspace's lepton.yaml for this run only.
        dry_run: Only validate: nothing is copied, versioned, trained or registered.
    """
    ws = Workspace.at(workspace)
    refused = landing.outside_roots(Path(path), landing.roots(ws, lepton_config.load(ws.root, overrides.to_list()).landing))
    if refused is not None:
        # A parameter can name any path the worker can read: only the configured folders are taken.
        get_run_logger().warning(refused)
        # The run did not do its job: Failed, named for the UI, with the reason; a dry run says what a run would.
        return Failed(name="Refused", message=f"refused because {refused}; nothing was read", data=PermissionError(refused))
    if dry_run:
        return _dry_run(Path(path), ws, overrides.to_list())
    result = result_of(continual_training(path, workspace, overrides.to_list(), return_state=True))
    if isinstance(result, BaseException):
        raise result
    return result


def _dry_run(path: Path, ws: Workspace, overrides: list[str]) -> DryRun:
    log = get_run_logger()
    config = lepton_config.load(ws.root, overrides)
    seen = inspect_increment(path, ws)
    known = seen.duplicate_of
    if known is not None and known.state != "rejected":
        result = DryRun(status="duplicate", increment_id=seen.id, file=str(path), message=f"dry run: duplicate of increment {known.id} ({known.state}, {known.file}): a run would do nothing")
    else:
        # Content rejected before is validated again by a run, under the configuration as it is now: so here.
        again = f"rejected before as increment {known.id}, validated again: " if known is not None else ""
        frame, read_error = read(path)
        report = validate(frame, read_error, ws.read_schema(), config.data)
        if report.passed:
            warned = f"; it would warn: {'; '.join(report.warnings)}" if report.warnings else ""
            message = f"dry run: {again}valid ({report.rows} rows passed {report.expectations} expectations){warned}; nothing was changed"
        else:
            message = f"dry run: {again}would be rejected because {'; '.join(report.problems)}"
        result = DryRun(
            status="valid" if report.passed else "invalid", increment_id=seen.id, file=str(path), message=message,
            problems=report.problems, warnings=report.warnings, notes=report.notes,
            rows=report.rows, expectations=report.expectations,
        )
    log.info(result.message)
    return result


@flow(name="run-pending")
@keeps_return
def run_pending(
    workspace: WorkspacePath,
    overrides: ConfigOverrides = ConfigOverrides(),  # noqa: B008
) -> SeriesReport | State:
    """Every increment landed since the last run, in arrival order, stopping at the first failure (the nightly deployment).

    Args:
        workspace: Lepton workspace directory (absolute), as the worker sees it.
        overrides: Changes to the workspace's lepton.yaml for these runs only.
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root, overrides.to_list())
    folder = landing.folder(ws, config.landing)
    with landing.exclusive(folder):
        files = landed(folder)
        _fenced(files, landing.roots(ws, config.landing))
        log.info("%d increment(s) waiting in %s", len(files), folder)
        return _in_order(files, ws, overrides.to_list(), consume=True)


@flow(name="backfill")
@keeps_return
def backfill(
    folder: str,
    workspace: WorkspacePath,
    overrides: ConfigOverrides = ConfigOverrides(),  # noqa: B008
    pattern: str = "*",
) -> SeriesReport | State:
    """Every CSV and Parquet file of a folder, in name order, stopping at the first failure (the backfill deployment).

    Running it again resumes: increments already taken in are recognised as duplicates.

    Args:
        folder: Folder of increment files, named so that name order is arrival order.
        workspace: Lepton workspace directory (absolute), as the worker sees it.
        overrides: Changes to the workspace's lepton.yaml for these runs only.
        pattern: Glob of the files to take, e.g. 2026-11-*.parquet.
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root, overrides.to_list())  # a bad override fails before any run
    allowed = landing.roots(ws, config.landing)
    refused = landing.outside_roots(Path(folder), allowed) or landing.pattern_problem(pattern)
    if refused is not None:
        raise PermissionError(refused)
    files = backfill_files(Path(folder).expanduser(), pattern)
    _fenced(files, allowed)
    log.info("%d increment(s) to backfill from %s", len(files), folder)
    return _in_order(files, ws, overrides.to_list(), consume=False)
