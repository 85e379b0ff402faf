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

``start`` runs any function so (``lepton.validation_aside`` forks a child that validates an increment).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import sys
import time
import weakref
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
    if len(os.sched_getaffinity(0)) < 2:
        return "one CPU core: nothing would run beside it"
    return None


class Aside:
    """A function (a training, a validation) running in a forked child; ``result`` waits for it."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid, self.pipe = pid, pipe
        # A run that fails before it asks for the result leaves no training behind it: the child is killed when this
        # object goes, or at exit (and by the kernel when this process dies: see _die_with).
        self._reaper = weakref.finalize(self, _reap, pid, pipe)

    def done(self) -> bool:
        """Whether the child has sent its result or ended: ``result`` would not wait."""
        return _readable(self.pipe)

    def cancel(self) -> None:
        """Kill the child now: its result is not wanted."""
        self._reaper()

    def result(self, timeout: float | None = None) -> tuple[Any, str | None]:
        """``(value, None)`` once the child has sent it, or ``(None, why)`` when it failed, died or ran past ``timeout``
        seconds from now (then it is killed). Call it once."""
        self._reaper.detach()
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: list[bytes] = []
        why, ended = None, False
        poller = select.poll()
        poller.register(self.pipe, select.POLLIN | select.POLLHUP)
        try:
            while True:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0.0) * 1000
                if not poller.poll(wait):
                    why = f"it ran past {timeout:.0f} s"
                    break
                chunk = os.read(self.pipe, 1 << 20)
                if not chunk:
                    ended = True
                    break
                chunks.append(chunk)
        finally:  # past the time limit, or this process interrupted while it waited: the child goes too
            if not ended:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            os.close(self.pipe)
            _, status = os.waitpid(self.pid, 0)
        if why is not None:
            return None, why
        try:
            kind, value = pickle.loads(b"".join(chunks))
        except Exception:  # killed, or died before it said anything
            return None, f"the child process ended with status {os.waitstatus_to_exitcode(status)} without a result"
        return (value, None) if kind == "ok" else (None, value)


def _readable(pipe: int) -> bool:
    poller = select.poll()
    poller.register(pipe, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(0))


def _reap(pid: int, pipe: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.close(pipe)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def start(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Aside:
    """Fork a child that runs ``fn(*args, **kwargs)`` on one intra-op thread, logging nothing, and sends back its value.
    Check ``why_not`` first."""
    read, write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, and leave without running the parent's exit handlers
        code = 0
        try:
            os.close(read)
            _die_with(parent)
            # The parent's signal handlers and wakeup descriptor (Prefect's, Lepton's SIGTERM guard) are not this
            # process's: a signal ends it, and the parent, which sees the pipe close, does the work itself.
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_DFL)
            logging.disable(logging.CRITICAL)  # the parent's handlers (its terminal, Prefect's API) are not this process's
            torch.set_num_threads(1)  # OpenMP's threads did not survive the fork; one thread never asks for them
            try:
                payload = pickle.dumps(("ok", fn(*args, **kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as error:  # noqa: BLE001 - whatever it was, the parent does the work itself
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
    log.debug("%s aside in process %d", getattr(fn, "__qualname__", "work"), pid)
    return Aside(pid, read)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (killed, or ended by ``os._exit`` without asking for the
    result): a child nobody waits for must not hold the caller's terminal or pipes."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(3)
