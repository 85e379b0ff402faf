"""The report of a run: gathered from what the flow produced, written to the workspace and logged to the tracking run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lepton import report as pages
from lepton.config import RegistryConfig
from lepton.lineage import Lineage
from lepton.models.evaluation import Evaluation
from lepton.models.gate import GateDecision
from lepton.models.metrics import lineage_summary
from lepton.models.training import TrainReport
from lepton.tasks.tracking import connect
from lepton.validation import ValidationReport
from lepton.tasks.versioning import git_commit
from lepton.workspace import Workspace


def _relative(ws: Workspace, path: str | None) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).relative_to(ws.root))
    except ValueError:
        return path


def _finite(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def gather(
    ws: Workspace,
    model_name: str,
    outcome: Any,
    *,
    validation: ValidationReport | None = None,
    training: TrainReport | None = None,
    evaluation: Evaluation | None = None,
    decision: GateDecision | None = None,
    run_id: str | None = None,
    lineage: Lineage | None = None,
) -> pages.ReportData:
    """The report's data from a run's outcome (a RunOutcome) and the values the flow passed along the way."""
    record = ws.read_manifest().find(outcome.increment_id)
    holdouts = []
    if evaluation is not None:
        for key, score in evaluation.candidate.items():
            champion = evaluation.champion[key] if evaluation.champion is not None else None
            holdouts.append(
                pages.HoldoutRow(
                    # A numeric target shows R² where classes show accuracy (both: higher is better, 1 is perfect).
                    increment_id=key, rows=len(score.paired), new=key == evaluation.new_id,
                    candidate_accuracy=score.primary, champion_accuracy=champion.primary if champion else None,
                    candidate_macro_f1=score.macro_f1, champion_macro_f1=champion.macro_f1 if champion else None,
                    candidate_mae=score.mae, champion_mae=champion.mae if champion else None,
                )
            )
    return pages.ReportData(
        status=outcome.status,
        message=outcome.message,
        created=pages.now(),
        model_name=model_name,
        increment_id=outcome.increment_id,
        file=outcome.file,
        source=record.source if record else None,
        model_version=outcome.version,
        champion_version=outcome.champion_version,
        parent_version=outcome.parent_version,
        data_hash=outcome.data_hash,
        # The registered version's tag when there is one: the report shows what the registry recorded.
        git_commit=(lineage.git_commit if lineage else None) or git_commit(ws.root),
        run_id=run_id,
        strategy=(lineage.strategy if lineage else None) or (training.strategy if training else None),
        validation=None if validation is None else pages.ValidationSummary(
            passed=validation.passed, rows=validation.rows, expectations=validation.expectations, failed=validation.failed,
            problems=validation.problems, warnings=validation.warnings, notes=validation.notes, data_docs=_relative(ws, validation.data_docs),
        ),
        drift=None if outcome.drift is None else [pages.DriftRow.model_validate(row) for row in outcome.drift],
        drift_action=outcome.drift_action,
        drift_skipped=outcome.drift_skipped,
        training_note=getattr(outcome, "training_note", None),
        training=None if training is None else pages.TrainingSummary(
            losses=training.losses, seconds=training.seconds, device=training.device, strategy=training.strategy,
            new_samples=training.new_samples, memory_samples=training.memory_samples, warm_start=training.warm_start,
        ),
        holdouts=holdouts,
        summary=evaluation.summary() if evaluation is not None else {},
        lineage_metrics=lineage_summary(evaluation.matrix) if evaluation is not None and evaluation.matrix else {},
        gate=None if decision is None else [pages.GateCheck(reason=r, passed=ok is not False, note=ok is None) for r, ok in decision.checks.items()],
        matrix=_clean_matrix(evaluation.matrix) if evaluation is not None and evaluation.matrix else None,
    )


def _clean_matrix(matrix: dict) -> dict:
    """NaN (a holdout a model never met) as null, so report.json stays valid JSON."""
    return {**matrix, "rows": [[_finite(v) for v in row] for row in matrix["rows"]]}


@task(name="report", cache_policy=NO_CACHE)
def write_report(
    ws: Workspace,
    config: RegistryConfig,
    outcome: Any,
    *,
    validation: ValidationReport | None = None,
    training: TrainReport | None = None,
    evaluation: Evaluation | None = None,
    decision: GateDecision | None = None,
    run_id: str | None = None,
    lineage: Lineage | None = None,
) -> str | None:
    """Write the run's report under ``.lepton/reports/`` and, for a registered model, log it to its run under ``report/``.

    Returns the page's path relative to the workspace. A report that cannot be written is
    logged as an error and gives None: the run itself (a promotion, say) already happened.
    """
    log = get_run_logger()
    try:
        data = gather(
            ws, config.model_name, outcome, validation=validation, training=training, evaluation=evaluation,
            decision=decision, run_id=run_id, lineage=lineage,
        )
        folder = pages.reports_root(ws.state) / data.folder_name()
        page = pages.write(data, folder, ws.root)
    except Exception as err:  # a full disk, a read-only folder: the report is lost, the run is not
        log.error("could not write the report of increment %s: %s", outcome.increment_id, err)
        return None
    if run_id is not None:
        try:
            client, _ = connect(ws, config)
            client.log_artifacts(run_id, str(folder), artifact_path="report")
        except Exception as err:  # a tracking server that went away: the workspace copy stands
            log.error("could not log the report to tracking run %s: %s", run_id, err)
    relative = str(page.relative_to(ws.root))
    log.info("report: %s", relative)
    return relative

