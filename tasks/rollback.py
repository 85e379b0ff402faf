"""Moving the champion by hand: back to a former champion (rollback), or to a version named on purpose (promote)."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import RegistryConfig
from lepton.history import AliasMove, previous_champion, was_champion
from lepton.lineage import Lineage
from lepton.tasks.promotion import move_champion
from lepton.tasks.tracking import BACKOFF, champion_history, champion_version, connect, not_found
from lepton.workspace import Workspace


@dataclass(frozen=True)
class RollbackPlan:
    """Where a rollback would move the champion, or why it cannot."""

    current: int | None
    target: int | None
    problem: str | None = None
    forced: str | None = None  # a promotion by hand past the gate: why the gate kept the version out


@task(name="plan-rollback", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def plan_rollback(ws: Workspace, config: RegistryConfig, to: int | None) -> RollbackPlan:
    """The version to roll back to: ``to``, else the previous champion in the history (reads only)."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    name = config.model_name
    current = champion_version(client, name)
    moves = champion_history(client, name)
    target = to if to is not None else previous_champion(moves, current)
    if target is None:
        where = f"champion is version {current}" if current else "no champion yet"
        return RollbackPlan(current, None, f"model {name!r} has no earlier champion in its history ({where}); name a former champion with --to VERSION")
    try:
        client.get_model_version(name, str(target))
    except MlflowException as err:
        if not_found(err):
            return RollbackPlan(current, None, f"model {name!r} has no version {target}")
        raise
    if not was_champion(moves, current, target):
        # Going back is to a model that served before; anything else is a promotion, said as one.
        return RollbackPlan(
            current, None,
            f"version {target} of {name!r} was never champion: a rollback goes back to a former champion only; "
            f"to make it champion, `lepton promote {target} --reason TEXT`",
        )
    return RollbackPlan(current, target)


@task(name="plan-promotion", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def plan_promotion(ws: Workspace, config: RegistryConfig, version: int, force: bool = False) -> RollbackPlan:
    """Whether ``version`` may be promoted by hand: it exists, and passed the gate unless ``force`` (reads only)."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    name = config.model_name
    current = champion_version(client, name)
    try:
        tags = client.get_model_version(name, str(version)).tags
    except MlflowException as err:
        if not_found(err):
            return RollbackPlan(current, None, f"model {name!r} has no version {version}")
        raise
    lineage = Lineage.from_tags(tags)
    if lineage.gate_passed:
        return RollbackPlan(current, version)
    reasons = "; ".join(lineage.gate_reasons) or "no gate verdict recorded"
    if not force:
        return RollbackPlan(current, None, f"version {version} of {name!r} was kept out by the gate ({reasons}); add --force to promote it anyway")
    return RollbackPlan(current, version, forced=reasons)


# Retrying is harmless: the target is fixed by the plan, so a second attempt moves nothing twice.
@task(name="promote-by-hand", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote_by_hand(ws: Workspace, config: RegistryConfig, version: int, reason: str) -> AliasMove | None:
    """Make ``version`` champion by an operator's decision, recorded as a manual promotion; None when it already is."""
    client, _ = connect(ws, config)
    with ws.lock("champion"):
        return move_champion(client, config.model_name, version, kind="promote", reason=reason, manual=True)


# Retrying is harmless: the target is fixed by the plan, so a second attempt moves nothing twice.
@task(name="rollback", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def rollback(ws: Workspace, config: RegistryConfig, version: int, reason: str) -> AliasMove | None:
    """Move the champion back to ``version`` and record why; None when it already is the champion."""
    client, _ = connect(ws, config)
    with ws.lock("champion"):
        return move_champion(client, config.model_name, version, kind="rollback", reason=reason)
