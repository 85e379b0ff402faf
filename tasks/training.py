"""Fine-tuning, evaluation and the gate, each a thin task around a pure function in ``models/``."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import GateConfig, StrategyConfig, TrainConfig
from lepton.faults import checkpoint
from models.bundle import Bundle
from models.evaluation import Evaluation, compare
from models.gate import GateDecision, decide
from models.training import TrainReport, fine_tune


@task(name="train", cache_policy=NO_CACHE)
def train(
    champion: Bundle | None, frame: pd.DataFrame, label: str, train: TrainConfig, strategy: StrategyConfig, rehearse: pd.DataFrame | None = None
) -> tuple[Bundle, TrainReport]:
    """The candidate: the champion fine-tuned on the increment (a new network for the first one), rehearsing ``rehearse`` too."""
    result = fine_tune(champion, frame, label=label, train=train, strategy=strategy, rehearse=rehearse)
    checkpoint("train")
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(candidate: Bundle, champion: Bundle | None, holdouts: dict[str, pd.DataFrame], new_id: str, label: str) -> Evaluation:
    """Candidate and champion on the new holdout and every earlier one; the candidate keeps its lineage's matrix."""
    evaluation = compare(candidate, champion, holdouts, new_id=new_id, label=label)
    candidate.meta["accuracy_matrix"] = evaluation.matrix
    return evaluation


@task(name="gate", cache_policy=NO_CACHE)
def gate(evaluation: Evaluation, config: GateConfig) -> GateDecision:
    """The promotion decision, with its reasons."""
    has_champion = evaluation.champion is not None
    return decide(
        new_candidate=evaluation.pooled("candidate", [evaluation.new_id]),
        new_champion=evaluation.pooled("champion", [evaluation.new_id]) if has_champion else None,
        old_candidate=evaluation.pooled("candidate", evaluation.old_ids),
        old_champion=evaluation.pooled("champion", evaluation.old_ids) if has_champion else None,
        config=config,
    )
