"""Fine-tuning, evaluation and the gate, each a thin task around a pure function in ``models/``."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig, GateConfig, StrategyConfig, TrainConfig
from lepton.faults import checkpoint
from lepton.models.bundle import Bundle
from lepton.models import aside as forked
from lepton.models.evaluation import Evaluation, Score, compare, score_holdouts
from lepton.models.gate import RELABEL_ROWS, GateDecision, concept_changed, decide, relabelled
from lepton.models.network import NetworkError, import_factory, uncallable
from lepton.models.preprocessing import Encoding
from lepton.models.schema import DataSchema
from lepton.models.training import TrainReport, choose_transfer, fine_tune
from lepton.tasks.registry import Source, check_requirements_ahead


def check_arguments(factory: Callable[..., Any], spec: str, args: dict[str, Any]) -> None:
    """Refuse, before any work, a factory that cannot take ``n_features`` and ``train.network_args``; one whose
    signature Python cannot read is found out when it builds."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(n_features=1, **args)
    except TypeError as err:
        raise uncallable(spec, args, err) from None


def workspace_networks(root: Path, train: TrainConfig) -> TrainConfig:
    """Networks from factories import from the workspace (last on the path: it shadows nothing installed);
    a configured factory that does not import, or weights that are not there, fail here, before any work (the
    factory's contract is checked when it builds). Returns ``train`` with the weights' path made absolute."""
    if str(root) not in sys.path:
        sys.path.append(str(root))
    if train.network not in ("mlp", "cnn"):
        check_arguments(import_factory(train.network), train.network, train.network_args)
    if not train.network_weights:
        return train
    weights = (root / train.network_weights).resolve()
    if not weights.is_file():
        raise NetworkError(f"train.network_weights={train.network_weights!r}: no such file in the workspace ({weights})")
    return train.model_copy(update={"network_weights": str(weights)})


def encoding_of(schema: DataSchema, data: DataConfig) -> Encoding:
    """How a new network reads the workspace's columns: the schema's kinds, the config's block sizes."""
    return Encoding(
        label=data.label, kinds={c: schema.kind(c) for c in schema.features}, task=schema.task,  # type: ignore[arg-type]
        capacity=data.max_categories, buckets=data.hash_buckets, min_category_rows=data.min_category_rows, shapes=dict(schema.shapes),
    )


@task(name="train", cache_policy=NO_CACHE)
def train(
    champion: Bundle | None,
    frame: pd.DataFrame,
    schema_state: dict,
    data: DataConfig,
    train: TrainConfig,
    strategy: StrategyConfig,
    rehearse: pd.DataFrame | None = None,
    concept_change: bool = False,
    steady: bool = False,
    source: Source | None = None,
    aside: forked.Aside | None = None,
    limit: float | None = None,
) -> tuple[Bundle, TrainReport]:
    """The candidate: the champion fine-tuned on the increment (a new network for the first one, started from
    ``source``'s feature layers when that pays: see ``choose_transfer``), rehearsing ``rehearse`` too.

    ``aside``: this very training, started beside the run's other one by ``train_aside``: its result, once
    it comes (within ``limit`` seconds); trained here instead when it fails."""
    if aside is not None:
        if not aside.done():  # this process would wait: it does now what its registration does first
            check_requirements_ahead()
        trained, why = aside.result(limit)
        if trained is not None:
            get_run_logger().info("trained in process %d beside the fine-tune (%.1f s of training)", aside.pid, trained[1].seconds)
            checkpoint("train")
            return trained
        get_run_logger().warning("the training beside the fine-tune failed (%s): training here", why)
    encoding = encoding_of(DataSchema.from_dict(schema_state), data)
    way, choice = "full", None
    if champion is None and source is not None:
        way = train.transfer
        if way == "auto":
            choice = choose_transfer(source.bundle, frame, label=data.label, train=train, strategy=strategy, encoding=encoding)
            way = choice.chosen
    transferred = source is not None and champion is None and way != "scratch"
    candidate, report = fine_tune(
        champion, frame, label=data.label, train=train, strategy=strategy, rehearse=rehearse, encoding=encoding, concept_change=concept_change, steady=steady,
        source=source.bundle if transferred else None, transfer=way if transferred else "full",
    )
    if champion is None and source is not None:
        report.transfer = {"source": source.uri, "kept": way, "scores": choice.scores if choice else {}, "rows": choice.validation_rows if choice else 0}
        candidate.meta["transfer"] = report.transfer
    checkpoint("train")
    return candidate, report


