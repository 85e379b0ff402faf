"""A warm worker beside the workspace's server: runs start with the pipeline already imported.

A run in a fresh process spends seconds importing torch, Prefect, MLflow and Great
Expectations before its first step, more than the steps of a small increment take.
``lepton server start`` also starts this worker: one process that imports all of it once,
then waits on a Unix socket. ``lepton run`` (and ``retry``, ``run-pending``, ``backfill``)
hands its command to it: the worker forks a child, which takes the caller's terminal (its
stdin, stdout and stderr, passed over the socket), environment, working directory and
arguments, and runs the very command the caller would have run; the caller waits and
exits with the child's status, forwarding Ctrl-C to it. Each run is its own process, as
before: nothing of one run stays for the next, and a user's network module is imported
fresh each time. The worker is a shortcut, never a requirement: when it is not there, the
code installed has changed since it started, or the caller's settings differ from its own
(Prefect and MLflow read theirs at import), the command runs in its own process as before.

Standard library only at import: the caller checks for the worker before importing anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton.server import alive, exited
from lepton.workspace import Workspace

# Variables the libraries read once, at import: a caller whose values differ runs in its own process.
IMPORT_TIME_PREFIXES = (
    "PREFECT_", "MLFLOW_", "GX_", "GE_", "DVC_", "LEPTON_", "OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "TORCH", "PYTORCH_", "CUDA_", "PYTHON",
)
IMPORT_TIME_NAMES = ("HOME", "DO_NOT_TRACK", "TQDM_DISABLE")
# How long the worker gives a caller to send its request, and a caller the worker to take it.
REQUEST_SECONDS = 5.0
# Signals a caller passes on to its run (Ctrl-C, a kill, a hangup, Ctrl-\).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STARTUP_SECONDS = 120.0
# Set in a child the worker forked: its command must run there, not be handed off again (the variable
# too, for anything the child starts).
IN_WORKER = False
CHILD_VARIABLE = "LEPTON_WORKER_CHILD"


def state_path(ws: Workspace) -> Path:
    return ws.state / "worker.json"


def log_path(ws: Workspace) -> Path:
    return ws.state / "logs" / "worker.log"


def socket_path(ws: Workspace) -> Path:
    """Where the worker listens: a private folder of this user's, in ``$XDG_RUNTIME_DIR`` or the temporary directory
    (a Unix socket's path is limited to about 100 characters, which a workspace's own folder may exceed)."""
    digest = hashlib.sha256(str(ws.root.resolve()).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"lepton-{os.getuid()}" / f"worker-{digest}.sock"


def _private_folder(folder: Path) -> None:
    """Make ``folder`` this user's alone, refusing one that is a link or someone else's (the socket's callers send it secrets)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{folder} is not a folder of this user's (a link, or another user's): the warm worker's socket cannot be private there")
    os.chmod(folder, 0o700)


def code_fingerprint() -> str:
    """The installed Lepton the worker imported: its interpreter and every module file's size and time."""
    import importlib.util  # the layers' folders, found without importing them (they live beside the package)

    stamp = hashlib.sha256(sys.executable.encode())
    for layer in ("lepton", "lepton.models", "lepton.tasks", "lepton.flows"):
        spec = importlib.util.find_spec(layer)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).rglob("*.py")):
                info = path.stat()
                stamp.update(f"{path}:{info.st_size}:{info.st_mtime_ns};".encode())
    return stamp.hexdigest()[:16]


def import_time_settings(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables of ``environ`` that the pipeline's libraries read once, at import."""
    return {k: v for k, v in environ.items() if k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES}


def differing_setting(ours: dict[str, str], theirs: dict[str, str]) -> str | None:
    """The first import-time variable the two environments set differently (its name only: values may be secrets)."""
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return key
    return None


def recorded(ws: Workspace) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(ws).read_text())
    except (OSError, ValueError):
        return None


def running(ws: Workspace) -> dict[str, Any] | None:
    """The worker's record while its process lives and its socket is there."""
    state = recorded(ws)
    if state is None or not alive(int(state["pid"])) or not Path(state["socket"]).exists():
        return None
    return state


