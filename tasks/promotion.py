"""The ``champion`` alias and its history: every move recorded, each one a compare-and-set under the champion lock."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import RegistryConfig
from lepton.faults import checkpoint
from lepton.history import AliasMove, Kind, new_move, recorded, unapplied
from lepton.lineage import Lineage
from lepton.tasks.tracking import ALIAS, BACKOFF, champion_history, champion_version, connect
from lepton.workspace import Workspace


class StaleChampion(RuntimeError):
    """The champion is no longer the version a candidate was trained from and gated against."""

    def __init__(self, expected: int | None, current: int | None):
        self.expected, self.current = expected, current
        super().__init__(
            f"the champion is version {current}, not version {expected} that the candidate was trained from: "
            "it moved while this run was training"
        )


def _not_stale(task: Any, task_run: Any, state: Any) -> bool:
    """Retry anything but a champion that moved: trying again cannot bring it back."""
    try:
        state.result()
    except StaleChampion:
        return False
    except Exception:
        return True
    return True


@task(name="promote", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF, retry_condition_fn=_not_stale)
def promote(ws: Workspace, config: RegistryConfig, version: int, reason: str | None = None) -> AliasMove | None:
    """Move the ``champion`` alias to ``version`` if the champion is still its parent; record the move (a retry records nothing twice).

    The reason defaults to the gate's reasons tagged on the version. Raises StaleChampion when the
    champion is no longer the version's parent.
    """
    client, _ = connect(ws, config)
    tags = client.get_model_version(config.model_name, str(version)).tags
    with ws.lock("champion"):
        lineage = Lineage.from_tags(tags)
        return move_champion(
            client, config.model_name, version, kind="promote", reason=reason or lineage.promotion_reason, expected=lineage.parent_version
        )


def _current_run() -> tuple[str | None, str | None]:
    """The Prefect flow run making a move (None outside one)."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return (str(run_id), flow_run.name) if run_id else (None, None)


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return None


ANY: Any = object()  # move_champion's ``expected`` when any current champion will do (a rollback)


def move_champion(
    client: Any, name: str, version: int, *, kind: Kind, reason: str, expected: int | None = ANY, manual: bool = False,
) -> AliasMove | None:
    """Point ``champion`` at ``version``, recording the move first; None when it already points there.

    Compare-and-set: with ``expected``, raises StaleChampion unless the champion is that version.
    The record is written before the alias: if the alias call fails or the process dies, a
    retry finds the record as the last one and only moves the alias, so history never misses a
    move. Callers hold the workspace's champion lock.
    """
    current = champion_version(client, name)
    if current == version:
        return None
    if expected is not ANY and current != expected:
        raise StaleChampion(expected, current)
    moves = champion_history(client, name)
    if recorded(moves, current, version):
        move = moves[-1]
    else:
        stray = unapplied(moves, current)
        if stray is not None:
            # Recorded from the current champion, but its run died before the alias moved and nobody
            # finished it: that move never happened. Dropped, so the history stays a chain.
            client.delete_registered_model_tag(name, stray.tag()[0])
            moves = moves[:-1]
        run_id, run_name = _current_run()
        move = new_move(
            moves, alias=ALIAS, kind=kind, from_version=current, to_version=version, reason=reason,
            flow_run_id=run_id, flow_run_name=run_name, user=_user(), manual=manual,
        )
        client.set_registered_model_tag(name, *move.tag())
        checkpoint("promote")
    client.set_registered_model_alias(name, ALIAS, str(version))
    return move