def train_aside(
    frame: pd.DataFrame, schema_state: dict, data: DataConfig, train: TrainConfig, strategy: StrategyConfig, champion: Bundle,
) -> forked.Aside | None:
    """A new network on ``frame`` (a rival: no champion, no rehearsal), training in a forked process from now on while
    this one fine-tunes ``champion``; pass it to ``train`` as ``aside``. None where it cannot (see
    ``lepton.models.aside``): the rival then trains after the fine-tune, as it would anyway. Only a network that trains
    on one intra-op thread goes aside (the champion's size tells): a bigger one uses every core in either process."""
    from lepton.models.loop import intra_op_threads, select_device

    if train.nproc > 1 or train.launcher != "spawn":
        why = "data-parallel training"
    elif intra_op_threads(champion.network, train.batch_size, train.threads) > 1:
        why = "it trains on several intra-op threads (train.threads, or a step of this size)"
    else:
        why = forked.why_not(select_device(train.device))
    if why is not None:
        get_run_logger().info("the rival trains after the fine-tune: %s", why)
        return None
    encoding = encoding_of(DataSchema.from_dict(schema_state), data)
    return forked.start(fine_tune, None, frame, label=data.label, train=train, strategy=strategy, encoding=encoding)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    candidate: Bundle, champion: Bundle | None, holdouts: dict[str, pd.DataFrame], new_id: str, label: str, champion_scores: dict[str, Score] | None = None,
) -> Evaluation:
    """Candidate and champion on the new holdout and every earlier one, with the candidate's lineage's accuracy matrix;
    ``champion_scores``: the champion's, scored before training (``weigh_drift``)."""
    return compare(candidate, champion, holdouts, new_id=new_id, label=label, champion_scores=champion_scores)


@task(name="weigh-drift", cache_policy=NO_CACHE)
def weigh_drift(
    champion: Bundle, holdouts: dict[str, pd.DataFrame], new_id: str, label: str, config: GateConfig, change_at: str | None,
) -> tuple[dict[str, Score], bool, str]:
    """Before training: the champion's scores on every holdout, and whether the drift hurts it (``drift_hurts``)."""
    scores = score_holdouts(champion, holdouts, label, new_id=new_id)
    return scores, *drift_hurts(champion, holdouts, scores, new_id, label, config, change_at)


def judged_holdouts(old_ids: list[str], config: GateConfig, change_at: str | None, new_id: str | None = None) -> tuple[list[str], str]:
    """The earlier holdouts forgetting is judged on (arrival order), and how to name them."""
    if config.old_holdouts == "since_change" and change_at is not None and change_at == new_id:
        return [], "earlier holdouts"
    if config.old_holdouts.startswith("recent"):
        n = int(config.old_holdouts.split()[1])
        return old_ids[-n:] if n else [], f"the {n} most recent earlier holdouts"
    if config.old_holdouts == "since_change" and change_at is not None and change_at in old_ids:
        return old_ids[old_ids.index(change_at):], f"earlier holdouts since the concept change at increment {change_at}"
    return old_ids, "earlier holdouts"


def judged_rows(evaluation: Evaluation, config: GateConfig, change_at: str | None) -> np.ndarray:
    """The candidate's per-row results on the holdouts the gate judges (the new one and the earlier ones it counts), pooled."""
    old_ids, _ = judged_holdouts(evaluation.old_ids, config, change_at, evaluation.new_id)
    return evaluation.pooled("candidate", [evaluation.new_id, *old_ids])


def holdout_score(evaluation: Evaluation, config: GateConfig, change_at: str | None, rows: np.ndarray | None = None) -> float:
    """The candidate on the holdouts the gate judges, pooled row by row (``rows``: ``judged_rows`` when known already):
    accuracy, or minus the mean absolute error for a numeric target (higher is better either way)."""
    values = judged_rows(evaluation, config, change_at) if rows is None else rows
    mean = float(values.mean()) if len(values) else 0.0
    return -mean if evaluation.regression else mean


