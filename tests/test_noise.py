"""What the terminal shows: no credentials, one line per error, and nothing but the result under --quiet and --json."""

from __future__ import annotations

import io
import json
import logging
import shutil
from datetime import datetime, timezone

import pytest

from lepton.secrets import RedactFilter, credentials_out_of_uris, mask_logging
from tests.conftest import FAST, free_port, make_workspace, run_cli

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-in-the-uri"


def test_credentials_move_out_of_an_http_tracking_uri():
    """user:password of an http(s) URI become MLflow's basic-auth variables (decoded); other URIs are left alone."""
    environ = {"MLFLOW_TRACKING_URI": "http://user:p%40ss@127.0.0.1:5999/path", "MLFLOW_REGISTRY_URI": "postgresql://u:pw@db/mlflow"}
    credentials_out_of_uris(environ)
    assert environ == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999/path",
        "MLFLOW_TRACKING_USERNAME": "user",
        "MLFLOW_TRACKING_PASSWORD": "p@ss",
        "MLFLOW_REGISTRY_URI": "postgresql://u:pw@db/mlflow",  # SQLAlchemy needs them in the URL
    }
    mine = {"MLFLOW_TRACKING_URI": "https://me:pw@mlflow.internal", "MLFLOW_TRACKING_USERNAME": "robot"}
    credentials_out_of_uris(mine)
    assert mine["MLFLOW_TRACKING_URI"] == "https://mlflow.internal" and mine["MLFLOW_TRACKING_USERNAME"] == "robot"


