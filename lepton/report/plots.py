"""The report's plots as SVG files: the accuracy matrix, the training loss, candidate against champion per holdout.

Written as SVG text, not drawn with matplotlib: three small charts do not need a plotting
library, and importing and drawing with one cost every run about 0.9 s the first time in a
process (0.25 s after), the most of any step around training on a first run of the day. The
files are vector images that a browser (and `lepton report --png`'s Chromium) renders at any size.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import numpy as np

from lepton.report.data import HoldoutRow, ReportData

# The most recent models and holdouts the heatmap draws: the page shows about five, and a 30-increment
# backfill's 30 x 30 cells read as noise. accuracy_matrix.json beside it keeps every cell, the page's table every holdout.
HEATMAP_CELLS = 6
# The most recent holdouts the bars draw: 30 bars in the figure's width read as a comb.
HOLDOUT_BARS = 12

CANDIDATE = "#2563eb"
CHAMPION = "#9ca3af"
GRID = "#e5e7eb"
INK = "#111827"
FONT = "font-family='Helvetica, Arial, sans-serif'"
# matplotlib's viridis at 0, 0.1, ..., 1: dark for a low accuracy, yellow for a high one, readable in grey.
VIRIDIS = ("#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725")


def _viridis(value: float) -> str:
    x = min(max(value, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    low, high = (np.array([int(c[k:k + 2], 16) for k in (1, 3, 5)]) for c in VIRIDIS[i:i + 2])
    r, g, b = np.round(low + (high - low) * (x - i)).astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "middle", color: str = INK, rotate: float = 0, bold: bool = False) -> str:
    turn = f" transform='rotate({rotate:g} {x:.1f} {y:.1f})'" if rotate else ""
    weight = " font-weight='bold'" if bold else ""
    return f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' fill='{color}'{weight}{turn}>{escape(text)}</text>"


def _write(path: Path, width: float, height: float, parts: list[str]) -> Path:
    body = "\n".join(parts)
    path.write_text(
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' viewBox='0 0 {width:.0f} {height:.0f}' {FONT}>\n"
        f"<rect width='100%' height='100%' fill='white'/>\n{body}\n</svg>\n"
    )
    return path


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values spanning [low, high], about ``count`` of them."""
    if not high > low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if (high - low) / (step * m) <= count)
    return [v for v in np.arange(math.ceil(low / step) * step, high + step / 2, step) if low - 1e-12 <= v <= high + 1e-12]


