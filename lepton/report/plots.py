"""The report's plots as PNG files: the accuracy matrix, the training loss, candidate against champion per holdout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lepton.report.data import HoldoutRow, ReportData


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


# The most recent models and holdouts the heatmap draws: its cost is one text per cell (3 x 3: 0.09 s,
# 6 x 6: 0.13 s, 12 x 12: 0.30 s, the whole of a 30-increment backfill's growth in the report), and the
# page shows about five. accuracy_matrix.json beside it keeps every cell, the page's table every holdout.
HEATMAP_CELLS = 6
# The most recent holdouts the bars draw: 30 bars in the figure's width read as a comb, and drew in twice the time.
HOLDOUT_BARS = 12


def heatmap(matrix: dict, path: Path, versions: list[str] | None = None) -> Path:
    """R[i][j] as a PNG: rows are the lineage's models (candidate last), columns the holdouts; the last ``HEATMAP_CELLS`` of each."""
    plt = _pyplot()
    r = np.array([[np.nan if v is None else v for v in row] for row in matrix["rows"]], dtype=float)
    rows, columns = r.shape
    r = r[-HEATMAP_CELLS:, -HEATMAP_CELLS:]
    matrix = {**matrix, "columns": matrix["columns"][-HEATMAP_CELLS:], "trained": matrix["trained"][-HEATMAP_CELLS:]}
    versions = versions[-HEATMAP_CELLS:] if versions else versions
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
    shown = "" if (rows, columns) == r.shape else f" (the last {r.shape[0]} of {rows} models, {r.shape[1]} of {columns} holdouts)"
    ax.set_title("accuracy matrix R[i][j]" + shown, fontsize=10 if shown else None)
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
    """Candidate and champion accuracy on the last ``HOLDOUT_BARS`` holdouts, side by side (the page's table lists every one)."""
    plt = _pyplot()
    every = len(holdouts)
    holdouts = holdouts[-HOLDOUT_BARS:]
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
    ax.set_title("accuracy on each holdout" + ("" if every == len(holdouts) else f" (the last {len(holdouts)} of {every})"), fontsize=None if every == len(holdouts) else 10)
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
