"""The promotion gate: a pure function from paired scores to a decision with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from lepton.models.settings import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]
    # Each reason: passed (True), failed (False), or None for a note that checks nothing (a holdout too small for the
    # bootstrap, no champion to compare with), shown apart from the checks.
    checks: dict[str, bool | None] = field(default_factory=dict)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r, ok in self.checks.items() if ok is False)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(r for r, ok in self.checks.items() if ok is None)


# Rows beyond which a bootstrap of a mean is replaced by the normal approximation it converges to:
# resampling 200,000 holdout rows 1,000 times took 7 s and a 1.6 GB index matrix per bound.
BOOTSTRAP_ROWS = 10_000


def _normal_bounds(mean: float, standard_error: float, confidence: float) -> tuple[float, float]:
    z = NormalDist().inv_cdf(confidence)
    return mean - z * standard_error, mean + z * standard_error


def paired_bootstrap_bounds(candidate: np.ndarray, champion: np.ndarray, *, confidence: float, samples: int, seed: int = 0) -> tuple[float, float]:
    """Lower and upper one-sided confidence bounds of mean(candidate - champion), from one set of resamples of the same rows
    (past ``BOOTSTRAP_ROWS`` rows, from the normal approximation of the mean)."""
    diff = candidate.astype(np.float64) - champion.astype(np.float64)
    if len(diff) == 0:
        return float("nan"), float("nan")
    if len(diff) > BOOTSTRAP_ROWS:
        lower, upper = _normal_bounds(float(diff.mean()), float(diff.std(ddof=1)) / np.sqrt(len(diff)), confidence)
        return float(lower), float(upper)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    lower, upper = np.quantile(diff[idx].mean(axis=1), [1.0 - confidence, confidence])
    return float(lower), float(upper)


def paired_bootstrap_lower(candidate: np.ndarray, champion: np.ndarray, *, confidence: float, samples: int, seed: int = 0) -> float:
    """Lower confidence bound of mean(candidate - champion) over resamples of the same rows."""
    return paired_bootstrap_bounds(candidate, champion, confidence=confidence, samples=samples, seed=seed)[0]


def _no_worse(value: float, champion: float | None) -> bool:
    """The candidate scores at least what the champion does on the same rows (higher is better)."""
    return champion is not None and bool(np.isfinite(champion)) and value >= champion


def _floor(metric: str, where: str, value: float, floor: float, champion: float | None) -> str:
    """A floor's reason; under the floor, what the champion scores there, and whether that lets the candidate on."""
    if value >= floor:
        return f"{metric} on {where} {_versus(value, True, floor, '.3f', ('>= floor', '< floor'))}"
    if _no_worse(value, champion):
        return (f"{metric} on {where} {_versus(value, False, floor, '.3f', ('>= floor', '< floor'))}, as the champion's {champion:.3f} there: a floor the champion "
                f"misses on the same rows does not hold back a candidate no worse than it")
    return f"{metric} on {where} {_versus(value, False, floor, '.3f', ('>= floor', '< floor'))}" + (f" (the champion's {champion:.3f})" if champion is not None and np.isfinite(champion) else "")


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def decide(
    *,
    new_candidate: np.ndarray,
    new_champion: np.ndarray | None,
    old_candidate: np.ndarray,
    old_champion: np.ndarray | None,
    config: GateConfig,
    regression: bool = False,
    r2: tuple[float | None, float | None] = (None, None),
    old_label: str = "earlier holdouts",
    champion_r2: tuple[float | None, float | None] = (None, None),
    alone: str = "no champion yet",
    compared: tuple[np.ndarray, np.ndarray, str] | None = None,
    r2_name: str = "R²",
) -> GateDecision:
    """Pass when the candidate clears the floors and, against a champion, is not worse on new data than the
    margin allows (``superior``: gains, at the bootstrap's confidence), without forgetting more than allowed.

    Arrays are per-row values on the same holdout rows, candidate and champion paired:
    correctness for classes, absolute errors for a numeric target (``regression``, where
    ``r2`` gives the candidate's R² on the new holdout and on all holdouts for the floor,
    the margin and forgetting are relative to the champion's MAE). ``old_label`` names
    the earlier holdouts forgetting is judged on. ``champion_r2``: the champion's R² on the same holdouts.
    ``alone``: why there is no champion to compare with, when there is none.
    ``compared``: the earlier holdouts' rows the non-inferiority comparison pools with the new holdout's
    (candidate, champion, and how to name them); None: the ones forgetting is judged on.
    ``r2_name``: what the floor's R² is (the caller's: on a log scale, where the target is learnt on one).

    A floor guards against a broken candidate, not against a hard holdout: where the champion scores
    no better on the same rows, a candidate under the floor but not under the champion is judged by
    the comparisons that follow (a water-flow increment whose target hardly varied put R² at -5 for a
    candidate with a sixth of the champion's errors, and kept every later candidate out).
    """
    checks: dict[str, bool | None] = {}
    if regression:
        floor = config.min_r2
        for where, value, theirs in zip(("the new holdout", "all holdouts"), r2, champion_r2, strict=True):
            if value is not None and np.isfinite(value):
                checks[_floor(r2_name, where, value, floor, theirs)] = value >= floor or _no_worse(value, theirs)
        if not checks:
            checks["R² not measurable on this holdout (too few rows or a constant target): no floor"] = None
    else:
        floor = config.min_accuracy
        paired = new_champion is not None and old_champion is not None and len(old_champion) == len(old_candidate)
        new_acc = _mean(new_candidate)
        theirs = _mean(new_champion) if new_champion is not None and len(new_champion) else None
        checks[_floor("accuracy", "the new holdout", new_acc, floor, theirs)] = new_acc >= floor or _no_worse(new_acc, theirs)
        if len(old_candidate):
            all_acc = _mean(np.concatenate([new_candidate, old_candidate]))
            theirs = _mean(np.concatenate([new_champion, old_champion])) if paired else None  # type: ignore[list-item]
            checks[_floor("accuracy", "all holdouts", all_acc, floor, theirs)] = all_acc >= floor or _no_worse(all_acc, theirs)

    if new_champion is None:
        few = len(new_candidate) < config.min_holdout_rows
        # On a few rows a floor says little (2 rows: 50% or 100%): said, so that a first model is not taken as judged.
        checks[f"{alone}: the floors decide" + (
            f", on a new holdout of {len(new_candidate)} rows (fewer than gate.min_holdout_rows={config.min_holdout_rows}: a rough judge)" if few else ""
        )] = None
        return _decision(checks)

    if config.policy == "superior":
        _superior(checks, new_candidate, new_champion, config, regression)
    else:
        pooled = compared if compared is not None else (old_candidate, old_champion, old_label)
        _non_inferior(checks, new_candidate, new_champion, *pooled, config, regression)

    if old_champion is not None and len(old_champion):
        # Forgetting beyond the allowance must be more than the earlier holdouts' noise: the bound of the
        # paired loss, not its point estimate, is held to it (a dozen rows would otherwise block a good model).
        if regression:
            base = _mean(old_champion) or 1.0
            loss = (old_candidate.astype(np.float64) - old_champion.astype(np.float64)) / base
            unit = "of the champion MAE"
        else:
            loss = old_champion.astype(np.float64) - old_candidate.astype(np.float64)
            unit = "accuracy"
        drop = _mean(loss)
        lower = paired_bootstrap_lower(loss, np.zeros_like(loss), confidence=config.confidence, samples=config.bootstrap_samples)
        ok = bool(lower <= config.max_forgetting)
        checks[
            f"forgetting on {old_label}: lower {config.confidence:.0%} bound {_versus(lower, ok, config.max_forgetting, '+.3f', ('<=', '>'), bar_fmt='.3f')} "
            f"(gate.max_forgetting; point estimate {drop:+.3f} {unit}{': below zero, it does better there' if drop < 0 else ''})"
        ] = ok
    return _decision(checks)


