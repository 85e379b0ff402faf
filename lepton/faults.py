"""Named fault points: a test hook that kills the process at a precise step of a run.

``checkpoint(name)`` SIGKILLs its own process when the environment variable ``LEPTON_KILL_AT``
equals ``name``, and does nothing otherwise (one environment lookup). The crash tests set it on a
real ``lepton run`` to stop the run exactly there, as a power cut or an OOM kill would, and then
check that a plain re-run converges. Nothing in production sets it.

The points, in the order a run reaches them:

- ``ingest``: the increment's bytes are copied into the workspace, not yet in place in ``data/``;
- ``train``: the candidate is trained in memory, nothing about it written anywhere (training
  writes nothing until registration, so this is the state a kill at any epoch leaves);
- ``register``: the model version exists in the registry, its tracking run is not ended, the champion has not moved;
- ``promote``: the champion's history records the move, the alias has not moved yet.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

VARIABLE = "LEPTON_KILL_AT"
POINTS = ("ingest", "train", "register", "promote")


def checkpoint(name: str) -> None:
    """Die here, at once and without clean-up, if ``LEPTON_KILL_AT`` names this point."""
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# SIGTERM. Prefect's handler raises TerminationSignal in the main thread wherever it happens to be;
# when that is inside a finalizer (a ``__del__`` or weakref callback that the garbage collector runs
# in the middle of training), Python prints "Exception ignored in ..." and carries on, and the run
# went on to register a version and exit 0. The guard below notices the signal outside Python's
# handler (the interpreter's wakeup fd) and, if the process is still alive ``grace`` seconds later,
# delivers it again; after ``attempts`` it ends the process. Stopping anywhere is safe: a re-run
# resumes the increment (see the fault points above).

GRACE_SECONDS = 5.0
_guarded = False
_received = threading.Event()  # set once SIGTERM arrived, whatever Python's handler made of it
_wakeup: int | None = None  # the read end of the interpreter's wakeup fd: a byte per signal received
_reading = threading.Lock()


def stop_on_sigterm(grace: float = GRACE_SECONDS, attempts: int = 2) -> bool:
    """Make SIGTERM stop this process even where its exception is swallowed; True once installed (main thread only)."""
    global _guarded
    if _guarded:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    global _wakeup
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if previous != -1:  # an event loop owns it: leave it alone
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        return False
    _wakeup = read_end
    threading.Thread(target=_watch, args=(read_end, grace, attempts), name="lepton-sigterm-guard", daemon=True).start()
    _guarded = True
    return True


def _drain() -> None:
    """Read what signals the wakeup fd holds; note a SIGTERM among them. Either thread may read: the guard when it wakes,
    the run where it checks (the guard thread may not have run yet on a busy machine)."""
    if _wakeup is None:
        return
    with _reading:
        try:
            while data := os.read(_wakeup, 512):
                if signal.SIGTERM in data:
                    _received.set()
        except BlockingIOError:
            pass


def stop_if_terminated() -> None:
    """End the process as SIGTERM means to, here, if one arrived and the run went on (its exception swallowed): called
    before a run registers a version and before it reports success. A run stopped once registering and promoting,
    exited 0, and said nothing of the signal."""
    _drain()
    if _received.is_set():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE_SECONDS)  # the default action is immediate; this only waits for it
        os._exit(128 + signal.SIGTERM)


def _watch(read_end: int, grace: float, attempts: int) -> None:
    while not _received.is_set():
        select.select([read_end], [], [])
        _drain()
    for _ in range(attempts):
        time.sleep(grace)
        # Still here: the exception was swallowed, or clean-up hangs. Again, as the sender meant it.
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(128 + signal.SIGTERM)
