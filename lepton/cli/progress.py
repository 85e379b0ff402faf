"""What an operator sees while a flow runs: its steps, the training epochs, and the flow's own story.

Nothing in the flow knows about it. Prefect already says when each task run starts and
finishes (``prefect.task_runs``), the flow logs what it decided (``prefect.flow_runs``), and
the training loop logs every epoch (``lepton.models.loop``); a logging handler turns those
records into a rich display. Prefect's console output goes to a log file meanwhile, so its
lines stay available (and in the Prefect UI) without drowning the display.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from lepton.secrets import mask_logging

Mode = Literal["live", "plain", "quiet", "json"]

# Prefect task names, as an operator would call the steps; others are shown by their own name.
STEPS = {
    "ingest": "ingest",
    "read-increment": "read",
    "version-data": "version data (DVC)",
    "validate": "validate (Great Expectations)",
    "accept": "accept",
    "quarantine": "quarantine",
    "find-version": "look up the registry",
    "load-champion": "load the champion",
    "split": "split holdouts",
    "train": "fine-tune",
    "evaluate": "evaluate on every holdout",
    "retrain": "retrain on everything",
    "evaluate-retrained": "evaluate the retrained network",
    "gate-retrained": "gate the retrained network",
    "gate": "gate",
    "measure-drift": "measure drift",
    "plan-training": "plan training",
    "plan-retraining": "plan retraining (gate.fallback)",
    "register": "register and promote (MLflow)",
    "finish-increment": "finish an interrupted run",
    "log-drift": "log drift",
    "write-report": "report",
    "report": "report",
    "keep-answers": "keep status' answers",
}


def mode_for(console: Console, *, quiet: bool, as_json: bool) -> Mode:
    """json and quiet when asked; live on a terminal; plain lines in logs and pipes."""
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    return "live" if console.is_terminal else "plain"


@dataclass
class _Step:
    name: str
    flow_run: str | None = None
    started: float = field(default_factory=time.perf_counter)


class _Display(logging.Handler):
    """Receives the records and draws them; one per ``watch`` block."""

    def __init__(self, console: Console, mode: Mode, said: Callable[[str], str] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.console, self.mode, self.said = console, mode, said
        self.progress: Progress | None = None
        self.current: _Step | None = None
        self.step_task: TaskID | None = None
        self.epoch_task: TaskID | None = None
        # Seconds of each step by flow run (None: before the first task), for --json and the benchmarks.
        self.steps: dict[str | None, dict[str, float]] = {}
        self._flow_run: str | None = None
        if mode == "live":
            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=True,
            )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name.startswith("prefect.task_runs"):
                self._task_record(record)
            elif record.name.startswith("prefect.flow_runs") and record.levelno >= logging.INFO:
                message = record.getMessage()
                if not message.startswith(("Finished in state", "Beginning flow run", "View at")):
                    self._line(message, record.levelno)
            elif record.name == "lepton.models.loop" and hasattr(record, "epoch"):
                self._epoch(record.epoch, record.epochs, record.loss)  # type: ignore[attr-defined]
        except Exception:  # the display must never break a run
            self.handleError(record)

    def _task_record(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        name = getattr(record, "task_name", None) or message
        if message.startswith("Created task run"):
            self._flow_run = getattr(record, "flow_run_id", None) or self._flow_run
            self._start(STEPS.get(name, name))
        elif message.startswith("Finished in state"):
            ok = "Completed" in message
            # "Failed('Task run encountered an exception ...')": the state's name; the error itself ends the command's output.
            self._finish(ok, message.removeprefix("Finished in state ").split("(", 1)[0].strip())

    def _start(self, label: str) -> None:
        if self.current is not None:  # the step before had no finish record of its own
            self._finish(True, "")
        self.current = _Step(label, self._flow_run)
        if self.progress is not None:
            self._drop_epochs()
            if self.step_task is None:
                self.step_task = self.progress.add_task(label, total=None, detail="")
            else:
                self.progress.reset(self.step_task, description=label, total=None, detail="")

    def _finish(self, ok: bool, state: str) -> None:
        if self.current is None:
            return
        seconds = self._account()
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        said = f" [red]{state.lower()}[/red]" if not ok and state else ""
        if self.mode in ("live", "plain"):
            self.console.print(f"  {mark} {self.current.name} [dim]{seconds:.1f}s[/dim]{said}", highlight=False)
        self._drop_epochs()
        self.current = None

    def _account(self) -> float:
        """Add the current step's seconds so far to its flow run's steps."""
        assert self.current is not None
        seconds = time.perf_counter() - self.current.started
        spent = self.steps.setdefault(self.current.flow_run, {})
        spent[self.current.name] = spent.get(self.current.name, 0.0) + seconds
        return seconds

    def _epoch(self, epoch: int, epochs: int, loss: float) -> None:
        if self.progress is not None:
            if self.epoch_task is None:
                self.epoch_task = self.progress.add_task("  epochs", total=epochs, detail="")
            self.progress.update(self.epoch_task, completed=epoch, total=epochs, detail=f"loss {loss:.4f}")
        elif self.mode == "plain" and (epoch == epochs or epoch == 1 or epoch % 10 == 0):
            self.console.print(f"    epoch {epoch}/{epochs}: loss {loss:.4f}", highlight=False)

    def _drop_epochs(self) -> None:
        if self.progress is not None and self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
            self.epoch_task = None

    def _line(self, message: str, level: int) -> None:
        if self.mode not in ("live", "plain"):
            return
        style = "yellow" if level == logging.WARNING else "red" if level >= logging.ERROR else "dim"
        message = self.said(message) if self.said is not None else message
        self.console.print(f"    [{style}]{escape(message)}[/{style}]", soft_wrap=True, highlight=False)


class _LogFile(logging.FileHandler):
    """The run's log file. When it cannot be written (a full disk), records are dropped quietly:
    logging's default prints a traceback per record, burying the run's own one-line error."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass

    def close(self) -> None:
        try:
            super().close()  # closes the file even when its last flush fails
        except OSError:
            pass


