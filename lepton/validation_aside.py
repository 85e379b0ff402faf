"""Great Expectations imported on the other core while the command starts its flow.

A run in a fresh process (no ``lepton server``) spent 1.9 s of its validation importing Great
Expectations and validating, on one core, after seconds importing the pipeline on that same core.
Once the pipeline is imported (pandas and scipy, which GX imports too, come with the fork), the
command forks: the child imports GX and warms its lazily imported parts on a two-row table, while
this process starts the flow and versions the increment; the flow's validate step then hands the
child the frame and the schema and reads the report back, doing meanwhile what ``prepare`` was
given (the CLI imports what the next steps need) instead of waiting idle.

Any failure (a child that died, one past its time, a table too large to hand over) leaves the step
to validate in its own process, as it would without this. The child runs only pandas and GX code:
none of the threads this process may run by then (Prefect's services, the temporary server's
health check) is needed there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from lepton.models import aside as forked

# A table larger than this validates where it is: handing it over copies it through a pipe, and its own
# validation's cost dwarfs the import anyway.
MAX_CELLS = 5_000_000
MAX_BYTES = 256 << 20
SEND_TIMEOUT = 60.0  # the child imports for a few seconds before it reads
RESULT_TIMEOUT = 120.0  # past it the child is killed and the step validates here

_waiting: tuple[forked.Aside, int] | None = None  # the child, and the pipe its request goes down
_meanwhile: Callable[[Callable[[], bool]], None] | None = None  # this process's work while the child validates
_forked = False  # one child per process: a second run in it (the demo's) validates here, GX imported by then


def why_not() -> str | None:
    """Why no validation can be prepared aside here; None when it can."""
    if not sys.platform.startswith("linux"):
        return "forking is used on Linux only"
    if "great_expectations" in sys.modules:
        return "Great Expectations is imported here already"
    if len(os.sched_getaffinity(0)) < 2:
        return "one CPU core: nothing would run beside this process"
    return None


def prepare(meanwhile: Callable[[Callable[[], bool]], None] | None = None) -> bool:
    """Fork the child that imports GX and waits for an increment; False (and nothing started) when ``why_not`` says why,
    or when this process forked one before. ``meanwhile(until)``: what this process does while the child validates,
    until ``until()`` (the CLI imports what a run's next steps need; a dry run needs nothing more).

    The child copies only the calling thread and runs only pandas and GX code.
    """
    global _waiting, _meanwhile, _forked
    if _waiting is not None:
        return True
    if _forked or why_not() is not None:
        return False
    read, write = os.pipe()
    child = forked.start(_serve, read, write)
    os.close(read)
    _waiting, _meanwhile, _forked = (child, write), meanwhile, True
    return True


def discard() -> None:
    """End the prepared child, if there is one (a run that did not validate); a later ``validate`` validates here."""
    global _waiting
    if _waiting is not None:
        child, write = _waiting
        _waiting = None
        _let_go(child, write)


def _let_go(child: forked.Aside, write: int) -> None:
    with contextlib.suppress(OSError):
        os.close(write)
    child.cancel()


def _too_large(frame: Any) -> str | None:
    cells = frame.shape[0] * max(frame.shape[1], 1)
    if cells > MAX_CELLS:
        return f"{cells:,} cells are more than the {MAX_CELLS:,}"
    sample = frame.head(1000)  # text and image columns: their objects' own sizes, estimated from the first rows
    size = int(sample.memory_usage(index=True, deep=True).sum() * len(frame) / max(len(sample), 1))
    if size > MAX_BYTES:
        return f"about {size >> 20} MiB are more than the {MAX_BYTES >> 20} MiB"
    return None


def validate(frame: Any, schema: Any, config: Any, data_docs: Any, run_name: str) -> tuple[Any | None, list[str]]:
    """``(validate_frame's report, what to log)`` from the prepared child; ``(None, why)`` when it failed, and
    ``(None, [])`` when there is none: validate in this process then. What to log: the child's own warnings (a Data
    Docs page it could not render), then how it went."""
    global _waiting
    if _waiting is None:
        return None, []
    child, write = _waiting
    _waiting = None
    large = _too_large(frame)
    if large is not None:
        _let_go(child, write)
        return None, [f"{large} handed to the validation prepared aside: validating here"]
    try:
        request = pickle.dumps((frame, schema, config, data_docs, run_name), protocol=pickle.HIGHEST_PROTOCOL)
        _send(write, struct.pack("<Q", len(request)), request, SEND_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - unpicklable, a dead child, one that never read: validate here
        _let_go(child, write)
        return None, [f"the validation prepared aside did not take the increment ({type(error).__name__}: {error}): validating here"]
    os.close(write)
    started = time.perf_counter()
    if _meanwhile is not None:  # this core would wait idle
        try:
            _meanwhile(child.done)
        except Exception as error:  # noqa: BLE001 - work done ahead of time is never a reason to fail
            logging.getLogger(__name__).debug("importing ahead stopped: %s", error)
    answer, why = child.result(timeout=max(RESULT_TIMEOUT - (time.perf_counter() - started), 1.0))
    if why is not None:
        return None, [f"the validation prepared aside failed ({why}): validating here"]
    report, said = answer
    return report, [*said, f"validated in process {child.pid}, which imported Great Expectations beside the pipeline ({time.perf_counter() - started:.2f} s from the request to its report)"]


def _send(fd: int, header: bytes, payload: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    os.set_blocking(fd, False)
    for part in (header, payload):
        view = memoryview(part)
        while view:
            if not poller.poll(max(deadline - time.monotonic(), 0.0) * 1000):
                raise TimeoutError(f"it read nothing for {timeout:.0f} s")
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None when it ends before any (nothing was sent)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            if got == 0:
                return None
            raise EOFError(f"{got} of {size} bytes arrived")
        got += n
    return bytes(buffer)


class _Said(logging.Handler):
    """The child's warnings, for the parent to log where its own go."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _serve(read: int, write: int) -> Any:
    """The child: import and warm GX, then validate the increment the parent sends; ``(report, warnings)``, or None
    when it sends none."""
    os.close(write)  # the parent's end: with it closed here, the pipe ends when the parent closes its copy
    devnull = os.open(os.devnull, os.O_WRONLY)  # the parent's terminal shows its progress display
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    # Behind the command and Prefect's server starting: measured on two cores, it then slows them least while
    # still ready in time (at the lowest priority it was ready only seconds later, and the command waited).
    os.nice(5)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import pandas as pd

    from lepton.config import DataConfig
    from lepton.validation import validate_frame

    # Two rows through a first increment's suite: GX imports much of itself only when a context and a suite run.
    with contextlib.suppress(Exception):  # a warm-up only: the increment's validation says what is wrong
        validate_frame(pd.DataFrame({"x": [0.0, 1.0], "y": ["a", "b"]}), None, DataConfig(label="y", min_rows=1, holdout_fraction=0.5), None)
    header = _read_exactly(read, 8)
    if header is None:
        return None
    frame, schema, config, data_docs, run_name = pickle.loads(_read_exactly(read, struct.unpack("<Q", header)[0]) or b"")
    said = _Said()
    # The fork turned logging off; what validation warns about goes back to the parent, and only there (the handlers
    # inherited from it, Prefect's among them, are not this process's).
    logging.disable(logging.NOTSET)
    lepton = logging.getLogger("lepton")
    lepton.handlers, lepton.propagate = [said], False
    return validate_frame(frame, schema, config, data_docs, run_name), said.lines
