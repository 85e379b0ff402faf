"""Scoring models on holdouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from models.bundle import Bundle
from models.metrics import grow, lineage_summary


@dataclass
class Score:
    """One model on one holdout; ``correct`` is kept for paired comparisons."""

    correct: np.ndarray
    accuracy: float
    macro_f1: float
    log_loss: float | None = None
    roc_auc: float | None = None


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean F1 over the classes the holdout holds (NaN when empty).

    Over those classes only: a class the holdout lacks, predicted by mistake, would count as
    a zero and halve the score of a two-class holdout classified at 97%.
    """
    if not len(truth):
        return float("nan")
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    return float(f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0))


def score(bundle: Bundle, frame: pd.DataFrame, label: str) -> Score:
    """Accuracy and macro-F1 in the original label space, so a model scores 0 on classes it never saw."""
    truth = frame[label].to_numpy()
    proba = bundle.predict_proba(frame)
    predicted = bundle.preprocessor.decode(proba.argmax(axis=1))
    correct = np.asarray(predicted == truth, dtype=bool)
    result = Score(
        correct=correct,
        accuracy=float(accuracy_score(truth.astype(str), predicted.astype(str))) if len(truth) else float("nan"),
        macro_f1=macro_f1(truth, predicted),
    )
    classes = bundle.preprocessor.classes
    if len(truth) and set(pd.unique(truth).tolist()) <= set(classes):
        ids = bundle.preprocessor.encode(truth)
        result.log_loss = float(log_loss(ids, proba, labels=list(range(len(classes)))))
        if len(classes) == 2 and len(np.unique(ids)) == 2:
            result.roc_auc = float(roc_auc_score(ids, proba[:, 1]))
    return result


def accuracy_of(scores: list[Score]) -> float | None:
    """Pooled accuracy over several holdouts (None when there are none)."""
    correct = [s.correct for s in scores if len(s.correct)]
    return float(np.concatenate(correct).mean()) if correct else None


@dataclass
class Evaluation:
    """Candidate and champion on the same holdouts: the new increment's and every earlier one."""

    new_id: str
    candidate: dict[str, Score]
    champion: dict[str, Score] | None
    matrix: dict | None = None  # the lineage's accuracy matrix R, candidate row last

    @property
    def old_ids(self) -> list[str]:
        return [k for k in self.candidate if k != self.new_id]

    def pooled(self, who: str, ids: list[str]) -> np.ndarray:
        scores = self.candidate if who == "candidate" else self.champion
        if scores is None:
            return np.zeros(0, dtype=bool)
        parts = [scores[i].correct for i in ids]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def summary(self) -> dict[str, float | None]:
        """Headline accuracies: candidate and champion on the new holdout and on the old ones."""
        out: dict[str, float | None] = {}
        for who in ("candidate", "champion"):
            new, old = self.pooled(who, [self.new_id]), self.pooled(who, self.old_ids)
            present = who == "candidate" or self.champion is not None
            out[f"{who}_new_accuracy"] = float(new.mean()) if present and len(new) else None
            out[f"{who}_old_accuracy"] = float(old.mean()) if present and len(old) else None
            out[f"{who}_all_accuracy"] = float(np.concatenate([new, old]).mean()) if present and len(new) + len(old) else None
        return out

    def metrics(self) -> dict[str, float]:
        """Everything numeric, flat, for tracking."""
        out = {k: v for k, v in self.summary().items() if v is not None}
        new = self.candidate[self.new_id]
        out["candidate_new_macro_f1"] = new.macro_f1
        if new.log_loss is not None:
            out["candidate_new_log_loss"] = new.log_loss
        if new.roc_auc is not None:
            out["candidate_new_roc_auc"] = new.roc_auc
        if self.champion is not None:
            # Prequential: the champion scored on data it has not trained on yet.
            out["prequential_accuracy"] = self.champion[self.new_id].accuracy
        if self.matrix is not None:
            out |= {f"lineage_{k}": v for k, v in lineage_summary(self.matrix).items()}
        for i, key in enumerate(self.candidate):
            out[f"holdout_{i}_candidate_accuracy"] = self.candidate[key].accuracy
            if self.champion is not None:
                out[f"holdout_{i}_champion_accuracy"] = self.champion[key].accuracy
        return out


def compare(candidate: Bundle, champion: Bundle | None, holdouts: dict[str, pd.DataFrame], *, new_id: str, label: str) -> Evaluation:
    """Score both models on every holdout, and extend the lineage's accuracy matrix with the candidate's row."""
    evaluation = Evaluation(
        new_id=new_id,
        candidate={k: score(candidate, f, label) for k, f in holdouts.items()},
        champion=None if champion is None else {k: score(champion, f, label) for k, f in holdouts.items()},
    )
    columns = list(holdouts)
    evaluation.matrix = grow(
        champion.meta.get("accuracy_matrix") if champion is not None else None,
        columns,
        [evaluation.champion[c].accuracy for c in columns] if evaluation.champion is not None else None,
        [evaluation.candidate[c].accuracy for c in columns],
        trained_on=new_id,
    )
    return evaluation
