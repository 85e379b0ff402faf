"""Reading accepted increments back and splitting them into training data and holdouts."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig
from lepton.models.splits import split, usable
from lepton.tasks.ingest import read_increment
from lepton.workspace import Workspace


@task(name="read-increment", cache_policy=NO_CACHE)
def read(landing_path) -> tuple[pd.DataFrame | None, str | None]:
    """The increment as a frame, or the reason it cannot be read."""
    try:
        return read_increment(landing_path), None
    except ValueError as err:
        return None, str(err)


@dataclass(frozen=True)
class History:
    """Every accepted increment's rows as stored, in arrival order: read once per run, passed to the steps that need them."""

    frames: dict[str, pd.DataFrame]

    def before(self, increment_id: str | None = None) -> list[pd.DataFrame]:
        """The increments other than ``increment_id``, in arrival order."""
        return [frame for key, frame in self.frames.items() if key != increment_id]


@task(name="read-history", cache_policy=NO_CACHE)
def read_history(ws: Workspace) -> History:
    """Every accepted increment, each file read once."""
    return History({r.id: read_increment(ws.root / r.file) for r in ws.read_manifest().accepted()})


def with_accepted(history: History, increment_id: str, frame: pd.DataFrame) -> History:
    """The history once ``increment_id`` is accepted too, last; ``frame`` is its rows as read from its stored file."""
    return History({**{k: f for k, f in history.frames.items() if k != increment_id}, increment_id: frame})


@task(name="split", cache_policy=NO_CACHE)
def split_increments(history: History, new_id: str, data: DataConfig, *, everything: bool = False) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The new increment's training part, and the holdout of every accepted increment (arrival order, new one last).

    Rows without a label, and repeated rows when ``data.duplicates=drop``, take part in neither.
    ``everything``: the training parts of every accepted increment, the new one last (a first
    network while no model has passed the gate yet learns all the data that got in, not the last file).
    """
    drop = data.duplicates == "drop"
    parts = {key: split(usable(frame, data.label, drop_duplicates=drop), data.holdout_fraction) for key, frame in history.frames.items()}
    if new_id not in parts:
        raise RuntimeError(f"increment {new_id} is not among the accepted increments")
    train, new_holdout = parts.pop(new_id)
    if everything and parts:
        train = pd.concat([*(t for t, _ in parts.values()), train], ignore_index=True)
    holdouts = {k: holdout for k, (_, holdout) in parts.items()}
    holdouts[new_id] = new_holdout
    return train, holdouts
