"""Scoring models on holdouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, r2_score, roc_auc_score

from lepton.models.bundle import Bundle
from lepton.models.metrics import grow, lineage_summary
from lepton.models.preprocessing import signed_log


@dataclass
class Score:
    """One model on one holdout; ``correct`` (classes) or ``errors`` (numbers) is kept for paired comparisons."""

    correct: np.ndarray
    accuracy: float | None
    macro_f1: float | None
    log_loss: float | None = None
    roc_auc: float | None = None
    errors: np.ndarray | None = None  # regression: absolute error of each row
    truth: np.ndarray | None = None  # regression: the target of each row (for R² over several holdouts)
    mae: float | None = None
    rmse: float | None = None
    r2: float | None = None
    predicted: np.ndarray | None = None  # regression: each row's prediction, in the target's units

    @property
    def primary(self) -> float:
        """What the accuracy matrix holds: accuracy, or R² for a numeric target (both higher is better)."""
        value = self.r2 if self.errors is not None else self.accuracy
        return float("nan") if value is None else float(value)

    @property
    def paired(self) -> np.ndarray:
        """Per-row values the gate pairs: correctness, or absolute errors."""
        return self.errors if self.errors is not None else self.correct


def regression_score(bundle: Bundle, frame: pd.DataFrame, label: str, predicted: np.ndarray | None = None) -> Score:
    """MAE, RMSE and R² in the target's own units (``predicted``: the bundle's predictions, when already made)."""
    truth = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64)
    if predicted is None:
        predicted = bundle.predict(frame) if len(frame) else np.zeros(0)
    errors = np.abs(predicted - truth)
    n = len(truth)
    return Score(
        correct=np.zeros(0, dtype=bool), accuracy=None, macro_f1=None, errors=errors, truth=truth,
        predicted=np.asarray(predicted, dtype=np.float64),
        mae=float(np.mean(errors)) if n else float("nan"),
        rmse=float(np.sqrt(np.mean(errors**2))) if n else float("nan"),
        # R² needs spread in the truth: a constant or one-row holdout has none.
        r2=float(r2_score(truth, predicted)) if n > 1 and np.ptp(truth) > 0 else float("nan"),
    )


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes the holdout holds (NaN when empty).

    Over those classes only: a class the holdout lacks, predicted by mistake, would count as
    a zero and halve the score of a two-class holdout classified at 97%. Counted here rather
    than with scikit-learn's f1_score (same value): its input checks cost 2 ms a call, and a run
    scores two models on every holdout.
    """
    if not len(truth):
        return float("nan")
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    classes = np.unique(truth)
    hit = truth == predicted
    tp = np.array([np.sum(hit & (truth == c)) for c in classes], dtype=np.float64)
    in_truth = np.array([np.sum(truth == c) for c in classes], dtype=np.float64)
    in_predicted = np.array([np.sum(predicted == c) for c in classes], dtype=np.float64)
    return float(np.mean(2 * tp / (in_truth + in_predicted)))  # F1 = 2TP / (2TP + FP + FN); every class here has rows


def score(bundle: Bundle, frame: pd.DataFrame, label: str, outputs: np.ndarray | None = None, *, full: bool = True) -> Score:
    """Accuracy and macro-F1 in the original label space, so a model scores 0 on classes it never saw (errors for numbers).

    ``outputs``: the bundle's probabilities (or numbers) for ``frame``, when already computed.
    ``full``: log loss and ROC AUC too (what tracking records of the new holdout).
    """
    if bundle.regression:
        return regression_score(bundle, frame, label, None if outputs is None else bundle.preprocessor.decode(outputs[:, 0]))
    truth = frame[label].to_numpy()
    proba = bundle.predict_proba(frame) if outputs is None else outputs
    predicted = bundle.preprocessor.decode(proba.argmax(axis=1))
    correct = np.asarray(predicted == truth, dtype=bool)
    result = Score(
        correct=correct,
        accuracy=float(np.mean(truth.astype(str) == predicted.astype(str))) if len(truth) else float("nan"),
        macro_f1=macro_f1(truth, predicted),
    )
    classes = bundle.preprocessor.classes
    if full and len(truth) and set(pd.unique(truth).tolist()) <= set(classes):
        ids = bundle.preprocessor.encode(truth)
        result.log_loss = float(log_loss(ids, proba, labels=list(range(len(classes)))))
        if len(classes) == 2 and len(np.unique(ids)) == 2:
            result.roc_auc = float(roc_auc_score(ids, proba[:, 1]))
    return result


def score_holdouts(bundle: Bundle, holdouts: dict[str, pd.DataFrame], label: str, *, new_id: str) -> dict[str, Score]:
    """``bundle`` on every holdout, predicting them all in one pass (a call's fixed cost, paid once, not once a holdout)."""
    frames = list(holdouts.values())
    if not frames:
        return {}
    everything = pd.concat(frames, ignore_index=True)
    if not len(everything):
        return {k: score(bundle, f, label, full=k == new_id) for k, f in holdouts.items()}
    if bundle.regression:
        outputs = bundle.outputs(everything)
    else:
        outputs = bundle.predict_proba(everything)
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    return {k: score(bundle, f, label, outputs[bounds[i]:bounds[i + 1]], full=k == new_id) for i, (k, f) in enumerate(holdouts.items())}


def accuracy_of(scores: list[Score]) -> float | None:
    """Pooled accuracy (or MAE) over several holdouts (None when there are none)."""
    values = [s.paired for s in scores if len(s.paired)]
    return float(np.concatenate(values).mean()) if values else None


