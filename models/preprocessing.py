"""Raw columns to network inputs, and labels to targets, kept with the network so a model predicts on raw columns."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

# Relative imports: this module travels with every model version as part of its runtime (lepton/runtime.py).
from . import columns as kinds_of
from .columns import native as _native

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Encoding:
    """How raw columns become inputs: each feature's kind and the sizes of the categorical and text blocks."""

    label: str
    kinds: dict[str, str]  # feature -> kind, in column order (identifier/ignore included: they take no inputs)
    task: Task = "classification"
    capacity: int = 32  # one-hot slots per categorical column, the shared slot included
    buckets: int = 16  # hashed word slots per text column
    min_category_rows: int = 2  # rows a value needs in an increment to get its own slot
    shapes: dict[str, list[int]] = field(default_factory=dict)  # image column -> (height, width, channels)

    @classmethod
    def infer(cls, frame: pd.DataFrame, label: str, **sizes: Any) -> Encoding:
        """Every column but the label, kinds and task inferred from ``frame`` (for callers without a workspace schema)."""
        capacity = sizes.get("capacity", cls.capacity)
        found = {c: kinds_of.infer_kind(frame[c], max_categories=capacity - 1)[0] for c in frame.columns if c != label}
        shapes = {c: kinds_of.image_shape(frame[c]) for c, k in found.items() if k == "image"}
        return cls(label=label, kinds=found, **{"task": kinds_of.task_of(frame[label]), "shapes": {c: v for c, v in shapes.items() if v}, **sizes})


def _nan_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: count of observed values, their mean and sum of squared deviations (NaN ignored)."""
    observed = ~np.isnan(x)
    n = observed.sum(axis=0).astype(np.float64)
    filled = np.where(observed, x, 0.0)
    mean = filled.sum(axis=0) / np.maximum(n, 1)
    m2 = (np.where(observed, x - mean, 0.0) ** 2).sum(axis=0)
    return n, mean, m2


def _merge(n_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray):
    """Chan et al.'s parallel merge of running (count, mean, M2), column by column."""
    total = n_a + n_b
    safe = np.maximum(total, 1)
    delta = mean_b - mean_a
    mean = np.where(total > 0, mean_a + delta * n_b / safe, 0.0)
    m2 = m2_a + m2_b + delta**2 * n_a * n_b / safe
    return total, mean, m2


# A never-negative column this skewed, whose positive values span more than an order of magnitude (a rainfall: many
# zeros, many drizzles, a few storms), reads on a log scale. Standardised as it is, most of its values sit within a
# fraction of a standard deviation of each other, where the network barely tells them apart. Bounded counts (digits'
# pixels, 0 to 16) span too little for it: on a log scale they lost a point on class-incremental digits.
LOG_SKEW = 2.0
LOG_SPAN = 20.0  # the 90th percentile of the positive values over their 10th, at least
LOG_ROWS = 20


