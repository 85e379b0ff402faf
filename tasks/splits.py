"""Reading accepted increments back and splitting them into training data and holdouts."""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig
from lepton.models.schema import DataSchema
from lepton.models.splits import holdout_split, row_hashes
from lepton.tasks.ingest import read_increment
from lepton.workspace import Workspace

if TYPE_CHECKING:
    from lepton.models.bundle import Bundle


@task(name="read-increment", cache_policy=NO_CACHE)
def read(landing_path) -> tuple[pd.DataFrame | None, str | None]:
    """The increment as a frame, or the reason it cannot be read."""
    try:
        return read_increment(landing_path), None
    except ValueError as err:
        return None, str(err)


@dataclass(frozen=True)
class History:
    """Every accepted increment's rows as stored, in arrival order: read once per run, passed to the steps that need them;
    ``hashes``: their row hashes, for those the rows cache kept them for (the split's hashing cost every run, per increment)."""

    frames: dict[str, pd.DataFrame]
    hashes: dict[str, np.ndarray] = field(default_factory=dict)

    def before(self, increment_id: str | None = None) -> list[pd.DataFrame]:
        """The increments other than ``increment_id``, in arrival order."""
        return [frame for key, frame in self.frames.items() if key != increment_id]


def same_rows(history: History, frame: pd.DataFrame, increment_id: str) -> str | None:
    """The accepted increment that holds exactly the rows of ``frame`` (whatever their order, the order of the columns or the
    file's format), if one does. An export sent again as Parquet, or with CRLF line ends, was learnt again, and its
    holdout counted twice. ``increment_id``: this increment's own, which another run of the same file may have accepted
    meanwhile: that is no other file."""
    columns = sorted(map(str, frame.columns))
    content, sums = None, None
    for key, earlier in history.frames.items():
        if key == increment_id or len(earlier) != len(frame) or sorted(map(str, earlier.columns)) != columns:
            continue
        # Column sums first: equal rows sum alike in any order, and they cost a pass over numbers, not text per cell.
        sums = _sums(frame, columns) if sums is None else sums
        if not np.allclose(sums, _sums(earlier, columns), rtol=1e-9, atol=0.0, equal_nan=True):
            continue
        content = _content(frame, columns) if content is None else content
        if np.array_equal(content, _content(earlier, columns)):
            return key
    return None


# Earlier increments whose rows ``repeated_rows`` looks for: a cumulative export repeats the latest ones' rows too, and
# the cost stays that of a few increments however long the history (0.07 s for five and the new one, each of 20,000 rows
# and 20 columns, here).
RECENT = 5


def repeated_rows(history: History, frame: pd.DataFrame, increment_id: str) -> tuple[int, dict[str, int]]:
    """Of ``frame``'s rows, how many equal a row of one of the latest accepted increments, and how many each of those
    holds, over the columns both have (the label among them): a cumulative export repeats every row sent before, and
    they were learnt again without a word."""
    out: dict[str, int] = {}
    mine: dict[tuple[str, ...], np.ndarray] = {}
    seen = np.zeros(len(frame), dtype=bool)
    for key in [k for k in history.frames if k != increment_id][-RECENT:]:
        earlier = history.frames[key]
        common = tuple(sorted(set(map(str, frame.columns)) & set(map(str, earlier.columns))))
        if not common or not len(frame) or not len(earlier):
            continue
        try:
            if common not in mine:
                mine[common] = _content(frame, list(common), ordered=False)
            found = np.isin(mine[common], _content(earlier, list(common), ordered=False))
        except (TypeError, ValueError):  # a column of numbers in one and of text in the other: no row can be equal
            continue
        if found.any():
            out[key] = int(found.sum())
            seen |= found
    return int(seen.sum()), out


