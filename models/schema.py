"""The dataset schema: inferred from the first accepted increment, then enforced and widened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pandas.api import types


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


@dataclass
class DataSchema:
    """Columns, the range of every feature and the label values accepted so far."""

    label: str
    features: list[str]
    label_kind: str  # "int" or "str"
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    classes: list[Any] = field(default_factory=list)

    @classmethod
    def infer(cls, frame: pd.DataFrame, label: str) -> DataSchema:
        """The schema an increment implies: every column but the label is a feature."""
        features = [c for c in frame.columns if c != label]
        empty = cls(label, features, label_kind_of(frame[label]))
        return empty.widened(frame)

    def widened(self, frame: pd.DataFrame) -> DataSchema:
        """This schema stretched to cover an accepted increment."""
        ranges = dict(self.ranges)
        for column in self.features:
            lo, hi = float(frame[column].min()), float(frame[column].max())
            if column in ranges:
                lo, hi = min(lo, ranges[column][0]), max(hi, ranges[column][1])
            ranges[column] = (lo, hi)
        new = [_native(c) for c in sorted(pd.unique(frame[self.label])) if _native(c) not in self.classes]
        return DataSchema(self.label, list(self.features), self.label_kind, ranges, list(self.classes) + new)

    def bounds(self, column: str, tolerance: float) -> tuple[float, float]:
        """Accepted range of a feature: the range seen so far, widened by ``tolerance`` times its width."""
        lo, hi = self.ranges[column]
        # A column seen constant still gets some room: its own magnitude, or 1.
        width = (hi - lo) or max(abs(lo), abs(hi), 1.0)
        return lo - tolerance * width, hi + tolerance * width

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "features": self.features,
            "label_kind": self.label_kind,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DataSchema:
        return cls(
            label=state["label"],
            features=list(state["features"]),
            label_kind=state["label_kind"],
            ranges={k: (float(v[0]), float(v[1])) for k, v in state["ranges"].items()},
            classes=list(state["classes"]),
        )


def label_kind_of(series: pd.Series) -> str:
    return "int" if types.is_integer_dtype(series) or types.is_bool_dtype(series) else "str"
