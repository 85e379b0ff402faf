"""What lepton.yaml declares about the columns and the task, against what a workspace schema holds: plain Python on
the schema's dict, so that `lepton run` can say it of a duplicate without importing pandas."""

from __future__ import annotations

from typing import Any


def declared_changes(schema: dict[str, Any], columns: dict[str, str], task: str) -> list[str]:
    """What ``columns`` and ``task`` (lepton.yaml's data.columns and data.task) declare otherwise than ``schema`` (a
    DataSchema's dict) holds, said; ``task: auto`` declares nothing."""
    kinds, features = schema.get("kinds") or {}, schema.get("features") or []
    changes = [f"data.task: {task} (was {schema.get('task', 'classification')})"] if task not in ("auto", schema.get("task", "classification")) else []
    changes += [f"column {c!r}: {k} (was {kinds.get(c, 'numeric')})" for c, k in columns.items() if c in features and kinds.get(c, "numeric") != k]
    return changes
