"""``lepton bench``: the benchmarks, written to benchmarks/results/ (JSON and markdown)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lepton.cli.common import Command, Group

console = Console(highlight=False)
bench_app = typer.Typer(help="Benchmarks: what the strategies keep and cost, and what the pipeline costs.", no_args_is_help=True, cls=Group)


def _checkout() -> Path:
    """The Lepton checkout whose benchmarks/ runs, put on the import path: benchmarks are not installed."""
    import sys

    import lepton

    root = Path(lepton.__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__init__.py").is_file():
        console.print(f"[red]error:[/red] `lepton bench` runs from a Lepton checkout (git clone, then `make install`): "
                      f"there is no benchmarks/ beside {Path(lepton.__file__).parent}")
        raise typer.Exit(1)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


@bench_app.command("continual", cls=Command)
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
    _checkout()
    from benchmarks.continual import RESULTS, SCENARIOS, STRATEGIES, targets
    from benchmarks.continual import continual as run

    folder = out or RESULTS
    names = scenario or list(SCENARIOS)
    total = seeds * (sum(len(STRATEGIES[n]) for n in names) + 4)  # + the memory curve's four budgets
    with _progress("runs", total) as step:
        records = run(seeds=tuple(range(seeds)), scenarios=scenario, out=folder, epochs=epochs, progress=step)
    console.print(f"wrote {folder / 'continual.json'}, continual.md and the memory curve ({len(records)} runs)")
    import json

    curve = json.loads((folder / "memory_curve.json").read_text())
    _print_targets(targets(records, curve))


def _print_targets(targets: list[tuple[str, bool, object]]) -> None:
    """Every target of a benchmark as a table, met or MISSED, and how many were missed."""
    from rich.table import Table

    board = Table("target", "measured", "", title="targets", title_justify="left")
    for text, ok, measured in targets:
        board.add_row(text, str(measured), "[green]met[/green]" if ok else "[red]MISSED[/red]")
    console.print(board)
    missed = sum(not ok for _, ok, _ in targets)
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


@bench_app.command("commands", cls=Command)
def commands(
    repeats: Annotated[int, typer.Option(help="Runs of the floor and of each read-only command (the median is kept).")] = 3,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
) -> None:
    """Wall time of `lepton run`, a duplicate, status, history, report and --help as fresh processes, beside a plain PyTorch floor script."""
    _checkout()
    from benchmarks.commands import RESULTS
    from benchmarks.commands import commands as run

    folder = out or RESULTS
    result = run(repeats=repeats, out=folder, progress=console.print)
    console.print(f"wrote {folder / 'commands.json'} and commands.md")
    _print_targets(result["targets"])


@bench_app.command("large", cls=Command)
def large(
    rows: Annotated[int, typer.Option(help="Rows of each of the two increments.")] = 1_000_000,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
) -> None:
    """Two increments of 1,000,000 rows x 20 columns through `lepton run`: peak memory, validation, training and what surrounds it."""
    _checkout()
    from benchmarks.large import RESULTS
    from benchmarks.large import large as run

    folder = out or RESULTS
    result = run(rows=rows, out=folder, progress=console.print)
    console.print(f"wrote {folder / 'large.json'} and large.md")
    _print_targets(result["targets"])


@bench_app.command("pipeline", cls=Command)
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
    _checkout()
    from benchmarks.pipeline import RESULTS
    from benchmarks.pipeline import pipeline as run

    with _progress("increments", increments) as step:
        records = run(n=increments, epochs=epochs, progress=step)
    mean = sum(r["around_training_seconds"] for r in records) / len(records)
    console.print(f"wrote {RESULTS / 'pipeline.json'} and pipeline.md; around the training: {mean:.2f}s per increment (target <= 3s)")


@bench_app.command("images", cls=Command)
def images(
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1); six, because one seed's final accuracy varies by about a point.")] = 6,
    epochs: Annotated[int, typer.Option(help="Epochs per increment (the peer protocol uses 30).")] = 30,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
) -> None:
    """Class-incremental digits as PNG images: the CNN beside the MLP, at 5% and 10% replay memory."""
    import torch

    torch.set_num_threads(1)  # small networks: one thread avoids oversubscribing the cores
    _checkout()
    from benchmarks.images import MEMORY, NETWORKS, RESULTS, targets
    from benchmarks.images import images as run

    folder = out or RESULTS
    with _progress("runs", seeds * len(NETWORKS) * len(MEMORY)) as step:
        records, cost = run(seeds=tuple(range(seeds)), epochs=epochs, out=folder, progress=step)
    console.print(f"wrote {folder / 'images.json'} and images.md ({len(records)} runs; the CNN's loop {cost['ratio']:.2f}x a plain PyTorch loop)")
    _print_targets(targets(records))


@bench_app.command("transfer", cls=Command)
def transfer(
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1).")] = 3,
    epochs: Annotated[int, typer.Option(help="Epochs of each training.")] = 30,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
) -> None:
    """A first model from another model's champion (frozen, partial, full) against scratch, and Lepton's choice, at 5-50 samples per class."""
    import torch

    torch.set_num_threads(1)  # small networks: one thread avoids oversubscribing the cores
    _checkout()
    from benchmarks.transfer import RESULTS, SIZES, targets
    from benchmarks.transfer import transfer as run

    folder = out or RESULTS
    with _progress("cells", seeds * 2 * len(SIZES)) as step:
        records = run(seeds=tuple(range(seeds)), epochs=epochs, out=folder, progress=step)
    console.print(f"wrote {folder / 'transfer.json'} and transfer.md ({len(records)} cells)")
    _print_targets(targets(records))


@bench_app.command("tables", cls=Command)
def tables(
    table: Annotated[list[str] | None, typer.Option(help="Only these tables (penguins, cars, seattle_weather, solar_flare, wine, breast_cancer, diabetes, stationary, gradual_drift, concept_change).")] = None,
    increments: Annotated[int | None, typer.Option(help="Cut every table into this many increments (default: each table's own, 4-8).")] = None,
    epochs: Annotated[int, typer.Option(help="Lepton's training epochs per increment (its default is 30).")] = 30,
    out: Annotated[Path | None, typer.Option(help="Results folder.", show_default="benchmarks/results")] = None,
    streams: Annotated[int, typer.Option(min=1, help="Stationary streams the replacement share is counted on (the table's own, then Lepton alone on the next seeds).")] = 12,  # benchmarks.tables.STATIONARY_STREAMS, not imported: the CLI starts without pandas
    set_: Annotated[list[str] | None, typer.Option("--set", help="Lepton's setting KEY=VALUE on top of the defaults, as `lepton run --set` takes it (repeatable): to compare settings on the same tables.")] = None,
) -> None:
    """Prequential accuracy (or MAE) on public tables and generated streams: Lepton's default beside retrained HGB and river's ARF."""
    for key, value in {
        "PREFECT_HOME": tempfile.mkdtemp(prefix="lepton-bench-prefect-"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        # Each increment's verdict is printed on its own line; the flow's log would repeat it.
        "PREFECT_LOGGING_LEVEL": "ERROR",
    }.items():
        os.environ.setdefault(key, value)
    import logging
    import warnings

    import torch

    # MLflow's user warnings (its hints about inputs), once per registered version.
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
    torch.set_num_threads(1)  # small networks: one thread avoids oversubscribing the cores
    for name in ("prefect", "dvc", "great_expectations", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from prefect import flow

    _checkout()
    from benchmarks.tables import RESULTS, TABLES, load, targets
    from benchmarks.tables import tables as run

    unknown = [t for t in table or [] if t not in TABLES]
    if unknown:
        raise typer.BadParameter(f"unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}", param_hint="--table")
    chosen, skipped = load(table, increments)
    for line in skipped:
        console.print(f"[yellow]skipped[/yellow] {line}")

    @flow(name="warm-up")
    def warm_up() -> None:
        """Starts the Prefect API before the first increment."""

    warm_up()
    folder = out or RESULTS
    extra = sum(len(t.increments) for t in chosen if t.name == "stationary") * (streams - 1)
    with _progress("increments", sum(len(t.increments) for t in chosen) + extra) as step:
        records = run(chosen, epochs=epochs, out=folder, skipped=skipped, progress=step, streams=streams, overrides=set_)
    console.print(f"wrote {folder / 'tables.json'} and tables.md ({len(records)} tables)")
    from rich.table import Table

    summary = Table("table", "metric", "Lepton", "HGB", "river", "network retrained", "accepted", "promoted", title="prequential", title_justify="left")
    for r in records:
        shown = {w: "-" if r["prequential"].get(w) is None else (f"{r['prequential'][w]:.1%}" if r["metric"] == "accuracy" else f"{r['prequential'][w]:.2f}")
                 for w in ("lepton", "hgb", "river", "network")}
        summary.add_row(r["table"], r["metric"], shown["lepton"], shown["hgb"], shown["river"], shown["network"], f"{r['accepted_share']:.0%}", f"{r['promoted_share']:.0%}")
    console.print(summary)
    _print_targets(targets(records))
