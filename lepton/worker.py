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
from pathlib import Path
from typing import Any

from lepton.workspace import Workspace

# Variables the libraries read once, at import: a caller whose values differ runs in its own process.
IMPORT_TIME_PREFIXES = ("PREFECT_", "MLFLOW_", "GX_", "GE_", "DVC_", "LEPTON_", "OMP_", "MKL_", "TORCH", "PYTORCH_", "CUDA_")
IMPORT_TIME_NAMES = ("HOME", "PYTHONPATH", "DO_NOT_TRACK", "TQDM_DISABLE")
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
    """Where the worker listens: a private folder of this user's under the temporary directory (a Unix
    socket's path is limited to about 100 characters, which a workspace's own folder may exceed)."""
    digest = hashlib.sha256(str(ws.root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lepton-{os.getuid()}" / f"worker-{digest}.sock"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def running(ws: Workspace) -> dict[str, Any] | None:
    """The worker's record while its process lives and its socket is there."""
    state = recorded(ws)
    if state is None or not _alive(int(state["pid"])) or not Path(state["socket"]).exists():
        return None
    return state


# ---- the protocol: a length-prefixed JSON request with three file descriptors, JSON lines back ----


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(header) != 4:
        raise ConnectionError("no request")
    (size,) = struct.unpack("!I", header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), list(fds)


def hand_off(ws: Workspace, note: Any = None) -> int | None:
    """Run this process's command in the workspace's warm worker; its exit status, or None when it must run here.

    ``note`` (a callable) is told, in one line, why a worker that is up did not take the command.
    """
    if IN_WORKER or os.environ.get(CHILD_VARIABLE):
        return None
    state = running(ws)
    if state is None:
        return None
    request = {
        "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "fingerprint": code_fingerprint(),
        "umask": _umask(),
    }
    body = json.dumps(request).encode()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(5.0)
        conn.connect(str(state["socket"]))
        socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
        conn.sendall(body)
        conn.settimeout(None)
        replies = conn.makefile("r", encoding="utf-8")
        first = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        return None
    if "refused" in first:
        conn.close()
        if note is not None:
            note(f"the warm worker did not take this run ({first['refused']}); running it here")
        return None
    child = int(first.get("pid", 0))
    forwarded = {sig: signal.signal(sig, lambda signum, _frame: _forward(child, signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                line = replies.readline()
                break
            except InterruptedError:  # a signal we forwarded interrupted the wait
                continue
        done = json.loads(line) if line else {}
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
        conn.close()
    if "exit" not in done:
        print(f"error: the warm worker's run (pid {child}) ended without an exit status; see {log_path(ws)}", file=sys.stderr)
        return 1
    return int(done["exit"])


def _forward(pid: int, signum: int) -> None:
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
    if current is not None and current.get("fingerprint") == code_fingerprint():
        return current
    if current is not None:  # it imported code that has changed since: a new one imports what is installed now
        stop(ws)
    path = socket_path(ws)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_uid != os.getuid():  # someone else made the folder our socket would sit in
        raise RuntimeError(f"{path.parent} belongs to another user: the warm worker's socket cannot be private there")
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    log = log_path(ws)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | {"PREFECT_API_URL": api_url}
    with log.open("ab") as sink:
        process = subprocess.Popen(  # noqa: S603 - this Python, this module
            [sys.executable, "-m", "lepton.worker", str(ws.root), str(path)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=ws.root,
        )
    state = {"pid": process.pid, "socket": str(path), "started": time.time(), "log": str(log), "fingerprint": code_fingerprint()}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the warm worker exited with code {process.returncode} before listening; see {log}")
        if path.exists():
            ws.write_atomically(state_path(ws), json.dumps(state) + "\n")
            return state
        time.sleep(0.1)
    stop_process(process.pid)
    raise RuntimeError(f"the warm worker did not listen within {wait:.0f} s; see {log}")


def stop(ws: Workspace) -> dict[str, Any] | None:
    """Stop the recorded worker (and any run it is serving) by its PID; None when none was running."""
    state = recorded(ws)
    state_path(ws).unlink(missing_ok=True)
    if state is None:
        return None
    Path(state["socket"]).unlink(missing_ok=True)
    if not _alive(int(state["pid"])):
        return None
    stop_process(int(state["pid"]))
    return state


def stop_process(pid: int, grace: float = 10.0) -> None:
    """SIGTERM to the worker's process group (its runs too), SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not _alive(pid):
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} | {message}", flush=True)


def warm() -> None:
    """Import what a run imports, without running anything (no thread may exist when the worker forks)."""
    import importlib
    import pkgutil

    os.environ.setdefault("MPLBACKEND", "Agg")
    # What a run imports on its way (measured: the modules a run added to a worker that had imported only Lepton's).
    for name in ("great_expectations", "great_expectations.expectations", "mlflow", "mlflow.models", "mlflow.pyfunc", "mlflow.tracing",
                 "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store", "alembic.runtime.migration",
                 "dvc.repo", "dvc_data.hashfile.tree", "filelock", "graphviz", "pygments.lexers", "matplotlib.pyplot", "jinja2", "PIL.Image",
                 "pyarrow.parquet", "prefect.runtime", "prefect.flow_engine", "prefect.task_engine", "sklearn.metrics", "typer",
                 "rich.console", "rich.progress", "rich.table"):
        with contextlib.suppress(ImportError):  # an optional one missing costs its run the import, nothing else
            importlib.import_module(name)
    for layer in ("lepton", "lepton.models", "lepton.tasks", "lepton.flows"):  # the layers live in folders of their own
        package = importlib.import_module(layer)
        for module in pkgutil.walk_packages(package.__path__, f"{layer}."):
            # The CLI makes its consoles at import, for the terminal it finds: each run imports it on its caller's.
            if not module.name.startswith(("lepton.cli", "lepton.worker")) and not module.name.endswith("__main__"):
                importlib.import_module(module.name)


def serve(root: str, path: str) -> None:
    """Import the pipeline, then fork a child per command handed over on the socket at ``path``."""
    ours = import_time_settings(os.environ)
    fingerprint = code_fingerprint()
    started = time.perf_counter()
    warm()
    _log(f"pipeline imported in {time.perf_counter() - started:.1f} s; listening on {path} (pid {os.getpid()})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    os.chmod(staging, 0o600)
    os.rename(staging, path)  # the socket appears once it accepts: `start` waits for the path
    listener.listen(16)
    listener.settimeout(1.0)
    try:
        while True:
            _reap()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            try:
                _serve_one(conn, listener, ours, fingerprint)
            except Exception as error:  # noqa: BLE001 - one bad request must not stop the worker
                _log(f"request dropped: {type(error).__name__}: {error}")
                conn.close()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _log(f"run {pid} exited {os.waitstatus_to_exitcode(status)}")


def _serve_one(conn: socket.socket, listener: socket.socket, ours: dict[str, str], fingerprint: str) -> None:
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    request, fds = _receive_request(conn)
    refused = None
    if request.get("env", {}).get(CHILD_VARIABLE):
        refused = "a command of one of its own runs"
    elif uid != os.getuid():
        refused = "another user's command"
    elif len(fds) != 3:
        refused = "no terminal passed"
    elif request.get("fingerprint") != fingerprint:
        refused = "Lepton's code changed since it started: `lepton server stop` and `start` bring it up to date"
    else:
        key = differing_setting(ours, import_time_settings(request.get("env", {})))
        if key is not None:
            refused = f"{key} differs from the worker's, which Prefect, MLflow or torch read when the worker started"
    if refused is not None:
        _log(f"refused {' '.join(request.get('argv', [])[1:3])}: {refused}")
        _send(conn, {"refused": refused})
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        _child(conn, fds, request)  # never returns
    _log(f"run {pid}: {' '.join(request['argv'][1:])} (in {request['cwd']})")
    for fd in fds:
        os.close(fd)
    conn.close()


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """Become the caller's command: its terminal, environment, directory and arguments; report its exit status."""
    global IN_WORKER
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=stream.isatty())
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD_VARIABLE] = "1"
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        sys.argv = list(request["argv"])
        IN_WORKER = True
        _send(conn, {"pid": os.getpid()})
        from lepton.cli import finished_command

        code = finished_command()
    except BaseException as error:  # noqa: BLE001 - the caller must get a status whatever happened
        with contextlib.suppress(Exception):
            print(f"error: the warm worker's run failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            _send(conn, {"exit": code})
        os._exit(code)


if __name__ == "__main__":  # python -m lepton.worker WORKSPACE SOCKET (what `start` runs)
    # Through the imported module, not this __main__ copy of it: the children's CLI must see their IN_WORKER.
    from lepton import worker

    worker.serve(sys.argv[1], sys.argv[2])
