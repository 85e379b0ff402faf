"""A Prefect server kept up in the background for one workspace, so commands stop paying a temporary one.

Without ``PREFECT_API_URL`` every flow starts Prefect's temporary server and stops it at
exit, seconds to tens of seconds per command. ``lepton server start`` runs ``prefect
server start`` detached, on 127.0.0.1, with the workspace's own Prefect home (the same
database the temporary server uses), and records it in ``.lepton/server.json``; while it
answers, every command in the workspace points ``PREFECT_API_URL`` at it. Standard library
only at import: the check runs before any command imports Prefect.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lepton.workspace import Workspace

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STARTUP_SECONDS = 90.0


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why and where its log is."""


@dataclass(frozen=True)
class Server:
    pid: int
    port: int
    started: float
    log: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def state_path(ws: Workspace) -> Path:
    return ws.state / "server.json"


def log_path(ws: Workspace) -> Path:
    return ws.state / "logs" / "prefect-server.log"


def alive(pid: int) -> bool:
    """The process exists and has not exited (an exited one its parent has not reaped yet is not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the number
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def exited(pid: int, grace: float) -> bool:
    """Wait up to ``grace`` seconds for ``pid`` to end (reaped when it is our child); whether it did."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child: poll its existence instead
            if not alive(pid):
                return True
        time.sleep(0.1)
    return False


