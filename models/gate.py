"""The promotion gate: a pure function from paired scores to a decision with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lepton.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...]
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(r for r, ok in self.checks.items() if not ok)


def paired_bootstrap_lower(candidate: np.ndarray, champion: np.ndarray, *, confidence: float, samples: int, seed: int = 0) -> float:
    """Lower confidence bound of mean(candidate - champion) over resamples of the same rows."""
    diff = candidate.astype(np.float64) - champion.astype(np.float64)
    if len(diff) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    return float(np.quantile(diff[idx].mean(axis=1), 1.0 - confidence))


def decide(
    *,
    new_candidate: np.ndarray,
    new_champion: np.ndarray | None,
    old_candidate: np.ndarray,
    old_champion: np.ndarray | None,
    config: GateConfig,
) -> GateDecision:
    """Pass when the candidate clears the floors and, against a champion, gains on new data
    (at the bootstrap's confidence) without forgetting more than allowed on old data.

    Arrays are per-row correctness on the same holdout rows, candidate and champion paired.
    """
    checks: dict[str, bool] = {}
    new_acc = float(new_candidate.mean()) if len(new_candidate) else 0.0
    checks[f"accuracy on the new holdout {new_acc:.3f} {'>=' if new_acc >= config.min_accuracy else '<'} floor {config.min_accuracy:.3f}"] = new_acc >= config.min_accuracy
    pooled = np.concatenate([new_candidate, old_candidate])
    all_acc = float(pooled.mean()) if len(pooled) else 0.0
    if len(old_candidate):
        checks[f"accuracy on all holdouts {all_acc:.3f} {'>=' if all_acc >= config.min_accuracy else '<'} floor {config.min_accuracy:.3f}"] = all_acc >= config.min_accuracy

    if new_champion is None:
        checks["no champion yet: the floors decide"] = True
    else:
        lower = paired_bootstrap_lower(new_candidate, new_champion, confidence=config.confidence, samples=config.bootstrap_samples)
        gain = new_acc - float(new_champion.mean())
        ok = bool(lower > config.min_improvement)
        checks[
            f"gain on the new holdout {gain:+.3f} (lower {config.confidence:.0%} bound {lower:+.3f}) "
            f"{'>' if ok else '<='} {config.min_improvement:+.3f}"
        ] = ok
        if old_champion is not None and len(old_champion):
            drop = float(old_champion.mean()) - float(old_candidate.mean())
            ok = drop <= config.max_forgetting
            checks[f"forgetting on earlier holdouts {drop:+.3f} {'<=' if ok else '>'} {config.max_forgetting:.3f}"] = ok
    passed = all(checks.values())
    return GateDecision(passed=passed, reasons=tuple(checks), checks=checks)
