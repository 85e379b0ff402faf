"""The report of one run: a self-contained HTML page (plots embedded) with its SVG plots beside it.

Everything here works on plain data (``ReportData``, in ``data``): the task in
``tasks/reporting.py`` gathers it from the run; ``plots`` draws, ``page`` renders (the page is
``templates/report.html.j2``) and writes, ``store`` finds, ``screenshot`` renders to PNG. Reports
live in the workspace under ``.lepton/reports/<folder>/``, one folder per run, each with
``report.html``, ``report.json`` (the data, also how reports are found) and the plots.
"""

from lepton.report.data import (
    WIDTH,
    DriftRow,
    GateCheck,
    HoldoutRow,
    ReportData,
    ReportNotFound,
    TrainingSummary,
    ValidationSummary,
    now,
)
from lepton.report.page import render_html, write
from lepton.report.screenshot import RenderError, browser_binary, screenshot
from lepton.report.store import find, reports_root

__all__ = [
    "WIDTH", "DriftRow", "GateCheck", "HoldoutRow", "RenderError", "ReportData", "ReportNotFound", "TrainingSummary",
    "ValidationSummary", "browser_binary", "find", "now", "render_html", "reports_root", "screenshot", "write",
]
