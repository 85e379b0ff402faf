"""Deterministic train/holdout split of an increment."""

from __future__ import annotations

import numpy as np
import pandas as pd

_BUCKETS = 10_000


def holdout_mask(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """True for rows in the holdout.

    Decided by a hash of each row's values (not its position or a RNG), so a re-run,
    a re-ordered file or another machine puts every row on the same side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return (hashes % _BUCKETS) < int(round(fraction * _BUCKETS))


def split(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) frames of an increment."""
    mask = holdout_mask(frame, fraction)
    return frame.loc[~mask].reset_index(drop=True), frame.loc[mask].reset_index(drop=True)


def usable(frame: pd.DataFrame, label: str, *, drop_duplicates: bool = False) -> pd.DataFrame:
    """The rows a model trains and is scored on: those with a label (and each row once, when duplicates are dropped)."""
    kept = frame[frame[label].notna()] if label in frame.columns else frame
    if drop_duplicates:
        kept = kept.drop_duplicates()
    return kept.reset_index(drop=True) if len(kept) != len(frame) else frame
