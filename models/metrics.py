"""Continual-learning metrics from the accuracy matrix R[i][j]: the model after increment i on the holdout of increment j."""

from __future__ import annotations

import warnings

import numpy as np


def average_accuracy(r: np.ndarray, step: int | None = None) -> float:
    """Mean accuracy over the holdouts seen so far, after increment ``step`` (default: the last)."""
    i = r.shape[0] - 1 if step is None else step
    return float(np.mean(r[i, : i + 1]))


def forgetting(r: np.ndarray) -> float:
    """Mean over earlier increments of (best accuracy ever reached on it) - (final accuracy on it)."""
    last = r.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([r[:last, j].max() - r[last, j] for j in range(last)]))


def backward_transfer(r: np.ndarray) -> float:
    """Mean change on earlier increments between just after learning them and the end (negative = forgetting)."""
    last = r.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([r[last, j] - r[j, j] for j in range(last)]))


def forward_transfer(r: np.ndarray, baseline: np.ndarray) -> float:
    """Mean accuracy on each increment before training on it, above an untrained model's (``baseline[j]``)."""
    if r.shape[0] < 2:
        return 0.0
    return float(np.mean([r[j - 1, j] - baseline[j] for j in range(1, r.shape[0])]))


def summary(r: np.ndarray, baseline: np.ndarray | None = None) -> dict[str, float]:
    out = {
        "average_accuracy": average_accuracy(r),
        "forgetting": forgetting(r),
        "bwt": backward_transfer(r),
    }
    if baseline is not None:
        out["fwt"] = forward_transfer(r, baseline)
    return out


def grow(history: dict | None, columns: list[str], champion_row: list[float] | None, candidate_row: list[float], trained_on: str) -> dict:
    """The champion lineage's accuracy matrix with the candidate's row added.

    ``history`` is what the champion carries ({"columns", "rows", "trained"}; None for the
    first model); ``columns`` are the holdouts of this evaluation in arrival order;
    ``trained_on`` is the increment the candidate learned. The champion's row is
    completed with its scores on holdouts it had not seen yet (prequential entries).
    """
    old_columns = list(history["columns"]) if history else []
    index = {c: k for k, c in enumerate(columns)}
    rows = []
    for row in history["rows"] if history else []:
        aligned = [float("nan")] * len(columns)
        for c, value in zip(old_columns, row, strict=False):
            if c in index and value is not None:
                aligned[index[c]] = float(value)
        rows.append(aligned)
    if rows and champion_row is not None:
        rows[-1] = [v if not np.isnan(v) else float(s) for v, s in zip(rows[-1], champion_row, strict=True)]
    rows.append([float(v) for v in candidate_row])
    trained = [*(history["trained"] if history else []), trained_on]
    return {"columns": list(columns), "rows": rows, "trained": trained}


def lineage_summary(matrix: dict) -> dict[str, float]:
    """Average accuracy, forgetting and BWT of the newest model of a lineage matrix.

    Only holdouts of increments the lineage trained on count, each from the row that
    learned it: a kept-out increment's holdout measures, it was never learned.
    """
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix["rows"]], dtype=float)
    last, columns = r[-1], matrix["columns"]
    learned = {columns.index(inc): i for i, inc in enumerate(matrix["trained"]) if inc in columns}
    drops, transfer = [], []
    with warnings.catch_warnings():
        # A holdout too small for an R² is NaN in every row: its slice is all NaN, and NaN is the answer, not news.
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, i in learned.items():
            if i == len(r) - 1:
                continue
            drops.append(np.nanmax(r[i:-1, j]) - last[j])
            transfer.append(last[j] - r[i, j])
        average = float(np.nanmean(last))
    return {
        "average_accuracy": average,
        "forgetting": float(np.mean(drops)) if drops else 0.0,
        "bwt": float(np.mean(transfer)) if transfer else 0.0,
    }
