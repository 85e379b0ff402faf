"""A model version's lineage: the data, code, parent and verdict it came from, as a typed value and as MLflow tags.

The registry stores it as ``lepton.*`` tags on each version; everything else (registration, the
report, ``lepton versions``) passes the typed value, and reads stored tags back through
``Lineage.from_tags``. No Prefect or MLflow import: the read-only commands use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Why an accepted increment is out of the model (its lineage's ``left_out``): said by the run that leaves it out and by
# `lepton status`.
LEFT_OUT_WHY = "labels unlike what the champion learnt (noise, another unit, or a change it did not follow)"

TAG = "lepton."


@dataclass(frozen=True)
class Lineage:
    increment_id: str
    increment_file: str
    data_hash: str
    git_commit: str
    parent_version: int | None  # the champion it was gated against (and trained from, unless new_network); None for a first model
    strategy: str
    config: dict[str, Any] = field(default_factory=dict)  # the run's configuration, credentials masked
    gate_passed: bool = False
    gate_reasons: tuple[str, ...] = ()
    gate_notes: tuple[str, ...] = ()  # of the reasons, those that check nothing
    metrics: dict[str, float] = field(default_factory=dict)  # the gate's summary, rounded
    transferred_from: str = ""  # a first model started from another: models:/NAME/VERSION and how (frozen, partial, full)
    transfer: str = ""  # a first model with train.transfer_from: what was tried and kept, scratch included
    training: str = ""  # what changed in training: drift's replay, joint or compete, the gate's fallback, and which network went to the gate
    left_out: tuple[str, ...] = ()  # accepted increments neither learnt nor judged: their labels unlike what the champion learnt
    new_network: bool = False  # a network trained from scratch beside a champion (retrained, or a task declared anew): not from its parent's weights

    def tags(self) -> dict[str, str]:
        """The version's tags: what lets it be traced to, and rebuilt from, its data and code."""
        return {
            TAG + "increment_id": self.increment_id,
            TAG + "increment_file": self.increment_file,
            TAG + "data_hash": self.data_hash,
            TAG + "git_commit": self.git_commit,
            TAG + "parent_version": str(self.parent_version) if self.parent_version is not None else "none",
            TAG + "strategy": self.strategy,
            TAG + "config": json.dumps(self.config),
            TAG + "gate_passed": str(self.gate_passed).lower(),
            TAG + "gate_reasons": json.dumps(list(self.gate_reasons)),
            TAG + "metrics": json.dumps(self.metrics),
        } | ({TAG + "transferred_from": self.transferred_from} if self.transferred_from else {}) | ({TAG + "transfer": self.transfer} if self.transfer else {}) | (
            {TAG + "training": self.training} if self.training else {}) | ({TAG + "left_out": json.dumps(list(self.left_out))} if self.left_out else {}) | (
            {TAG + "gate_notes": json.dumps(list(self.gate_notes))} if self.gate_notes else {}) | ({TAG + "new_network": "true"} if self.new_network else {})

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        """The lineage a version's tags record; a tag that is missing (a version registered by hand) reads as empty."""
        parent = tags.get(TAG + "parent_version", "none")
        return cls(
            increment_id=tags.get(TAG + "increment_id", ""),
            increment_file=tags.get(TAG + "increment_file", ""),
            data_hash=tags.get(TAG + "data_hash", ""),
            git_commit=tags.get(TAG + "git_commit", ""),
            parent_version=None if parent == "none" else int(parent),
            strategy=tags.get(TAG + "strategy", ""),
            config=json.loads(tags.get(TAG + "config", "{}")),
            gate_passed=tags.get(TAG + "gate_passed") == "true",
            gate_reasons=tuple(json.loads(tags.get(TAG + "gate_reasons", "[]"))),
            gate_notes=tuple(json.loads(tags.get(TAG + "gate_notes", "[]"))),
            metrics=json.loads(tags.get(TAG + "metrics", "{}")),
            transferred_from=tags.get(TAG + "transferred_from", ""),
            transfer=tags.get(TAG + "transfer", ""),
            training=tags.get(TAG + "training", ""),
            left_out=tuple(json.loads(tags.get(TAG + "left_out", "[]"))),
            new_network=tags.get(TAG + "new_network") == "true",
        )

    @property
    def promotion_reason(self) -> str:
        """What the history records when the gate promotes this version."""
        return "gate passed: " + "; ".join(self.gate_reasons) if self.gate_reasons else "promoted"
