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
import os
import pickle
import select
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from lepton.models import aside as forked

# A table of more cells than this validates where it is: handing it over would copy it through a pipe,
# and its validation's own cost dwarfs the import anyway.
MAX_CELLS = 5_000_000
SEND_TIMEOUT = 60.0  # the child imports for a few seconds before it reads
RESULT_TIMEOUT = 600.0

_waiting: tuple[forked.Aside, int] | None = None  # the child, and the pipe its request goes down
_meanwhile: Callable[[Callable[[], bool]], None] | None = None  # this process's work while the child validates


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
    """Fork the child that imports GX and waits for an increment; False (and nothing started) when ``why_not`` says why.
    ``meanwhile(until)``: what this process does while the child validates, until ``until()`` (the CLI imports what a
    run's next steps need; a dry run needs nothing more).

    The child copies only the calling thread: it must be one that nothing else waits on.
    """
    global _waiting, _meanwhile
    _meanwhile = meanwhile
    if _waiting is not None:
        return True
    reason = why_not()
    if reason is not None:
        return False
    read, write = os.pipe()
    child = forked.start(_serve, read, write)
    os.close(read)
    _waiting = (child, write)
    return True


def discard() -> None:
    """Let the prepared child go (it ends when its request pipe closes); a later ``validate`` validates in process."""
    global _waiting
    if _waiting is not None:
        child, write = _waiting
        _waiting = None
        with contextlib.suppress(OSError):
            os.close(write)
        child.cancel()


def validate(frame: Any, schema: Any, config: Any, data_docs: Any, run_name: str) -> tuple[Any | None, str | None]:
    """``(validate_frame's report, what happened)`` from the prepared child; ``(None, why)`` when it failed, and
    ``(None, None)`` when there is none: validate in this process then."""
    global _waiting
    if _waiting is None:
        return None, None
    child, write = _waiting
    _waiting = None
    cells = frame.shape[0] * max(frame.shape[1], 1)
    if cells > MAX_CELLS:
        os.close(write)
        child.cancel()
        return None, f"{cells:,} cells are more than the {MAX_CELLS:,} handed to the validation prepared aside: validating here"
    try:
        request = pickle.dumps((frame, schema, config, data_docs, run_name), protocol=pickle.HIGHEST_PROTOCOL)
        _send(write, struct.pack("<Q", len(request)) + request, SEND_TIMEOUT)
    except (OSError, TimeoutError, pickle.PicklingError) as error:
        os.close(write)
        child.cancel()
        return None, f"the validation prepared aside did not take the increment ({error}): validating here"
    os.close(write)
    started = time.perf_counter()
    if _meanwhile is not None:  # this core would wait idle
        _meanwhile(child.done)
    report, why = child.result(timeout=RESULT_TIMEOUT)
    if why is not None:
        return None, f"the validation prepared aside failed ({why}): validating here"
    return report, f"validated in process {child.pid}, which imported Great Expectations beside the pipeline ({time.perf_counter() - started:.2f} s from the request to its report)"


def _send(fd: int, payload: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(payload)
    os.set_blocking(fd, False)
    while view:
        if not poller.poll(max(deadline - time.monotonic(), 0.0) * 1000):
            raise TimeoutError(f"it read nothing for {timeout:.0f} s")
        with contextlib.suppress(BlockingIOError):
            view = view[os.write(fd, view):]


def _receive(fd: int) -> bytes:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _serve(read: int, write: int) -> Any:
    """The child: import and warm GX, then validate the increment the parent sends (None when it sends none)."""
    os.close(write)  # the parent's end: with it closed here, the pipe ends when the parent closes its copy
    # Behind the command and Prefect's server starting: measured on two cores, it then slows them least while
    # still ready in time (at the lowest priority it was ready only seconds later, and the command waited).
    os.nice(5)
    devnull = os.open(os.devnull, os.O_WRONLY)  # the parent's terminal shows its progress display
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import pandas as pd

    from lepton.config import DataConfig
    from lepton.validation import validate_frame

    # Two rows through a first increment's suite: GX imports much of itself only when a context and a suite run.
    with contextlib.suppress(Exception):  # a warm-up only: the increment's validation says what is wrong
        validate_frame(pd.DataFrame({"x": [0.0, 1.0], "y": ["a", "b"]}), None, DataConfig(label="y", min_rows=1, holdout_fraction=0.5), None)
    request = _receive(read)
    if len(request) < 8:
        return None
    (size,) = struct.unpack("<Q", request[:8])
    if len(request) != 8 + size:
        raise EOFError(f"{len(request) - 8} of the request's {size} bytes arrived")
    frame, schema, config, data_docs, run_name = pickle.loads(request[8:])
    return validate_frame(frame, schema, config, data_docs, run_name)