def rival_wins(
    fine_tuned: Evaluation, rival: Evaluation, config: GateConfig, change_at: str | None, fine_tuned_passed: bool, rival_passed: bool,
) -> tuple[bool, str]:
    """drift.action=compete and gate.fallback=retrain: whether the new network retrained on everything goes to the gate
    instead of the fine-tuned candidate, and why. The one the gate passes wins; when it passes both or neither, the
    better on the holdouts the gate judges (a tie keeps the fine-tuned one). Never one that, like the fine-tuned one,
    did not learn a concept change at this increment: labels no network learns look like noise (a broken export), and
    none goes to the gate having learnt them, as none learns a kept-out increment of them."""
    rows = judged_rows(fine_tuned, config, change_at)
    ours, theirs = holdout_score(fine_tuned, config, change_at, rows), holdout_score(rival, config, change_at)
    measure = "MAE" if fine_tuned.regression else "accuracy"
    shown = (lambda v: f"{-v:.4g}") if fine_tuned.regression else (lambda v: f"{v:.1%}")
    # Pooled over more holdouts than the gate's new-holdout figures, so the note says which.
    where = f"on the {len(rows)} rows of the holdouts the gate judges"
    scores = f"{measure} {shown(theirs)} against the fine-tuned {shown(ours)} {where}"
    if rival_passed != fine_tuned_passed:
        won, why = rival_passed, (f"the retrained network goes to the gate: it passes and the fine-tuned candidate does not ({scores})" if rival_passed
                                  else f"the fine-tuned candidate goes to the gate: it passes and the retrained network does not ({scores})")
    else:
        won = theirs > ours
        why = (f"the retrained network goes to the gate ({scores})" if won
               else f"the fine-tuned candidate goes to the gate ({measure} {shown(ours)} against the retrained network's {shown(theirs)} {where})")
    unlearnt = change_not_learnt(rival, change_at) if won and change_not_learnt(fine_tuned, change_at) else None
    if unlearnt:
        return False, f"the retrained network does not go to the gate: neither network learnt this increment's labels, which look like noise ({unlearnt})"
    return won, why


def drift_hurts(
    champion: Bundle, holdouts: dict[str, pd.DataFrame], scores: dict[str, Score], new_id: str, label: str, config: GateConfig, change_at: str | None,
) -> tuple[bool, str]:
    """Whether the champion, before training, does worse on the new holdout's rows of classes it knows than on the
    earlier holdouts the gate judges by more than the gate's margin (accuracy points, or a share of its MAE): drift it
    does not cope with; and why, as a clause. New classes alone are not such drift: fine-tuning grows the head for
    them, and the gate's fallback retrains if that fails."""
    if change_at is not None and change_at == new_id:
        return True, "the concept changed at this increment"
    old_ids, _ = judged_holdouts([k for k in scores if k != new_id], config, change_at, new_id)
    old = np.concatenate([scores[k].paired for k in old_ids]) if old_ids else np.zeros(0)
    if not len(old):
        return True, "the drift's harm cannot be judged (no earlier holdout)"
    frame = holdouts[new_id]
    if not len(frame):
        return False, "the new holdout holds no rows to judge the drift's harm on"
    # The champion was scored on every row of the new holdout, in order: those of classes it knows count.
    new = scores[new_id].paired[_known_mask(champion, frame, label)]
    if not len(new):
        return False, "the new holdout holds only classes the champion does not know"
    if scores[new_id].errors is not None:  # a numeric target
        hurt = float(new.mean()) > float(old.mean()) * (1 + config.mae_margin)
        said = f"its MAE {new.mean():.4g} on this increment, {old.mean():.4g} on the earlier holdouts; gate.mae_margin={config.mae_margin:g}"
    else:
        hurt = float(new.mean()) < float(old.mean()) - config.margin
        said = f"its accuracy {new.mean():.1%} on this increment's rows of classes it knows, {old.mean():.1%} on the earlier holdouts; gate.margin={config.margin:g}"
    return hurt, (f"the drift hurts the champion ({said})" if hurt else f"the champion copes with this drift ({said})")


def run_metrics(evaluation: Evaluation, training: TrainReport) -> dict[str, float]:
    """The tracking run's metrics: the evaluation's, and what the training cost."""
    return {**evaluation.metrics(), "train_seconds": training.seconds, "train_samples": float(training.train_samples), "final_train_loss": training.losses[-1]}


