"""Deployments and triggers: the landing folder, the nightly run, backfill, dry runs, and a real Prefect server with a worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, free_port, make_workspace, run_cli, start_process, stop_process, wait_for_http

pytestmark = pytest.mark.integration

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}
# Small and fast, and the gate never keeps a model out: these tests are about orchestration, not accuracy.
QUICK = {"train": {"epochs": 5, "hidden": [64]}, "gate": {"bootstrap_samples": 200, "max_forgetting": 1.0}, "strategy": {"name": "replay"}}
QUICK_SET = [f"{section}.{key}={json.dumps(value)}" for section, values in QUICK.items() for key, value in values.items()]
PREFECT = str(Path(sys.executable).parent / "prefect")


def champion(ws) -> int | None:
    from lepton.config import load
    from lepton.tasks.tracking import champion_version, connect

    config = load(ws.root)
    client, _ = connect(ws, config.registry)
    return champion_version(client, config.registry.model_name)


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_deployments_are_declared_with_typed_parameters():
    """prefect.yaml declares nightly (cron), manual, backfill and rollback; bad parameters are refused by validation."""
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly", "manual", "backfill", "rollback"}
    assert deployments["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments["nightly"]["concurrency_limit"] == 1
    flows = {name: load_flow_from_entrypoint(str(ROOT / d["entrypoint"])) for name, d in deployments.items()}
    assert {name: f.name for name, f in flows.items()} == {
        "nightly": "run-pending", "manual": "run-increment", "backfill": "backfill", "rollback": "rollback",
    }
    manual = parameter_schema(flows["manual"])
    assert set(manual.properties) == {"path", "workspace", "overrides", "dry_run"}
    assert manual.properties["dry_run"]["type"] == "boolean"
    assert manual.properties["path"]["description"]  # the UI's form shows what each field is
    # The overrides form carries the config's own types and bounds.
    epochs = manual.definitions["TrainOverrides"]["properties"]["epochs"]
    assert {"type": "integer", "minimum": 1} in epochs["anyOf"]
    assert manual.definitions["ConfigOverrides"]["additionalProperties"] is False
    for bad in ({"train": {"epochs": 0}}, {"train": {"epoch": 5}}, {"training": {}}):
        with pytest.raises(ParameterTypeError):
            flows["manual"].validate_parameters({"path": "x.csv", "overrides": bad})
    ok = flows["manual"].validate_parameters({"path": "x.csv", "workspace": "/srv/churn", "overrides": QUICK})
    assert sorted(ok["overrides"].to_list()) == sorted(QUICK_SET)
    with pytest.raises(ParameterTypeError):
        flows["rollback"].validate_parameters({"to": 0})
    for d in deployments.values():
        assert set(d["parameters"]) <= set(parameter_schema(flows[d["name"]]).properties)


def test_help_lists_the_production_commands():
    """`lepton --help` names the commands for landing, the nightly logic, backfill, rollback and history."""
    result = subprocess.run([str(Path(sys.executable).parent / "lepton"), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("land", "run-pending", "backfill", "rollback", "history", "serve"):
        assert command in result.stdout


def test_land_sanitises_names_and_keeps_arrival_order(clean_dir):
    """`lepton land` copies files into .lepton/inbox under safe names, in arrival order, and refuses what is no increment."""
    from lepton.landing import pending

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    odd = clean_dir / "export; rm -rf ~ (final).CSV"
    odd.write_text("pixel_0,digit\n1,0\n")
    plain = clean_dir / "b.parquet"
    pd.DataFrame({"pixel_0": [1.0], "digit": [1]}).to_parquet(plain)
    result = run_cli(["land", str(odd), str(plain), "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 0, result.stderr
    inbox = ws.root / ".lepton" / "inbox"
    landed = pending(inbox)
    assert [p.name.split("-", 1)[1] for p in landed] == ["export_rm_-rf_final.csv", "b.parquet"]
    assert all(re.fullmatch(r"[0-9T]+Z-[A-Za-z0-9._-]+", p.name) for p in landed)
    assert landed[0].read_bytes() == odd.read_bytes() and landed[1].read_bytes() == plain.read_bytes()
    assert odd.exists() and plain.exists()  # copied, not moved

    notes = clean_dir / "notes.txt"
    notes.write_text("hello")
    refused = run_cli(["land", str(notes), "--workspace", str(ws.root)], api_url=None)
    # Not an increment file: exit 2, as `run` says it of the same path.
    assert refused.returncode == 2 and "unsupported format .txt" in refused.stderr and "Traceback" not in refused.stderr
    missing = run_cli(["land", str(clean_dir / "nope.csv"), "--workspace", str(ws.root)], api_url=None)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_folder = run_cli(["backfill", str(clean_dir / "no-such-folder"), "--workspace", str(ws.root)], api_url=None)
    assert no_folder.returncode == 2 and "no-such-folder does not exist" in no_folder.stderr, no_folder.stderr
    assert len(pending(inbox)) == 2


def test_original_name_undoes_the_landing_prefix():
    """landed_name puts the arrival time in front; original_name takes it off again, and leaves other names alone."""
    from datetime import datetime, timezone

    from lepton.landing import landed_name, original_name

    when = datetime(2026, 12, 1, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert original_name(landed_name("day-1.parquet", when)) == "day-1.parquet"
    assert original_name("20261201T030405678901Z-b.csv") == "b.csv"
    assert original_name("2026-export.csv") == "2026-export.csv" and original_name("zz-notes.txt") == "zz-notes.txt"


def test_dry_run_validates_and_changes_nothing(clean_dir, prefect_api, increments):
    """dry_run=True reports whether an increment would pass, without copying, versioning, training or registering."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import run_increment

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    before = tree(ws.root / "data")
    # A path outside the workspace and landing.allowed_roots is refused before it is read.
    dry = run_increment(str(increments[0]), str(ws.root), ConfigOverrides(), dry_run=True, return_state=True)
    assert dry.is_failed() and dry.name == "Refused" and "landing.allowed_roots" in dry.message  # what a run would say
    refused = run_increment(str(increments[0]), str(ws.root), ConfigOverrides(), return_state=True)
    assert refused.is_failed() and refused.name == "Refused" and "is outside the folders increments may come from" in refused.message
    with pytest.raises(PermissionError, match="landing.allowed_roots"):
        run_increment(str(increments[0]), str(ws.root), ConfigOverrides())
    assert not ws.mlflow_db.exists() and tree(ws.root / "data") == before
    # A run's overrides cannot widen the roots: only lepton.yaml can.
    with pytest.raises(ValueError, match="allowed_roots"):
        ConfigOverrides.model_validate({"landing": {"allowed_roots": ["/"]}})
    with pytest.raises(ValueError, match="landing.allowed_roots can only be set in lepton.yaml"):
        ConfigOverrides.from_list(["landing.allowed_roots=['/']"])
    settings = yaml.safe_load((ws.root / "lepton.yaml").read_text())
    settings["landing"]["allowed_roots"] = [str(increments[0].parent), str(clean_dir)]
    (ws.root / "lepton.yaml").write_text(yaml.safe_dump(settings))
    allowed = ConfigOverrides()
    report = run_increment(str(increments[0]), str(ws.root), allowed, dry_run=True)
    assert report.status == "valid" and report.exit_code == 0 and report.rows == 360
    assert report.message.startswith("dry run: valid")
    # What a run would only warn about, the dry run says too.
    twice = clean_dir / "twice.parquet"
    pd.concat([pd.read_parquet(increments[0]), pd.read_parquet(increments[0]).head(5)], ignore_index=True).to_parquet(twice, index=False)
    report = run_increment(str(twice), str(ws.root), allowed, dry_run=True)
    assert report.status == "valid" and any("repeated row(s)" in w for w in report.warnings), report.warnings
    assert "; it would warn: " in report.message and "repeated row(s)" in report.message

    holes = pd.read_parquet(increments[0])
    holes.loc[:4, "pixel_3"] = 1e9  # a unit error or corruption (gaps would be imputed, an empty first column ignored)
    holes = pd.concat([holes, holes.tail(3)], ignore_index=True)
    broken = clean_dir / "holes.parquet"
    holes.to_parquet(broken, index=False)
    report = run_increment(str(broken), str(ws.root), allowed, dry_run=True)
    assert report.status == "invalid" and report.exit_code == 2
    assert any("column 'pixel_3' has 5 value(s)" in p for p in report.problems), report.problems
    assert any("repeated row(s)" in w for w in report.warnings), report.warnings  # what the run would say beside its verdict
    assert tree(ws.root / "data") == before
    assert not ws.mlflow_db.exists()  # nothing registered, not even a tracking store
    # Content rejected before is validated again by a run: the dry run did not ('a run would do nothing', exit 0).
    assert run_increment(str(broken), str(ws.root), allowed).status == "rejected"
    report = run_increment(str(broken), str(ws.root), allowed, dry_run=True)
    assert report.status == "invalid" and report.exit_code == 2, report.message
    assert report.message.startswith(f"dry run: rejected before as increment {report.increment_id}, validated again: would be rejected because")