def heatmap(matrix: dict, path: Path, versions: list[str] | None = None, metric: str = "accuracy") -> Path:
    """R[i][j] as an SVG: rows are the lineage's models (candidate last), columns the holdouts; the last ``HEATMAP_CELLS`` of each."""
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix["rows"]], dtype=float)
    rows, columns = r.shape
    r = r[-HEATMAP_CELLS:, -HEATMAP_CELLS:]
    names = [c[:8] for c in matrix["columns"][-HEATMAP_CELLS:]]
    labels = (versions or [f"after {c[:8]}" for c in matrix["trained"]])[-HEATMAP_CELLS:]
    cell, left, top, bottom = 46, 112, 34, 78
    # Sized so that up to five holdouts fit beside the holdout bars on the report's page.
    width = max(380, left + cell * r.shape[1] + 90)
    height = max(280, top + cell * r.shape[0] + bottom)
    shown = "" if (rows, columns) == r.shape else f" (the last {r.shape[0]} of {rows} models, {r.shape[1]} of {columns} holdouts)"
    parts = [_text(width / 2, 20, f"{metric} matrix R[i][j]" + shown, size=12 if shown else 14)]
    for (i, j), value in np.ndenumerate(r):
        x, y = left + j * cell, top + i * cell
        fill = "#f3f4f6" if np.isnan(value) else _viridis(value)
        parts.append(f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' fill='{fill}' stroke='white'/>")
        if not np.isnan(value):
            parts.append(_text(x + cell / 2, y + cell / 2 + 4, f"{value:.2f}", size=11, color="white" if value < 0.6 else "black"))
    for j, name in enumerate(names):
        x = left + j * cell + cell / 2
        parts.append(_text(x, top + r.shape[0] * cell + 12, name, size=10, anchor="end", rotate=-45))
    for i, label in enumerate(labels):
        parts.append(_text(left - 6, top + i * cell + cell / 2 + 4, label, size=10, anchor="end"))
    parts.append(_text(left + r.shape[1] * cell / 2, height - 8, "holdout of increment"))
    parts.append(_text(14, top + r.shape[0] * cell / 2, "model", rotate=-90))
    # The colour bar: 0 at the bottom, 1 at the top.
    bar_x, bar_h = left + r.shape[1] * cell + 18, r.shape[0] * cell
    stops = "".join(f"<stop offset='{k / (len(VIRIDIS) - 1):.2f}' stop-color='{c}'/>" for k, c in enumerate(reversed(VIRIDIS)))
    parts.append(f"<defs><linearGradient id='viridis' x1='0' y1='0' x2='0' y2='1'>{stops}</linearGradient></defs>")
    parts.append(f"<rect x='{bar_x}' y='{top}' width='12' height='{bar_h}' fill='url(#viridis)'/>")
    for v in (0.0, 0.5, 1.0):
        parts.append(_text(bar_x + 16, top + bar_h * (1 - v) + 4, f"{v:.1f}", size=10, anchor="start"))
    return _write(path, width, height, parts)


def loss_curve(losses: list[float], path: Path) -> Path:
    """Mean training loss per epoch, on a log scale when it falls by more than 20 times."""
    width, height, left, right, top, bottom = 572, 308, 62, 16, 34, 44
    values = np.asarray(losses, dtype=float)
    log = len(values) and values.min() > 0 and values.max() / values.min() > 20
    shown = np.log10(values) if log else values
    low, high = (float(shown.min()), float(shown.max())) if len(shown) else (0.0, 1.0)
    pad = (high - low) * 0.05 or max(abs(high) * 0.05, 0.05)
    low, high = low - pad, high + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(epoch: float) -> float:
        return left + (epoch - 1) / max(len(values) - 1, 1) * plot_w

    def y_of(v: float) -> float:
        return top + (high - v) / (high - low) * plot_h

    parts = [_text(width / 2, 20, "training loss per epoch", size=14)]
    if log:  # 1, 2 and 5 times each power of ten in range; the powers alone when those crowd
        ticks = [math.log10(m * 10.0**e) for e in range(math.floor(low) - 1, math.ceil(high) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if low <= t <= high]
        ticks = ticks if len(ticks) <= 7 else [t for t in ticks if float(round(t, 9)).is_integer()]
    else:
        ticks = _ticks(low, high)
    for v in ticks:
        if low <= v <= high:
            y = y_of(v)
            parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='{GRID}'/>")
            parts.append(_text(left - 6, y + 4, f"{10**v:.3g}" if log else f"{v:.3g}", size=10, anchor="end"))
    for epoch in _ticks(1, max(len(values), 1), 6):
        if float(epoch).is_integer():
            parts.append(_text(x_of(epoch), top + plot_h + 16, f"{int(epoch)}", size=10))
    parts.append(f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' stroke='#9ca3af'/>")
    points = " ".join(f"{x_of(k + 1):.1f},{y_of(v):.1f}" for k, v in enumerate(shown))
    parts.append(f"<polyline points='{points}' fill='none' stroke='{CANDIDATE}' stroke-width='1.8'/>")
    if len(values) <= 40:
        parts += [f"<circle cx='{x_of(k + 1):.1f}' cy='{y_of(v):.1f}' r='2.6' fill='{CANDIDATE}'/>" for k, v in enumerate(shown)]
    parts.append(_text(left + plot_w / 2, height - 8, "epoch"))
    parts.append(_text(14, top + plot_h / 2, "mean loss" + (" (log scale)" if log else ""), rotate=-90))
    return _write(path, width, height, parts)


def holdout_bars(holdouts: list[HoldoutRow], path: Path, metric: str = "accuracy") -> Path:
    """Candidate and champion ``metric`` on the last ``HOLDOUT_BARS`` holdouts, side by side (the page's table lists every one).
    The axis runs from 0 to 1: a negative R² draws no bar."""
    every = len(holdouts)
    holdouts = holdouts[-HOLDOUT_BARS:]
    slot = 58
    width = min(900, max(440, 140 + slot * len(holdouts)))
    height, left, right, top, bottom = 320, 56, 14, 34, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / max(len(holdouts), 4)  # one or two holdouts get bars of a normal width, centred
    start = left + (plot_w - slot * len(holdouts)) / 2
    has_champion = any(h.champion_accuracy is not None for h in holdouts)
    bar = slot * (0.38 if has_champion else 0.6)
    ceiling = 1.22  # headroom above 1.0 for the legend, so it never covers a bar

    def y_of(v: float) -> float:
        return top + (ceiling - min(max(v, 0.0), ceiling)) / ceiling * plot_h

    title = f"{metric} on each holdout" + ("" if every == len(holdouts) else f" (the last {len(holdouts)} of {every})")
    parts = [_text(width / 2, 20, title, size=14 if every == len(holdouts) else 12)]
    for v in np.linspace(0, 1, 6):
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y_of(v):.1f}' y2='{y_of(v):.1f}' stroke='{GRID}'/>")
        parts.append(_text(left - 6, y_of(v) + 4, f"{v:.1f}", size=10, anchor="end"))
    for k, h in enumerate(holdouts):
        centre = start + slot * (k + 0.5)
        bars = [(h.candidate_accuracy, CANDIDATE, centre - (bar / 2 if has_champion else 0))]
        if has_champion and h.champion_accuracy is not None:
            bars.append((h.champion_accuracy, CHAMPION, centre + bar / 2))
        for value, colour, mid in bars:
            y = y_of(value)
            parts.append(f"<rect class='{'candidate' if colour == CANDIDATE else 'champion'}' x='{mid - bar / 2:.1f}' y='{y:.1f}' width='{bar:.1f}' "
                         f"height='{top + plot_h - y:.1f}' fill='{colour}'><title>{value:.3f}</title></rect>")
        label = h.increment_id[:8] + (" (new)" if h.new else "")
        parts.append(_text(centre, top + plot_h + 14, label, size=10, anchor="end", rotate=-30))
    parts.append(f"<line x1='{left}' x2='{width - right}' y1='{top + plot_h}' y2='{top + plot_h}' stroke='#6b7280'/>")
    legend = [("candidate", CANDIDATE)] + ([("champion", CHAMPION)] if has_champion else [])
    x = left + plot_w / 2 - 60 * len(legend)
    for name, colour in legend:
        parts.append(f"<rect x='{x:.1f}' y='{top + 6}' width='12' height='10' fill='{colour}'/>")
        parts.append(_text(x + 16, top + 15, name, size=10, anchor="start"))
        x += 110
    parts.append(_text(14, top + plot_h / 2, metric, rotate=-90))
    return _write(path, width, height, parts)


def draw_plots(data: ReportData, folder: Path) -> dict[str, Path]:
    """The report's SVG plots, written into ``folder``; keyed by what they show."""
    plots: dict[str, Path] = {}
    if data.training is not None and data.training.losses:
        plots["loss"] = loss_curve(data.training.losses, folder / "training_loss.svg")
    if data.holdouts:
        metric = "R²" if "candidate_new_mae" in data.summary else "accuracy"
        plots["holdouts"] = holdout_bars(data.holdouts, folder / "holdouts.svg", metric)
    if data.matrix is not None:
        plots["matrix"] = heatmap(data.matrix, folder / "accuracy_matrix.svg", metric=metric)
    return plots
