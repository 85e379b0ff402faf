"""Feature scaling and label encoding, kept with the network so a model predicts on raw columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


def _native(value: Any) -> Any:
    """A JSON-friendly Python scalar for a NumPy/pandas label value."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Preprocessor:
    """Running standardisation of the features plus the label vocabulary.

    Statistics are merged across increments (Chan et al.'s parallel variance), so
    every model version scales with everything it has seen; classes only ever get
    appended, so a class id keeps its meaning from one version to the next.
    """

    features: list[str]
    classes: list[Any] = field(default_factory=list)
    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if self.mean.size == 0:
            self.mean = np.zeros(len(self.features))
            self.m2 = np.zeros(len(self.features))

    def updated(self, frame: pd.DataFrame, labels: pd.Series) -> Preprocessor:
        """A new preprocessor that has also seen ``frame`` and ``labels``."""
        x = self.raw_matrix(frame)
        n = len(x)
        new_classes = [_native(c) for c in sorted(pd.unique(labels)) if _native(c) not in self.classes]
        if n == 0:
            return Preprocessor(self.features, self.classes + new_classes, self.count, self.mean, self.m2)
        batch_mean = x.mean(axis=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.m2 + batch_m2 + delta**2 * self.count * n / total
        return Preprocessor(self.features, self.classes + new_classes, total, mean, m2)

    @property
    def scale(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.count, 1))
        # A constant column carries no information; dividing by ~0 would blow it up
        # the day it stops being constant.
        return np.where(std < 1e-6, 1.0, std)

    def raw_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The feature columns, in training order, as float64."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise KeyError(f"missing feature columns: {', '.join(missing)}")
        return frame[self.features].to_numpy(dtype=np.float64)

    def transform(self, x_raw: np.ndarray) -> np.ndarray:
        """Standardised float32 features for the network."""
        return ((x_raw - self.mean) / self.scale).astype(np.float32)

    def encode(self, labels: pd.Series | np.ndarray) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.array([index[_native(v)] for v in labels], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"unknown label {err.args[0]!r}") from None

    def decode(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object if self._string_labels else None)[ids]

    @property
    def _string_labels(self) -> bool:
        return any(isinstance(c, str) for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "classes": self.classes,
            "count": self.count,
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        return cls(
            features=list(state["features"]),
            classes=list(state["classes"]),
            count=int(state["count"]),
            mean=np.asarray(state["mean"], dtype=np.float64),
            m2=np.asarray(state["m2"], dtype=np.float64),
        )