@dataclass
class Evaluation:
    """Candidate and champion on the same holdouts: the new increment's and every earlier one."""

    new_id: str
    candidate: dict[str, Score]
    champion: dict[str, Score] | None
    matrix: dict | None = None  # the lineage's accuracy matrix R, candidate row last
    target_log: float | None = None  # regression: the unit of the log scale the candidate learns the target on, or None

    @property
    def old_ids(self) -> list[str]:
        return [k for k in self.candidate if k != self.new_id]

    @property
    def regression(self) -> bool:
        return self.candidate[self.new_id].errors is not None

    @property
    def metric(self) -> str:
        """The headline metric's name: accuracy, or mae for a numeric target."""
        return "mae" if self.regression else "accuracy"

    def learnt_r2(self, who: str = "candidate", ids: list[str] | None = None) -> float | None:
        """R² over holdouts ``ids`` (default every one) on the scale the candidate learns the target on: the target's
        own, or its log scale (``target_log``), where the median-like predictions that the MAE rewards on a skewed
        target score below zero in its own units. None without rows, or without spread in the truth."""
        scored = self.candidate if who == "candidate" else self.champion
        scores = [s for k, s in (scored or {}).items() if (ids is None or k in ids) and s.predicted is not None and len(s.predicted)]
        if not scores:
            return None
        truth, predicted = np.concatenate([s.truth for s in scores]), np.concatenate([s.predicted for s in scores])  # type: ignore[misc]
        if self.target_log is not None:
            truth, predicted = signed_log(truth, self.target_log), signed_log(predicted, self.target_log)
        spread = float(((truth - truth.mean()) ** 2).sum())
        return 1.0 - float(((predicted - truth) ** 2).sum()) / spread if len(truth) > 1 and spread > 0 else None

    def pooled(self, who: str, ids: list[str]) -> np.ndarray:
        """Per-row values over holdouts ``ids``: correctness, or absolute errors for a numeric target."""
        scores = self.candidate if who == "candidate" else self.champion
        empty = np.zeros(0, dtype=float if self.regression else bool)
        if scores is None:
            return empty
        parts = [scores[i].paired for i in ids]
        return np.concatenate(parts) if parts else empty

    def summary(self) -> dict[str, float | None]:
        """Headline accuracies (or MAEs): candidate and champion on the new holdout and on the old ones."""
        out: dict[str, float | None] = {}
        for who in ("candidate", "champion"):
            new, old = self.pooled(who, [self.new_id]), self.pooled(who, self.old_ids)
            present = who == "candidate" or self.champion is not None
            out[f"{who}_new_{self.metric}"] = float(new.mean()) if present and len(new) else None
            out[f"{who}_old_{self.metric}"] = float(old.mean()) if present and len(old) else None
            out[f"{who}_all_{self.metric}"] = float(np.concatenate([new, old]).mean()) if present and len(new) + len(old) else None
        if self.regression:
            out["candidate_new_r2"] = _finite(self.candidate[self.new_id].r2)
            out["candidate_new_rmse"] = _finite(self.candidate[self.new_id].rmse)
        return out

    def metrics(self) -> dict[str, float]:
        """Everything numeric, flat, for tracking."""
        out = {k: v for k, v in self.summary().items() if v is not None}
        new = self.candidate[self.new_id]
        for name in ("macro_f1", "log_loss", "roc_auc", "mae", "rmse", "r2"):
            value = _finite(getattr(new, name))
            if value is not None:
                out[f"candidate_new_{name}"] = value
        if self.champion is not None:
            # Prequential: the champion scored on data it has not trained on yet.
            ahead = self.champion[self.new_id]
            out[f"prequential_{self.metric}"] = ahead.mae if self.regression else ahead.accuracy
        if self.matrix is not None:
            out |= {f"lineage_{k}": v for k, v in lineage_summary(self.matrix).items()}
        for i, key in enumerate(self.candidate):
            out[f"holdout_{i}_candidate_{self.metric}"] = _headline(self.candidate[key])
            if self.champion is not None:
                out[f"holdout_{i}_champion_{self.metric}"] = _headline(self.champion[key])
        return {k: v for k, v in out.items() if v is not None}


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _headline(score: Score) -> float | None:
    return _finite(score.mae if score.errors is not None else score.accuracy)


def compare(
    candidate: Bundle, champion: Bundle | None, holdouts: dict[str, pd.DataFrame], *, new_id: str, label: str, champion_scores: dict[str, Score] | None = None,
) -> Evaluation:
    """Score both models on every holdout (the champion's scores may come already computed, on these very holdouts),
    and extend the lineage's accuracy matrix with the candidate's row."""
    if champion is not None and champion_scores is None:
        champion_scores = score_holdouts(champion, holdouts, label, new_id=new_id)
    evaluation = Evaluation(
        new_id=new_id,
        candidate=score_holdouts(candidate, holdouts, label, new_id=new_id),
        champion=None if champion is None else champion_scores,
        target_log=candidate.preprocessor.target_log if candidate.regression else None,
    )
    columns = list(holdouts)
    evaluation.matrix = grow(
        champion.meta.get("accuracy_matrix") if champion is not None else None,
        columns,
        [evaluation.champion[c].primary for c in columns] if evaluation.champion is not None else None,
        [evaluation.candidate[c].primary for c in columns],
        trained_on=new_id,
    )
    return evaluation
