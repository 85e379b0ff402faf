"""Finding reports in a workspace: by model version, or the latest run."""

from __future__ import annotations

from pathlib import Path

from lepton.report.data import DATA, PAGE, REPORTS, ReportData, ReportNotFound


def reports_root(state: Path) -> Path:
    """Where a workspace keeps its reports (``state`` is its ``.lepton/``)."""
    return state / REPORTS


def _load_all(state: Path) -> list[tuple[ReportData, Path]]:
    found = []
    for meta in sorted(reports_root(state).glob(f"*/{DATA}")):
        page = meta.with_name(PAGE)
        if not page.exists():
            continue
        try:
            found.append((ReportData.model_validate_json(meta.read_text()), page))
        except ValueError:
            continue  # a report from an incompatible Lepton, or a half-written one: not a run to show
    return found


def find(state: Path, model_version: int | None = None) -> Path:
    """The report page of ``model_version``, else of the latest run; raises ReportNotFound with what exists."""
    reports = _load_all(state)
    if not reports:
        raise ReportNotFound(f"no report in {reports_root(state)} yet: reports are written by `lepton run`")
    if model_version is None:
        return max(reports, key=lambda r: r[0].created)[1]
    matching = [r for r in reports if r[0].model_version == model_version]
    if not matching:
        versions = sorted({d.model_version for d, _ in reports if d.model_version is not None})
        known = ", ".join(map(str, versions)) if versions else "none (only rejected increments so far)"
        raise ReportNotFound(f"no report for model version {model_version}; versions with a report: {known}")
    return max(matching, key=lambda r: r[0].created)[1]
