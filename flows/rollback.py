"""The rollback flow: move the champion back to a former champion and record why (the rollback deployment); and a promotion by hand."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import AfterValidator, Field, PositiveInt

from lepton import config as lepton_config
from lepton.flows.handback import keeps_return
from lepton.history import AliasMove
from lepton.tasks.registry import keep_answers
from lepton.tasks.rollback import plan_promotion, plan_rollback, promote_by_hand
from lepton.tasks.rollback import rollback as move_back
from lepton.workspace import Workspace


def _absolute(workspace: str) -> str:
    # A deployment's worker runs in the Lepton checkout: a relative default would be the source
    # tree's own lepton.yaml, not the operator's workspace.
    if not PurePosixPath(workspace).is_absolute():
        raise ValueError(f"workspace must be the absolute path of a Lepton workspace as the worker sees it (e.g. /srv/churn), not {workspace!r}")
    return workspace


# Every deployment names its workspace; the pattern lets the server refuse a run before it exists.
WorkspacePath = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": "^/"}), AfterValidator(_absolute)]


@flow(name="rollback")
@keeps_return
def rollback(
    workspace: WorkspacePath,
    to: PositiveInt | None = None,
    reason: Annotated[str, Field(min_length=1)] = "rolled back by hand",
) -> AliasMove | State | None:
    """Move the champion back to a former champion and record the move; None when it is already there.

    Args:
        workspace: Lepton workspace directory (absolute), as the worker sees it.
        to: Former champion to make champion again; default the previous champion in the history.
        reason: Why, kept in the history on the registered model.
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root)
    plan = plan_rollback(ws, config.registry, to)
    if plan.problem:
        # A refusal, not a crash: the run fails with the reason and no traceback.
        log.error("rollback refused: %s", plan.problem)
        return Failed(name="Refused", message=plan.problem)
    assert plan.target is not None
    move = move_back(ws, config.registry, plan.target, reason)
    if move is None:
        log.info("version %s is already the champion: nothing moved", plan.target)
    else:
        log.info("champion moved from version %s to version %s: %s", move.from_version, move.to_version, reason)
        keep_answers(ws, config.registry)
    return move


@flow(name="promote")
@keeps_return
def promote(
    workspace: WorkspacePath,
    version: PositiveInt,
    reason: Annotated[str, Field(min_length=1)],
    force: bool = False,
) -> AliasMove | State | None:
    """Make a version champion by hand, recorded as a manual promotion; None when it already is.

    Args:
        workspace: Lepton workspace directory (absolute), as the worker sees it.
        version: Model version to make champion.
        reason: Why, kept in the history on the registered model.
        force: Promote a version the gate kept out.
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root)
    plan = plan_promotion(ws, config.registry, version, force)
    if plan.problem:
        log.error("promotion refused: %s", plan.problem)
        return Failed(name="Refused", message=plan.problem)
    if plan.forced:
        log.warning("promoting version %s although the gate kept it out: %s", version, plan.forced)
        reason = f"{reason} [forced past the gate: {plan.forced}]"
    move = promote_by_hand(ws, config.registry, version, reason)
    if move is None:
        log.info("version %s is already the champion: nothing moved", version)
    else:
        log.info("champion moved from version %s to version %s by hand: %s", move.from_version, move.to_version, reason)
        keep_answers(ws, config.registry)
    return move
