"""Safety under misuse: a restore that cannot happen changes nothing, a fence that holds, SIGTERM that stops a run, commits that say what a version was built from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_workspace

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of data/ and data.dvc, by path, with its bytes."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
    files["data.dvc"] = (root / "data.dvc").read_bytes()
    return files


def _two_versions(root: Path):
    from lepton.config import load
    from lepton.tasks.versioning import version

    ws = make_workspace(root, "digit", "digits", DIGITS)
    config = load(ws.root).dvc
    (ws.data / "increments").mkdir(parents=True, exist_ok=True)
    (ws.data / "increments" / "a.csv").write_text("x,digit\n1,0\n")
    old = version(ws, config)
    (ws.data / "increments" / "b.csv").write_text("x,digit\n2,1\n")
    new = version(ws, config)
    assert old != new
    return ws, config, old


def test_restore_of_unavailable_data_changes_nothing(clean_dir):
    """Remote gone and cache collected: the restore fails with the reason and data/ and data.dvc stay byte for byte."""
    from lepton.tasks.versioning import restore

    ws, config, old = _two_versions(clean_dir)
    shutil.rmtree(ws.dvc_remote)
    subprocess.run([str(Path(os.sys.executable).parent / "dvc"), "gc", "-w", "-f"], cwd=ws.root, check=True, capture_output=True)
    before = _snapshot(ws.root)
    with pytest.raises(Exception) as failed:
        restore(ws, old, config)
    assert _snapshot(ws.root) == before
    assert f"data version {old} is not available" in str(failed.value)


def test_restore_from_the_remote_after_gc(clean_dir):
    """Cache collected but the remote intact: the old version comes back, and data.dvc names it."""
    from lepton.tasks.versioning import current_hash, restore

    ws, config, old = _two_versions(clean_dir)
    subprocess.run([str(Path(os.sys.executable).parent / "dvc"), "gc", "-w", "-f"], cwd=ws.root, check=True, capture_output=True)
    restore(ws, old, config)
    assert current_hash(ws) == old
    assert sorted(p.name for p in (ws.data / "increments").iterdir()) == ["a.csv"]


# --- The fence: every file a flow takes resolves inside the allowed roots ---------------------------

QUICK = {"train": {"epochs": 2}, "gate": {"bootstrap_samples": 100}}


def _fence_case(clean_dir, increments):
    """A workspace, an increment in a folder outside every allowed root, and the (empty) inbox."""
    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    outside = clean_dir / "outside"
    outside.mkdir()
    secret = outside / "secret.parquet"
    shutil.copyfile(increments[0], secret)
    inbox = ws.state / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return ws, secret, inbox


def _untouched(ws, before: dict[str, bytes]) -> None:
    assert _snapshot(ws.root) == before
    assert not ws.mlflow_db.exists()


def test_a_remote_set_for_one_run_is_not_left_for_the_next(clean_dir):
    """`lepton run --set dvc.remote_url=...` wrote .dvc/config.local and left it: every later run pushed there, and one that
    could not failed with '[Errno 2] No such file or directory' naming neither DVC nor the setting. The remote is this run's
    configuration's, the failure names dvc.remote_url, and a config.local of the operator's own is kept."""
    from lepton.config import DvcConfig
    from lepton.tasks.versioning import version

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    (ws.data / "increments").mkdir(parents=True, exist_ok=True)
    (ws.data / "increments" / "a.csv").write_text("x,digit\n1,0\n")
    local = ws.root / ".dvc" / "config.local"
    with pytest.raises(RuntimeError, match=r"could not push data/ to the DVC remote \(dvc.remote_url: /proc/nowhere/remote\)"):
        version(ws, DvcConfig(remote_url="/proc/nowhere/remote"))
    assert local.exists()
    elsewhere = clean_dir / "remote"
    version(ws, DvcConfig(remote_url=str(elsewhere)))
    assert any(elsewhere.rglob("*")) and str(elsewhere) in local.read_text()
    version(ws, DvcConfig())  # the next run, without --set: lepton.yaml's remote, the default
    assert not local.exists() and any((ws.state / "dvc-remote").rglob("*"))
    own = "[core]\n    analytics = false\n"
    local.write_text(own)
    version(ws, DvcConfig(push=False))
    assert local.read_text() == own


def test_backfill_pattern_cannot_leave_its_folder(clean_dir, prefect_api, increments):
    """pattern='../../../outside/*.parquet' from the inbox is refused before anything is read."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import backfill

    ws, _, inbox = _fence_case(clean_dir, increments)
    before = _snapshot(ws.root)
    with pytest.raises(PermissionError, match="leaves its folder"):
        backfill(folder=str(inbox), workspace=str(ws.root), overrides=ConfigOverrides.model_validate(QUICK), pattern="../../../outside/*.parquet")
    _untouched(ws, before)