def _versus(value: float, ok: bool, bar: float, fmt: str, signs: tuple[str, str] = (">=", "<"), of: str = "", bar_fmt: str | None = None) -> str:
    """``value{of} >= bar`` (or what ``signs`` say for a pass and a fail), each side with digits enough that they do
    not print equal when they are not: "-0.020 < -0.020" said nothing of why a candidate failed."""
    bar_fmt = bar_fmt or fmt
    if abs(float(f"{value:{fmt}}") - float(f"{bar:{bar_fmt}}")) == 0 and value != bar:
        fmt, bar_fmt = (f.replace(".3f", ".5f").replace(".4g", ".7g") for f in (fmt, bar_fmt))
    return f"{value:{fmt}}{of} {signs[0] if ok else signs[1]} {bar:{bar_fmt}}"


def _gains(candidate: np.ndarray, champion: np.ndarray, regression: bool) -> np.ndarray:
    """Per-row gains, higher is better: correctness as it is, errors with their sign turned."""
    diff = candidate.astype(np.float64) - champion.astype(np.float64)
    return -diff if regression else diff


def _superior(checks: dict[str, bool | None], candidate: np.ndarray, champion: np.ndarray, config: GateConfig, regression: bool) -> None:
    """policy=superior: the gain on the new holdout, at the bootstrap's lower bound, must exceed min_improvement."""
    gains = _gains(candidate, champion, regression)
    bar = config.min_improvement * (_mean(champion) if regression else 1.0)
    what, fmt = ("MAE gain", ".4g") if regression else ("gain", "+.3f")
    if len(gains) < config.min_holdout_rows:
        ok = _mean(gains) > bar
        checks[f"{what} on the new holdout {_mean(gains):{fmt}} {'>' if ok else '<='} {bar:{fmt}}"] = ok
        checks[_too_few(len(gains), config)] = None
        return
    lower = paired_bootstrap_lower(gains, np.zeros_like(gains), confidence=config.confidence, samples=config.bootstrap_samples)
    ok = bool(lower > bar)
    checks[f"{what} on the new holdout: lower {config.confidence:.0%} bound {lower:{fmt}} {'>' if ok else '<='} {bar:{fmt}} (point estimate {_mean(gains):{fmt}})"] = ok


