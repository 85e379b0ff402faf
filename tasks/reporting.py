"""Artifacts that show a run: the accuracy matrix as JSON and as a heatmap."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import RegistryConfig
from lepton.workspace import Workspace
from tasks.registry import connect


def heatmap(matrix: dict, path: Path, versions: list[str] | None = None) -> Path:
    """R[i][j] as a PNG: rows are the lineage's models (candidate last), columns the holdouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.array(matrix["rows"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * r.shape[1], 1.0 + 0.6 * r.shape[0]), dpi=110)
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@task(name="log-accuracy-matrix", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def log_accuracy_matrix(ws: Workspace, config: RegistryConfig, run_id: str, matrix: dict) -> None:
    """Attach R (JSON and heatmap) to the candidate's tracking run."""
    client, _ = connect(ws, config)
    with tempfile.TemporaryDirectory(prefix="lepton-report-") as tmp:
        folder = Path(tmp)
        (folder / "accuracy_matrix.json").write_text(json.dumps(matrix, indent=1, default=float))
        heatmap(matrix, folder / "accuracy_matrix.png")
        client.log_artifacts(run_id, str(folder), artifact_path="report")
