"""Drift of a new increment against the accepted history, feature by feature and for the label.

What counts as drift, and why:

- **Only classes seen before are compared.** In class-incremental data the label set grows
  by design, and rows of a new class look different from everything before: that is the
  data, not drift. New classes are listed, never flagged (when ``allow_new_classes`` is
  false, validation has already rejected them).
- **Features are compared class by class, in effect.** The history is sampled to the
  increment's class mix before the per-feature tests, so a feature drifts when what a
  known class looks like changed (covariate shift), not because the class mix moved.
- **The label drifts when the mix of known classes changed.** With a fixed label set,
  over every class seen (a class that vanished counts); with a growing one, over the known
  classes the increment holds (classes come and go by design).
- **One decision per increment, at a family-wise level.** 64 features tested at p < 0.01
  each would flag one in two clean increments; Holm's step-down correction over all the
  increment's tests keeps the chance of any false flag at ``p_value``. PSI tests are
  thresholded on the index itself and stand outside that family.
- **Samples are bounded.** The history is sampled (deterministically) to ``reference_cap``
  rows and so is a very large increment: the test stays fast, and with millions of rows a
  difference too small to matter would otherwise be "significant".
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from lepton.models import columns as kinds_of
from lepton.models.settings import DriftConfig

Test = Literal["ks", "chi2", "psi"]
Action = Literal["warn", "block", "replay", "joint", "compete"]

# Categories rarer than this (both sides together) share one bucket: the chi-square
# approximation needs expected counts of about five or more per cell.
_RARE = 5
# PSI's logarithm needs a share in every bin: half a count where there is none.
_SMOOTHING = 0.5


@dataclass(frozen=True)
class FeatureDrift:
    """One test: ``p_value`` is None for PSI, which is judged on the index alone."""

    feature: str
    test: Test
    statistic: float
    p_value: float | None
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftReport:
    """The increment's drift: every test, and the decision."""

    features: list[FeatureDrift]  # the tested features, in column order
    label: FeatureDrift | None  # the mix of known classes, or a numeric target's distribution; None when it could not be tested
    drifted: bool
    action: Action | None  # what the config says to do, when drifted
    reference_rows: int  # history rows compared (after sampling)
    current_rows: int  # increment rows compared: those of known classes, after sampling
    new_classes: list[Any] = field(default_factory=list)
    skipped: str | None = None  # why nothing was tested

    @property
    def steady(self) -> bool:
        """Measured, and nothing drifted: the increment is like what came before."""
        return not self.skipped and not self.drifted

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share(self) -> float:
        """Share of the tested features that drifted."""
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def label_drifted(self) -> bool:
        return self.label is not None and self.label.drifted

    def rows(self) -> list[dict[str, Any]]:
        """Every test as a plain dict (feature, test, statistic, p_value, drifted, label); the label's last, with label true."""
        return [{**f.as_dict(), "label": f is self.label} for f in [*self.features, *([self.label] if self.label else [])]]

    def summary(self) -> str:
        """What drifted, in words (empty when nothing did)."""
        parts = []
        if self.drifted_features:
            parts.append(f"{len(self.drifted_features)} of {len(self.features)} features drifted ({self.share:.0%}): {_names(self.drifted_features)}")
        if self.label_drifted:
            what = "the target" if self.label.test == "ks" else "the mix of known classes in"  # type: ignore[union-attr]
            parts.append(f"{what} {self.label.feature!r} drifted ({self.label.test} {self.label.statistic:.3g})")  # type: ignore[union-attr]
        return "; ".join(parts)

    def message(self) -> str:
        """One line for the run's output."""
        if self.skipped:
            return f"drift not measured: {self.skipped}"
        compared = f"{self.current_rows} rows against {self.reference_rows} of the history"
        if not self.drifted:
            tested = [f for f in [*self.features, *([self.label] if self.label else [])] if f.p_value is not None]
            worst = min(tested, key=lambda f: f.p_value or 1.0, default=None)
            if self.drifted_features:  # flagged, but fewer than the share of features that makes drift
                detail = f"; {len(self.drifted_features)} flagged ({_names(self.drifted_features)}), fewer than drift.min_share of the features"
            elif worst is not None:
                # Holm's correction holds the smallest p-value to drift.p_value / tests: 0.004 over 7 tests at 0.01 is no drift.
                detail = f"; smallest p-value {worst.p_value:.2g} ({worst.feature}), not significant after Holm's correction over {len(tested)} tests"
            else:
                detail = ""
            return f"no drift in {len(self.features)} features or the label ({compared}{detail})"
        return f"drift: {self.summary()} ({compared}); drift.action={self.action}"


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov, column by column: (largest gap between the two CDFs, p-value) per column.

    One vectorised call for all columns: three times faster than a call per feature. A
    column constant at the same value on both sides has no gap (statistic 0, p = 1); on
    discrete values (pixel intensities, counts) the test is conservative, so it errs
    towards silence.
    """
    with warnings.catch_warnings():
        # Where the exact p-value does not converge, SciPy takes the asymptotic one and says so on stderr, in the
        # middle of the run's output; the asymptotic value is the answer either way.
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        result = stats.ks_2samp(reference, current, axis=0)
    return np.atleast_1d(result.statistic).astype(float), np.atleast_1d(result.pvalue).astype(float)


def _counts(reference: pd.Series, current: pd.Series, categories: list[Any] | None = None) -> np.ndarray:
    """A 2 x k table of counts (history, increment) over ``categories`` (default: both sides' values)."""
    if categories is None:
        categories = list(pd.unique(pd.concat([reference, current], ignore_index=True)))
    ref = reference.value_counts().reindex(categories, fill_value=0).to_numpy()
    cur = current.value_counts().reindex(categories, fill_value=0).to_numpy()
    return np.vstack([ref, cur]).astype(np.float64)


def chi2_test(table: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity on a 2 x k table: (statistic, p-value).

    Rare categories share one bucket; a single category left means nothing to compare (p = 1).
    """
    rare = table.sum(axis=0) < _RARE
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def psi(table: np.ndarray) -> float:
    """Population stability index of the increment's shares against the history's, over a 2 x k table."""
    smoothed = table + _SMOOTHING
    expected = smoothed[0] / smoothed[0].sum()
    actual = smoothed[1] / smoothed[1].sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def holm(p_values: list[float], alpha: float) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    rejected = [False] * m
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if n >= len(frame):
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))]


def matched_reference(
    history: pd.DataFrame, current: pd.DataFrame, label: str, cap: int, rng: np.random.Generator, min_rows: int = 0,
) -> pd.DataFrame:
    """Rows of the history in the increment's class proportions, at most ``cap``.

    Every class is sampled at the same rate relative to its count in the increment, the
    largest rate the cap and the scarcest class allow, so the sample's class mix matches.
    Where a class the history holds a few rows of would leave fewer than ``min_rows`` (a
    class that turned up once before, and now five times), the scarcest classes are left
    out of the sample, and the caller compares the increment's other classes only: else
    a single rare class kept every feature untested.
    """
    wanted = current[label].value_counts()
    have = history[label].value_counts().reindex(wanted.index, fill_value=0)
    ratio = (have / wanted).sort_values(kind="stable")
    kept, rate = ratio.index, 0.0
    for skip in range(len(ratio)):
        kept = ratio.index[skip:]
        rate = min(cap / wanted[kept].sum(), float(ratio.iloc[skip]))
        if sum(int(np.floor(rate * wanted[c])) for c in kept) >= min_rows:
            break
    parts = [_sample(history[history[label] == c], int(np.floor(rate * wanted[c])), rng) for c in wanted.index if c in kept]
    return pd.concat(parts) if parts else history.iloc[:0]


def image_statistics(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with each image column replaced by two numbers per row: brightness (mean pixel) and contrast (pixels' spread), in [0, 255]."""
    out = frame.drop(columns=columns)
    for column in columns:
        decoded = [None if kinds_of.is_missing(v) else kinds_of.decode_image(v) for v in frame[column].tolist()]
        out[f"{column} brightness"] = [float(p.mean()) if p is not None else np.nan for p in decoded]
        out[f"{column} contrast"] = [float(p.std()) if p is not None else np.nan for p in decoded]
    return out


def is_categorical(series: pd.Series, name: str, declared: list[str]) -> bool:
    return name in declared or not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def measure(
    history: pd.DataFrame,
    increment: pd.DataFrame,
    *,
    label: str,
    config: DriftConfig,
    fixed_classes: bool = False,
    regression: bool = False,
    seed: int = 0,
) -> DriftReport:
    """Compare ``increment`` with ``history`` (both with the label column).

    ``fixed_classes`` is true when the label set may not grow (``data.allow_new_classes``
    false): then a known class missing from the increment is label drift too.
    ``regression``: the label is a number to predict, not classes: every labelled row is
    compared, the features against a uniform sample of the history, and the target's own
    distribution with a KS test (matching classes of a float would keep a row or two).
    """
    features = [c for c in increment.columns if c != label]
    missing = [c for c in [*features, label] if c not in history.columns]
    if missing:
        raise ValueError(f"the history has no column(s) {', '.join(map(repr, missing))} to compare with")
    rng = np.random.default_rng(seed)
    if regression:
        new_classes = []
        current = increment[pd.to_numeric(increment[label], errors="coerce").notna()]
    else:
        known = set(history[label].dropna().tolist())
        new_classes = sorted(set(increment[label].dropna().tolist()) - known, key=str)
        current = increment[increment[label].isin(known)]
    if len(current) < config.min_rows:
        if len(current) == 0:
            why = f"the increment holds only classes never seen before ({_names([str(c) for c in new_classes])}): nothing to compare"
        else:
            why = f"the increment has {len(current)} {'labelled rows' if regression else 'rows of known classes'}, fewer than drift.min_rows={config.min_rows}"
        return DriftReport([], None, False, None, 0, len(current), new_classes, why)

    if regression:
        reference = _sample(history[pd.to_numeric(history[label], errors="coerce").notna()], config.reference_cap, rng)
        label_test = _target_test(reference[label], current[label], config)
        current = _sample(current, config.reference_cap, rng)
    else:
        label_test = _label_test(history[label], current[label], config, fixed_classes)
        current = _sample(current, config.reference_cap, rng)
        reference = matched_reference(history, current, label, config.reference_cap, rng, config.min_rows)
        current = current[current[label].isin(pd.unique(reference[label]))] if len(reference) else current
    images = [c for c in features if kinds_of.looks_like_images(current[c])]
    if images:  # bytes compare as nothing: each image column is compared by its images' brightness and contrast
        current, reference = image_statistics(current, images), image_statistics(reference, images)
        features = [f for c in features for f in ([f"{c} brightness", f"{c} contrast"] if c in images else [c])]
    by_name: dict[str, tuple[str, Test, float, float | None]] = {}
    if len(reference) >= config.min_rows:
        categorical = [c for c in features if is_categorical(current[c], c, config.categorical)]
        numeric = [c for c in features if c not in categorical]
        for name in categorical:
            ref, cur = reference[name].dropna(), current[name].dropna()
            if min(len(ref), len(cur)) >= config.min_rows:
                by_name[name] = (name, *_categorical(_counts(ref, cur), config))
        complete = [c for c in numeric if not (reference[c].isna().any() or current[c].isna().any())]
        if complete:
            statistic, p = ks_test(reference[complete].to_numpy(np.float64), current[complete].to_numpy(np.float64))
            by_name |= {name: (name, "ks", float(d), float(v)) for name, d, v in zip(complete, statistic, p, strict=True)}
        for name in (c for c in numeric if c not in complete):  # gaps: each column on its own values
            ref, cur = reference[name].dropna(), current[name].dropna()
            if min(len(ref), len(cur)) >= config.min_rows:
                d, v = ks_test(ref.to_numpy(np.float64), cur.to_numpy(np.float64))
                by_name[name] = (name, "ks", float(d[0]), float(v[0]))
    tested = [by_name[c] for c in features if c in by_name]
    if not tested and label_test is None:
        return DriftReport([], None, False, None, len(reference), len(current), new_classes, f"only {len(reference)} history rows match the increment's classes (fewer than drift.min_rows={config.min_rows})")

    # One family: every p-valued test of this increment, the label's included.
    family = [*tested, *([label_test] if label_test else [])]
    valued = [i for i, (*_, p) in enumerate(family) if p is not None]
    rejected = dict(zip(valued, holm([p for *_, p in family if p is not None], config.p_value), strict=True))
    results = [
        FeatureDrift(name, test, stat, p, rejected[i] if p is not None else stat >= config.psi_threshold)
        for i, (name, test, stat, p) in enumerate(family)
    ]
    feature_results = results[: len(tested)]
    label_result = results[-1] if label_test else None
    flagged = sum(f.drifted for f in feature_results)
    drifted = (flagged >= 1 and flagged >= config.min_share * len(feature_results)) or (label_result is not None and label_result.drifted)
    return DriftReport(
        feature_results, label_result, drifted, config.action if drifted else None,
        len(reference), len(current), new_classes,
    )


def _categorical(table: np.ndarray, config: DriftConfig) -> tuple[Test, float, float | None]:
    if config.categorical_test == "psi":
        return "psi", psi(table), None
    return "chi2", *chi2_test(table)


def _target_test(reference: pd.Series, current: pd.Series, config: DriftConfig) -> tuple[str, Test, float, float | None] | None:
    """A numeric target's distribution: KS between the history's values (the features' reference sample) and the increment's."""
    if min(len(reference), len(current)) < config.min_rows:
        return None
    d, p = ks_test(pd.to_numeric(reference).to_numpy(np.float64)[:, None], pd.to_numeric(current).to_numpy(np.float64)[:, None])
    return (str(reference.name), "ks", float(d[0]), float(p[0]))


def _label_test(history: pd.Series, current: pd.Series, config: DriftConfig, fixed_classes: bool) -> tuple[str, Test, float, float | None] | None:
    """The mix of known classes: all of them with a fixed label set, else those the increment holds."""
    classes = list(pd.unique(history.dropna())) if fixed_classes else list(pd.unique(current))
    if len(classes) < 2:
        return None  # one class: no mix to compare
    # The history's counts are capped like its rows: the test's power should come from
    # the increment, not from an ever-growing history.
    table = _counts(history[history.isin(classes)], current, classes)
    if table[0].sum() > config.reference_cap:
        table[0] = np.round(table[0] * config.reference_cap / table[0].sum())
    return (str(history.name), *_categorical(table, config))


@dataclass
class TrainingPlan:
    """What the candidate trains on after drift: the increment as usual, with more replay, or everything."""

    frame: pd.DataFrame  # the rows the candidate learns (and remembers)
    rehearse: pd.DataFrame | None = None  # earlier rows trained on as well, but not remembered again
    warm_start: bool = True  # False: a new network, trained on everything accepted
    note: str | None = None  # the change, for the log and the tracking run
    rival: pd.DataFrame | None = None  # compete or the gate's fallback: the rows a new network learns, to compete with the fine-tuned candidate


def with_rival(plan: TrainingPlan, earlier: pd.DataFrame | None, *, retrain_rows: int | None, why: str, rows: str = "accepted training rows") -> TrainingPlan:
    """``plan`` with a rival: a new network to train on ``earlier`` and then the plan's rows (the last
    ``retrain_rows`` of them: the plan's and the latest earlier ones), which competes with the fine-tuned candidate.
    ``rows``: what the note calls them."""
    everything = plan.frame if earlier is None else pd.concat([earlier, plan.frame], ignore_index=True)
    rival = everything
    if retrain_rows is not None and len(everything) > retrain_rows:
        rival = everything.tail(retrain_rows).reset_index(drop=True)
        note = (f"{why}: a new network trained on the {len(rival)} most recent of {len(everything)} {rows} "
                f"(train.retrain_rows={retrain_rows}) competes with the fine-tuned candidate")
    else:
        note = f"{why}: a new network trained on all {len(everything)} {rows} competes with the fine-tuned candidate"
    return replace(plan, rival=rival, note=note if plan.note is None else f"{plan.note}; {note}")


def respond(
    action: Action | None, new: pd.DataFrame, earlier: pd.DataFrame | None, *, replay_share: float, seed: int = 0, retrain_rows: int | None = None,
    rows: str = "accepted training rows",
) -> TrainingPlan:
    """The training plan for a drifted increment (``earlier``: the training rows of the accepted increments before it).

    - replay: a uniform, seeded sample of ``replay_share`` earlier rows per new row is trained
      on with the increment, so the shifted data cannot pull the model away from the rest;
    - joint: the model is retrained from scratch on every accepted training row;
    - compete: the increment is learnt as usual, and a new network trained on every accepted
      training row (the most recent ``retrain_rows`` of them) is its ``rival``: whichever does
      better on the holdouts goes to the gate.
    Anything else (no drift, warn, block) keeps the plan as it is. ``rows``: what a rival's note calls its rows.
    """
    if action not in ("replay", "joint", "compete") or earlier is None or earlier.empty:
        return TrainingPlan(new)
    if action == "compete":
        return with_rival(TrainingPlan(new), earlier, retrain_rows=retrain_rows, why="drift.action=compete", rows=rows)
    if action == "joint":
        everything = pd.concat([earlier, new], ignore_index=True)
        return TrainingPlan(everything, warm_start=False, note=f"drift.action=joint: retraining from scratch on all {len(everything)} accepted training rows ({len(new)} new)")
    n = min(len(earlier), int(round(replay_share * len(new))))
    rehearse = _sample(earlier, n, np.random.default_rng(seed)).reset_index(drop=True)
    return TrainingPlan(new, rehearse=rehearse, note=f"drift.action=replay: {n} earlier training rows rehearsed with the {len(new)} new ones (drift.replay_share={replay_share:g})")