def _listening(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _healthy(server: Server, timeout: float = 2.0) -> bool:
    import urllib.request  # 0.1 s of imports (http, email, ssl): only ``start`` asks

    try:
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except OSError:
        return False


def recorded(ws: Workspace) -> Server | None:
    """The server ``lepton server start`` recorded, whether or not it still runs."""
    try:
        return Server(**json.loads(state_path(ws).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(ws: Workspace) -> Server | None:
    """The workspace's background server if its process lives and its port answers (a millisecond; no HTTP)."""
    server = recorded(ws)
    if server is None or not alive(server.pid) or not _listening(server.port):
        return None
    return server


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ServerError("no free port on 127.0.0.1")


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    found = str(beside) if beside.exists() else shutil.which("prefect")
    if not found:
        raise ServerError("the prefect command is not installed beside this Python")
    return found


def start(ws: Workspace, *, port: int | None = None, wait: float = STARTUP_SECONDS) -> tuple[Server, bool]:
    """The running server, or a new one once it answers ``/api/health``; True when this call started it."""
    current = running(ws)
    if current is not None:
        return current, False
    chosen = _free_port(port or DEFAULT_PORT) if port is None else port
    if port is not None and _listening(port):
        raise ServerError(f"port {port} on {HOST} is taken by another program; choose another with --port")
    log = log_path(ws)
    log.parent.mkdir(parents=True, exist_ok=True)
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(ws.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "true"}
    with log.open("ab") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own prefect, fixed arguments
            [_prefect_executable(), "server", "start", "--host", HOST, "--port", str(chosen)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=ws.root,
        )
    server = Server(pid=process.pid, port=chosen, started=time.time(), log=str(log))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"prefect server exited with code {process.returncode} before answering; see {log}")
        if _healthy(server):
            ws.write_atomically(state_path(ws), json.dumps(asdict(server)) + "\n")
            return server, True
        time.sleep(0.25)
    _terminate(process.pid)
    raise ServerError(f"prefect server did not answer on {server.url} within {wait:.0f} s; see {log}")


def _terminate(pid: int, grace: float = 10.0) -> None:
    """SIGTERM to the server's process group (it runs workers of its own), SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if exited(pid, grace):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(ws: Workspace) -> Server | None:
    """Stop the recorded server (by its PID) and forget it; None when none was recorded or it had already gone."""
    server = recorded(ws)
    state_path(ws).unlink(missing_ok=True)
    if server is None or not alive(server.pid):
        return None
    _terminate(server.pid)
    return server


def use_if_running(ws: Workspace, environ: dict[str, str] | os._Environ[str]) -> Server | None:
    """Point ``PREFECT_API_URL`` at the workspace's server when it runs and nothing else is configured."""
    if environ.get("PREFECT_API_URL"):
        return None
    server = running(ws)
    if server is not None:
        environ["PREFECT_API_URL"] = server.api_url
    return server


class Temporary:
    """Prefect's temporary server for one command, as Prefect itself would run it, on a socket Lepton bound.

    A thread asks for ``/api/health`` from the start (the request waits in the socket's queue
    while the server starts, costing no CPU), so ``settled`` tells without a request of its own.
    ``log_offset``: where this server's lines begin in its log.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path, log_offset: int = 0) -> None:
        import threading
        import urllib.request

        self.process, self.port, self.log, self.log_offset = process, port, log, log_offset
        self._answered = threading.Event()
        self._open = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # loopback: never through a proxy
        threading.Thread(target=self._ask, name="lepton-temporary-server-health", daemon=True).start()

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    def _ask(self) -> None:
        while self.process.poll() is None:
            try:
                with self._open(f"{self.api_url}/health", timeout=10.0) as response:
                    if response.status == 200:
                        self._answered.set()
                        return
            except Exception:  # noqa: BLE001 - not yet up, or a garbled answer: ask again while it runs
                pass
            time.sleep(0.05)

    def settled(self) -> bool:
        """It answers, or it has exited: nothing more to wait for."""
        return self._answered.is_set() or self.process.poll() is not None

    def wait(self, timeout: float) -> None:
        """Return once it answers ``/api/health``; ServerError (with its log's last lines) when it exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not self._answered.wait(0.05):
            if self.process.poll() is not None:
                raise ServerError(f"Prefect's temporary server exited with code {self.process.returncode} before answering{self._said()}; its log: {self.log}")
            if time.monotonic() > deadline:
                raise ServerError(f"Prefect's temporary server did not answer within {timeout:.0f} s{self._said()}; its log: {self.log}")

    def _said(self) -> str:
        """The server's own last word in its log, since it started: a traceback's last line, else its last error."""
        import re

        try:
            with self.log.open("rb") as log:
                log.seek(self.log_offset)
                lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line)]
        chosen = raised or [line for line in lines if "ERROR" in line] or lines
        return f" ({chosen[-1][:300]})" if chosen else ""

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.poll() is None:
            _terminate(self.process.pid, grace=5.0)  # its own session: the group is its own


_temporary: Temporary | None = None

# Runs uvicorn as ``python -m uvicorn`` would, and ends it when the command that started it has gone, however
# it went (killed, its terminal closed): the command holds the other end of its stdin, so that reads EOF.
_LAUNCHER = """\
import os, runpy, signal, sys, threading
def _watch():
    while os.read(0, 4096):  # the file descriptor, not sys.stdin: its lock would be held at interpreter shutdown
        pass
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[1:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def temporary(ws: Workspace, environ: MutableMapping[str, str] = os.environ) -> Temporary | None:
    """Start Prefect's temporary server for this command now, in the background, and point ``PREFECT_API_URL`` at it.

    Without a configured server, Prefect starts the same one (``uvicorn``, its UI off, marked
    ephemeral) at the flow's first call and waits for it: seconds of importing its server, and
    more when it creates the workspace's database. Started before the pipeline's imports, its
    start overlaps theirs. The listening socket is bound here and handed over, so the address is
    known at once and no other program can take it meanwhile. It runs in a session of its own, so
    a Ctrl-C at the terminal reaches the command, which still needs it to record the interruption.
    One per process, stopped at exit, and it ends itself when the command dies. None when a server
    is configured (in the environment, a profile or a Prefect settings file: Prefect decides, as
    it would), or when Prefect is already imported (it has read its settings, and starts its own).
    """
    global _temporary
    if _temporary is not None:
        return _temporary
    if environ.get("PREFECT_API_URL") or "prefect" in sys.modules or _configured_elsewhere(environ):
        return None
    log = log_path(ws)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}  # its own log file, not the terminal: why it failed must be there
    offset = log.stat().st_size if log.exists() else 0
    with socket.socket() as listener, log.open("ab") as sink:
        # Nagle's algorithm would hold each small reply ~40 ms; accepted sockets inherit the option.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind((HOST, 0))
        listener.listen(128)
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            # -P: the current directory does not come first on sys.path (a user's module must not shadow a library).
            [sys.executable, "-P", "-c", _LAUNCHER, "--factory", "prefect.server.api.server:create_app", "--fd", str(listener.fileno()),
             "--log-level", "error", "--lifespan", "on"],
            env=env, pass_fds=(listener.fileno(),), stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _temporary = Temporary(process, listener.getsockname()[1], log, offset)
    atexit.register(_temporary.stop)
    environ["PREFECT_API_URL"] = _temporary.api_url
    return _temporary


def _configured_elsewhere(environ: MutableMapping[str, str]) -> bool:
    """Whether Prefect may take its API, or a ban on temporary servers, from somewhere other than the environment:
    a profile or a settings file in the current directory mentioning them. Read as text, without importing Prefect."""
    if any(environ.get(name, "").strip().lower() in ("false", "0", "no") for name in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")):
        return True
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    mentions = {profiles: ("API_URL", "EPHEMERAL"), Path("prefect.toml"): ("url", "ephemeral"), Path(".env"): ("PREFECT_API_URL", "EPHEMERAL"),
                Path("pyproject.toml"): ("tool.prefect",)}
    for path, words in mentions.items():
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(word in text for word in words):
            return True
    return False


# Set by the operator, Prefect's flow heartbeats are left as they are configured.
HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextmanager
def in_process_flows() -> Iterator[None]:
    """Flows run in this process without Prefect's heartbeats, unless the environment configures them.

    A heartbeat tells a server that a flow's process still lives, for flows a worker started; here
    the command is that process, reports the run itself and exits non-zero when it fails (and
    the next run ends what a killed one left open). Prefect's heartbeat thread sleeps in whole
    seconds and each flow waits for it at its end: up to a second per flow run, on every
    increment of a backfill.
    """
    if any(os.environ.get(name) for name in HEARTBEAT_VARIABLES):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
