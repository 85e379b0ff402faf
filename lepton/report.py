"""The report of one run: a self-contained HTML page (plots embedded) with its PNG plots beside it.

Everything here works on plain data (``ReportData``): the task in ``tasks/reporting.py``
gathers it from the run, this module draws, renders (the page is ``templates/report.html.j2``),
finds and screenshots. Reports live in the workspace under ``.lepton/reports/<folder>/``, one
folder per run, each with ``report.html``, ``report.json`` (the data, also how reports are
found) and the plots.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
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


class HoldoutRow(BaseModel):
    increment_id: str
    rows: int
    new: bool  # the holdout of this run's increment
    candidate_accuracy: float
    champion_accuracy: float | None = None
    candidate_macro_f1: float | None = None
    champion_macro_f1: float | None = None


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


# --- plots -------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def heatmap(matrix: dict, path: Path, versions: list[str] | None = None) -> Path:
    """R[i][j] as a PNG: rows are the lineage's models (candidate last), columns the holdouts."""
    plt = _pyplot()
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix["rows"]], dtype=float)
    # Sized so that up to five holdouts fit beside the holdout bars on the report's page.
    fig, ax = plt.subplots(figsize=(max(3.8, 1.8 + 0.65 * r.shape[1]), max(2.8, 1.5 + 0.5 * r.shape[0])), dpi=100)
    image = ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
    for (i, j), value in np.ndenumerate(r):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(r.shape[1]), [c[:8] for c in matrix["columns"]], rotation=45, ha="right", fontsize=8)
    labels = versions or [f"after {c[:8]}" for c in matrix["trained"]]
    ax.set_yticks(range(r.shape[0]), labels, fontsize=8)
    ax.set_xlabel("holdout of increment")
    ax.set_ylabel("model")
    ax.set_title("accuracy matrix R[i][j]")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def loss_curve(losses: list[float], path: Path) -> Path:
    """Mean training loss per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 2.8), dpi=110)
    epochs = np.arange(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o" if len(losses) <= 40 else None, markersize=3, color="#2563eb")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss")
    ax.set_title("training loss per epoch")
    ax.grid(alpha=0.3)
    if len(losses) and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    return _save(fig, path)


def holdout_bars(holdouts: list[HoldoutRow], path: Path) -> Path:
    """Candidate and champion accuracy on every holdout, side by side."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(9.0, max(4.4, 1.4 + 0.65 * len(holdouts))), 3.2), dpi=100)
    x = np.arange(len(holdouts))
    has_champion = any(h.champion_accuracy is not None for h in holdouts)
    width = 0.38 if has_champion else 0.6
    candidate = [h.candidate_accuracy for h in holdouts]
    ax.bar(x - (width / 2 if has_champion else 0), candidate, width, label="candidate", color="#2563eb")
    if has_champion:
        champion = [np.nan if h.champion_accuracy is None else h.champion_accuracy for h in holdouts]
        ax.bar(x + width / 2, champion, width, label="champion", color="#9ca3af")
    ax.set_xticks(x, [h.increment_id[:8] + (" (new)" if h.new else "") for h in holdouts], rotation=30, ha="right", fontsize=8)
    pad = max(0.7, (4 - len(holdouts)) / 2)  # one or two holdouts get bars of a normal width, centred
    ax.set_xlim(-pad, len(holdouts) - 1 + pad)
    # Headroom above 1.0 for the legend, so it never covers a bar.
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy on each holdout")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def draw_plots(data: ReportData, folder: Path) -> dict[str, Path]:
    """The report's PNG plots, written into ``folder``; keyed by what they show."""
    plots: dict[str, Path] = {}
    if data.training is not None and data.training.losses:
        plots["loss"] = loss_curve(data.training.losses, folder / "training_loss.png")
    if data.holdouts:
        plots["holdouts"] = holdout_bars(data.holdouts, folder / "holdouts.png")
    if data.matrix is not None:
        plots["matrix"] = heatmap(data.matrix, folder / "accuracy_matrix.png")
    return plots


# --- the page ------------------------------------------------------------------------------

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


def _delta(h: HoldoutRow) -> str:
    if h.champion_accuracy is None:
        return "-"
    return f"{(h.candidate_accuracy - h.champion_accuracy) * 100:+.1f} pts"


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


