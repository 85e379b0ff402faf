"""The champion's history: every alias move, as kept on the registered model (MLflow keeps none).

One registered-model tag per move, ``lepton.history.<seq>.<UTC time>`` holding the move as
JSON. One small tag per move rather than one growing list: a SQL registry stores a tag value
in a VARCHAR(5000), and two writers never rewrite each other's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

PREFIX = "lepton.history."
REASON_LIMIT = 2000  # keeps a record well under the registry's 5000-character tag values

Kind = Literal["promote", "rollback"]


class AliasMove(BaseModel):
    """One move of an alias: from which version to which, by which run, when and why."""

    seq: int = Field(description="Position in the history, from 1.")
    alias: str
    kind: Kind
    from_version: int | None = Field(description="Version the alias pointed at before; None for the first champion.")
    to_version: int
    at: datetime
    reason: str
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    user: str | None = None
    manual: bool = Field(False, description="A promotion made by hand (`lepton promote`), not by the gate.")

    def tag(self) -> tuple[str, str]:
        """The registered-model tag (key, value) that records this move."""
        return f"{PREFIX}{self.seq:06d}.{self.at:%Y%m%dT%H%M%S%fZ}", self.model_dump_json()


def new_move(
    history: list[AliasMove], *, alias: str, kind: Kind, from_version: int | None, to_version: int, reason: str,
    flow_run_id: str | None = None, flow_run_name: str | None = None, user: str | None = None, manual: bool = False,
) -> AliasMove:
    """The next move after ``history``, stamped now."""
    reason = reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."
    return AliasMove(
        seq=(history[-1].seq + 1) if history else 1, alias=alias, kind=kind, from_version=from_version, to_version=to_version,
        at=datetime.now(timezone.utc), reason=reason, flow_run_id=flow_run_id, flow_run_name=flow_run_name, user=user, manual=manual,
    )


def parse(tags: Mapping[str, str], alias: str) -> list[AliasMove]:
    """The moves of ``alias`` recorded in a registered model's tags, oldest first."""
    moves = [AliasMove.model_validate_json(value) for key, value in tags.items() if key.startswith(PREFIX)]
    return sorted((m for m in moves if m.alias == alias), key=lambda m: (m.seq, m.at))


def recorded(history: list[AliasMove], current: int | None, target: int) -> bool:
    """Whether ``current -> target`` is already the last record: a retried move writes no second one."""
    return bool(history) and history[-1].from_version == current and history[-1].to_version == target


def unapplied(history: list[AliasMove], current: int | None) -> AliasMove | None:
    """The last record if its alias never moved (its run died between record and alias): it starts from ``current`` and ends elsewhere."""
    if history and history[-1].from_version == current and history[-1].to_version != current:
        return history[-1]
    return None


def applied(history: list[AliasMove], current: int | None) -> list[bool]:
    """Whether each record's move took place. Its run may have died between record and alias: the last record then
    starts from ``current`` and ends elsewhere (``unapplied``), and an earlier one is followed by a record that starts
    where it started (another run moved the alias from there; the file's own re-run would have finished the move)."""
    last = unapplied(history, current)
    return [
        m is not last and not (i + 1 < len(history) and history[i + 1].from_version == m.from_version != m.to_version)
        for i, m in enumerate(history)
    ]


def was_champion(history: list[AliasMove], current: int | None, version: int) -> bool:
    """Whether ``version`` ever held the alias: it holds it now, or a record whose move took place moved it there."""
    return current == version or any(m.to_version == version for m, ok in zip(history, applied(history, current), strict=True) if ok)


def champions(history: list[AliasMove], current: int | None) -> list[int]:
    """The chain of champions that led to ``current``, oldest first: a promotion adds one, a rollback goes back to its target.

    A rollback to a version in the chain drops the versions after it; one to a version that is
    not (a former champion rolled away from, or a record from before rollbacks were limited to
    former champions) adds it, as a promotion would.
    """
    chain: list[int] = []
    for move in (m for m, ok in zip(history, applied(history, current), strict=True) if ok):
        if move.kind == "rollback" and move.to_version in chain:
            del chain[len(chain) - chain[::-1].index(move.to_version):]
        else:
            chain.append(move.to_version)
    return chain


def previous_champion(history: list[AliasMove], current: int | None) -> int | None:
    """The version to roll back to: the champion before ``current`` in the chain of champions.

    Going back twice goes back two steps (a version that was rolled away from is left behind),
    not back and forth between the last two.
    """
    chain = champions(history, current)
    if chain and chain[-1] == current:
        chain.pop()
    return next((v for v in reversed(chain) if v != current), None)