def test_nightly_runs_in_arrival_order_and_stops_at_the_first_failure(clean_dir, prefect_api, increments, monkeypatch):
    """The nightly logic: each landed file one flow run, in arrival order; a rejection goes on, a failure stops the series and keeps the rest."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import SeriesStopped, run_pending
    from lepton.landing import land, pending

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    inbox = ws.root / ".lepton" / "inbox"
    land(increments[1], inbox)  # arrives first although its name sorts last
    stray = inbox / "zz-notes.txt"
    stray.write_text("not an increment")
    os.utime(stray, ns=(pending(inbox)[0].stat().st_mtime_ns + 1000,) * 2)
    land(increments[0], inbox)
    first, _, last = pending(inbox)

    # Another process holds the workspace's data lock: the first run cannot take the increment in.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)",
         str(ws.root / ".lepton" / "locks" / "data.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("LEPTON_LOCK_TIMEOUT_SECONDS", "1")
        with pytest.raises(SeriesStopped) as stopped:
            run_pending(str(ws.root), ConfigOverrides.model_validate(QUICK))
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("LEPTON_LOCK_TIMEOUT_SECONDS")
    report = stopped.value.report
    assert report.processed == [] and report.failed == first.name and "'data' lock" in report.error
    assert report.remaining == [first.name, "zz-notes.txt", last.name]
    assert pending(inbox) == [first, stray, last]  # nothing taken: everything waits for the next run
    assert champion(ws) is None

    # The next run takes all three in arrival order; the stray file is rejected and kept, the series goes on.
    result = run_cli(["run-pending", "--workspace", str(ws.root), "--json", *sum((["--set", s] for s in QUICK_SET), [])], api_url=prefect_api)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert [(p["file"], p["outcome"]["status"]) for p in report["processed"]] == [(first.name, "promoted"), ("zz-notes.txt", "rejected"), (last.name, "promoted")]
    assert "unsupported format .txt" in report["processed"][1]["outcome"]["message"]
    assert report["failed"] is None and report["exit_code"] == 2
    assert pending(inbox) == [] and champion(ws) == 2
    assert [p.read_text() for p in (ws.root / "data" / "quarantine").glob("*.txt")] == ["not an increment"]
    # `arrived as` is the name the file had before landing put its arrival time in front.
    assert {r.source for r in ws.read_manifest().increments} == {increments[0].name, increments[1].name, "zz-notes.txt"}


def test_backfill_takes_a_folder_in_name_order_and_resumes(clean_dir, prefect_api, increments):
    """backfill: CSV and Parquet files in name order, other files skipped; running it again finds only duplicates."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import backfill

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    folder = clean_dir / "exports"
    folder.mkdir()
    shutil.copyfile(increments[0], folder / "2026-11-01.parquet")
    shutil.copyfile(increments[0], folder / "2026-11-02.parquet")  # the same export sent twice
    (folder / "README.md").write_text("exports of the digits feed\n")
    with pytest.raises(PermissionError, match="landing.allowed_roots"):
        backfill(str(folder), str(ws.root), ConfigOverrides.model_validate(QUICK))
    settings = yaml.safe_load((ws.root / "lepton.yaml").read_text())
    settings["landing"]["allowed_roots"] = ["../exports"]  # relative to the workspace
    (ws.root / "lepton.yaml").write_text(yaml.safe_dump(settings))
    overrides = ConfigOverrides.model_validate(QUICK)
    report = backfill(str(folder), str(ws.root), overrides)
    assert [(p.file, p.outcome.status) for p in report.processed] == [("2026-11-01.parquet", "promoted"), ("2026-11-02.parquet", "duplicate")]
    assert report.exit_code == 0 and champion(ws) == 1
    again = backfill(str(folder), str(ws.root), overrides)
    assert [p.outcome.status for p in again.processed] == ["duplicate", "duplicate"]