def change_not_learnt(evaluation: Evaluation, change_at: str | None) -> str | None:
    """When a concept change at this increment is not followed, why (None: followed, or no change here).

    A change is followed only when the candidate learnt the new rule: labels that are noise also make the champion
    look worse, and must not switch off the forgetting check, now or for the candidates after this one. Learnt means
    it won back at least half of what the champion lost against its own recent earlier holdouts."""
    if change_at is None or change_at != evaluation.new_id or evaluation.champion is None or not evaluation.old_ids:
        return None
    sign = -1.0 if evaluation.regression else 1.0
    before = sign * evaluation.pooled("champion", evaluation.old_ids[-CHANGE_WINDOW:]).mean()
    ahead = sign * evaluation.pooled("champion", [evaluation.new_id]).mean()
    now = sign * evaluation.pooled("candidate", [evaluation.new_id]).mean()
    if now >= (before + ahead) / 2:
        return None
    metric = "MAE" if evaluation.regression else "accuracy"
    return (
        f"concept change not followed: the candidate's {metric} on the new holdout ({sign * now:.3g}) won back less than half of what "
        f"the champion lost ({sign * before:.3g} before, {sign * ahead:.3g} now), so forgetting is judged on every earlier holdout"
    )


@task(name="gate", cache_policy=NO_CACHE)
def gate(
    evaluation: Evaluation, config: GateConfig, change_at: str | None = None, alone: str = "no champion yet", chosen_on: list[str] | tuple[str, ...] = (),
) -> GateDecision:
    """The promotion decision, with its reasons; ``change_at`` is the increment where the concept last changed;
    ``alone``: why the candidate is not compared with a champion, when it is not; ``chosen_on``: the increments whose
    holdouts the champion was chosen on, passing the gate against the champion before it (``promoted_on``), left out
    of the comparison under gate.champion_holdouts=skip."""
    has_champion = evaluation.champion is not None
    note = None
    unlearnt = change_not_learnt(evaluation, change_at)
    if unlearnt is not None:
        change_at, note = None, unlearnt
    old_ids, old_label = judged_holdouts(evaluation.old_ids, config, change_at, evaluation.new_id)
    regression = evaluation.regression
    r2, champion_r2 = (None, None), (None, None)
    if regression:
        # On the scale the candidate learns the target on (see ``Evaluation.learnt_r2``), the champion's on the same.
        r2 = (evaluation.learnt_r2("candidate", [evaluation.new_id]), evaluation.learnt_r2("candidate") if evaluation.old_ids else None)
        if has_champion:
            champion_r2 = (evaluation.learnt_r2("champion", [evaluation.new_id]), evaluation.learnt_r2("champion") if evaluation.old_ids else None)
    # The new holdout's labels look changed, and the candidate did not learn them (noise, most often): that holdout tells
    # the two models apart no better than a coin, so every earlier holdout of the rule is compared on.
    skip = config.champion_holdouts == "skip" and unlearnt is None
    compared, skipped = None, [k for k in old_ids if k in chosen_on] if skip else []
    if has_champion and skipped:
        since = [k for k in old_ids if k not in skipped]
        compared = (evaluation.pooled("candidate", since), evaluation.pooled("champion", since), f"{len(since)} earlier holdout(s) since the champion's")
    decision = decide(
        new_candidate=evaluation.pooled("candidate", [evaluation.new_id]),
        new_champion=evaluation.pooled("champion", [evaluation.new_id]) if has_champion else None,
        old_candidate=evaluation.pooled("candidate", old_ids),
        old_champion=evaluation.pooled("champion", old_ids) if has_champion else None,
        config=config, regression=regression, r2=r2, old_label=old_label, champion_r2=champion_r2, alone=alone, compared=compared,
        r2_name="R² on the log scale" if evaluation.target_log is not None else "R²",
    )
    if compared is not None and config.policy == "non_inferior":
        note_skip = (
            f"not compared on the {len(skipped)} earlier holdout(s) the champion was promoted on: its lead there is partly the luck it was "
            f"chosen for (gate.champion_holdouts=skip); forgetting is judged on them"
        )
        decision = GateDecision(decision.passed, (*decision.reasons, note_skip), {**decision.checks, note_skip: None})
    if note is not None:
        decision = GateDecision(decision.passed, (*decision.reasons, note), {**decision.checks, note: None})
    if has_champion and evaluation.old_ids and not old_ids:
        # Said, not silently skipped: the labels of earlier holdouts follow the rule that changed.
        reason = f"concept change at this increment: forgetting not judged on the {len(evaluation.old_ids)} earlier holdout(s) (gate.old_holdouts={config.old_holdouts})"
        decision = GateDecision(decision.passed, (*decision.reasons, reason), {**decision.checks, reason: None})
    return decision


# Earlier holdouts the champion is compared on to detect a concept change: recent ones say what it knows now.
CHANGE_WINDOW = 5


