"""A second training beside the first: a forked process on the core the first leaves idle.

A network small enough to train on one intra-op thread (the default one is) leaves the other cores
idle, and Python holds a lock that keeps two trainings in one process from using them (a thread
beside the first saved 17%). When a run knows before it fine-tunes that a network retrained from
scratch will compete (drift that hurts the champion), it forks: the child trains the rival while the
parent fine-tunes, and hands the result back through a pipe.

Forking is safe only before this process has run a backward pass (autograd's worker threads do not
survive a fork, and torch refuses to train in such a child), on the CPU (a CUDA context does not
survive one either), on Linux, and with one intra-op thread in the child. Anything else, and any
failure in the child, leaves the caller to train in its own process, as it would without this.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Set once this process has trained (run a backward pass): a child forked after it cannot train.
_trained = False


def note_training() -> None:
    """Record that this process ran a backward pass (the training loop calls it)."""
    global _trained
    _trained = True


def why_not(device: torch.device) -> str | None:
    """Why a training cannot go to a forked child here; None when it can."""
    if not sys.platform.startswith("linux"):
        return "forking is used on Linux only"
    if _trained:
        return "this process has trained already (autograd's threads do not survive a fork)"
    if device.type != "cpu" or torch.cuda.is_initialized():
        return "it trains on CUDA"
    if (os.cpu_count() or 1) < 2:
        return "one CPU core: nothing would run beside it"
    return None


class Aside:
    """A training running in a forked child; ``result`` waits for it."""

    def __init__(self, pid: int, pipe: int, started: float) -> None:
        self.pid, self.pipe, self.started = pid, pipe, started
        self.collected = False
        # A run that fails before it asks for the result leaves no training behind it.
        atexit.register(self.abandon)

    def abandon(self) -> None:
        """Kill and reap the child, unless its result was collected."""
        if self.collected:
            return
        self.collected = True
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
            os.close(self.pipe)
            os.waitpid(self.pid, 0)

    def result(self, timeout: float | None = None) -> tuple[Any, str | None]:
        """``(value, None)`` once the child has sent it, or ``(None, why)`` when it failed, died or ran past ``timeout``
        seconds from now (then it is killed). Call it once."""
        self.collected = True
        atexit.unregister(self.abandon)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: list[bytes] = []
        why = None
        try:
            while True:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                ready, _, _ = select.select([self.pipe], [], [], wait)
                if not ready:
                    why = f"it ran past {timeout:.0f} s"
                    os.kill(self.pid, signal.SIGKILL)
                    break
                chunk = os.read(self.pipe, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.pipe)
            _, status = os.waitpid(self.pid, 0)
        if why is not None:
            return None, why
        try:
            kind, value = pickle.loads(b"".join(chunks))
        except Exception:  # killed, or died before it said anything
            return None, f"the child process ended with status {os.waitstatus_to_exitcode(status)} without a result"
        return (value, None) if kind == "ok" else (None, value)


def start(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Aside:
    """Fork a child that runs ``fn(*args, **kwargs)`` on one intra-op thread, logging nothing, and sends back its value.
    Check ``why_not`` first."""
    read, write = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, and leave without running the parent's exit handlers
        code = 0
        try:
            os.close(read)
            logging.disable(logging.CRITICAL)  # the parent's handlers (its terminal, Prefect's API) are not this process's
            torch.set_num_threads(1)  # OpenMP's threads did not survive the fork; one thread never asks for them
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as error:  # noqa: BLE001 - whatever it was, the parent trains instead
                payload = pickle.dumps(("error", f"{type(error).__name__}: {error}"))
                code = 1
            view = memoryview(payload)
            while view:
                view = view[os.write(write, view):]
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    os.close(write)
    log.debug("training aside in process %d", pid)
    return Aside(pid, read, started)