def _lineage(d: ReportData) -> list[tuple[str, str]]:
    rows = [
        ("increment id", d.increment_id),
        ("arrived as", d.source or "-"),
        ("file", d.file),
        ("DVC data hash", d.data_hash or "-"),
        ("git commit", d.git_commit or "-"),
        ("model version", f"{d.model_name} version {d.model_version}" if d.model_version is not None else "none (no model was trained)"),
        ("parent version", str(d.parent_version) if d.parent_version is not None else ("-" if d.model_version is None else "none (first model)")),
        ("champion after the run", str(d.champion_version) if d.champion_version is not None else ("unchanged" if d.status == "rejected" else "none")),
    ]
    if d.strategy:
        rows.append(("strategy", d.strategy))
    if d.run_id:
        rows.append(("MLflow run", d.run_id))
    return rows


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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
        drifted=sum(r.drifted for r in drift_rows),
        regression="candidate_new_mae" in data.summary,
        pct=_pct, num=_num, signed=_signed, loss=_loss, delta=_delta, delta_class=_delta_class,
    )


def write(data: ReportData, folder: Path, workspace: Path | None = None) -> Path:
    """Write ``report.html``, ``report.json`` and the PNG plots into ``folder``; returns the page."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(data, folder)
    if data.matrix is not None:
        (folder / "accuracy_matrix.json").write_text(json.dumps(data.matrix, indent=1, default=float))
    (folder / DATA).write_text(data.model_dump_json(indent=1))
    page = folder / PAGE
    page.write_text(render_html(data, plots, folder, workspace))
    return page


# --- finding reports ------------------------------------------------------------------------


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


def now() -> datetime:
    return datetime.now(timezone.utc)


# --- screenshot -------------------------------------------------------------------------------


class RenderError(RuntimeError):
    """Headless Chromium could not render the page."""


def browser_binary() -> str | None:
    """Headless Chromium: ``LEPTON_CHROMIUM``, else the first of the usual names on PATH."""
    named = os.environ.get("LEPTON_CHROMIUM")
    if named:
        return named
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = WIDTH, height: int = 4000, timeout: float = 90, trim: bool = True) -> Path:
    """Render ``html`` with headless Chromium into ``png`` (``width`` wide), cropped below the page's content.

    Chromium only captures its window, so the window is tall and the empty bottom is cut;
    a page taller than the window is rendered again in a taller one.
    """
    binary = browser_binary()
    if binary is None:
        raise RenderError("no Chromium found: install it (Debian: apt-get install chromium) or set LEPTON_CHROMIUM to its path")
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    while True:
        _run_chromium(binary, html.resolve(), png, width, height, timeout)
        if not trim or _trim(png):
            return png
        if height >= 32000:
            return png  # Chromium's limit: keep the top of an enormous page
        height *= 2


def _run_chromium(binary: str, html: Path, png: Path, width: int, height: int, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="lepton-chromium-") as profile:
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", "--force-device-scale-factor=1",
            # A profile of its own: a second render (or a user's browser) never shares its lock.
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri(),
        ]
        if png.exists():
            png.unlink()
        # Its own process group: on a timeout, the renderer and GPU helpers go with it.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RenderError(f"Chromium did not render {html} within {timeout:.0f}s") from None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlive the browser process
            except ProcessLookupError:
                pass
        if proc.returncode != 0 or not png.exists():
            tail = "\n".join(stderr.strip().splitlines()[-5:])
            raise RenderError(f"Chromium exited with {proc.returncode} without writing {png}: {tail}")


def _trim(png: Path, margin: int = 24) -> bool:
    """Cut the rows below the content (the page's background colour); False when there is no such margin."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    background = pixels[-1, 0]
    rows = np.any(np.abs(pixels.astype(int) - background.astype(int)).sum(axis=2) > 0, axis=1)
    content = np.flatnonzero(rows)
    bottom = (content[-1] + 1) if len(content) else 0
    if pixels.shape[0] - bottom < margin:
        return False  # content reaches the bottom of the window: the page may go on
    Image.fromarray(pixels[: bottom + margin]).save(png)
    return True