def said_repeated(repeated: int, counts: dict[str, int], rows: int) -> str:
    """A run's warning of ``repeated_rows``: ``repeated`` of ``rows`` rows, ``counts`` of them by increment."""
    which = ", ".join(f"{key}: {n}" for key, n in list(counts.items())[:5]) + (", ..." if len(counts) > 5 else "")
    return (f"{repeated} of {rows} row(s) equal rows of recent increments ({which}): kept and learnt again (an export "
            "that repeats the rows sent before, a cumulative one, counts them twice; a table of codes or counts repeats rows by nature)")


def _sums(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Each numeric column's sum and count of gaps, in ``columns`` order (NaN for a column of another kind)."""
    named = frame.set_axis(list(map(str, frame.columns)), axis=1)
    out = []
    for c in columns:
        values = named[c]
        out += [float(values.sum()) if _is_number(values) else np.nan, float(values.isna().sum())]
    return np.asarray(out, dtype=np.float64)


def _is_number(values: pd.Series) -> bool:
    """Numbers, compared as float64 (not true/false, which sum and hash as themselves)."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _content(frame: pd.DataFrame, columns: list[str], *, ordered: bool = True) -> np.ndarray:
    """The rows' hashes, sorted (``ordered``) or in row order, over the values in ``columns`` order, numbers as float64
    and anything else as text: the same whatever the file's format (an integer column of a CSV file is a nullable one in
    Parquet)."""
    named = frame.set_axis(list(map(str, frame.columns)), axis=1)[columns]
    kinds = {c: "float64" if _is_number(named[c]) else "string" for c in columns}
    canonical = named.astype(kinds) if any(v == "string" for v in kinds.values()) else named.astype("float64")
    hashes = pd.util.hash_pandas_object(canonical, index=False).to_numpy()
    return np.sort(hashes) if ordered else hashes


def _stored_schema(ws: Workspace) -> DataSchema | None:
    """The workspace schema a stored increment is read by (its spellings), None before the first increment."""
    state = ws.read_schema()
    return DataSchema.from_dict(state) if state is not None else None


@task(name="read-history", cache_policy=NO_CACHE)
def read_history(ws: Workspace) -> History:
    """Every accepted increment, each file parsed at most once in the workspace's life (see ``stored_rows``)."""
    schema = _stored_schema(ws)
    entries = {r.id: stored_rows(ws, r.id, ws.root / r.file, schema) for r in ws.read_manifest().accepted()}
    return History({k: frame for k, (frame, _) in entries.items()}, {k: hashes for k, (_, hashes) in entries.items() if hashes is not None})


# Increments up to this many cells (rows x columns) are cached: a run of a 1,000,000-row increment spends
# far longer training than parsing it, and its cache entry would be about its size in memory again.
CACHED_CELLS = 5_000_000
_ROWS_FORMAT = 5  # bumped when what a cache entry holds, or how read_increment reads, changes


def _rows_path(ws: Workspace, increment_id: str) -> Path:
    return ws.state / "cache" / "rows" / f"{increment_id}.pickle"


def file_key(file: Path) -> tuple[Any, ...]:
    """What a cache entry must match to stand for ``file`` as read now: its size and mtime, and the reader's versions."""
    import pyarrow

    stat = file.stat()
    return _ROWS_FORMAT, pd.__version__, pyarrow.__version__, stat.st_size, stat.st_mtime_ns


