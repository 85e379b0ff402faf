"""Benchmark scenarios built from scikit-learn's bundled digits (no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LABEL = "digit"
COLUMNS = [f"pixel_{i}" for i in range(64)]


@dataclass
class Scenario:
    """Training increments and, per increment, the test set it is measured on."""

    name: str
    increments: list[pd.DataFrame]
    tests: list[pd.DataFrame]


def _frame(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(x, columns=COLUMNS)
    frame[LABEL] = y.astype(np.int64)
    return frame


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The peer's protocol: X/16, 25% stratified test split with random_state=0."""
    data = load_digits()
    return train_test_split(data.data / 16.0, data.target, test_size=0.25, random_state=0, stratify=data.target)


def class_incremental(order=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))) -> Scenario:
    """Two new classes per increment; each increment is tested on its own classes' test samples."""
    x_train, x_test, y_train, y_test = _split()
    increments = [_frame(x_train[np.isin(y_train, g)], y_train[np.isin(y_train, g)]) for g in order]
    tests = [_frame(x_test[np.isin(y_test, g)], y_test[np.isin(y_test, g)]) for g in order]
    return Scenario("class_incremental", increments, tests)


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    if degrees == 0:
        return x.copy()
    images = x.reshape(-1, 8, 8)
    turned = ndimage.rotate(images, degrees, axes=(1, 2), reshape=False, order=1, mode="constant")
    return np.clip(turned, 0.0, 1.0).reshape(-1, 64)


def domain_incremental(angles=(0, 20, 40, 60, 80)) -> Scenario:
    """All ten classes in every increment, each increment a disjoint fifth of the data seen at its own rotation."""
    x_train, x_test, y_train, y_test = _split()
    parts = np.array_split(np.random.default_rng(0).permutation(len(y_train)), len(angles))
    increments = [_frame(_rotate(x_train[p], a), y_train[p]) for p, a in zip(parts, angles, strict=True)]
    tests = [_frame(_rotate(x_test, a), y_test) for a in angles]
    return Scenario("domain_incremental", increments, tests)


def stream(n: int = 20, max_noise: float = 0.3, max_dimming: float = 0.3) -> Scenario:
    """A long time-ordered stream: each increment a disjoint slice, with noise and dimming growing over time."""
    x_train, x_test, y_train, y_test = _split()
    parts = np.array_split(np.random.default_rng(1).permutation(len(y_train)), n)

    def drift(x: np.ndarray, k: int, seed: int) -> np.ndarray:
        t = k / (n - 1)
        noise = np.random.default_rng(seed).normal(0.0, max_noise * t, size=x.shape)
        return np.clip(x * (1.0 - max_dimming * t) + noise, 0.0, 1.0)

    increments = [_frame(drift(x_train[p], k, 100 + k), y_train[p]) for k, p in enumerate(parts)]
    tests = [_frame(drift(x_test, k, 200 + k), y_test) for k in range(n)]
    return Scenario("stream", increments, tests)
