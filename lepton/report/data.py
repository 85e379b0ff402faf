"""What a report shows, as plain data (``ReportData``), gathered by ``tasks/reporting.py``; where its files go."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel

REPORTS = "reports"
PAGE = "report.html"
DATA = "report.json"
WIDTH = 1200  # px: the page's design width, and the screenshot's

Status = Literal["promoted", "kept_out", "rejected"]


class ValidationSummary(BaseModel):
    passed: bool
    rows: int
    expectations: int
    failed: int
    problems: list[str] = []
    warnings: list[str] = []  # unusual but not wrong: processed, reported
    notes: list[str] = []  # what a first increment decided: the task and each column's kind
    data_docs: str | None = None  # the GX Data Docs page, relative to the workspace when inside it


class DriftRow(BaseModel):
    feature: str
    test: str  # "ks", "chi2" or "psi"
    statistic: float
    p_value: float | None = None
    drifted: bool
    label: bool = False  # the test of the label (the mix of known classes, or a numeric target), not a feature


class HoldoutRow(BaseModel):
    increment_id: str
    rows: int
    new: bool  # the holdout of this run's increment
    candidate_accuracy: float
    champion_accuracy: float | None = None
    candidate_macro_f1: float | None = None
    champion_macro_f1: float | None = None
    candidate_mae: float | None = None  # a numeric target's, in its units (macro-F1 is for classes)
    champion_mae: float | None = None


class TrainingSummary(BaseModel):
    losses: list[float]  # mean loss of each epoch
    seconds: float
    device: str
    strategy: str
    new_samples: int
    memory_samples: int
    warm_start: bool


class GateCheck(BaseModel):
    reason: str
    passed: bool
    note: bool = False  # says something of the judgement (too few rows to resolve it, no champion), checks nothing


class ReportData(BaseModel):
    """What one run did, as the report shows it."""

    status: Status
    message: str
    created: datetime
    model_name: str
    increment_id: str
    file: str  # where the increment is now (data/increments/... or data/quarantine/...)
    source: str | None = None  # the name it arrived under
    model_version: int | None = None
    champion_version: int | None = None  # after the run
    parent_version: int | None = None
    data_hash: str | None = None
    git_commit: str | None = None
    run_id: str | None = None
    strategy: str | None = None
    validation: ValidationSummary | None = None  # None when an earlier run validated it (a resumed run)
    drift: list[DriftRow] | None = None
    drift_action: str | None = None
    drift_skipped: str | None = None  # why drift was not measured
    training_note: str | None = None  # what changed in training (drift's compete or the gate's fallback: which network went to the gate)
    training: TrainingSummary | None = None
    holdouts: list[HoldoutRow] = []
    summary: dict[str, float | None] = {}
    lineage_metrics: dict[str, float] = {}
    gate: list[GateCheck] | None = None
    matrix: dict | None = None

    def folder_name(self) -> str:
        """Stable for a run, so writing the report again replaces it rather than adding one."""
        return f"v{self.model_version}-{self.increment_id}" if self.model_version is not None else f"{self.status}-{self.increment_id}"


class ReportNotFound(LookupError):
    """No report yet, or none for the asked model version."""


def now() -> datetime:
    return datetime.now(timezone.utc)
