"""What happened to one increment: the flow's result, with the sentence the CLI ends with.

Each way a run can end has its constructor here, so the flow says which one it reached and
the wording lives in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from lepton.lineage import LEFT_OUT_WHY

if TYPE_CHECKING:
    from lepton.models.drift import DriftReport
    from lepton.models.gate import GateDecision
    from lepton.tasks.registry import Registration
    from lepton.validation import ValidationReport
    from lepton.workspace import IncrementRecord

Status = Literal["promoted", "kept_out", "rejected", "duplicate"]
EXIT_CODES = {"promoted": 0, "kept_out": 0, "duplicate": 0, "rejected": 2}


def _drift_rows(drift: DriftReport | None) -> list[dict] | None:
    return drift.rows() if drift is not None and not drift.skipped else None


def _drift_skipped(drift: DriftReport | None, none: str) -> str | None:
    """Why drift was not measured: the report's reason, or ``none`` where there is no report."""
    return none if drift is None else drift.skipped


def promoted_message(version: int, parent: int | None) -> str:
    return f"promoted as version {version}" + (f" (champion was version {parent})" if parent else " (first champion)")


class RunOutcome(BaseModel):
    """What happened to one increment; ``message`` is the sentence the CLI ends with."""

    status: Status
    increment_id: str
    file: str
    message: str
    reasons: list[str] = []
    failures: list[str] = []
    gate_notes: list[str] = []  # of the reasons, those that check nothing (too few rows to resolve, no champion to compare with)
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
    drift_skipped: str | None = None  # why drift was not measured (too few rows, drift off, nothing before it)
    training_note: str | None = None  # what changed in training: drift's replay, joint or compete, the gate's fallback, and which network went to the gate
    finished_earlier: bool = False  # this run only moved the champion to the version an interrupted run registered

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @classmethod
    def finished(cls, increment_id: str, file: str, earlier: Registration) -> RunOutcome:
        """An earlier run registered a version that passed the gate and died before the champion moved; this run moved it."""
        assert earlier.move is not None and earlier.version is not None
        was = earlier.move.from_version
        return cls(
            status="promoted", increment_id=increment_id, file=file, message=promoted_message(earlier.version, was) + ", finishing an interrupted run",
            version=earlier.version, champion_version=earlier.version, parent_version=was, finished_earlier=True,
        )

    @classmethod
    def duplicate(cls, increment_id: str, known: IncrementRecord, pending: list[str] | None = None) -> RunOutcome:
        """The same content was processed before: nothing to do. ``pending``: what lepton.yaml declares since the first
        increment decided otherwise (see ``lepton.tasks.splits.redeclare``), which the next increment applies."""
        message = f"duplicate of increment {known.id} ({known.state}, {known.file}): nothing to do"
        if pending:
            message += (f"; lepton.yaml declares {'; '.join(pending)}: the next increment applies it (a new network learns "
                        "every accepted increment, read the new way)")
        return cls(status="duplicate", increment_id=increment_id, file=known.file, message=message)

    @classmethod
    def learnt_since(cls, increment_id: str, known: IncrementRecord, version: int, trained_on: str) -> RunOutcome:
        """An accepted increment whose run stopped before it registered, learnt since by a later increment's candidate."""
        message = (f"increment {increment_id} was accepted, and its run stopped before a version of its own was promoted; version {version}, "
                   f"the champion, learnt it since with increment {trained_on}: nothing to do")
        return cls(status="duplicate", increment_id=increment_id, file=known.file, message=message, champion_version=version)

    @classmethod
    def same_rows(cls, increment_id: str, known: IncrementRecord) -> RunOutcome:
        """The rows of an accepted increment, sent again in another file (another format, column or row order)."""
        message = f"the same rows as increment {known.id} ({known.file}, from {known.source}), in another file: nothing to do"
        return cls(status="duplicate", increment_id=increment_id, file=known.file, message=message)

    @classmethod
    def raced(cls, increment_id: str, file: str, registration: Registration) -> RunOutcome:
        """Another run of the same increment registered it while this one trained."""
        return cls(
            status="duplicate", increment_id=increment_id, file=file,
            message=f"duplicate: another run registered increment {increment_id} as version {registration.version} meanwhile; nothing to do",
            version=registration.version, champion_version=registration.champion,
        )

    @classmethod
    def rejected(
        cls, increment_id: str, quarantined: str, validation: ValidationReport, *, data_hash: str | None,
        drift: DriftReport | None, champion_version: int | None,
    ) -> RunOutcome:
        """Validation (or drift.action=block) refused the increment; it waits in quarantine."""
        return cls(
            status="rejected", increment_id=increment_id, file=quarantined,
            message=f"rejected because {'; '.join(validation.problems)}; quarantined at {quarantined}",
            reasons=validation.problems, failures=validation.problems, data_hash=data_hash, warnings=validation.warnings,
            drift=_drift_rows(drift), drift_action=drift.action if drift else None, drift_skipped=_drift_skipped(drift, "the increment failed validation"), champion_version=champion_version,
        )

    @classmethod
    def gated(
        cls, increment_id: str, file: str, decision: GateDecision, *, version: int, parent: int | None, data_hash: str | None,
        metrics: dict[str, float | None], validation: ValidationReport | None, drift: DriftReport | None, concept_change: bool,
        training_note: str | None = None, left_out: list[str] | tuple[str, ...] = (),
    ) -> RunOutcome:
        """A candidate was registered as ``version``: promoted if the gate passed, kept out otherwise. ``left_out``: earlier
        increments neither learnt nor judged (see ``learnable``), said among the warnings."""
        if decision.passed:
            status: Status = "promoted"
            champion, message = version, promoted_message(version, parent)
        else:
            status = "kept_out"
            stays = f"champion stays version {parent}" if parent else "no champion yet"
            champion, message = parent, f"kept out by the gate because {'; '.join(decision.failures)}; registered as version {version}, {stays}"
        return cls(
            status=status, increment_id=increment_id, file=file, message=message, reasons=list(decision.reasons), failures=list(decision.failures),
            gate_notes=list(decision.notes), version=version, champion_version=champion, parent_version=parent, data_hash=data_hash, metrics=metrics,
            drift=_drift_rows(drift), drift_action=drift.action if drift else None, drift_skipped=_drift_skipped(drift, "the first increment, drift.enabled off, or a run resumed at training"),
            warnings=[*(validation.warnings if validation else []), *_left_out_warning(left_out)], notes=validation.notes if validation else [],
            concept_change=concept_change, training_note=training_note,
        )



def _left_out_warning(left_out: list[str] | tuple[str, ...]) -> list[str]:
    if not left_out:
        return []
    return [f"{len(left_out)} earlier increment(s) neither learnt nor judged, their {LEFT_OUT_WHY}: {', '.join(left_out)}"]
