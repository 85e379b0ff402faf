"""The landing folder and backfill folders as tasks; a dry run's look at an increment without taking it in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton import landing
from lepton.tasks.ingest import IncrementError, content_id
from lepton.workspace import IncrementRecord, Workspace


@dataclass(frozen=True)
class Inspection:
    """What a dry run knows about an increment before validating it."""

    id: str
    duplicate_of: IncrementRecord | None


@task(name="list-landed", cache_policy=NO_CACHE)
def landed(folder: Path) -> list[Path]:
    """The increments waiting in the landing folder, oldest first."""
    return landing.pending(folder)


@task(name="list-backfill", cache_policy=NO_CACHE)
def backfill_files(folder: Path, pattern: str) -> list[Path]:
    """The increments of a backfill folder, in name order."""
    return landing.in_folder(folder, pattern)


@task(name="clear-landed", cache_policy=NO_CACHE)
def clear_landed(path: Path) -> None:
    """Remove a processed file from the landing folder; its content is in data/ now (safe to repeat)."""
    path.unlink(missing_ok=True)


@task(name="inspect-increment", cache_policy=NO_CACHE)
def inspect_increment(path: Path, ws: Workspace) -> Inspection:
    """The increment's id and, if the same content was landed before, that record; touches nothing."""
    source = Path(path).expanduser()
    problem = landing.file_problem(source, check_format=False)
    if problem is not None:
        raise IncrementError(problem)
    increment_id = content_id(source)
    return Inspection(increment_id, ws.read_manifest().find(increment_id))