def test_symlink_out_of_an_allowed_folder_is_refused(clean_dir, prefect_api, increments):
    """A link in the inbox to a file outside: neither backfill nor run-pending reads it, and the link stays."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import backfill, run_pending

    ws, secret, inbox = _fence_case(clean_dir, increments)
    (inbox / "day-1.parquet").symlink_to(secret)
    before = _snapshot(ws.root)
    overrides = ConfigOverrides.model_validate(QUICK)
    with pytest.raises(PermissionError, match="is outside the folders increments may come from"):
        backfill(folder=str(inbox), workspace=str(ws.root), overrides=overrides)
    with pytest.raises(PermissionError, match="is outside the folders increments may come from"):
        run_pending(workspace=str(ws.root), overrides=overrides)
    _untouched(ws, before)
    assert (inbox / "day-1.parquet").is_symlink()


def test_cli_backfill_is_fenced_too(clean_dir, prefect_api, increments):
    """`lepton backfill` trusts the folder it is given, not a pattern that climbs out of it nor a link out of it."""
    from tests.conftest import run_cli

    ws, secret, _ = _fence_case(clean_dir, increments)
    exports = clean_dir / "exports"
    exports.mkdir()
    before = _snapshot(ws.root)
    climbed = run_cli(["backfill", str(exports), "--workspace", str(ws.root), "--pattern", "../outside/*.parquet"], api_url=prefect_api)
    assert climbed.returncode == 1 and "leaves its folder" in climbed.stderr, climbed.stderr
    (exports / "day-1.parquet").symlink_to(secret)
    linked = run_cli(["backfill", str(exports), "--workspace", str(ws.root)], api_url=prefect_api)
    assert linked.returncode == 1 and "is outside the folders increments may come from" in linked.stderr, linked.stderr
    _untouched(ws, before)


# --- init commits what it creates ---------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_init_commits_what_it_creates(clean_dir):
    """After init, git is clean and HEAD holds the config, DVC's files and data.dvc, by the environment's identity."""
    from lepton.config import load
    from lepton.tasks.versioning import git_commit, version

    ws = make_workspace(clean_dir, "digit", "digits", DIGITS)
    assert _git(ws.root, "status", "--porcelain") == ""
    assert sorted(_git(ws.root, "ls-files").splitlines()) == [".dvc/.gitignore", ".dvc/config", ".dvcignore", ".gitignore", "data.dvc", "lepton.yaml"]
    assert _git(ws.root, "log", "--format=%an <%ae>") == "Lepton Tests <tests@lepton.invalid>"
    head = _git(ws.root, "rev-parse", "HEAD")
    assert git_commit(ws.root) == head
    # A run moves data.dvc on purpose (its version is the data_hash tag); the config is what makes a version dirty.
    (ws.data / "increments").mkdir(parents=True, exist_ok=True)
    (ws.data / "increments" / "a.csv").write_text("x,digit\n1,0\n")
    version(ws, load(ws.root).dvc)
    assert git_commit(ws.root) == head
    (ws.root / "lepton.yaml").write_text((ws.root / "lepton.yaml").read_text() + "\n")
    assert git_commit(ws.root) == head + "-dirty"


def test_init_without_git_identity_says_how_to_set_one(clean_dir):
    """No identity anywhere: init still makes the workspace (exit 0), commits nothing, and says how to set one."""
    from tests.conftest import LEPTON

    home = clean_dir / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k not in ("EMAIL", "PREFECT_API_URL")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", XDG_CONFIG_HOME=str(home / ".config"))
    done = subprocess.run([LEPTON, "init", str(clean_dir / "ws"), "--label", "digit"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "workspace ready" in done.stdout
    assert "no git identity" in done.stderr and "git config --global user.email" in done.stderr
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=clean_dir / "ws", capture_output=True, check=False).returncode != 0


# --- SIGTERM stops a run ------------------------------------------------------------------------

SWALLOWED = """
import sys, time
from prefect.utilities.engine import capture_sigterm
from lepton.faults import stop_on_sigterm

stop_on_sigterm(grace=0.5)


class Finalizer:
    def __del__(self):  # as the garbage collector runs one mid-training: an exception raised here is ignored
        print("ready", flush=True)
        time.sleep(20)