def _too_few(rows: int, config: GateConfig) -> str:
    return (f"the holdouts compared hold {rows} rows, too few for the bootstrap to judge the gain "
            f"(gate.min_holdout_rows={config.min_holdout_rows}): its point estimate decides")


def _non_inferior(
    checks: dict[str, bool | None], new_candidate: np.ndarray, new_champion: np.ndarray, old_candidate: np.ndarray, old_champion: np.ndarray | None,
    old_label: str, config: GateConfig, regression: bool,
) -> None:
    """Not worse than the champion by more than the margin, judged on the new holdout and the earlier ones given
    (``old_*``, named ``old_label``): those that follow the same rule and that the champion was not promoted on.

    The earlier holdouts count too: neither model trained on them, and one increment's holdout
    (often 50 rows) is too coarse for a 1-point margin, where one row is 2 points. Under
    gate.champion_holdouts=skip the caller leaves out those the champion was chosen on: its lead there
    is partly the luck it was chosen for, which no later candidate shares. Where the
    bootstrap's bound cannot resolve the margin on the rows there are (its distance from the
    mean exceeds the margin), it says so and the point estimate decides; where it can, the bound
    decides. On the new holdout alone, the candidate must not be worse than the margin allows
    (its upper bound below minus the margin), so earlier data cannot hide one that does worse on what arrives now.
    """
    old_pairs = old_champion is not None and len(old_champion) == len(old_candidate) and len(old_candidate) > 0
    candidate = np.concatenate([new_candidate, old_candidate]) if old_pairs else new_candidate
    champion = np.concatenate([new_champion, old_champion]) if old_pairs else new_champion  # type: ignore[list-item]
    margin = config.mae_margin if regression else config.margin
    scale = _mean(champion) if regression else 1.0  # a numeric target's margin is a share of the champion's MAE
    bar = -margin * scale
    what, fmt = ("MAE gain", ".4g") if regression else ("gain", "+.3f")
    where = f"the new and {old_label}" if old_pairs else "the new holdout"
    setting = f"gate.{'mae_margin' if regression else 'margin'}={margin:g}{' of the champion MAE' if regression else ''}"
    gains = _gains(candidate, champion, regression)
    gain = _mean(gains)
    # Where the point estimate decides, one row never does: on 47 rows one row is 2.1 points, more than a 2-point margin,
    # and kept a candidate out right after a promotion (compared on the new holdout alone) for a single row.
    point_bar, one_row = bar, ""
    if not regression and len(gains) and 1 / len(gains) > margin:
        point_bar, one_row = -1 / len(gains), f", one row of {len(gains)} at the least"
    if len(gains) < config.min_holdout_rows:
        ok = gain >= point_bar
        checks[f"{what} on {where} {_versus(gain, ok, point_bar, fmt)} (non-inferiority: {setting}{one_row})"] = ok
        checks[_too_few(len(gains), config)] = None
    else:
        lower, upper = paired_bootstrap_bounds(gains, np.zeros_like(gains), confidence=config.confidence, samples=config.bootstrap_samples)
        rows = f"{gain:{fmt}} over {len(gains)} rows"
        if lower > bar or upper < bar:
            ok = bool(lower > bar)
            bound = f"lower {config.confidence:.0%} bound {_versus(lower, True, bar, fmt, ('>', '<='))}" if ok else f"upper {config.confidence:.0%} bound {_versus(upper, False, bar, fmt)}"
            checks[f"{what} on {where}: {bound} (point estimate {rows}; non-inferiority: {setting})"] = ok
        elif gain - lower > margin * scale:
            # The interval straddles the margin and is wider than it: these rows cannot tell, the point estimate does.
            ok = gain >= point_bar
            checks[
                f"{what} on {where} {_versus(gain, ok, point_bar, fmt, of=f' over {len(gains)} rows')} (non-inferiority: {setting}{one_row}); "
                f"the {config.confidence:.0%} bounds [{lower:{fmt}}, {upper:{fmt}}] cannot resolve the margin on {len(gains)} rows: the point estimate decides"
            ] = ok
        else:
            checks[f"{what} on {where}: lower {config.confidence:.0%} bound {_versus(lower, False, bar, fmt, ('>', '<='))} (point estimate {rows}; non-inferiority: {setting})"] = False
    if old_pairs and len(new_candidate) >= config.min_holdout_rows:
        alone = _gains(new_candidate, new_champion, regression)
        upper = paired_bootstrap_bounds(alone, np.zeros_like(alone), confidence=config.confidence, samples=config.bootstrap_samples)[1]
        ok = upper >= bar
        checks[
            f"the new holdout alone is {'within the margin' if ok else 'worse than the margin allows'}: upper {config.confidence:.0%} bound of its {what} "
            f"{_versus(upper, ok, bar, fmt)} (point estimate {_mean(alone):{fmt}})"
        ] = ok


