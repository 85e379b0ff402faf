"""Landing an increment in ``data/``, and filing it as accepted or quarantined."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig
from lepton.faults import checkpoint
from lepton.landing import FORMATS, file_problem, source_name, unpack
from lepton.models.columns import PLACEHOLDERS, written_numbers
from lepton.models.schema import DataSchema
from lepton.validation import kinds_for, repeated_names
from lepton.workspace import Attempt, IncrementRecord, Verdict, Workspace, content_id

if TYPE_CHECKING:
    from lepton.tasks.registry import Registration

# What a landed increment needs: validation (new, or rejected before and tried again), training
# (accepted but nothing registered), nothing more (an interrupted promotion just finished, or done).
Route = Literal["fresh", "retry", "resume", "finished", "duplicate"]


class IncrementError(ValueError):
    """The increment file cannot be taken in at all (missing, not a file, unknown format)."""


@dataclass(frozen=True)
class Landing:
    """An increment copied into the workspace."""

    id: str
    path: Path  # where it is now, inside data/
    source: str  # the name it arrived under
    duplicate_of: IncrementRecord | None = None


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(path: Path, ws: Workspace) -> Landing:
    """Copy the increment into ``data/increments/`` under its content id (a duplicate is only recognised)."""
    source = Path(path).expanduser()
    problem = file_problem(source, check_format=False)
    if problem is not None:
        raise IncrementError(problem)
    suffix = source.suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):  # kept in quarantine under a name nothing can misread
        suffix = ".bin"
    increment_id = content_id(source)
    with ws.lock("data"):
        known = ws.read_manifest().find(increment_id)
        if known is not None:
            kept = ws.root / known.file
            if known.state == "rejected" and not kept.exists():
                # Its quarantined copy was cleared away: these bytes are the same content, so they take its place.
                _copy_in(source, kept, ws)
            return Landing(increment_id, kept, source_name(source), duplicate_of=known)
        target = ws.increments / f"{increment_id}{'.parquet' if suffix == '.pq' else suffix}"
        _copy_in(source, target, ws)
    return Landing(increment_id, target, source_name(source))


def _copy_in(source: Path, target: Path, ws: Workspace) -> None:
    """Copy ``source`` to ``target`` in ``data/`` (under the data lock)."""
    # Copied outside data/ and renamed in: a crash mid-copy leaves no half file for DVC to version.
    ws.scratch.mkdir(parents=True, exist_ok=True)
    partial = ws.scratch / f"{target.name}.partial"
    shutil.copyfile(source, partial)
    checkpoint("ingest")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)


def sort_landing(known: IncrementRecord | None, earlier: Registration | None) -> Route:
    """Where a landed increment goes, from its manifest record and, when accepted, what ``finish_increment`` found."""
    if known is None:
        return "fresh"
    if known.state == "rejected":
        return "retry"  # the configuration may have changed since: validate it again
    if earlier is None:
        return "resume"  # accepted, but a crash or a registry that was down left no model version
    if earlier.move is not None:
        return "finished"  # registered and passed the gate; the champion has just been moved to it
    return "duplicate"


def read_increment(path: Path) -> pd.DataFrame:
    """The increment as a frame; raises ValueError with a readable message when it cannot be parsed.

    A CSV file's header as written is kept in ``frame.attrs["header"]``: pandas reads a
    repeated ``x`` as ``x.1``, and validation must see that the name was repeated.
    """
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported format {suffix if suffix != '.bin' else '(unknown)'}; use .csv or .parquet{unpack(suffix)}")
    try:
        if suffix == ".csv":
            sep = separator_of(path)
            frame = pd.read_csv(path, sep=sep, na_values=PLACEHOLDERS)
            header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
            frame.attrs["header"] = header.iloc[0].tolist() if len(header) else []
            if sep != ",":
                frame.attrs["separator"] = sep
            names = [str(c) for c in frame.columns]
            if names and all(len(n) > 2 and n[0] == n[-1] == "'" for n in names):
                # Every name in single quotes (a statistics package's export): the names are what the quotes hold.
                frame.columns = [n[1:-1] for n in names]
                frame.attrs["header"] = [str(n)[1:-1] if str(n)[:1] == str(n)[-1:] == "'" else n for n in frame.attrs["header"]]
                frame.attrs["unquoted"] = True
            # Where ';' separates, a comma is the decimal mark (a European spreadsheet's export).
            return with_written_numbers(frame, decimal_comma=sep == ";")
        return pd.read_parquet(path)
    except Exception as err:  # any parser failure means the same thing to the user
        if FORMATS[suffix] == "Parquet":
            # Arrow refuses repeated names with "Multiple matches for FieldRef"; say which.
            import pyarrow.parquet as pq

            try:
                repeated = repeated_names(pq.read_schema(path).names)
            except Exception:
                repeated = None
            if repeated is not None:
                raise ValueError(repeated) from None
        raise ValueError(f"could not be read as {FORMATS.get(path.suffix.lower(), 'a table')}: {err}") from None


# What separates a CSV file's columns when its header line holds no comma: a European spreadsheet's ';', a tab, a '|'.
SEPARATORS = (";", "\t", "|")


def separator_of(path: Path) -> str:
    """',' unless the header line holds none and one of ``SEPARATORS``: then the one it holds most of.

    A file separated by ';' or tabs read as one column, and was rejected for missing the label.
    """
    with open(path, "rb") as file:
        line = file.readline(1 << 16).decode("utf-8", errors="replace")
    if "," in line:
        return ","
    counts = {sep: line.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def with_written_numbers(frame: pd.DataFrame, *, decimal_comma: bool = False) -> pd.DataFrame:
    """``frame`` with each text column of numbers as spreadsheets write them read as numbers (``written_numbers``): with
    thousands separators ("8,855"), a decimal comma where ';' separates ("3,25"), a currency or percent sign ("$1,200",
    "12%"), digits grouped by spaces ("1 200"). A first file read such a column as an identifier, left out of the model;
    a later one was rejected as a column that now holds text. The columns read so, with an example of each, are kept in
    ``frame.attrs`` under ``grouped``, ``decimal_commas`` or ``written`` for validation to report."""
    for column in frame.columns:
        found = written_numbers(frame[column], decimal_comma=decimal_comma)
        if found is not None:
            frame[column], example, how = found
            frame.attrs.setdefault(how, {})[str(column)] = example
    return frame


def _record(ws: Workspace, landing: Landing, state: Verdict, file: Path, reasons: list[str]) -> None:
    """Put the increment in the manifest once, replacing an earlier record of it with its attempts kept.

    A retried increment moves to the end: it arrives, as far as training is concerned, now.
    """
    manifest = ws.read_manifest()
    earlier = manifest.find(landing.id)
    relative = str(file.relative_to(ws.root))
    attempt = Attempt(verdict=state, reasons=reasons)
    if earlier is None:
        record = IncrementRecord(id=landing.id, file=relative, source=landing.source, state=state, reasons=reasons, attempts=[attempt])
    else:
        record = earlier.attempted(attempt, relative)
    manifest.increments = [r for r in manifest.increments if r.id != landing.id]
    manifest.increments.append(record)
    ws.write_manifest(manifest)


@task(name="quarantine", cache_policy=NO_CACHE)
def quarantine(landing: Landing, ws: Workspace, reasons: list[str]) -> Path:
    """Move a rejected increment to ``data/quarantine/`` (kept and versioned, never deleted)."""
    target = ws.quarantine / landing.path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with ws.lock("data"):
        if landing.path.exists():
            os.replace(landing.path, target)  # same filesystem: a rename, whole or not at all
        # The reasons travel with the file, for whoever looks in the quarantine.
        ws.write_atomically(
            target.with_name(target.name + ".reasons.json"),
            json.dumps({"id": landing.id, "source": landing.source, "reasons": reasons}, indent=2) + "\n",
        )
        _record(ws, landing, "rejected", target, reasons)
    return target


@task(name="release", cache_policy=NO_CACHE)
def release(landing: Landing, ws: Workspace) -> Landing:
    """Move a quarantined increment that now passes back to ``data/increments/``; the manifest follows it."""
    target = ws.increments / landing.path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    with ws.lock("data"):
        if landing.path.exists():
            os.replace(landing.path, target)
        landing.path.with_name(landing.path.name + ".reasons.json").unlink(missing_ok=True)
        # Still rejected until accept files it; a crash before then retries it from here.
        manifest = ws.read_manifest()
        for record in manifest.increments:
            if record.id == landing.id and record.state == "rejected":
                record.file = str(target.relative_to(ws.root))
        ws.write_manifest(manifest)
    return Landing(landing.id, target, landing.source, landing.duplicate_of)


@task(name="accept", cache_policy=NO_CACHE)
def accept(landing: Landing, ws: Workspace, frame: pd.DataFrame, config: DataConfig) -> DataSchema:
    """File an increment as accepted and widen the workspace schema to cover it."""
    # Read, widen and write under the lock: two runs accepting at once must not lose each other's record.
    with ws.lock("data"):
        state = ws.read_schema()
        schema = kinds_for(frame, None, config) if state is None else DataSchema.from_dict(state).widened(frame)
        ws.write_schema(schema.to_dict())
        _record(ws, landing, "accepted", landing.path, [])
    return schema


def quarantined(ws: Workspace, increment_id: str) -> Path:
    """The quarantined copy of a rejected increment, to run again; IncrementError says why there is none."""
    record = ws.read_manifest().find(increment_id)
    if record is None:
        raise IncrementError(f"no increment {increment_id} in {ws.root} (`lepton status` lists them)")
    if record.state != "rejected":
        raise IncrementError(f"increment {increment_id} was {record.state}, not rejected: nothing to retry")
    path = ws.root / record.file
    if not path.is_file():
        raise IncrementError(f"the quarantined copy of increment {increment_id} ({record.file}) is gone: run the original file again with `lepton run`")
    if content_id(path) != increment_id:
        raise IncrementError(f"{record.file} was changed since it was quarantined: run it as a new increment with `lepton run`")
    return path


def record_same_rows(ws: Workspace, landing: Landing, same: str) -> IncrementRecord:
    """File a landing that holds the rows of accepted increment ``same`` as a duplicate of it (its copy stays in
    ``data/``, nothing is deleted); returns the accepted increment's record."""
    with ws.lock("data"):
        manifest = ws.read_manifest()
        known = manifest.find(same)
        relative = str(landing.path.relative_to(ws.root))
        record = IncrementRecord(id=landing.id, file=relative, source=landing.source, state="duplicate", duplicate_of=same)
        manifest.increments = [*(r for r in manifest.increments if not (r.id == landing.id and r.state == "duplicate")), record]
        ws.write_manifest(manifest)
    assert known is not None, same
    return known


def record_duplicate(ws: Workspace, landing: Landing) -> None:
    """Note a repeated landing in the (unversioned) ledger; the data itself is untouched."""
    ws.note_duplicate(landing.id, landing.source)