with capture_sigterm():  # Prefect's handler, as a flow run installs it
    Finalizer()
    print("went on", flush=True)
    time.sleep(20)
    print("finished", flush=True)
"""


def test_sigterm_swallowed_in_a_finalizer_still_stops_the_process(tmp_path):
    """Prefect's TerminationSignal raised inside a ``__del__`` is ignored by Python; the guard signals again and the process stops."""
    import signal
    import sys
    import time

    script = tmp_path / "swallowed.py"
    script.write_text(SWALLOWED)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    out, errors = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert "Exception ignored" in errors and "TerminationSignal" in errors  # the swallow, as reported
    assert "finished" not in out and proc.returncode == -signal.SIGTERM, (out, errors)
    assert took < 5, took


def test_sigterm_during_fine_tuning_stops_the_run_and_a_rerun_finishes(clean_dir, prefect_api, increments):
    """`kill -TERM` 3 s into fine-tuning: the run stops within seconds, non-zero, registers nothing; a plain re-run promotes."""
    import signal
    import time

    from tests.conftest import LEPTON, run_cli
    from tests.test_crashes import registry_state

    ws = make_workspace(clean_dir, "digit", "digits", DIGITS)
    long = ["--set", "train.epochs=5000", "--set", "gate.bootstrap_samples=100"]
    log = ws.state / "logs" / "lepton.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([LEPTON, "run", str(increments[0]), "--workspace", str(ws.root), *long], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (log.exists() and "Finished" in log.read_text().split("detect-change")[-1] and "detect-change" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(3)  # fine-tuning 5000 epochs takes minutes
    os.kill(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    out, errors = proc.communicate(timeout=120)
    assert proc.returncode != 0, (out, errors)
    assert time.monotonic() - sent < 15
    state = registry_state(ws)
    assert state["by_increment"] == {} and state["champion"] is None
    again = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--set", "train.epochs=15", "--set", "gate.bootstrap_samples=100"], api_url=prefect_api)
    assert again.returncode == 0, again.stderr
    assert "promoted as version 1" in again.stdout
    assert registry_state(ws)["champion"] == 1


def test_cli_data_checkout_of_lost_data_exits_1_and_changes_nothing(clean_dir, prefect_api, increments):
    """`lepton data checkout --model-version 1` with the remote removed and the cache collected: exit 1, the reason, nothing moved."""
    from lepton.config import load
    from lepton.tasks.versioning import version
    from tests.conftest import run_cli

    ws = make_workspace(clean_dir, "digit", "digits", DIGITS)
    first = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--set", "train.epochs=5", "--set", "gate.bootstrap_samples=100"], api_url=prefect_api)
    assert first.returncode == 0, first.stderr
    (ws.data / "later.csv").write_text("x,digit\n1,0\n")  # the workspace moved on to another data version
    version(ws, load(ws.root).dvc)
    shutil.rmtree(ws.dvc_remote)
    subprocess.run([str(Path(os.sys.executable).parent / "dvc"), "gc", "-w", "-f"], cwd=ws.root, check=True, capture_output=True)
    before = _snapshot(ws.root)
    done = run_cli(["data", "checkout", "--model-version", "1", "--workspace", str(ws.root)], api_url=prefect_api)
    assert done.returncode == 1 and "is not available" in done.stderr and "unchanged" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _snapshot(ws.root) == before


SWALLOWED_THEN_REGISTERED = """
import time
from prefect.utilities.engine import capture_sigterm
from lepton.faults import stop_if_terminated, stop_on_sigterm

stop_on_sigterm(grace=30)


class Finalizer:
    def __del__(self):
        print("ready", flush=True)
        time.sleep(1)


with capture_sigterm():
    Finalizer()
    print("registered", flush=True)  # the run goes on: the guard's next signal is 30 s away
    stop_if_terminated()
    print("reported success", flush=True)
"""


def test_a_run_whose_sigterm_was_swallowed_stops_before_it_reports_success(tmp_path):
    """The signal swallowed, a run reached registration and its end within the guard's grace: it registered, promoted
    and exited 0. Before registering and before reporting, a run checks for a SIGTERM that arrived, and stops (-15)."""
    import signal
    import sys

    script = tmp_path / "quick.py"
    script.write_text(SWALLOWED_THEN_REGISTERED)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGTERM)
    out, errors = proc.communicate(timeout=20)
    assert "registered" in out and "reported success" not in out, (out, errors)
    assert proc.returncode == -signal.SIGTERM, (out, errors)