def _decision(checks: dict[str, bool | None]) -> GateDecision:
    checks = {reason: None if ok is None else bool(ok) for reason, ok in checks.items()}  # NumPy's booleans are not False
    return GateDecision(passed=all(ok is not False for ok in checks.values()), reasons=tuple(checks), checks=checks)


def concept_changed(ahead: np.ndarray, before: np.ndarray, *, regression: bool, confidence: float, samples: int) -> bool:
    """The champion does significantly worse on the new increment (before training on it) than on earlier holdouts.

    ``ahead``: the champion's per-row values on the new increment; ``before``: on the
    earlier holdouts. Unpaired rows, so a bootstrap of each mean's difference.
    """
    if len(ahead) < 10 or len(before) < 10:
        return False
    sign = -1.0 if regression else 1.0
    a, b = sign * ahead.astype(np.float64), sign * before.astype(np.float64)
    if max(len(a), len(b)) > BOOTSTRAP_ROWS:
        error = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
        upper = _normal_bounds(float(a.mean() - b.mean()), error, confidence)[1]
    else:
        rng = np.random.default_rng(0)
        diff = a[rng.integers(0, len(a), size=(samples, len(a)))].mean(axis=1) - b[rng.integers(0, len(b), size=(samples, len(b)))].mean(axis=1)
        upper = float(np.quantile(diff, confidence))
    # Significantly worse, and by a margin no holdout's noise gives: 15 accuracy points, or errors twice as large.
    material = (b.mean() - a.mean()) > (abs(b.mean()) if regression else 0.15)
    return upper < 0 and bool(material)


# A relabelling, told from class-incremental data: the rows of a class the champion does not know look, to it, like
# one class it knows, that class all but left the increment, and the increment still holds the champion's other classes.
RELABEL_ROWS = 10  # least rows of the unseen class
RELABEL_AGREEMENT = 0.5  # least share of them the champion gives to one known class
RELABEL_VANISHED = 0.25  # that class's share of the increment's rows, at most this part of its share before
RELABEL_PRESENT = 0.1  # ... where it held at least this share
RELABEL_OTHERS = 0.25  # least share of the increment's rows in the champion's other classes


def relabelled(before: np.ndarray, now: np.ndarray, predicted: np.ndarray, known: list) -> tuple[object, object] | None:
    """``(old, new)`` when the new increment's labels look like the champion's class ``old`` relabelled ``new``.

    ``before``: labels of the recent earlier holdouts; ``now``: the new increment's labels; ``predicted``: the
    champion's class, before training, for each row of ``now`` whose label it does not know (in order); ``known``:
    its classes. A class it does not know is by itself no change of rule (class-incremental data brings new classes
    and leaves the old ones out): a relabelling shows all three signs at once.
    """
    if not len(before) or not len(now):
        return None
    unknown = ~pd.Series(now).isin(known).to_numpy()
    labels = now[unknown]
    for new in dict.fromkeys(labels.tolist()):
        rows = labels == new
        if rows.sum() < RELABEL_ROWS:
            continue
        classes, counts = np.unique(predicted[rows], return_counts=True)
        old = classes[counts.argmax()]
        if counts.max() / rows.sum() < RELABEL_AGREEMENT:
            continue
        share_before, share_now = float(np.mean(before == old)), float(np.mean(now == old))
        vanished = share_before >= RELABEL_PRESENT and share_now <= RELABEL_VANISHED * share_before
        others = float(np.mean(~unknown & (now != old)))
        if vanished and others >= RELABEL_OTHERS:
            return old, new
    return None
