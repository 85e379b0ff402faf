"""The continual-training flow: ingest -> validate -> drift -> split -> train -> evaluate -> gate -> register and promote -> report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import Completed, State
from pydantic import BaseModel

from lepton import config as lepton_config
from lepton.faults import stop_on_sigterm
from lepton.tasks.drift import log_drift, measure_drift, plan_training, with_drift
from lepton.tasks.ingest import accept, ingest, quarantine, record_duplicate, release, sort_landing
from lepton.tasks.registry import config_params, finish_increment, lineage_tags, load_champion, record_rejection, register
from lepton.tasks.reporting import write_report
from lepton.tasks.splits import read, split_increments
from lepton.tasks.training import detect_change, evaluate, gate, train
from lepton.tasks.validate import validate
from lepton.tasks.versioning import git_commit, version_data
from lepton.workspace import Workspace

Status = Literal["promoted", "kept_out", "rejected", "duplicate"]
EXIT_CODES = {"promoted": 0, "kept_out": 0, "duplicate": 0, "rejected": 2}


class RunOutcome(BaseModel):
    """What happened to one increment; ``message`` is the sentence the CLI ends with."""

    status: Status
    increment_id: str
    file: str
    message: str
    reasons: list[str] = []
    failures: list[str] = []
    version: int | None = None
    champion_version: int | None = None
    parent_version: int | None = None
    data_hash: str | None = None
    metrics: dict[str, float | None] = {}
    warnings: list[str] = []  # unusual but not wrong: duplicates, growth, new categories (the increment was processed)
    notes: list[str] = []  # what a first increment decided: the task and each column's kind
    concept_change: bool = False  # the champion did much worse on this increment than on earlier ones
    report: str | None = None  # the run's report page, relative to the workspace
    drift: list[dict] | None = None  # per test: feature, test, statistic, p_value, drifted; None when not compared
    drift_action: str | None = None  # drift.action, when the increment drifted

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@flow(name="continual-training", log_prints=False)
def continual_training(path: str, workspace: str = ".", overrides: list[str] | None = None) -> RunOutcome | State:
    """Send one increment file through the whole pipeline."""
    stop_on_sigterm()  # Prefect's SIGTERM exception can be swallowed mid-training; the run must stop anyway
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root, overrides)

    landing = ingest(Path(path), ws)
    known = landing.duplicate_of
    # Accepted before: an earlier run may have stopped part-way (a crash, a registry that was
    # down). finish_increment completes an interrupted promotion; nothing registered means
    # the increment is picked up at training.
    earlier = finish_increment(ws, config.registry, known.id) if known is not None and known.state == "accepted" else None
    route = sort_landing(known, earlier)
    if route == "finished":
        was = earlier.move.from_version
        message = f"promoted as version {earlier.version}" + (f" (champion was version {was})" if was else " (first champion)") + ", finishing an interrupted run"
        log.warning(message)
        return RunOutcome(
            status="promoted", increment_id=landing.id, file=known.file, message=message,
            version=earlier.version, champion_version=earlier.version, parent_version=was,
        )
    if route == "duplicate":
        record_duplicate(ws, landing)
        message = f"duplicate of increment {known.id} ({known.state}, {known.file}): nothing to do"
        log.info(message)
        return RunOutcome(status="duplicate", increment_id=landing.id, file=known.file, message=message)
    resume = route == "resume"
    drift = None
    if resume:
        log.warning("increment %s was accepted but no model version was registered for it: resuming at training", landing.id)
        data_hash = version_data(ws, config.dvc)
    else:
        version_data(ws, config.dvc)
        if route == "retry":
            log.warning("increment %s was rejected before (%s): validating it again under the current configuration", landing.id, "; ".join(known.reasons))
        else:
            log.info("ingested %s as increment %s", landing.source, landing.id)

        frame, read_error = read(landing.path)
        report = validate(frame, read_error, ws.read_schema(), config.data, data_docs=ws.state, run_name=landing.id)
        drift = measure_drift(ws, frame, config.data, config.drift) if report.passed else None
        report = with_drift(report, drift)  # drift.action=block rejects a drifted increment like invalid data
        if not report.passed:
            where = quarantine(landing, ws, report.problems)
            data_hash = version_data(ws, config.dvc)
            message = f"rejected because {'; '.join(report.problems)}; quarantined at {where.relative_to(ws.root)}"
            log.warning(message)
            # In MLflow too, where the model's users look; the verdict stands if the registry is down.
            recorded = record_rejection(ws, config.registry, landing.id, str(where.relative_to(ws.root)), report.problems, return_state=True)
            if recorded.is_failed():
                log.warning("the rejection could not be recorded in MLflow: %s", recorded.message)
            outcome = RunOutcome(
                status="rejected", increment_id=landing.id, file=str(where.relative_to(ws.root)),
                message=message, reasons=report.problems, failures=report.problems, data_hash=data_hash, warnings=report.warnings,
                drift=drift.rows() if drift and not drift.skipped else None, drift_action=drift.action if drift else None,
                champion_version=None if recorded.is_failed() else recorded.result(),
            )
            outcome.report = write_report(ws, config.registry, outcome, validation=report)
            # Completed, but not a promotion: a state of its own that the UI shows and filters on.
            return Completed(name="Rejected", message=message, data=outcome)
        log.info("validated: %d rows passed %d expectations", report.rows, report.expectations)
        for note in report.notes:
            log.info("column kinds: %s", note)
        for warning in report.warnings:
            log.warning(warning)
        if drift is not None:
            (log.warning if drift.drifted else log.info)(drift.message())
        if route == "retry":
            landing = release(landing, ws)  # out of quarantine, back with the accepted increments
        accept(landing, ws, frame, config.data)
        data_hash = version_data(ws, config.dvc)
    relative = str(landing.path.relative_to(ws.root))

    champion = load_champion(ws, config.registry)
    # No champion yet (none, or every model so far was kept out): the new network learns all that got in.
    train_frame, holdouts = split_increments(ws, landing.id, config.data, everything=champion is None)
    if champion is None and len(holdouts) > 1:
        log.info("no champion yet: the new network learns all %d accepted increments (%d training rows)", len(holdouts), len(train_frame))
    plan = plan_training(ws, drift, landing.id, train_frame, config)  # on drift, replay or joint trains on more of the past
    if plan.note:
        log.warning(plan.note)
    change_at = detect_change(champion.bundle if champion else None, holdouts, landing.id, config.data.label, config.gate)
    changed = change_at is not None and change_at == landing.id
    if changed:
        log.warning("concept change: the champion does much worse on this increment than on earlier ones; a new network learns it, and forgetting is judged from here on")
    candidate, training = train(
        champion.bundle if champion and plan.warm_start else None, plan.frame, ws.read_schema(), config.data, config.train, config.strategy,
        plan.rehearse, concept_change=changed, steady=drift is not None and drift.steady,
    )
    candidate.meta["concept_change_at"] = change_at
    log.info(
        "trained on %d samples (%d new, %d from memory) for %d epochs at lr %g on %s in %.1fs, final loss %.4f",
        training.new_samples + training.memory_samples, training.new_samples, training.memory_samples,
        config.train.epochs, training.lr, training.device, training.seconds, training.losses[-1],
    )
    evaluation = evaluate(candidate, champion.bundle if champion else None, holdouts, landing.id, config.data.label)
    decision = gate(evaluation, config.gate, change_at)
    log.info("gate %s: %s", "passed" if decision.passed else "failed", "; ".join(decision.reasons))

    metrics = {**evaluation.metrics(), "train_seconds": training.seconds, "train_samples": float(training.train_samples), "final_train_loss": training.losses[-1]}
    parent = champion.version if champion else None
    tags = lineage_tags(
        increment_id=landing.id, increment_file=relative, data_hash=data_hash, git_commit=git_commit(ws.root),
        parent_version=parent, config=config, decision=decision, summary=evaluation.summary(),
    )
    # Registered, and promoted if the gate passed, only while the champion is still the parent.
    registration = register(
        ws, config.registry, candidate, train_frame, promote=decision.passed,
        run_name=f"increment-{landing.id}", params=config_params(config), metrics=metrics, tags=tags,
    )
    if registration.stale:
        # Another run promoted meanwhile: this candidate was gated against a champion that is gone.
        # Nothing was registered; the increment goes again from the new champion, as a re-run would
        # (from its copy in data/, the same content, whatever became of the file it arrived as).
        log.warning("the champion moved from version %s to version %s while this run trained: training again from it", parent, registration.champion)
        return continual_training(str(landing.path), workspace, overrides)
    if not registration.created:
        message = f"duplicate: another run registered increment {landing.id} as version {registration.version} meanwhile; nothing to do"
        log.info(message)
        return RunOutcome(status="duplicate", increment_id=landing.id, file=relative, message=message, version=registration.version, champion_version=registration.champion)
    version, run_id = registration.version, registration.run_id
    if drift is not None:
        log_drift(ws, config.registry, run_id, drift, plan)
    if decision.passed:
        status: Status = "promoted"
        champion_after = version
        message = f"promoted as version {version}" + (f" (champion was version {parent})" if parent else " (first champion)")
    else:
        status = "kept_out"
        champion_after = parent
        stays = f"champion stays version {parent}" if parent else "no champion yet"
        message = f"kept out by the gate because {'; '.join(decision.failures)}; registered as version {version}, {stays}"
    log.info(message)
    outcome = RunOutcome(
        status=status, increment_id=landing.id, file=relative, message=message, reasons=list(decision.reasons), failures=list(decision.failures),
        version=version, champion_version=champion_after, parent_version=parent, data_hash=data_hash,
        metrics=evaluation.summary(), drift=drift.rows() if drift and not drift.skipped else None, drift_action=drift.action if drift else None,
        warnings=[] if resume else report.warnings, notes=[] if resume else report.notes, concept_change=changed,
    )
    outcome.report = write_report(
        ws, config.registry, outcome, validation=None if resume else report, training=training, evaluation=evaluation,
        decision=decision, run_id=run_id, tags=tags,
    )
    return outcome