def _known_mask(champion: Bundle, frame: pd.DataFrame, label: str) -> np.ndarray:
    """Which rows the champion's accuracy is compared on to tell a changed rule or harmful drift: new classes are
    class-incremental data, not a changed rule, so only rows of classes it knows count (every row for a numeric target)."""
    return np.ones(len(frame), dtype=bool) if champion.regression else frame[label].isin(champion.preprocessor.classes).to_numpy()


def _known_rows(champion: Bundle, frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """The rows ``_known_mask`` keeps."""
    return frame[_known_mask(champion, frame, label)]


@task(name="choose-kept-out", cache_policy=NO_CACHE)
def learnable(
    champion: Bundle | None, holdouts: dict[str, pd.DataFrame], kept_out: list[str], label: str, config: GateConfig,
    arrived: dict[str, pd.DataFrame] | None = None,
) -> list[str]:
    """Of the increments the gate kept out since the champion was trained, those whose labels follow what it knows:
    it does not do significantly and materially worse on their rows (of its classes) than on the holdouts of the ones
    it learnt. A kept-out increment of noisy labels, learnt with every later one, would keep every later candidate out.

    ``arrived``: every row of each kept-out increment, judged instead of its holdout alone. The champion learnt
    none of them (they came after it), and a small increment's holdout (6 rows of 30) is too few to tell
    labels in another unit from noise: learnt, they kept every later candidate out."""
    if champion is None or not kept_out:
        return kept_out
    learnt = [k for k in list(holdouts)[:-1] if k not in kept_out][-CHANGE_WINDOW:]
    if not learnt:
        return kept_out
    arrived = arrived or {}
    rows = {k: _known_rows(champion, holdouts[k], label) for k in learnt}
    rows |= {k: _known_rows(champion, arrived.get(k, holdouts[k]), label) for k in kept_out}
    scored = compare(champion, None, rows, new_id=kept_out[-1], label=label)
    before = scored.pooled("candidate", learnt)
    chosen, left = [], []
    for k in kept_out:
        ahead = scored.pooled("candidate", [k])
        changed = concept_changed(ahead, before, regression=scored.regression, confidence=config.confidence, samples=config.bootstrap_samples)
        (left if changed else chosen).append(k)
    if left:
        get_run_logger().warning(
            "not learnt with this increment: %d kept-out increment(s) whose holdouts the champion does much worse on than on those it learnt "
            "(noisy labels, or a change it did not follow): %s", len(left), ", ".join(left),
        )
    return chosen


@task(name="detect-change", cache_policy=NO_CACHE)
def detect_change(
    champion: Bundle | None, holdouts: dict[str, pd.DataFrame], new_id: str, label: str, config: GateConfig, arrived: pd.DataFrame | None = None,
) -> str | None:
    """The increment where the concept last changed: this one when the champion, before training, does significantly
    worse on its holdout than on the recent earlier ones, or when ``arrived`` (the increment's rows) relabels one of
    its classes; else the champion's own record (None: never)."""
    if champion is None:
        return None
    before = [k for k in holdouts if k != new_id][-CHANGE_WINDOW:]
    new = holdouts[new_id]
    if not champion.regression:
        if before and arrived is not None:
            labels = arrived[label]
            unknown = labels.notna() & ~labels.isin(champion.preprocessor.classes)
            change = None
            if unknown.sum() >= RELABEL_ROWS:  # the champion predicts only when a relabelling can be told (no copy of the rows else)
                earlier = pd.concat([holdouts[k][label] for k in before]).dropna().to_numpy()
                change = relabelled(earlier, labels.dropna().to_numpy(), champion.predict(arrived[unknown]), list(champion.preprocessor.classes))
            if change is not None:
                get_run_logger().warning(
                    "concept change: the rows labelled %r look to the champion like %r, and %r all but left the increment: "
                    "read as %r relabelled %r", change[1], change[0], change[0], change[0], change[1],
                )
                return new_id
    new = _known_rows(champion, new, label)
    if before and len(new):
        scored = compare(champion, None, {**{k: holdouts[k] for k in before}, new_id: new}, new_id=new_id, label=label)
        ahead, earlier = scored.pooled("candidate", [new_id]), scored.pooled("candidate", before)
        if concept_changed(ahead, earlier, regression=scored.regression, confidence=config.confidence, samples=config.bootstrap_samples):
            metric = "MAE" if scored.regression else "accuracy"
            get_run_logger().warning(
                "concept change: the champion's %s on this increment is %.3g, against %.3g on the recent earlier holdouts", metric, ahead.mean(), earlier.mean(),
            )
            return new_id
    return champion.meta.get("concept_change_at")
