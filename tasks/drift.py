"""Drift against the accepted history: measured before acceptance, acted on, and logged to the candidate's run."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig, DriftConfig, LeptonConfig, RegistryConfig
from lepton.lineage import TAG
from lepton.models.drift import DriftReport, TrainingPlan, measure, respond, with_rival
from lepton.models.splits import holdout_split
from lepton.tasks.splits import History
from lepton.tasks.tracking import connect
from lepton.validation import ValidationReport
from lepton.workspace import Workspace

# MLflow accepts at most this many metrics per log_batch call.
_BATCH = 1000


# Column kinds whose values drift is not measured on.
UNREAD_KINDS = ("ignore", "identifier", "text", "datetime")


@task(name="measure-drift", cache_policy=NO_CACHE)
def measure_drift(history: History, frame: pd.DataFrame, data: DataConfig, config: DriftConfig, schema: dict[str, Any] | None = None) -> DriftReport | None:
    """The increment against every accepted increment; None when drift is off or nothing was accepted yet.
    ``schema``: the workspace's (its task says whether the label is a number to predict)."""
    if not config.enabled or not history.frames:
        return None
    regression = (schema or {}).get("task") == "regression"
    # Identifiers and ignored columns the model does not read; free text and dates hold new values by nature (a test of
    # the values themselves says nothing, and a date column would drift on every time-ordered increment).
    kinds = (schema or {}).get("kinds", {})
    # Columns new to the workspace are no inputs either (validation said so): nothing in the history to compare them with.
    unread = [c for c in frame.columns if c != data.label and ((kinds.get(c) or "numeric") in UNREAD_KINDS or (kinds and c not in kinds))]
    return measure(
        pd.concat(history.before(), ignore_index=True).drop(columns=unread, errors="ignore"), frame.drop(columns=unread), label=data.label, config=config,
        fixed_classes=not data.allow_new_classes, regression=regression,
    )


def with_drift(report: ValidationReport, drift: DriftReport | None) -> ValidationReport:
    """The validation report, failed when drift.action=block and the increment drifted: it is rejected like invalid data."""
    if drift is None or drift.action != "block":
        return report
    problem = f"drift against the accepted history: {drift.summary()} (drift.action=block)"
    return ValidationReport(passed=False, problems=[*report.problems, problem], rows=report.rows, expectations=report.expectations)


@task(name="plan-training", cache_policy=NO_CACHE)
def plan_training(
    history: History, drift: DriftReport | None, new_id: str, train_frame: pd.DataFrame, config: LeptonConfig,
    learnt: list[str] | tuple[str, ...] = (), left_out: list[str] | tuple[str, ...] = (), since: str | None = None,
) -> TrainingPlan:
    """What the candidate trains on: the increment, or (drift.action replay, joint or compete, on drift) more of the past.
    ``learnt``: earlier increments ``train_frame`` holds already (see ``split_increments``); ``left_out``: kept-out
    increments no network should learn (their labels look like noise: see ``learnable``); ``since``: an earlier concept
    change, before which the rows follow the old rule and nothing learns them."""
    action = drift.action if drift is not None else None
    earlier = _earlier_rows(history, new_id, config, [*learnt, *left_out], since) if action in ("replay", "joint", "compete") else None
    return respond(action, train_frame, earlier, replay_share=config.drift.replay_share, seed=config.train.seed, retrain_rows=config.train.retrain_rows,
                   rows=_rows_since(since))


@task(name="plan-retraining", cache_policy=NO_CACHE)
def plan_retraining(
    plan: TrainingPlan, history: History, new_id: str, config: LeptonConfig, learnt: list[str] | tuple[str, ...] = (),
    left_out: list[str] | tuple[str, ...] = (), since: str | None = None,
) -> TrainingPlan:
    """gate.fallback=retrain: ``plan`` with a rival, a new network on every accepted training row (from ``since``, an earlier
    concept change, on), for a fine-tuned candidate that failed the gate."""
    earlier = _earlier_rows(history, new_id, config, [*learnt, *left_out], since)
    return with_rival(plan, earlier, retrain_rows=config.train.retrain_rows, why="gate.fallback=retrain", rows=_rows_since(since))