def to_log_file(log_file: Path) -> list[Callable[[], Any]]:
    """Send Prefect's console lines (the flow's log, its errors too) to ``log_file`` instead of the terminal, where a
    command says what happened in lines of its own; returns what undoes it, in order."""
    undo: list[Callable[[], Any]] = []
    root = logging.getLogger()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = _LogFile(log_file)
    consoles = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    to_file.setFormatter(consoles[0].formatter if consoles else logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    to_file.setLevel(logging.INFO)
    for handler in consoles:
        root.removeHandler(handler)
        undo.append(lambda h=handler: root.addHandler(h))
    mask_logging(to_file)
    root.addHandler(to_file)
    undo.append(lambda: (root.removeHandler(to_file), to_file.close()))
    return undo


class watch:  # noqa: N801 - used as a context manager, like open()
    """Show the runs inside the block; Prefect's console lines go to ``log_file`` meanwhile."""

    def __init__(self, console: Console, mode: Mode, log_file: Path, said: Callable[[str], str] | None = None) -> None:
        """``said``: a line as the terminal shows it (the workspace's paths as they resolve from where the user is)."""
        self.console, self.mode, self.log_file, self.said = console, mode, log_file, said
        self._undo: list = []
        self.imported = time.perf_counter()  # when the command had imported what it runs (its caller may say earlier)

    def __enter__(self) -> watch:
        self._undo += to_log_file(self.log_file)

        display = _Display(self.console, self.mode, self.said)
        mask_logging(display)
        task_runs = logging.getLogger("prefect.task_runs")
        # "Created task run" is a debug record: let it reach the display, and only the display.
        for handler in task_runs.handlers:
            level = handler.level
            handler.setLevel(max(level, logging.INFO))
            self._undo.append(lambda h=handler, lv=level: h.setLevel(lv))
        self._set_level(task_runs, logging.DEBUG)
        training = logging.getLogger("lepton.models.loop")
        self._set_level(training, logging.DEBUG)
        for logger in (task_runs, logging.getLogger("prefect.flow_runs"), training):
            logger.addHandler(display)
            self._undo.append(lambda lg=logger: lg.removeHandler(display))
        # Epoch records are for the display; the file gets the flow's own lines.
        propagate = training.propagate
        training.propagate = False
        self._undo.append(lambda: setattr(training, "propagate", propagate))
        # MLflow prints its own notices ("Registered model ... already exists") straight to
        # stderr; the flow's lines already say what happened. Its disable_logging() is not
        # enough: log_model turns the stream back on when it finishes, before registration.
        from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

        MLFLOW_LOGGING_STREAM.write = MLFLOW_LOGGING_STREAM.flush = lambda *_: None  # type: ignore[method-assign]
        self._undo.append(lambda: (vars(MLFLOW_LOGGING_STREAM).pop("write", None), vars(MLFLOW_LOGGING_STREAM).pop("flush", None)))
        if display.progress is not None:
            display.progress.start()
            self._undo.append(display.progress.stop)
        # Until the first task, Prefect starts (its temporary server takes seconds) and the flow begins.
        display._start("start the flow (Prefect)")
        self.display = display
        return self

    def _set_level(self, logger: logging.Logger, level: int) -> None:
        before = logger.level
        logger.setLevel(level)
        self._undo.append(lambda: logger.setLevel(before))

    def seconds(self, flow_run_id: object | None = None, *, start: bool = True) -> dict[str, float]:
        """Each step's seconds, in the order they ran: of one flow run (``start``: with Prefect starting, before
        any task), or (None) of everything shown."""
        runs = self.display.steps
        chosen = [runs.get(str(flow_run_id), {})] if flow_run_id is not None else list(runs.values())
        if flow_run_id is not None and start and None in runs:
            chosen.insert(0, runs[None])
        out: dict[str, float] = {}
        for steps in chosen:
            for name, value in steps.items():
                out[name] = round(out.get(name, 0.0) + value, 3)
        return out

    def __exit__(self, *exc: object) -> None:
        if self.display.current is not None:  # a step the flow ended in, without a finish record
            self.display._account()
        self.display.current = None
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
