"""The report's page: ``templates/report.html.j2`` rendered with the plots embedded, written with its data."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

from lepton.report.data import DATA, PAGE, HoldoutRow, ReportData
from lepton.report.plots import draw_plots

VERDICTS = {
    "promoted": ("Promoted", "verdict-good"),
    "kept_out": ("Kept out by the gate", "verdict-warn"),
    "rejected": ("Rejected by validation", "verdict-bad"),
}

TEMPLATE = "report.html.j2"  # in lepton/templates/, shipped as package data


def _pct(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:+.4f}"


def _delta(h: HoldoutRow, regression: bool = False) -> str:
    """Candidate minus champion: accuracy points, or R² as it is for a numeric target."""
    if h.champion_accuracy is None:
        return "-"
    gain = h.candidate_accuracy - h.champion_accuracy
    return f"{gain:+.3f}" if regression else f"{gain * 100:+.1f} pts"


def _delta_class(h: HoldoutRow) -> str:
    if h.champion_accuracy is None or abs(h.candidate_accuracy - h.champion_accuracy) < 0.0005:
        return ""
    return "up" if h.candidate_accuracy > h.champion_accuracy else "down"


def _headline(d: ReportData) -> str:
    if d.status == "promoted":
        return f"Promoted: version {d.model_version} is the champion"
    if d.status == "kept_out":
        stays = f"version {d.champion_version}" if d.champion_version is not None else "no champion"
        return f"Kept out: version {d.model_version} registered, champion stays {stays}"
    return f"Rejected: increment {d.increment_id} quarantined"


def _loss(value: float) -> str:
    return f"{value:.1e}" if 0 < abs(value) < 0.001 else f"{value:.3f}"


def _cards(d: ReportData) -> list[dict[str, str]]:
    """The headline numbers: new data, earlier data, and how the run got there."""
    if d.status == "rejected":
        return []
    s, cards = d.summary, []
    regression = "candidate_new_mae" in s
    metric, show = ("mae", lambda v: f"MAE {v:.4g}") if regression else ("accuracy", _pct)
    for key, label in (("new", "new holdout"), ("old", "earlier holdouts"), ("all", "all holdouts")):
        value, champion = s.get(f"candidate_{key}_{metric}"), s.get(f"champion_{key}_{metric}")
        if value is None:
            continue  # the first increment has no earlier holdouts
        sub = f"champion {show(champion)}" if champion is not None else "no champion yet"
        cards.append({"label": f"{label}: candidate", "value": show(value), "sub": sub})
    if d.training is not None and d.training.losses:
        cards.append({"label": "final training loss", "value": _loss(d.training.losses[-1]), "sub": f"{len(d.training.losses)} epochs, {d.training.seconds:.1f} s"})
    return cards


def _parent(d: ReportData) -> str:
    """The champion the version was trained from; a network trained from scratch beside one was only gated against it."""
    if d.parent_version is None:
        return "-" if d.model_version is None else "none (first model)"
    if d.training is not None and not d.training.warm_start:
        return f"none: a new network, gated against version {d.parent_version}"
    return str(d.parent_version)


def _lineage(d: ReportData) -> list[tuple[str, str]]:
    rows = [
        ("increment id", d.increment_id),
        ("arrived as", d.source or "-"),
        ("file", d.file),
        ("DVC data hash", d.data_hash or "-"),
        ("git commit", d.git_commit or "-"),
        ("model version", f"{d.model_name} version {d.model_version}" if d.model_version is not None else "none (no model was trained)"),
        ("parent version", _parent(d)),
        ("champion after the run", str(d.champion_version) if d.champion_version is not None else ("unchanged" if d.status == "rejected" else "none")),
    ]
    if d.strategy:
        rows.append(("strategy", d.strategy))
    if d.run_id:
        rows.append(("MLflow run", d.run_id))
    return rows


def data_uri(path: Path) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(data: ReportData, plots: dict[str, Path], page_folder: Path | None = None, workspace: Path | None = None) -> str:
    """The page, every value escaped, plots embedded as data URIs so the one file works anywhere."""
    import jinja2

    # autoescape=True for every template, whatever its file name: nothing from the data becomes markup.
    env = jinja2.Environment(loader=jinja2.PackageLoader("lepton", "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
    verdict, verdict_class = VERDICTS[data.status]
    docs_href = None
    if data.validation is not None and data.validation.data_docs:
        docs = Path(data.validation.data_docs)
        absolute = docs if docs.is_absolute() or workspace is None else workspace / docs
        # Relative to the page, the link also works after the workspace moves.
        docs_href = os.path.relpath(absolute, page_folder) if page_folder is not None else absolute.as_uri()
    drift_rows = sorted(data.drift or [], key=lambda r: (not r.drifted, r.feature))
    return env.get_template(TEMPLATE).render(
        d=data,
        verdict=verdict,
        verdict_class=verdict_class,
        headline=_headline(data),
        cards=_cards(data),
        gate_passed=bool(data.gate) and all(c.passed for c in data.gate),
        has_champion=any(h.champion_accuracy is not None for h in data.holdouts),
        images={name: data_uri(path) for name, path in plots.items()},
        lineage=_lineage(data),
        docs_href=docs_href,
        drift_rows=drift_rows,
        drifted=sum(r.drifted for r in drift_rows if not r.label),
        features_tested=sum(not r.label for r in drift_rows),
        label_row=next((r for r in drift_rows if r.label), None),
        regression="candidate_new_mae" in data.summary,
        pct=_pct, num=_num, signed=_signed, loss=_loss, delta=_delta, delta_class=_delta_class,
    )


def write(data: ReportData, folder: Path, workspace: Path | None = None) -> Path:
    """Write ``report.html``, ``report.json`` and the SVG plots into ``folder``; returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(data, folder)
    if data.matrix is not None:
        (folder / "accuracy_matrix.json").write_text(json.dumps(data.matrix, indent=1, default=float))
    (folder / DATA).write_text(data.model_dump_json(indent=1))
    page = folder / PAGE
    page.write_text(render_html(data, plots, folder, workspace))
    return page
