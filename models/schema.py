"""The dataset schema: inferred from the first accepted increment, then enforced and widened."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types

from lepton.models import columns as kinds_of
from lepton.models.columns import native as _native
from lepton.models.columns import task_of

# Category values remembered per column for reporting new ones (the model's vocabulary is separate).
SEEN_VALUES = 500


@dataclass
class DataSchema:
    """Columns and their kinds, the range of every numeric feature, missing shares and the label values accepted so far."""

    label: str
    features: list[str]
    label_kind: str  # "int", "str" or "float"
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    classes: list[Any] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # empty in schemas from before column kinds: every feature numeric
    why: dict[str, str] = field(default_factory=dict)  # how each kind was decided
    task: str = "classification"
    rows: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # missing values seen per feature
    values: dict[str, list[str]] = field(default_factory=dict)  # category values seen (up to SEEN_VALUES)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # image column -> (height, width, channels), from the first increment
    # numeric column (and a numeric label) -> the lowest and highest typical magnitude of an accepted increment (see typical_magnitude)
    magnitudes: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def infer(
        cls,
        frame: pd.DataFrame,
        label: str,
        *,
        declared: dict[str, str] | None = None,
        task: str = "auto",
        max_categories: int = 32,
        text: str = "hash",
    ) -> DataSchema:
        """The schema an increment implies: every column but the label is a feature, its kind inferred unless ``declared``."""
        declared = declared or {}
        features = [c for c in frame.columns if c != label]
        kinds, why = {}, {}
        for column in features:
            if column in declared:
                kinds[column], why[column] = declared[column], "declared in data.columns"
                continue
            kind, reason = kinds_of.infer_kind(frame[column], max_categories=max_categories - 1)
            if kind == "text" and text == "ignore":
                kind, reason = "ignore", reason + "; free text ignored (data.text=ignore)"
            kinds[column], why[column] = kind, reason
        chosen = task_of(frame[label]) if task == "auto" else task
        shapes = {c: kinds_of.image_shape(frame[c]) for c, k in kinds.items() if k == "image"}
        for column, shape in shapes.items():
            if shape is None:  # declared an image column, but nothing in it decodes: it cannot feed a network
                kinds[column], why[column] = "ignore", why[column] + "; no value decodes as an image"
        shapes = {c: v for c, v in shapes.items() if v is not None}
        empty = cls(label, features, label_kind_of(frame[label], chosen), kinds=kinds, why=why, task=chosen, shapes=shapes)
        return empty.widened(frame)

    def kind(self, column: str) -> str:
        return self.kinds.get(column, "numeric")

    def of_kind(self, *kinds: str) -> list[str]:
        return [c for c in self.features if self.kind(c) in kinds]

    def widened(self, frame: pd.DataFrame) -> DataSchema:
        """This schema stretched to cover an accepted increment."""
        ranges = dict(self.ranges)
        for column in self.of_kind("numeric", "boolean"):
            values = kinds_of.as_numbers(frame[column], boolean=self.kind(column) == "boolean")
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            lo, hi = float(values.min()), float(values.max())
            if column in ranges:
                lo, hi = min(lo, ranges[column][0]), max(hi, ranges[column][1])
            ranges[column] = (lo, hi)
        missing = {c: self.missing.get(c, 0) + int(frame[c].isna().sum()) for c in self.features if c in frame.columns}
        magnitudes = dict(self.magnitudes)
        for column in self.magnitude_columns():
            typical = typical_magnitude(frame[column]) if column in frame.columns else None
            if typical is not None:
                lo, hi = magnitudes.get(column, (typical, typical))
                magnitudes[column] = (min(lo, typical), max(hi, typical))
        values = {c: list(v) for c, v in self.values.items()}
        for column in self.of_kind("categorical"):
            known = values.setdefault(column, [])
            seen = set(known)
            for v in kinds_of.as_strings(frame[column]).dropna().unique():
                if len(known) >= SEEN_VALUES:
                    break
                if str(v) not in seen:
                    known.append(str(v))
                    seen.add(str(v))
        classes = list(self.classes)
        if self.task != "regression":
            classes += [_native(c) for c in sorted(pd.unique(frame[self.label].dropna())) if _native(c) not in self.classes]
        return DataSchema(
            self.label, list(self.features), self.label_kind, ranges, classes, dict(self.kinds), dict(self.why), self.task,
            self.rows + len(frame), missing, values, {c: list(v) for c, v in self.shapes.items()}, magnitudes,
        )

    def rebuilt(self, frames: list[pd.DataFrame]) -> DataSchema:
        """The same columns, kinds and task, with the ranges, counts, magnitudes, values and classes of ``frames`` alone:
        the schema once an accepted increment is taken out of what the model learns from."""
        schema = DataSchema(
            self.label, list(self.features), self.label_kind, kinds=dict(self.kinds), why=dict(self.why), task=self.task,
            shapes={c: list(v) for c, v in self.shapes.items()},
        )
        for frame in frames:
            schema = schema.widened(frame)
        return schema

    def redeclared(self, frames: list[pd.DataFrame], columns: dict[str, str], task: str) -> DataSchema:
        """This schema with the kinds and task lepton.yaml now declares, read again from ``frames`` (the accepted increments)."""
        chosen = self.task if task == "auto" else task
        kinds, why = dict(self.kinds), dict(self.why)
        for column, kind in columns.items():
            if column in self.features and self.kind(column) != kind:
                kinds[column], why[column] = kind, "declared in data.columns"
        shapes = {c: list(v) for c, v in self.shapes.items() if kinds.get(c) == "image"}
        for column in [c for c, k in kinds.items() if k == "image" and c not in shapes]:
            shape = kinds_of.image_shape(frames[0][column])
            if shape is None:  # nothing in it decodes as an image, as DataSchema.infer decides
                kinds[column], why[column] = "ignore", why[column] + "; no value decodes as an image"
            else:
                shapes[column] = list(shape)
        label_kind = label_kind_of(frames[0][self.label], chosen) if chosen != self.task else self.label_kind
        schema = DataSchema(self.label, list(self.features), label_kind, kinds=kinds, why=why, task=chosen, shapes=shapes)
        for frame in frames:
            schema = schema.widened(frame)
        return schema

    def respelled(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
        """``frame`` with label and category values that differ from exactly one known value only in case or spacing
        ('latino' beside 'Latino', 'MALE' beside 'male') read as that value, and what was read so. A dirty export's
        spelling taught the model a class of its own, which consumers were then given, and sent categories to the
        unknown slot."""
        columns = {c: list(self.values.get(c, [])) for c in self.of_kind("categorical")}
        if self.task != "regression":
            columns[self.label] = list(self.classes)
        said = []
        for column in self.of_kind("boolean"):
            if column in frame.columns and (truths := kinds_of.as_truths(frame[column])) is not None:
                # yes/no for true/false: the same rows as true/false (to the duplicate check, and to the split's hashes).
                frame = frame.copy(deep=False)
                frame[column] = truths
        for column, known in columns.items():
            spelt = {k for k in known if isinstance(k, str)}
            if column not in frame.columns or not spelt:
                continue
            mapping = kinds_of.known_spellings(frame[column], spelt)
            if not mapping:
                continue
            rows = int(frame[column].isin(list(mapping)).sum())
            frame = frame.copy(deep=False)
            frame[column] = frame[column].replace(mapping)
            what = "label" if column == self.label else "column"
            shown = ", ".join(f"{v!r} as {k!r}" for v, k in list(mapping.items())[:3]) + (", ..." if len(mapping) > 3 else "")
            said.append(f"{what} {column!r}: {rows} value(s) that differ from a known one only in case or spacing, read as it ({shown})")
        return frame, said

    def magnitude_columns(self) -> list[str]:
        """The columns whose typical magnitude is kept: numeric features, and the label of a regression."""
        return self.of_kind("numeric") + ([self.label] if self.task == "regression" else [])

    def missing_share(self, column: str) -> float:
        return self.missing.get(column, 0) / self.rows if self.rows else 0.0

    def scale(self, column: str) -> float:
        """A column's scale for judging how far a value lies beyond its range: the range's width or its magnitude, or 1."""
        lo, hi = self.ranges[column]
        return max(hi - lo, abs(lo), abs(hi)) or 1.0

    def bounds(self, column: str, tolerance: float) -> tuple[float, float]:
        """The range seen so far, widened by ``tolerance`` times its width (a constant column: its own magnitude, or 1)."""
        lo, hi = self.ranges[column]
        width = (hi - lo) or max(abs(lo), abs(hi), 1.0)
        return lo - tolerance * width, hi + tolerance * width

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "features": self.features,
            "label_kind": self.label_kind,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "classes": self.classes,
            "kinds": self.kinds,
            "why": self.why,
            "task": self.task,
            "rows": self.rows,
            "missing": self.missing,
            "values": self.values,
            "shapes": self.shapes,
            "magnitudes": {k: list(v) for k, v in self.magnitudes.items()},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DataSchema:
        return cls(
            label=state["label"],
            features=list(state["features"]),
            label_kind=state["label_kind"],
            ranges={k: (float(v[0]), float(v[1])) for k, v in state["ranges"].items()},
            classes=list(state["classes"]),
            kinds=dict(state.get("kinds", {})),
            why=dict(state.get("why", {})),
            task=state.get("task", "classification"),
            rows=int(state.get("rows", 0)),
            missing={k: int(v) for k, v in state.get("missing", {}).items()},
            values={k: list(v) for k, v in state.get("values", {}).items()},
            shapes={k: [int(n) for n in v] for k, v in state.get("shapes", {}).items()},
            magnitudes={k: (float(v[0]), float(v[1])) for k, v in state.get("magnitudes", {}).items()},
        )


# Fewest nonzero values whose median magnitude says what a column's unit is: fewer, and one odd value moves it.
MAGNITUDE_ROWS = 20
# Values a typical magnitude is read from, at most (a million-row increment: 0.45 s a run on 20 columns, all read).
MAGNITUDE_SAMPLE = 50_000


def typical_magnitude(series: pd.Series) -> float | None:
    """The median magnitude of a column's nonzero finite values: what its unit makes of a typical value (None: too few
    to say). Zeros are left out, so a count or a flag that is mostly zero in one increment says nothing of its unit."""
    if len(series) > MAGNITUDE_SAMPLE:  # every k-th value: the median moves by far less than the factor judged on
        series = series.iloc[:: len(series) // MAGNITUDE_SAMPLE]
    values = np.abs(kinds_of.as_numbers(series))
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) < MAGNITUDE_ROWS:
        return None
    return float(np.median(values))


def label_kind_of(series: pd.Series, task: str = "classification") -> str:
    if task == "regression":
        return "float"
    values = series.dropna()
    if types.is_bool_dtype(values) or types.is_integer_dtype(values):
        return "int"
    # Integer labels with gaps arrive as floats (NaN has no integer): whole numbers are still integers.
    if types.is_float_dtype(values) and len(values) and bool(np.all(np.mod(values.to_numpy(dtype=np.float64), 1.0) == 0)):
        return "int"
    return "str"