# ---- the protocol: a length-prefixed JSON request with three file descriptors; JSON lines back ----
# The caller sends {argv, cwd, env, fingerprint, umask} with its stdin, stdout and stderr. The worker answers
# {"refused": why} (the caller runs the command itself) or {"pid": the run's}, then, when the run's process
# has ended, {"exit": its wait status}: the status itself, or minus the signal that ended it.


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the descriptors it came with; the descriptors are closed here when the request is unusable."""
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    fds = list(fds)
    try:
        if len(header) != 4:
            raise ConnectionError("no request")
        (size,) = struct.unpack("!I", header)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ConnectionError("request cut short")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        _close(fds)
        raise


def _hung_up(conn: socket.socket) -> bool:
    import select

    if not select.select([conn], [], [], 0)[0]:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _peer_uid(conn: socket.socket) -> int:
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]


def hand_off(ws: Workspace, note: Any = None) -> int | None:
    """Run this process's command in the workspace's warm worker; its exit status, or None when it must run here.

    ``note`` (a callable) is told, in one line, why a worker that is up did not take the command.
    """
    if IN_WORKER or os.environ.get(CHILD_VARIABLE):
        return None
    state = running(ws)
    if state is None:
        return None
    request = {"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "fingerprint": code_fingerprint(), "umask": _umask()}
    body = json.dumps(request).encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(REQUEST_SECONDS)
        conn.connect(str(state["socket"]))
        if _peer_uid(conn) != os.getuid():  # what listens there is not ours: it gets neither the environment nor the terminal
            conn.close()
            return None
        socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
        conn.sendall(body)
        replies = conn.makefile("r", encoding="utf-8")
        first = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):  # not up after all, busy past the wait, or gone: the command runs here
        conn.close()
        return None
    if "pid" not in first:
        conn.close()
        if note is not None and "refused" in first:
            note(f"the warm worker did not take this run ({first['refused']}); running it here")
        return None
    child = int(first["pid"])
    forwarded = {sig: signal.signal(sig, lambda signum, _frame: _forward(child, signum)) for sig in FORWARDED}
    try:
        conn.settimeout(None)
        line = replies.readline()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
        conn.close()
    try:
        status = int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        print(f"error: the warm worker stopped before run {child} ended; see {log_path(ws)}", file=sys.stderr)
        return 1
    return 128 - status if status < 0 else status  # a signal ends it as a shell reports it: 130 for Ctrl-C


def _forward(pid: int, signum: int) -> None:
    if pid > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# ---- the worker ----------------------------------------------------------------------------


def start(ws: Workspace, api_url: str, *, wait: float = STARTUP_SECONDS) -> dict[str, Any]:
    """Start the worker for ``ws`` (its commands' Prefect API at ``api_url``) and wait until it listens."""
    import subprocess

    current = running(ws)
    if current is not None and current.get("fingerprint") == code_fingerprint() and current.get("api_url") == api_url:
        return current
    if current is not None:  # it imported code that has changed since, or points at another server: replaced
        stop(ws)
    path = socket_path(ws)
    _private_folder(path.parent)
    path.unlink(missing_ok=True)
    log = log_path(ws)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | {"PREFECT_API_URL": api_url}
    with log.open("ab") as sink:
        process = subprocess.Popen(  # noqa: S603 - this Python, this module
            [sys.executable, "-m", "lepton.worker", str(ws.root), str(path)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=ws.root,
        )
    state = {"pid": process.pid, "socket": str(path), "started": time.time(), "log": str(log), "fingerprint": code_fingerprint(), "api_url": api_url}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the warm worker exited with code {process.returncode} before listening; see {log}")
        if path.exists():
            ws.write_atomically(state_path(ws), json.dumps(state) + "\n")
            return state
        time.sleep(0.1)
    stop_process(process.pid, grace=5.0)
    raise RuntimeError(f"the warm worker did not listen within {wait:.0f} s; see {log}")


# How long stopping waits for the runs in flight: the worker takes no new one, and lets these finish.
STOP_SECONDS = 3600.0


def stop(ws: Workspace, *, grace: float = STOP_SECONDS) -> dict[str, Any] | None:
    """Stop the recorded worker by its PID once its runs in flight have finished; None when none was running."""
    state = recorded(ws)
    state_path(ws).unlink(missing_ok=True)
    if state is None or not alive(int(state["pid"])):
        return None
    Path(state["socket"]).unlink(missing_ok=True)
    stop_process(int(state["pid"]), grace=grace)
    return state


def stop_process(pid: int, *, grace: float) -> None:
    """SIGTERM to the worker (it stops taking runs and exits when those in flight end), SIGKILL to its runs and it after ``grace`` seconds."""
    runs = _children(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if exited(pid, grace):
        return
    for group in (*runs, pid):  # each run is a process group of its own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def in_flight(ws: Workspace) -> int:
    """How many runs the workspace's worker serves now (its children's processes)."""
    state = running(ws)
    return len(_children(int(state["pid"]))) if state else 0


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} | {message}", flush=True)


# The CLI makes its consoles at import, for the terminal it finds: each run imports it on its caller's.
NOT_WARMED = ("lepton.cli", "lepton.worker")


# What a run imports on its way, in the order its steps need them (measured: the modules a run added to a worker
# that had imported only Lepton's layers).
RUN_IMPORTS = (
    "prefect.flow_engine", "prefect.task_engine", "prefect.runtime", "pyarrow.parquet", "filelock", "dvc.repo", "dvc_data.hashfile.tree",
    "great_expectations", "great_expectations.expectations", "mlflow", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "alembic.runtime.migration", "mlflow.models", "mlflow.pyfunc", "mlflow.tracing",
    "sklearn.metrics", "PIL.Image", "jinja2", "graphviz", "pygments.lexers", "typer", "rich.console", "rich.progress", "rich.table",
)


def import_ahead(until: Callable[[], bool] = lambda: False, skip: tuple[str, ...] = ()) -> None:
    """Import ``RUN_IMPORTS`` now, in order, stopping as soon as ``until()`` says so; a run imports the rest when it needs them.
    ``skip``: packages another process imports for this one (its validation's)."""
    import importlib

    for name in RUN_IMPORTS:
        if name.startswith(skip):
            continue
        if until():
            return
        with contextlib.suppress(ImportError):  # an optional one missing costs its run the import, nothing else
            importlib.import_module(name)


def warm() -> None:
    """Import what a run imports, without running anything: the CLI excepted (see NOT_WARMED)."""
    import importlib
    import pkgutil

    import_ahead()
    from lepton.tasks.registry import check_requirements_ahead

    check_requirements_ahead()

    def walk(package: str) -> None:
        # iter_modules, not walk_packages: walking imports every package on the way, the CLI's too.
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__, f"{package}."):
            if module.name.startswith(NOT_WARMED) or module.name.endswith("__main__"):
                continue
            importlib.import_module(module.name)
            if module.ispkg:
                walk(module.name)

    for layer in ("lepton", "lepton.models", "lepton.tasks", "lepton.flows"):  # the layers live in folders of their own
        walk(layer)


class _Worker:
    """The serving loop: a listener, and per run in flight the caller's connection, to report its exit status on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ours = import_time_settings(os.environ)
        self.fingerprint = code_fingerprint()
        self.runs: dict[int, socket.socket] = {}
        self.stopping = False

    def serve(self) -> None:
        import select

        started = time.perf_counter()
        warm()
        _log(f"pipeline imported in {time.perf_counter() - started:.1f} s; listening on {self.path} (pid {os.getpid()})")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)  # a child's exit or a stop wakes the loop at once
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = f"{self.path}.{os.getpid()}"
        listener.bind(staging)
        os.chmod(staging, 0o600)
        os.rename(staging, self.path)  # the socket appears once it accepts: `start` waits for the path
        listener.listen(16)
        try:
            while not (self.stopping and not self.runs):
                if self.stopping and listener.fileno() >= 0:
                    self._unlink(listener)
                    listener.close()
                    _log(f"stopping: {len(self.runs)} run(s) in flight finish first")
                ready, _, _ = select.select([wake_r] + ([listener] if listener.fileno() >= 0 else []), [], [], 5.0)
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                self._reap()
                if listener.fileno() >= 0 and listener in ready:
                    conn, _ = listener.accept()
                    try:
                        self._serve_one(conn, listener)
                    except Exception as error:  # noqa: BLE001 - one bad request must not stop the worker
                        _log(f"request dropped: {type(error).__name__}: {error}")
                        conn.close()
        finally:
            if listener.fileno() >= 0:
                self._unlink(listener)
            _log("stopped")

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _unlink(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(self.path)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            _log(f"run {pid} exited {code}")
            conn = self.runs.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):  # a caller that has gone
                    _send(conn, {"exit": code})
                conn.close()

    def _serve_one(self, conn: socket.socket, listener: socket.socket) -> None:
        conn.settimeout(REQUEST_SECONDS)  # a caller that connects and says nothing holds no one up for long
        request, fds = _receive_request(conn)
        try:
            refused = self._refusal(request, conn, fds)
            if refused is not None:
                _log(f"refused {' '.join(request.get('argv', [])[1:3])}: {refused}")
                with contextlib.suppress(OSError):
                    _send(conn, {"refused": refused})
                conn.close()
                return
            conn.settimeout(None)
            if _hung_up(conn):  # the caller gave up waiting and runs the command itself
                conn.close()
                return
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in self.runs.values():
                    other.close()
                _child(conn, fds, request)  # never returns
            self.runs[pid] = conn
            _log(f"run {pid}: {' '.join(request['argv'][1:])} (in {request['cwd']})")
            try:
                _send(conn, {"pid": pid})
            except OSError:  # the caller left before its run began: the run goes with it (see _child)
                pass
        finally:
            _close(fds)

    def _refusal(self, request: dict[str, Any], conn: socket.socket, fds: list[int]) -> str | None:
        if request.get("env", {}).get(CHILD_VARIABLE):
            return "a command of one of its own runs"
        if _peer_uid(conn) != os.getuid():
            return "another user's command"
        if len(fds) != 3:
            return "no terminal passed"
        if request.get("fingerprint") != self.fingerprint:
            return "Lepton's code changed since it started: `lepton server start` brings it up to date"
        key = differing_setting(self.ours, import_time_settings(request.get("env", {})))
        if key is not None:
            return f"{key} differs from the worker's, which Prefect, MLflow or torch read when the worker started"
        return None


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """Become the caller's command: its terminal, environment, directory and arguments; end with its exit status.

    It runs in a process group of its own (stopping the worker lets it finish), and ends as if
    interrupted when its caller goes away (a killed caller, a closed terminal): a run nobody waits
    for must not go on to register and promote unseen.
    """
    global IN_WORKER
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        _close(fds)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty())
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_VARIABLE] = "1"
        time.tzset()
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        sys.argv = list(request["argv"])
        _fresh_randomness()
        IN_WORKER = True
        _watch_caller(conn)
        from lepton.cli import finished_command

        code = finished_command()
    except BaseException as error:  # noqa: BLE001 - the caller must get a status whatever happened
        with contextlib.suppress(Exception):
            print(f"error: the warm worker's run failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def _fresh_randomness() -> None:
    """Seed the global generators from the system, as a new process would: each run its own stream, not the worker's."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _watch_caller(conn: socket.socket) -> None:
    """Interrupt this run when the caller's end of the connection closes (it sends nothing else)."""
    import threading

    def watch() -> None:
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="lepton-caller-watch", daemon=True).start()


def serve(path: str) -> None:
    """Import the pipeline, then fork a child per command handed over on the socket at ``path``."""
    _Worker(path).serve()


if __name__ == "__main__":  # python -m lepton.worker WORKSPACE SOCKET (what `start` runs; the workspace names it in `ps`)
    # Through the imported module, not this __main__ copy of it: the children's CLI must see their IN_WORKER.
    from lepton import worker

    worker.serve(sys.argv[2])
