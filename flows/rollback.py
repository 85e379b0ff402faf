"""The rollback flow: move the champion back and record why (the rollback deployment)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import Field, PositiveInt

from lepton import config as lepton_config
from lepton.history import AliasMove
from lepton.workspace import Workspace
from tasks.registry import plan_rollback
from tasks.registry import rollback as move_back


@flow(name="rollback")
def rollback(
    workspace: str = ".",
    to: PositiveInt | None = None,
    reason: Annotated[str, Field(min_length=1)] = "rolled back by hand",
) -> AliasMove | State | None:
    """Move the champion back to an earlier version and record the move; None when it is already there.

    Args:
        workspace: Lepton workspace directory, as the worker sees it.
        to: Model version to make champion; default the previous champion in the history.
        reason: Why, kept in the history on the registered model.
    """
    log = get_run_logger()
    ws = Workspace.at(workspace)
    config = lepton_config.load(ws.root)
    plan = plan_rollback(ws, config.registry, to)
    if plan.problem:
        # A refusal, not a crash: the run fails with the reason and no traceback.
        log.error("rollback refused: %s", plan.problem)
        return Failed(message=plan.problem)
    assert plan.target is not None
    move = move_back(ws, config.registry, plan.target, reason)
    if move is None:
        log.info("version %s is already the champion: nothing moved", plan.target)
    else:
        log.info("champion moved back from version %s to version %s: %s", move.from_version, move.to_version, reason)
    return move