def stored_rows(ws: Workspace, increment_id: str, file: Path, schema: DataSchema | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """An accepted increment's rows as ``read_increment`` reads its stored file, from the workspace's cache, and
    their row hashes (None for an increment too large to cache).

    Every run needs every accepted increment (holdouts, replay, drift's reference), and parsing
    them again cost each run a few ms per Parquet file and tens of ms per CSV, growing with the
    history. An entry holds the frame beside its file's size and mtime and the reader's versions
    (Lepton's format, pandas, pyarrow); anything that differs (a file ``lepton data checkout``
    restored, an upgrade) is read again and kept again. Entries are pickles the workspace wrote,
    trusted as its own files are (``lepton.yaml`` names code to import); deleting
    ``.lepton/cache/rows/`` is always safe.
    """
    key = file_key(file)  # before the read: a file changed meanwhile is not kept under its new key
    with contextlib.suppress(Exception):  # absent, from another version, or damaged: the file is the truth
        with _rows_path(ws, increment_id).open("rb") as handle:
            kept_key, frame, hashes = pickle.load(handle)
        if tuple(kept_key) == key and isinstance(frame, pd.DataFrame) and isinstance(hashes, np.ndarray) and len(hashes) == len(frame):
            return frame, hashes
    frame = read_increment(file)
    if schema is not None:  # spelt as the run that accepted it read it, before the hashes its split is decided by
        frame = schema.respelled(frame)[0]
    return frame, keep_rows(ws, increment_id, key, frame)


def keep_rows(ws: Workspace, increment_id: str, key: tuple[Any, ...], frame: pd.DataFrame) -> np.ndarray | None:
    """Cache ``frame`` as that increment's rows, with their hashes, read from a file whose ``file_key`` was ``key``
    before the read; returns the hashes (None when it is too large to cache).

    Best effort: a workspace that cannot be written, or a frame that does not pickle, loses only the speed.
    """
    if frame.size > CACHED_CELLS:
        return None
    hashes = row_hashes(frame)
    path = _rows_path(ws, increment_id)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as handle:
            pickle.dump((key, frame, hashes), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, path)  # whole or not at all: a concurrent run reads the old entry or the new one
    except Exception:  # noqa: BLE001, S110 - the cache is an optimisation; the file stays the truth
        pass
    finally:
        partial.unlink(missing_ok=True)  # gone already once replaced; an interrupted write leaves nothing
    return hashes


def with_accepted(history: History, increment_id: str, frame: pd.DataFrame, hashes: np.ndarray | None = None) -> History:
    """The history once ``increment_id`` is accepted too, last; ``frame`` is its rows as read from its stored file
    (``hashes``: their row hashes, when known)."""
    others = {k: f for k, f in history.frames.items() if k != increment_id}
    kept = {k: h for k, h in history.hashes.items() if k in others}
    return History({**others, increment_id: frame}, kept | ({increment_id: hashes} if hashes is not None else {}))


def narrow_schema(ws: Workspace, history: History, left_out: list[str] | tuple[str, ...]) -> None:
    """The workspace schema read again from every accepted increment but ``left_out``.

    An increment let in (with a check turned off) and then left out, its labels in another unit say,
    had widened the ranges and typical magnitudes validation judges by: without this, a second file
    like it would pass validation and only the gate would stop it. Under the data lock, from the
    manifest as it is now: an increment another run accepted meanwhile keeps its place.
    """
    with ws.lock("data"):
        state = ws.read_schema()
        if state is None:
            return
        frames = _accepted_frames(ws, history, skip=left_out)
        if frames:
            ws.write_schema(DataSchema.from_dict(state).rebuilt(frames).to_dict())


def _accepted_frames(ws: Workspace, history: History | None = None, skip: list[str] | tuple[str, ...] = ()) -> list[pd.DataFrame]:
    """Every accepted increment but ``skip``, in arrival order, from the manifest as it is now: ``history``'s frames where
    it holds them, else their stored rows."""
    known = history.frames if history is not None else {}
    schema = _stored_schema(ws)
    return [known[r.id] if r.id in known else stored_rows(ws, r.id, ws.root / r.file, schema)[0] for r in ws.read_manifest().accepted() if r.id not in skip]


def redeclare(ws: Workspace, data: DataConfig) -> list[str]:
    """The workspace schema with the column kinds and task lepton.yaml declares now, when they differ from what the
    first increment decided: read again from every accepted increment. Returns the changes, said (none: nothing done).

    A declaration added after the first increment (a count that is an amount, an id read as a number) would otherwise
    be ignored for good. The networks trained from here read the new schema; the champion, encoded the old way, is
    not fine-tuned but replaced by a new network on everything (see ``encoding_changed``).
    """
    if not ws.declared_otherwise(data.columns, data.task):  # every run asks; only a change takes the lock
        return []
    with ws.lock("data"):
        changes = ws.declared_otherwise(data.columns, data.task)  # another run may have read it again meanwhile
        frames = _accepted_frames(ws) if changes else []
        if frames:
            ws.write_schema(DataSchema.from_dict(ws.read_schema()).redeclared(frames, data.columns, data.task).to_dict())  # type: ignore[arg-type]
        return changes


def encoding_changed(champion: Bundle, schema_state: dict[str, Any]) -> str | None:
    """How the workspace schema now reads the data otherwise than ``champion`` was trained to (``redeclare``), or None.

    Such a champion cannot be fine-tuned (its inputs or outputs mean something else); where the task changed, its
    predictions do not even compare with a candidate's.
    """
    schema = DataSchema.from_dict(schema_state)
    old = champion.preprocessor
    if old.task != schema.task:
        return f"data.task: {schema.task}, where the champion predicts {'a number' if old.task == 'regression' else 'classes'}"
    # A model from before column kinds read every column as a number; one whose encoding came from a source model
    # (train.transfer_from) knows nothing of this table's unread columns.
    before = {c: old.kinds.get(c) if old.kinds else "numeric" for c in schema.features}
    kinds = [f"{c!r} {schema.kind(c)} (was {before[c] or 'not read'})" for c in schema.features if _read_as(before[c]) != _read_as(schema.kind(c))]
    return f"data.columns: {', '.join(kinds)}" if kinds else None


def _read_as(kind: str | None) -> str | None:
    """What a column of ``kind`` gives the network: identifiers, ignored columns and unknown ones alike nothing."""
    return None if kind in (None, "identifier", "ignore") else kind


def not_learnt(history: History, new_id: str, learnt_from: str | None) -> list[str]:
    """The accepted increments before ``new_id`` that the champion has not trained on, in arrival order.

    ``learnt_from``: the increment the champion was trained on (None: no champion, so every one). A version
    trains on its increment and every one its parent had not learnt, so those after it are the ones the gate
    kept out since: none when it is the last, and none when it is not among them (a model from elsewhere).
    """
    earlier = [key for key in history.frames if key != new_id]
    if learnt_from is None:
        return earlier
    return earlier[earlier.index(learnt_from) + 1:] if learnt_from in earlier else []


def promoted_on(history: History, new_id: str, learnt_from: str | None) -> list[str]:
    """The accepted increments before ``new_id`` up to the champion's own (``learnt_from``), in arrival order: those
    whose holdouts it was judged on when the gate promoted it. Empty when it is not among them (a model from elsewhere)."""
    earlier = [key for key in history.frames if key != new_id]
    return earlier[:earlier.index(learnt_from) + 1] if learnt_from in earlier else []


@task(name="split", cache_policy=NO_CACHE)
def split_increments(history: History, new_id: str, data: DataConfig, *, also: list[str] | tuple[str, ...] = ()) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The new increment's training part, and the holdout of every accepted increment (arrival order, new one last).

    Rows without a label, and repeated rows when ``data.duplicates=drop``, take part in neither.
    ``also``: earlier increments whose training parts are learnt too, before the new one's (what the champion
    has not learnt: every accepted increment while no model has passed the gate, those the gate kept out since).
    """
    drop = data.duplicates == "drop"
    parts = {
        key: holdout_split(frame, data.label, data.holdout_fraction, drop_duplicates=drop, hashes=history.hashes.get(key))
        for key, frame in history.frames.items()
    }
    if new_id not in parts:
        raise RuntimeError(f"increment {new_id} is not among the accepted increments")
    train, new_holdout = parts.pop(new_id)
    if also:
        train = pd.concat([*(parts[k][0] for k in also), train], ignore_index=True)
    holdouts = {k: holdout for k, (_, holdout) in parts.items()}
    holdouts[new_id] = new_holdout
    return train, holdouts