def test_the_log_filter_masks_messages_arguments_and_tracebacks():
    """A record whose message, arguments and exception carry a password is written with the password masked."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    mask_logging(handler)
    mask_logging(handler)  # once is enough
    assert sum(isinstance(f, RedactFilter) for f in handler.filters) == 1
    logger = logging.getLogger("tests.noise")
    logger.addHandler(handler)
    try:
        try:
            raise ConnectionError(f"API request to postgresql://mlflow:{PASSWORD}@db/mlflow failed")
        except ConnectionError:
            logger.exception("could not reach %s", f"http://u:{PASSWORD}@h:5000")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "could not reach http://u:***@h:5000" in text and "postgresql://mlflow:***@db/mlflow failed" in text
    assert "Traceback" in text  # only the password goes, not the traceback


@pytest.mark.parametrize("source", ["environment", "lepton.yaml"])
def test_a_password_in_the_tracking_uri_is_shown_nowhere(clean_dir, prefect_api, monkeypatch, source):
    """A run against an unreachable http tracking server with a password fails naming the server, never the password."""
    from prefect.client.orchestration import get_client

    port = free_port()
    uri = f"http://user:{PASSWORD}@127.0.0.1:{port}"
    ws = make_workspace(clean_dir / "ws", "y", "m", {"registry": {"tracking_uri": uri}} if source == "lepton.yaml" else None)
    increment = clean_dir / "inc.csv"
    increment.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    if source == "environment":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = datetime.now(timezone.utc)
    result = run_cli(["run", str(increment), "--workspace", str(ws.root), *(arg for s in FAST for arg in ("--set", s))], api_url=prefect_api)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    log = (ws.root / ".lepton" / "logs" / "lepton.log").read_text()
    assert f"127.0.0.1:{port}" in log and PASSWORD not in log
    # The Prefect database: the runs' logs and their states' messages.
    # Only this run's records: the session's server holds every earlier test's too, and reads are paged.
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, LogFilter, LogFilterTimestamp, TaskRunFilter, TaskRunFilterStartTime

    with get_client(sync_client=True) as client:
        stored = [log.message for log in client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=started)))]
        # MLflow never sees the password in a URL (it goes as basic auth), so no exception carries it.
        flows = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=started)))
        stored += [run.state.message or "" for run in [*flows, *tasks] if run.state]
    assert any(f"127.0.0.1:{port}" in text for text in stored)
    assert not [text for text in stored if PASSWORD in text]


def test_malformed_config_and_locked_registry_fail_in_one_line(clean_dir):
    """status and history on a broken lepton.yaml or a locked MLflow database: exit 1, one error line, no traceback; --json gets an error object."""
    import sqlite3

    ws = make_workspace(clean_dir / "ws", "y", "m")
    config = ws.root / "lepton.yaml"
    good = config.read_text()
    config.write_text(good + "train: [not, a, mapping\n")
    for command in (["status"], ["history"], ["status", "--json"]):
        result = run_cli([*command, "--workspace", str(ws.root)], api_url=None)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert json.loads(result.stdout)["exit_code"] == 1 and "lepton.yaml" in json.loads(result.stdout)["error"]

    config.write_text(good)
    ws.state.mkdir(exist_ok=True)
    holder = sqlite3.connect(ws.mlflow_db, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS held (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for command in (["status"], ["history", "--json"]):
            result = run_cli([*command, "--workspace", str(ws.root)], api_url=None)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "database is locked" in result.stderr
            assert "[SQL:" not in result.stderr and "sqlalche.me" not in result.stderr
    finally:
        holder.close()
    assert "database is locked" in json.loads(result.stdout)["error"]


def test_a_workspace_without_git_fails_at_once_and_copies_nothing(clean_dir):
    """A workspace whose .git is gone: run exits 1 before any work, saying how to repair it; nothing lands in data/."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    shutil.rmtree(ws.root / ".git")
    increment = clean_dir / "inc.csv"
    increment.write_text("x,y\n1,0\n2,1\n")
    before = sorted(p.relative_to(ws.root) for p in ws.data.rglob("*"))
    result = run_cli(["run", str(increment), "--workspace", str(ws.root), "--json"], api_url=None, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is not a git repository" in result.stderr and "lepton init" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 1
    assert sorted(p.relative_to(ws.root) for p in ws.data.rglob("*")) == before


def test_init_says_each_thing_once(clean_dir):
    """`lepton init` prints its own two lines, without DVC's notices (once or twice)."""
    result = run_cli(["init", str(clean_dir / "ws"), "--label", "y"], api_url=None)
    assert result.returncode == 0, result.stderr
    assert "Initialized DVC repository" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("workspace ready at") and result.stderr == ""


def test_quiet_and_json_print_only_the_result(clean_dir, prefect_api, increments):
    """--quiet: the last line only, on a temporary Prefect server too; --json: JSON only, a new version registered; errors as JSON."""
    ws = make_workspace(clean_dir / "ws", "digit", "digits", {"data": {"bounds": {"*": [0, 16]}}})
    quick = ["--set", "train.epochs=3", "--set", "train.hidden=[32]", "--set", "gate.bootstrap_samples=200"]
    # No PREFECT_API_URL: the command starts (and stops) a temporary server of its own.
    dry = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--quiet", "--dry-run", *quick], api_url=None)
    assert dry.returncode == 0, dry.stderr
    assert len(dry.stdout.strip().splitlines()) == 1 and dry.stderr == "", dry.stdout + dry.stderr

    first = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--quiet", *quick], api_url=prefect_api)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines() == ["promoted as version 1 (first champion)"] and first.stderr == "", first.stderr
    second = run_cli(["run", str(increments[1]), "--workspace", str(ws.root), "--json", *quick], api_url=prefect_api)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["version"] == 2 and second.stderr == "", second.stderr  # no "Registered model ... already exists"
    assert json.loads(second.stdout)["exit_code"] == 0

    missing = run_cli(["run", str(clean_dir / "nope.csv"), "--workspace", str(ws.root), "--json"], api_url=prefect_api)
    assert missing.returncode == 2
    assert json.loads(missing.stdout) == {"error": f"{clean_dir / 'nope.csv'} does not exist", "exit_code": 2}


def test_a_series_that_stopped_says_so_on_stderr_under_quiet(clean_dir, prefect_api, increments):
    """backfill --quiet stopped at a failure printed its summary on stdout, with nothing on stderr: a cron wrapper that
    alerts on stderr missed the night. It is an error line on stderr now, with exit 1."""
    import shutil

    ws = make_workspace(clean_dir / "ws", "digit", "digits", {"data": {"bounds": {"*": [0, 16]}}})
    folder = ws.root / "exports"
    folder.mkdir()
    shutil.copyfile(increments[0], folder / "a.parquet")
    stopped = run_cli(["backfill", str(folder), "--workspace", str(ws.root), "--quiet", "--set", "train.network='nosuch_mod:build'"], api_url=prefect_api)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert stopped.stdout == "" and stopped.stderr.startswith("error: 0 increment(s) processed; stopped at a.parquet: "), stopped.stdout + stopped.stderr
    assert "1 increment(s) left for the next run" in stopped.stderr and "(the runs' log: " in stopped.stderr


def test_a_full_disk_under_the_log_file_leaves_the_terminal_alone(tmp_path, capfd):
    """Records the log file cannot take (ENOSPC on /dev/full) are dropped: no "--- Logging error ---" traceback per record."""
    from rich.console import Console

    from lepton.cli.progress import watch

    with watch(Console(file=io.StringIO()), "quiet", tmp_path / "lepton.log"):
        to_file = next(h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "") == str(tmp_path / "lepton.log"))
        to_file.stream = open("/dev/full", "w")  # noqa: SIM115 - every write fails with ENOSPC; closed on exit
        for n in range(5):
            logging.getLogger("tests.noise").warning("record %d", n)
    assert "Logging error" not in capfd.readouterr().err


def test_database_errors_are_one_line_and_a_full_disk_says_so():
    """SQLAlchemy's statement, parameters and link go; SQLite's "disk is full" names the likely cause."""
    from lepton.cli import one_line

    locked = "(sqlite3.OperationalError) database is locked\n[SQL: UPDATE t SET a=?\n WHERE b=?]\n[parameters: ('x]', 1)]\n(Background on this error at: https://sqlalche.me/e/20/e3q8)"
    assert one_line(locked) == "(sqlite3.OperationalError) database is locked"
    full = "API failed: (sqlite3.OperationalError) database or disk is full\n[SQL: INSERT]\n(Background on this error at: https://sqlalche.me/e/20/e3q8)"
    assert one_line(full) == "API failed: (sqlite3.OperationalError) database or disk is full (No space left on device, or the database reached its size limit)"