def _prefect(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_manual_deployment_runs_on_a_real_prefect_server(tmp_path, increments):
    """prefect server + process work pool + `prefect deploy --all` + `prefect deployment run` + a worker: a new champion."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "LEPTON_HOME": str(ROOT),
    }
    ws = make_workspace(tmp_path / "ws", "digit", "digits", DIGITS)
    env["LEPTON_WORKSPACE"] = str(ws.root)  # every deployment names its workspace when deployed
    server_log = tmp_path / "server.log"
    # No scheduler: the nightly cron must not create runs while the test owns the worker.
    server = start_process([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-scheduler"], log=server_log, env=env)
    try:
        wait_for_http(f"{api}/health", server, server_log)
        created = _prefect(["work-pool", "create", "lepton", "--type", "process"], env)
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        nightly = _get(f"{api}/deployments/name/run-pending/nightly")
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
        assert nightly["parameters"]["workspace"] == str(ws.root)
        assert nightly["global_concurrency_limit"]["limit"] == 1

        # The server checks parameters against the flow's schema before a run exists.
        refused = _prefect(["deployment", "run", "run-increment/manual", "--param", f"path={increments[0]}", "--param", 'overrides={"train": {"epochs": 0}}'], env)
        assert refused.returncode != 0 and "epochs" in refused.stdout + refused.stderr

        # Increments come from the workspace, the landing folder or landing.allowed_roots only.
        incoming = ws.root / "incoming"
        incoming.mkdir()
        shutil.copyfile(increments[0], incoming / increments[0].name)
        started = _prefect([
            "deployment", "run", "run-increment/manual",
            "--param", f"path={incoming / increments[0].name}", "--param", f"workspace={ws.root}", "--param", f"overrides={json.dumps(QUICK)}",
        ], env)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)

        worker = _prefect(["worker", "start", "--pool", "lepton", "--run-once"], env, timeout=400)
        run = _get(f"{api}/flow_runs/{run_id}")
        assert run["state"]["type"] == "COMPLETED", worker.stdout[-4000:] + worker.stderr[-4000:]
        assert run["parameters"]["overrides"] == QUICK
    finally:
        stop_process(server)
    assert champion(ws) == 1
    from lepton.config import load
    from lepton.tasks.tracking import history

    moves = history(ws, load(ws.root).registry)
    assert [(m.kind, m.from_version, m.to_version) for m in moves] == [("promote", None, 1)]
    assert moves[0].flow_run_id  # recorded by the run that made the move


def test_a_series_that_stopped_before_processing_anything_does_not_say_nothing_to_do():
    """'nothing to do' is for an empty inbox; a series stopped at its first file says it stopped, and what is left."""
    from lepton.flows.deployments import SeriesReport

    assert SeriesReport().message == "0 increment(s) processed (nothing to do)"
    # run-pending says so for an empty landing folder without a flow: in the flow's words.
    from lepton.cli.runs import NOTHING_LANDED

    assert NOTHING_LANDED == {**SeriesReport().model_dump(mode="json"), "message": SeriesReport().message, "exit_code": SeriesReport().exit_code}
    stopped = SeriesReport(failed="a.csv", error="train.network='x:y' could not be called", remaining=["a.csv", "b.csv"])
    assert stopped.message == "0 increment(s) processed; stopped at a.csv: train.network='x:y' could not be called; 2 increment(s) left for the next run"


@pytest.fixture
def answers_lost(monkeypatch):
    """Each final flow-run state is sent twice, as the client sends it again when the server's first answer is lost.

    On a busy machine a state update can be taken by the server and its answer still time out; the retry is
    refused as a repeat, and the client gets the server's copy of the state, without what the flow returned.
    """
    from prefect.client.base import PrefectHttpxSyncClient

    send = PrefectHttpxSyncClient.send
    repeated = []

    def twice(self, request, *args, **kwargs):
        response = send(self, request, *args, **kwargs)
        if request.method == "POST" and request.url.path.endswith("/set_state") and "/flow_runs/" in request.url.path:
            if json.loads(request.content)["state"]["type"] in {"COMPLETED", "FAILED"}:
                repeated.append(request.url.path)
                response = send(self, request, *args, **kwargs)
        return response

    monkeypatch.setattr(PrefectHttpxSyncClient, "send", twice)
    return repeated


def test_a_series_reads_each_outcome_when_the_servers_answer_was_lost(clean_dir, prefect_api, increments, answers_lost):
    """backfill: a run's final state sent twice (its first answer lost) still gives its outcome, not MissingResult."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import backfill

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    folder = ws.root / "exports"
    folder.mkdir()
    shutil.copyfile(increments[0], folder / "2026-11-01.parquet")
    shutil.copyfile(increments[0], folder / "2026-11-02.parquet")
    report = backfill(str(folder), str(ws.root), ConfigOverrides.model_validate(QUICK))
    assert answers_lost, "no final state was sent twice: the test did not reach the case it is about"
    assert [(p.file, p.outcome.status) for p in report.processed] == [("2026-11-01.parquet", "promoted"), ("2026-11-02.parquet", "duplicate")]


def test_a_rejection_and_a_refusal_keep_their_outcome_when_the_servers_answer_was_lost(clean_dir, prefect_api, increments, answers_lost):
    """run_increment: a rejected increment (a state the subflow names) and a refused path, each with its first answer lost."""
    from lepton.config import ConfigOverrides
    from lepton.flows.deployments import run_increment
    from lepton.flows.handback import result_of

    ws = make_workspace(clean_dir / "ws", "digit", "digits", {"data": {"bounds": {"*": [0, 16]}, "min_rows": 10000}})
    inside = ws.root / "day-1.parquet"
    shutil.copyfile(increments[0], inside)
    outcome = run_increment(str(inside), str(ws.root), ConfigOverrides.model_validate(QUICK))
    assert outcome.status == "rejected" and "fewer than the 10000 required" in outcome.message
    refused = run_increment(str(increments[0]), str(ws.root), ConfigOverrides(), return_state=True)
    assert refused.is_failed() and refused.data is None  # the server's copy: the PermissionError is not in it
    assert isinstance(result_of(refused), PermissionError)
    assert len(answers_lost) >= 3