def log_scaled(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """The numeric columns of ``frame`` to read on a log scale, each with its unit: the 10th percentile of its positive values."""
    chosen = {}
    for c in columns:
        if c not in frame.columns:
            continue
        v = kinds_of.as_numbers(frame[c])
        v = v[np.isfinite(v)]
        if len(v) < LOG_ROWS or v.min() < 0 or (v > 0).sum() < LOG_ROWS:
            continue
        centred = v - v.mean()
        spread = np.sqrt(np.mean(centred**2))
        unit, high = np.percentile(v[v > 0], [10, 90])
        if spread > 0 and np.mean(centred**3) / spread**3 > LOG_SKEW and high >= LOG_SPAN * unit:
            chosen[c] = float(unit)
    return chosen


def signed_log(values: np.ndarray, unit: float) -> np.ndarray:
    """``log(1 + x / unit)``, mirrored for a negative value (none was seen when the scale was chosen, but one may come)."""
    return np.sign(values) * np.log1p(np.abs(values) / unit)


@dataclass
class Preprocessor:
    """Column encoding with running standardisation of the inputs, the label vocabulary (or target scale).

    Statistics are merged across increments (Chan et al.'s parallel variance) over the
    values present, so every model version scales with everything it has seen and a
    missing value is imputed with the running mean (0 once standardised) while its
    indicator input says it was missing. Classes and category values only ever get
    appended, so an id keeps its meaning from one version to the next.
    """

    features: list[str]
    classes: list[Any] = field(default_factory=list)
    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kinds: dict[str, str] = field(default_factory=dict)  # empty: every feature a plain number (models from before column kinds)
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    task: Task = "classification"
    capacity: int = 32
    buckets: int = 16
    min_category_rows: int = 2
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0))  # values seen per input column
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)  # regression: count, mean and M2 of the label
    # Regression: the lowest label seen (None: none seen, or a model from before it). A label never below zero (a count,
    # an amount) is never predicted below zero: an outlying row's prediction went to -30 on a target seen from 0.9 up.
    target_low: float | None = None
    # Per input column, the latest value seen of a datetime's year (NaN: no limit; models from before it have none).
    latest: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shapes: dict[str, list[int]] = field(default_factory=dict)  # image column -> (height, width, channels)
    # Numeric columns read on a log scale, with the scale's unit (see ``log_scaled``); decided on the first increment.
    logged: dict[str, float] = field(default_factory=dict)
    # Regression: the unit of the log scale the target is learnt on (``log_scaled``'s rule, on the first increment), or None.
    # A never-negative target this skewed (medical costs: a quarter zeros, a tail forty times the typical value) pulled a
    # network trained on squared errors towards its tail: its MAE was 30% above that of the same network on the log scale.
    target_log: float | None = None
    # Datetime columns whose numeric dates read day first, from the first increment one of whose dates can only be read so
    # (``date_order``), and those settled month first by one that can only be read so; a settled order never changes.
    # Every batch is read by it (a consumer's batch that contradicts it is refused: ``lepton.serving.input_problems``).
    dayfirst: list[str] = field(default_factory=list)
    monthfirst: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mean.size == 0:
            self.mean = np.zeros(self.width)
            self.m2 = np.zeros(self.width)
        if self.observed.size == 0:
            self.observed = np.full(self.width, float(self.count))
        if self.latest.size == 0:
            self.latest = np.full(self.width, np.nan)

    @classmethod
    def create(cls, encoding: Encoding) -> Preprocessor:
        """An empty preprocessor for a new network."""
        features = [c for c in encoding.kinds if c != encoding.label]
        return cls(
            features, kinds=dict(encoding.kinds), vocabularies={c: [] for c, k in encoding.kinds.items() if k == "categorical"},
            task=encoding.task, capacity=encoding.capacity, buckets=encoding.buckets, min_category_rows=encoding.min_category_rows,
            shapes={c: list(v) for c, v in encoding.shapes.items()},
        )

    def _kind(self, column: str) -> str:
        return self.kinds.get(column, "plain")

    def _width(self, column: str) -> int:
        kind = self._kind(column)
        return 1 if kind == "plain" else kinds_of.width(kind, capacity=self.capacity, buckets=self.buckets, shape=self.shapes.get(column))

    @property
    def width(self) -> int:
        """Network inputs."""
        return sum(self._width(c) for c in self.features)

    @property
    def n_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.classes)

    def _per_input(self, of_kind: Any, plain: bool) -> np.ndarray:
        """A flag per network input: ``of_kind(kind)`` for each column's block, ``plain`` for a plain number's one input."""
        out: list[bool] = []
        for c in self.features:
            kind = self._kind(c)
            out += [plain] if kind == "plain" else of_kind(kind, capacity=self.capacity, buckets=self.buckets, shape=self.shapes.get(c))
        return np.asarray(out, dtype=bool)

    @property
    def scaled(self) -> np.ndarray:
        """Which inputs are standardised; the others (indicators, one-hots, word shares) pass as they are."""
        return self._per_input(kinds_of.scaled, plain=True)

    @property
    def held(self) -> np.ndarray:
        """Which inputs read as the latest value seen when beyond it (see ``columns.held_at_latest``)."""
        return self._per_input(kinds_of.held_at_latest, plain=False)

    @property
    def used(self) -> list[str]:
        """The features the network reads (identifiers and ignored columns take no inputs)."""
        return [c for c in self.features if self._width(c) > 0]

    def updated(self, frame: pd.DataFrame, labels: pd.Series) -> Preprocessor:
        """A new preprocessor that has also seen ``frame`` and ``labels``: grown vocabularies, merged statistics."""
        vocabularies = {
            c: kinds_of.grown_vocabulary(frame[c], v, self.capacity, self.min_category_rows) if c in frame.columns else list(v)
            for c, v in self.vocabularies.items()
        }
        logged = self.logged if self.count else log_scaled(frame, [c for c in self.used if self._kind(c) == "numeric"])
        dayfirst, monthfirst = list(self.dayfirst), list(self.monthfirst)
        for c in [c for c in self.used if self._kind(c) == "datetime" and c in frame.columns and c not in dayfirst + monthfirst]:
            day, month = kinds_of.date_order(frame[c])
            if (day is None) != (month is None):
                (dayfirst if day is not None else monthfirst).append(c)
        values = pd.to_numeric(labels, errors="coerce").dropna().to_numpy(dtype=np.float64) if self.task == "regression" else None
        target_log = self.target_log
        if values is not None and not self.target[0]:  # the first labels (a model transferred from another table brings none of its own)
            target_log = log_scaled(pd.DataFrame({"target": values}), ["target"]).get("target")
        grown = self._replace(vocabularies=vocabularies, logged=logged, dayfirst=dayfirst, monthfirst=monthfirst, target_log=target_log)
        x = grown.raw_matrix(frame)
        n, mean, m2 = _nan_stats(x)
        observed, mean, m2 = _merge(self.observed, self.mean, self.m2, n, mean, m2)
        latest = self.latest.copy()
        held = self.held
        if held.any() and len(x):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a column with no value in this increment
                seen = np.nanmax(x[:, held], axis=0)
            latest[held] = np.fmax(latest[held], seen)
        classes = list(self.classes)
        target, target_low = self.target, self.target_low
        if values is not None:
            learnt = grown.learnt(values)
            count, mu, sq = _merge(np.array([self.target[0]]), np.array([self.target[1]]), np.array([self.target[2]]), *map(np.atleast_1d, _nan_stats(learnt[:, None])))
            target = (float(count[0]), float(mu[0]), float(sq[0]))
            if len(values):
                target_low = float(values.min()) if self.target_low is None else min(self.target_low, float(values.min()))
        else:
            classes += [_native(c) for c in sorted(pd.unique(labels.dropna())) if _native(c) not in self.classes]
        return grown._replace(classes=classes, count=self.count + len(frame), mean=mean, m2=m2, observed=observed, target=target, target_low=target_low, latest=latest)

    def _replace(self, **changes: Any) -> Preprocessor:
        state = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return Preprocessor(**(state | changes))

    @property
    def scale(self) -> np.ndarray:
        std = np.sqrt(self.m2 / np.maximum(self.observed, 1))
        # A constant column carries no information; dividing by ~0 would blow it up
        # the day it stops being constant.
        return np.where(self.scaled & (std >= 1e-6), std, 1.0)

    @property
    def offset(self) -> np.ndarray:
        return np.where(self.scaled, self.mean, 0.0)

    def raw_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The features as input columns in training order, float64, unscaled; NaN where a value is missing."""
        missing = [c for c in self.features if c not in frame.columns and self._width(c) > 0]
        if missing:
            raise KeyError(f"missing feature columns: {', '.join(missing)}")
        if not self.kinds:
            return frame[self.features].to_numpy(dtype=np.float64)
        # Numeric columns that arrive as numbers convert in one step, not a pandas Series each: a
        # consumer's one-row call on 64 columns spent most of its time there.
        dtypes = frame.dtypes
        direct = [c for c in self.used if self._kind(c) in ("numeric", "boolean") and kinds_of.is_number_dtype(dtypes[c])]
        values = dict(zip(direct, frame[direct].to_numpy(dtype=np.float64, na_value=np.nan).T, strict=True)) if direct else {}
        for c in self.logged:
            if c in values:
                values[c] = signed_log(values[c], self.logged[c])
        blocks = [
            kinds_of.number_block(values[c]) if c in values
            else self._logged_block(c, kinds_of.encode_column(
                frame[c], self._kind(c), vocabulary=self.vocabularies.get(c, []), capacity=self.capacity, buckets=self.buckets, shape=self.shapes.get(c),
                dayfirst=c in self.dayfirst,
            ))
            for c in self.used
        ]
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))

    def _logged_block(self, column: str, block: np.ndarray) -> np.ndarray:
        """A numeric column that arrived as text, on its log scale when it has one."""
        if column in self.logged:
            block[:, 0] = signed_log(block[:, 0], self.logged[column])
        return block

    def transform(self, x_raw: np.ndarray) -> np.ndarray:
        """Standardised float32 inputs for the network; a missing value becomes the running mean (0); a date beyond the latest seen, the latest."""
        limited = np.flatnonzero(~np.isnan(self.latest))  # datetime years with a latest value seen; empty for most tables
        if limited.size:
            values, limit = x_raw[:, limited], self.latest[limited]
            later = values > limit  # False for a missing value: it stays missing
            if later.any():
                x_raw = x_raw.copy()
                x_raw[:, limited] = np.where(later, limit, values)
        z = (x_raw - self.offset) / self.scale
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def encode(self, labels: pd.Series | np.ndarray) -> np.ndarray:
        """Class ids (int64), or for regression the standardised target (float32)."""
        if self.task == "regression":
            values = self.learnt(pd.to_numeric(pd.Series(np.asarray(labels)), errors="coerce").to_numpy(dtype=np.float64))
            return ((values - self.target_mean) / self.target_scale).astype(np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        try:
            return np.array([index[_native(v)] for v in labels], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"unknown label {err.args[0]!r}") from None

    def learnt(self, values: np.ndarray) -> np.ndarray:
        """A numeric target's values on the scale the network learns them on: their own, or ``target_log``'s log scale."""
        return values if self.target_log is None else signed_log(np.asarray(values, dtype=np.float64), self.target_log)

    @property
    def target_mean(self) -> float:
        return self.target[1]

    @property
    def target_scale(self) -> float:
        std = float(np.sqrt(self.target[2] / max(self.target[0], 1)))
        return std if std >= 1e-12 else 1.0

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Labels in the original values: class ids to classes, or network outputs to the target's units."""
        if self.task == "regression":
            values = np.asarray(ids, dtype=np.float64) * self.target_scale + self.target_mean
            if self.target_log is not None:
                # The inverse of ``signed_log``, held below where it would overflow to infinity (an output hundreds of
                # standard deviations out): a number too large to mean anything, but one the errors and R² can take.
                top = np.log(np.finfo(np.float64).max / max(self.target_log, 1.0)) - 1.0
                values = np.sign(values) * self.target_log * np.expm1(np.minimum(np.abs(values), top))
            return np.maximum(values, 0.0) if self.target_low is not None and self.target_low >= 0 else values
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
            "kinds": self.kinds,
            "vocabularies": self.vocabularies,
            "task": self.task,
            "capacity": self.capacity,
            "buckets": self.buckets,
            "min_category_rows": self.min_category_rows,
            "observed": self.observed.tolist(),
            "target": list(self.target),
            "target_low": self.target_low,
            "target_log": self.target_log,
            "latest": [None if np.isnan(v) else float(v) for v in self.latest],
            "shapes": self.shapes,
            "logged": self.logged,
            "dayfirst": self.dayfirst,
            "monthfirst": self.monthfirst,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        return cls(
            features=list(state["features"]),
            classes=list(state["classes"]),
            count=int(state["count"]),
            mean=np.asarray(state["mean"], dtype=np.float64),
            m2=np.asarray(state["m2"], dtype=np.float64),
            kinds=dict(state.get("kinds", {})),
            vocabularies={k: list(v) for k, v in state.get("vocabularies", {}).items()},
            task=state.get("task", "classification"),
            capacity=int(state.get("capacity", 32)),
            buckets=int(state.get("buckets", 16)),
            min_category_rows=int(state.get("min_category_rows", 2)),
            observed=np.asarray(state.get("observed", []), dtype=np.float64),
            target=tuple(state.get("target", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            target_low=None if state.get("target_low") is None else float(state["target_low"]),
            target_log=None if state.get("target_log") is None else float(state["target_log"]),
            latest=np.asarray([np.nan if v is None else v for v in state.get("latest", [])], dtype=np.float64),
            shapes={k: [int(n) for n in v] for k, v in state.get("shapes", {}).items()},
            logged={k: float(v) for k, v in state.get("logged", {}).items()},
            dayfirst=list(state.get("dayfirst", [])),
            monthfirst=list(state.get("monthfirst", [])),
        )
