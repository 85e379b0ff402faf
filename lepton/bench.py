"""``lepton bench``: the benchmarks, written to benchmarks/results/ (JSON and markdown)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

bench_app = typer.Typer(help="Benchmarks: what the strategies keep and cost, and what the pipeline costs.", no_args_is_help=True)


@bench_app.command("continual")
def continual(
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1).")] = 3,
    scenario: Annotated[list[str] | None, typer.Option(help="Only these scenarios (class_incremental, domain_incremental, stream).")] = None,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per increment (the peer protocol uses 30).")] = 30,
) -> None:
    """Every strategy on class-incremental, domain-incremental and stream digits; the memory-budget curve."""
    import torch

    # Small networks: one thread per process avoids oversubscribing the cores.
    torch.set_num_threads(1)
    from benchmarks.continual import RESULTS, continual as run, targets

    folder = out or RESULTS
    records = run(seeds=tuple(range(seeds)), scenarios=scenario, out=folder, epochs=epochs, progress=typer.echo)
    typer.echo(f"wrote {folder / 'continual.json'}, continual.md and the memory curve ({len(records)} runs)")
    import json

    curve = json.loads((folder / "memory_curve.json").read_text())
    missed = 0
    for text, ok, measured in targets(records, curve):
        missed += not ok
        typer.echo(f"{'met   ' if ok else 'MISSED'} {text}: {measured}")
    if missed:
        typer.echo(f"{missed} target(s) missed")


@bench_app.command("pipeline")
def pipeline(
    increments: Annotated[int, typer.Option(help="Increments to send through the flow.")] = 5,
    epochs: Annotated[int, typer.Option(help="Training epochs per increment.")] = 30,
) -> None:
    """Per-step wall time of the full flow next to the raw PyTorch training time, on the embedded defaults."""
    home = Path(tempfile.mkdtemp(prefix="lepton-bench-prefect-"))
    for key, value in {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }.items():
        os.environ.setdefault(key, value)
    import logging

    for name in ("prefect", "dvc", "great_expectations", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from benchmarks.pipeline import RESULTS, pipeline as run

    records = run(n=increments, epochs=epochs, progress=typer.echo)
    mean = sum(r["around_training_seconds"] for r in records) / len(records)
    typer.echo(f"wrote {RESULTS / 'pipeline.json'} and pipeline.md; around the training: {mean:.2f}s per increment (target <= 3s)")
