"""The continual-training flow: ingest -> validate -> drift -> split -> train -> evaluate -> gate -> register and promote -> report."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Completed, State

from lepton import config as lepton_config
from lepton.faults import stop_if_terminated, stop_on_sigterm
from lepton.flows.handback import keeps_return
from lepton.lineage import TAG
from lepton.models.schema import DataSchema
from lepton.tasks.drift import log_drift, measure_drift, plan_anew, plan_retraining, plan_training, with_drift
from lepton.tasks.ingest import accept, ingest, quarantine, record_duplicate, record_same_rows, release, sort_landing
from lepton.tasks.outcome import RunOutcome
from lepton.tasks.registry import config_params, finish_increment, keep_answers, learnt_since, lineage_of, load_champion, load_source, record_rejection, register, transfer_summary
from lepton.tasks.reporting import write_report
from lepton.tasks.splits import (
    encoding_changed, file_key, keep_rows, narrow_schema, not_learnt, promoted_on, read, read_history, redeclare, repeated_rows, said_repeated, same_rows, split_increments, with_accepted,
)
from lepton.tasks.tracking import registry_key_of, registry_lost
from lepton.tasks.training import change_not_learnt, detect_change, evaluate, gate, learnable, rival_wins, run_metrics, train, train_aside, weigh_drift, workspace_networks
from lepton.tasks.validate import validate
from lepton.tasks.versioning import git_commit, version_data
from lepton.workspace import Workspace

# Trainings of one increment when other runs keep promoting meanwhile (each attempt starts from the new champion).
ATTEMPTS = 3


@flow(name="continual-training", log_prints=False)
@keeps_return
def continual_training(path: str, workspace: str = ".", overrides: list[str] | None = None) -> RunOutcome | State:
    """Send one increment file through the whole pipeline."""
    stop_on_sigterm()  # Prefect's SIGTERM exception can be swallowed mid-training; the run must stop anyway
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root, overrides)
    config.train = workspace_networks(ws.root, config.train)
    # A first run loads the source before anything is ingested: one that is not there fails first.
    source = load_source(ws, config.train, config.registry) if config.train.transfer_from and not ws.read_manifest().accepted() else None

    landing = ingest(Path(path), ws)
    known = landing.duplicate_of
    # Accepted before: an earlier run may have stopped part-way (a crash, a registry that was
    # down). finish_increment completes an interrupted promotion; nothing registered means
    # the increment is picked up at training.
    earlier = finish_increment(ws, config.registry, known.id) if known is not None and known.state == "accepted" else None
    route = sort_landing(known, earlier)
    if route == "finished":
        outcome = RunOutcome.finished(landing.id, known.file, earlier)
        log.warning(outcome.message)
        ws.mark_finished(landing.id, registry_key_of(ws, config.registry))
        return outcome
    if route == "duplicate":
        record_duplicate(ws, landing)
        outcome = RunOutcome.duplicate(landing.id, known, ws.declared_otherwise(config.data.columns, config.data.task))
        log.info(outcome.message)
        ws.mark_finished(landing.id, registry_key_of(ws, config.registry))  # recorded by a version older than these records
        return outcome

    report, drift = None, None
    # Column kinds or a task declared since the first increment decided them: from this increment on, the data reads so.
    redeclared = redeclare(ws, config.data)
    if redeclared:
        log.warning("lepton.yaml declares %s: the schema is read again from the accepted increments", "; ".join(redeclared))
    if route == "resume":
        history = read_history(ws)
        learnt = learnt_since(ws, config.registry, list(history.frames), landing.id)
        if learnt is not None:  # a later increment's run learnt it with its own: training it again would count it twice
            outcome = RunOutcome.learnt_since(landing.id, known, *learnt)
            log.info(outcome.message)
            ws.mark_finished(landing.id, registry_key_of(ws, config.registry))
            return outcome
        log.warning("increment %s was accepted but no model version was registered for it: resuming at training", landing.id)
    else:
        version_data(ws, config.dvc)
        if route == "retry":
            log.warning("increment %s was rejected before (%s): validating it again under the current configuration", landing.id, "; ".join(known.reasons))
        else:
            log.info("ingested %s as increment %s", landing.source, landing.id)

        stamp = file_key(landing.path)  # before the read: the rows cache keeps the frame under it once accepted
        frame, read_error = read(landing.path)
        schema = ws.read_schema()  # as the accepted increments left it; accepting this one may write it
        respelled = []
        if frame is not None and schema is not None:  # 'latino' for the known 'Latino': the known spelling
            frame, respelled = DataSchema.from_dict(schema).respelled(frame)
        report = validate(frame, read_error, schema, config.data, data_docs=ws.state, run_name=landing.id)
        if respelled and report.passed:
            report = replace(report, warnings=[*respelled, *report.warnings])
        history = read_history(ws) if report.passed else None  # every accepted increment, read once for the whole run
        same = same_rows(history, frame, landing.id) if history is not None and route == "fresh" else None
        if same is not None:  # the rows of an accepted increment, in another file, format or order: learnt already
            known = record_same_rows(ws, landing, same)
            version_data(ws, config.dvc)
            outcome = RunOutcome.same_rows(landing.id, known)
            log.warning(outcome.message)
            return outcome
        repeated, repeats = repeated_rows(history, frame, landing.id) if history is not None else (0, {})
        if repeated:  # said, not refused: rows that repeat are data too
            report = replace(report, warnings=[*report.warnings, said_repeated(repeated, repeats, len(frame))])
        drift = measure_drift(history, frame, config.data, config.drift, schema) if history is not None else None
        report = with_drift(report, drift)  # drift.action=block rejects a drifted increment like invalid data
        if not report.passed:
            where = str(quarantine(landing, ws, report.problems).relative_to(ws.root))
            data_hash = version_data(ws, config.dvc)
            # In MLflow too, where the model's users look; the verdict stands if the registry is down.
            recorded = record_rejection(ws, config.registry, landing.id, where, report.problems, return_state=True)
            outcome = RunOutcome.rejected(
                landing.id, where, report, data_hash=data_hash, drift=drift, champion_version=None if recorded.is_failed() else recorded.result(),
            )
            log.warning(outcome.message)
            if recorded.is_failed():
                log.warning("the rejection could not be recorded in MLflow: %s", recorded.message)
            outcome.report = write_report(ws, config.registry, outcome, validation=report)
            if not recorded.is_failed():
                keep_answers(ws, config.registry)
            # Completed, but not a promotion: a state of its own that the UI shows and filters on.
            return Completed(name="Rejected", message=outcome.message, data=outcome)
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
        hashes = keep_rows(ws, landing.id, stamp, frame)  # the runs after this one need not parse its file again
        history = with_accepted(history, landing.id, frame, hashes)  # as read from its stored copy: not read again
    data_hash = version_data(ws, config.dvc)
    relative = str(landing.path.relative_to(ws.root))

    # Registered, and promoted if the gate passed, only while the champion is still the candidate's
    # parent: when another run promoted meanwhile, this candidate was gated against a champion that
    # is gone, and the increment trains again from the new one.
    for _ in range(ATTEMPTS):
        champion = load_champion(ws, config.registry)
        schema = ws.read_schema()  # with this increment accepted (and any another run accepted meanwhile): every network of this attempt reads it
        parent = champion.version if champion else None
        # The schema reads the data otherwise than the champion learnt it (kinds or a task declared since): a new network
        # learns everything. After a task change the champion's predictions do not compare with a candidate's at all.
        reread = encoding_changed(champion.bundle, schema) if champion else None
        judge = None if champion is None or champion.bundle.preprocessor.task != schema["task"] else champion.bundle
        # What the champion has not learnt is learnt with the increment: everything that got in while no model has
        # passed the gate, and the increments the gate kept out since the champion was trained.
        learnt_from = champion.tags.get(f"{TAG}increment_id", landing.id) if champion else None
        also = not_learnt(history, landing.id, learnt_from)
        # The holdouts the champion was chosen on: it passed the gate against the champion before it there. A first model
        # (the floors alone), a new network after a task change, or a version promoted by hand was not chosen on any.
        chosen_on = promoted_on(history, landing.id, learnt_from) if champion and champion.bundle.meta.get("chosen", True) else []
        train_frame, holdouts = split_increments(history, landing.id, config.data)
        change_at = detect_change(judge, holdouts, landing.id, config.data.label, config.gate, history.frames[landing.id])
        changed = change_at is not None and change_at == landing.id
        if changed:
            log.warning("concept change at this increment: a new network learns it, and forgetting is judged from here on")
        kept_out = also
        also = [] if changed else learnable(
            judge, holdouts, also, config.data.label, config.gate, {k: history.frames[k] for k in also if k in history.frames},
        )  # at a change, theirs is the old rule
        left_out = [k for k in kept_out if k not in also] if not changed else []  # noisy kept-out increments: no network learns them
        # Once left out, an increment stays out, of training and of judgement alike: its holdout (labels in another unit,
        # or noise) would fail every later candidate on the floors. The champion's lineage carries the list.
        earlier_left = [k for k in (champion.bundle.meta.get("left_out", []) if champion else []) if k in holdouts and k != landing.id]
        left_out = [*earlier_left, *(k for k in left_out if k not in earlier_left)]
        if any(k not in earlier_left for k in left_out):  # newly left out: what validation judges by no longer counts it
            narrow_schema(ws, history, left_out)
        if left_out:
            holdouts = {k: frame for k, frame in holdouts.items() if k not in left_out}
            log.info("not judged on the holdouts of %d increment(s) left out as unlike what the champion learnt: %s", len(left_out), ", ".join(left_out))
        if also:
            train_frame, _ = split_increments(history, landing.id, config.data, also=also)
        if champion is None and also:
            log.info("no champion yet: the new network learns all %d accepted increments (%d training rows)", len(also) + 1, len(train_frame))
            lost = ws.registered_before(registry_key_of(ws, config.registry))
            if lost:
                log.warning(registry_lost(lost, config.registry.model_name))
        elif also:
            log.info("the candidate learns the %d increment(s) accepted since the champion's that it has not learnt (kept out by the gate, "
                     "or left by a run that stopped, or after a rollback) with this one (%d training rows)", len(also), len(train_frame))
        # Rows before an earlier concept change follow the old rule: no rival, replay or joint learns them.
        since = change_at if change_at is not None and change_at != landing.id else None
        plan = plan_training(history, drift, landing.id, train_frame, config, also, left_out, since)  # on drift, replay, joint or compete trains on more of the past
        if reread:
            plan = plan_anew(history, landing.id, train_frame, config, also, left_out, why=reread)
        if plan.note and plan.rival is None:  # a rival's note is said once the run knows whether it trains one
            log.warning(plan.note)
        if champion is None and config.train.transfer_from and source is None:
            source = load_source(ws, config.train, config.registry)  # no champion after earlier increments (kept out, or failed)
        # No rival when the candidate already is a new network on everything (joint).
        fine_tuned = plan.warm_start and "joint" not in config.strategy.names
        if not fine_tuned:
            plan = replace(plan, rival=None)
        # drift.action=compete: whether the drift hurts the champion is known before the fine-tune; when it does, the
        # rival trains from now on beside it, in a forked process on the core the fine-tune leaves idle.
        champion_scores, harm, aside = None, None, None
        if plan.rival is not None and champion is not None:
            champion_scores, *harm = weigh_drift(champion.bundle, holdouts, landing.id, config.data.label, config.gate, change_at)
            if harm[0]:
                aside = train_aside(plan.rival, schema, config.data, config.train, config.strategy, champion.bundle)
        candidate, training = train(
            champion.bundle if champion and plan.warm_start else None, plan.frame, schema, config.data, config.train, config.strategy,
            plan.rehearse, concept_change=changed, steady=drift is not None and drift.steady, source=source if champion is None else None,
        )
        if training.transfer is not None:
            log.info("first network, train.transfer_from=%s", transfer_summary(training.transfer))
        elif champion is None and config.train.network_weights:
            log.info("first network's feature layers from %s (train.network_weights)", config.train.network_weights)
        log.info(
            "trained on %d samples (%d new, %d from memory) for %d epochs at lr %g on %s (%d thread(s)) in %.1fs, final loss %.4f",
            training.new_samples + training.memory_samples, training.new_samples, training.memory_samples,
            training.epochs, training.lr, training.device, training.threads, training.seconds, training.losses[-1],
        )
        if training.epoch_choice is not None and training.epoch_choice.scores:
            log.info("new network: %s", training.epoch_choice.summary(config.train.epochs))
        if training.best_epoch is not None:
            log.info("kept the weights of epoch %d of %d, the best on %.0f%% of the rows held out (train.early_stopping)", training.best_epoch, config.train.epochs, 100 * config.train.early_stopping)
        evaluation = evaluate(candidate, judge, holdouts, landing.id, config.data.label, champion_scores)
        alone = "no champion yet" if champion is None else f"{reread}, so its predictions do not compare with the candidate's"
        decision = gate(evaluation, config.gate, change_at, alone=alone, chosen_on=chosen_on)
        # After a concept change the gate follows the change only for a candidate that learnt the new rule: a rival
        # is judged on all holdouts else.
        if fine_tuned and plan.rival is None and champion is not None and not decision.passed and config.gate.fallback == "retrain":
            log.info("the fine-tuned candidate failed the gate: %s", "; ".join(decision.failures))
            plan = plan_retraining(plan, history, landing.id, config, also, left_out, since)
            log.warning(plan.note)
        elif plan.rival is not None and champion is not None and decision.passed:
            hurt, how = harm
            if hurt:
                plan = replace(plan, note=f"{plan.note}, as {how}")
            else:  # drift the champion copes with, and a fine-tuned candidate that passed: no rival needed
                plan = replace(plan, rival=None, note=f"drift.action=compete: no new network trained: {how}, and the fine-tuned candidate passed the gate")
                log.info(plan.note)
        elif plan.rival is not None and champion is not None:
            plan = replace(plan, note=f"{plan.note}, as the fine-tuned candidate failed the gate")
        if plan.rival is not None and champion is not None:  # drift.action=compete, or the gate's fallback
            # Whatever the child takes beyond the fine-tune's own time (scaled by their rows) past a minute is not training.
            limit = 60 + 10 * training.seconds * max(1.0, len(plan.rival) / max(len(plan.frame), 1))
            rival, rival_training = train.with_options(name="retrain")(
                None, plan.rival, schema, config.data, config.train, config.strategy, aside=aside, limit=limit,
            )
            if rival_training.epoch_choice is not None and rival_training.epoch_choice.scores:
                log.info("retrained network: %s", rival_training.epoch_choice.summary(config.train.epochs))
            rival_evaluation = evaluate.with_options(name="evaluate-retrained")(rival, champion.bundle, holdouts, landing.id, config.data.label, evaluation.champion)
            rival_decision = gate.with_options(name="gate-retrained")(rival_evaluation, config.gate, change_at, chosen_on=chosen_on)
            won, why = rival_wins(evaluation, rival_evaluation, config.gate, change_at, decision.passed, rival_decision.passed)
            plan = replace(plan, note=f"{plan.note}: {why}")
            log.info(plan.note)
            if won:
                candidate, training, evaluation, decision = rival, rival_training, rival_evaluation, rival_decision
        log.info("gate %s: %s", "passed" if decision.passed else "failed", "; ".join(decision.reasons))

        # A change the promoted candidate did not learn is not one: the versions after it are judged on every earlier holdout.
        recorded_change = champion.bundle.meta.get("concept_change_at") if changed and champion and change_not_learnt(evaluation, change_at) else change_at
        lineage = lineage_of(
            increment_id=landing.id, increment_file=relative, data_hash=data_hash, git_commit=git_commit(ws.root),
            parent_version=parent, config=config, decision=decision, summary=evaluation.summary(), transfer=training.transfer, training=plan.note,
            left_out=left_out, new_network=not training.warm_start,
        )
        stop_if_terminated()  # a SIGTERM whose exception was swallowed: stop before anything is registered
        registration = register(
            ws, config.registry, candidate, train_frame, promote=decision.passed, run_name=f"increment-{landing.id}",
            params=config_params(config), metrics=run_metrics(evaluation, training), lineage=lineage,
            meta={
                "accuracy_matrix": evaluation.matrix, "concept_change_at": recorded_change, "left_out": left_out,
                "chosen": decision.passed and evaluation.champion is not None,  # by the gate, against a champion
            },
        )
        if not registration.stale:
            break
        log.warning("the champion moved from version %s to version %s while this run trained: training again from it", parent, registration.champion)
    else:
        raise RuntimeError(f"the champion moved {ATTEMPTS} times while increment {landing.id} trained; nothing was registered: run it again")
    if not registration.created:
        outcome = RunOutcome.raced(landing.id, relative, registration)
        log.info(outcome.message)
        ws.mark_finished(landing.id, registry_key_of(ws, config.registry))
        return outcome
    if drift is not None:
        log_drift(ws, config.registry, registration.run_id, drift, plan)
    outcome = RunOutcome.gated(
        landing.id, relative, decision, version=registration.version, parent=parent, data_hash=data_hash,
        metrics=evaluation.summary(), validation=report, drift=drift, concept_change=changed, training_note=plan.note, left_out=left_out,
    )
    log.info(outcome.message)
    outcome.report = write_report(
        ws, config.registry, outcome, validation=report, training=training, evaluation=evaluation,
        decision=decision, run_id=registration.run_id, lineage=lineage,
    )
    # Registered, and the champion moved if it passed: running this content again has nothing to do,
    # and `lepton run` can say so without starting a flow.
    ws.mark_finished(landing.id, registry_key_of(ws, config.registry))
    keep_answers(ws, config.registry)
    stop_if_terminated()  # registered and promoted, but the sender asked it to stop: not a success to report
    return outcome