@task(name="plan-training-anew", cache_policy=NO_CACHE)
def plan_anew(
    history: History, new_id: str, train_frame: pd.DataFrame, config: LeptonConfig, learnt: list[str] | tuple[str, ...] = (),
    left_out: list[str] | tuple[str, ...] = (), *, why: str,
) -> TrainingPlan:
    """A new network on every accepted training row, for a champion that reads the data otherwise than the schema now does
    (``why``: what lepton.yaml declares since); ``learnt`` and ``left_out`` as in ``plan_training``."""
    earlier = _earlier_rows(history, new_id, config, [*learnt, *left_out])
    everything = train_frame if earlier is None else pd.concat([earlier, train_frame], ignore_index=True)
    note = f"lepton.yaml declares {why}: a new network learns all {len(everything)} accepted training rows ({len(train_frame)} new), read the new way"
    return TrainingPlan(everything, warm_start=False, note=note)


def _rows_since(since: str | None) -> str:
    """What a rival's note calls its rows."""
    return "accepted training rows" if since is None else f"training rows accepted since the concept change at increment {since}"


def _earlier_rows(history: History, new_id: str, config: LeptonConfig, skip: list[str], since: str | None = None) -> pd.DataFrame | None:
    """The training rows of the accepted increments other than ``new_id`` and ``skip`` (those the plan's rows hold already,
    and those no network should learn), from ``since`` (a concept change) on when given, in arrival order."""
    data = config.data
    keys = list(history.frames)
    if since is not None and since in keys:
        skip = [*skip, *keys[: keys.index(since)]]
    before = [f for k, f in history.frames.items() if k != new_id and k not in skip]
    parts = [holdout_split(f, data.label, data.holdout_fraction, drop_duplicates=data.duplicates == "drop")[0] for f in before]
    return pd.concat(parts, ignore_index=True) if parts else None


def metric_key(name: str) -> str:
    """A feature name as MLflow accepts it in a metric key (letters, digits, _ - . / : and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)[:200]


def drift_metrics(drift: DriftReport) -> dict[str, float]:
    """Per-feature statistic, p-value and flag, and the summary, as flat metric names."""
    metrics: dict[str, float] = {
        "drift.drifted": float(drift.drifted),
        "drift.share": drift.share,
        "drift.drifted_features": float(len(drift.drifted_features)),
        "drift.label_drifted": float(drift.label_drifted),
        "drift.reference_rows": float(drift.reference_rows),
        "drift.current_rows": float(drift.current_rows),
    }
    for row in drift.rows():
        key = f"drift.{metric_key(row['feature'])}"
        metrics[f"{key}.statistic"] = row["statistic"]
        metrics[f"{key}.drifted"] = float(row["drifted"])
        if row["p_value"] is not None:
            metrics[f"{key}.p_value"] = row["p_value"]
    return metrics


def drift_document(drift: DriftReport, plan: TrainingPlan | None = None) -> dict[str, Any]:
    """drift.json: the decision, the training change it caused, and every test."""
    return {
        "drifted": drift.drifted,
        "action": drift.action,
        "message": drift.message(),
        "drifted_features": drift.drifted_features,
        "share": drift.share,
        "label_drifted": drift.label_drifted,
        "new_classes": drift.new_classes,
        "reference_rows": drift.reference_rows,
        "current_rows": drift.current_rows,
        "skipped": drift.skipped,
        "training": plan.note if plan is not None else None,
        "tests": drift.rows(),
    }


@task(name="log-drift", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_drift(ws: Workspace, config: RegistryConfig, run_id: str, drift: DriftReport, plan: TrainingPlan | None = None) -> None:
    """Attach the drift to the candidate's run: the statistics as metrics (batched), drift.json, and tags for the decision."""
    from mlflow.entities import Metric, RunTag

    client, _ = connect(ws, config)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in drift_metrics(drift).items()]
    tags = [RunTag(TAG + "drift_action", drift.action or "none"), RunTag(TAG + "drift_features", ",".join(drift.drifted_features)[:5000])]
    if plan is not None and plan.note:
        tags.append(RunTag(TAG + "drift_training", plan.note))
    # Re-logging the same values is harmless, so a retry is too.
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH], tags=tags if start == 0 else [])
    with tempfile.TemporaryDirectory(prefix="lepton-drift-") as tmp:
        path = Path(tmp) / "drift.json"
        path.write_text(json.dumps(drift_document(drift, plan), indent=1, default=str))
        client.log_artifact(run_id, str(path), artifact_path="report")
