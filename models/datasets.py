"""Data that ships offline: scikit-learn's bundled digits, cut into increments."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

LABEL = "digit"
CLASS_ORDER = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


def digits_frame() -> pd.DataFrame:
    """The 1,797 8x8 digits as 64 integer pixel columns (0-16) and a ``digit`` label."""
    data = load_digits()
    frame = pd.DataFrame(data.data.astype(np.int64), columns=[f"pixel_{i}" for i in range(64)])
    frame[LABEL] = data.target.astype(np.int64)
    return frame


def class_incremental(order: tuple[tuple[int, ...], ...] = CLASS_ORDER) -> list[pd.DataFrame]:
    """One increment per group of classes, in the given order: the hard case for forgetting."""
    frame = digits_frame()
    return [frame[frame[LABEL].isin(group)].reset_index(drop=True) for group in order]
