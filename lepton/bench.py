"""``lepton bench``: the benchmarks, written to benchmarks/results/ (JSON and markdown)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False)
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

    from benchmarks.continual import SCENARIOS, STRATEGIES

    folder = out or RESULTS
    names = scenario or list(SCENARIOS)
    total = seeds * (sum(len(STRATEGIES[n]) for n in names) + 4)  # + the memory curve's four budgets
    with _progress("runs", total) as step:
        records = run(seeds=tuple(range(seeds)), scenarios=scenario, out=folder, epochs=epochs, progress=step)
    console.print(f"wrote {folder / 'continual.json'}, continual.md and the memory curve ({len(records)} runs)")
    import json

    from rich.table import Table

    curve = json.loads((folder / "memory_curve.json").read_text())
    table = Table("target", "measured", "", title="targets", title_justify="left")
    missed = 0
    for text, ok, measured in targets(records, curve):
        missed += not ok
        table.add_row(text, str(measured), "[green]met[/green]" if ok else "[red]MISSED[/red]")
    console.print(table)
    if missed:
        console.print(f"{missed} target(s) missed")


def _progress(unit: str, total: int):
    """A progress bar over ``total`` steps; each message (one per finished step) prints above it."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def bar():
        with Progress(
            SpinnerColumn(), TextColumn(unit), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console, transient=True,
        ) as progress:
            task = progress.add_task(unit, total=total)

            def step(message: str) -> None:
                progress.console.print(message, highlight=False, soft_wrap=True)
                progress.advance(task)

            yield step

    return bar()


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

    with _progress("increments", increments) as step:
        records = run(n=increments, epochs=epochs, progress=step)
    mean = sum(r["around_training_seconds"] for r in records) / len(records)
    console.print(f"wrote {RESULTS / 'pipeline.json'} and pipeline.md; around the training: {mean:.2f}s per increment (target <= 3s)")
