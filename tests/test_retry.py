"""A rejected increment is validated again when it comes back: by the same file, or by `lepton retry` from quarantine."""

from __future__ import annotations

import json

import pytest
import yaml

from lepton.history import new_move
from lepton.workspace import Attempt, IncrementRecord, Manifest
from tests.conftest import FAST, make_workspace, run_cli, write_increments

# The digits increments are clean; 10,000 rows is more than any of them holds, so this rejects them.
STRICT = {"data": {"bounds": {"*": [0, 16]}, "min_rows": 10000}}
SETS = [arg for pair in FAST for arg in ("--set", pair)]


def record(state: str) -> IncrementRecord:
    return IncrementRecord(id="abc", file=f"data/{'quarantine' if state == 'rejected' else 'increments'}/abc.csv", source="a.csv", state=state)


def test_each_landing_is_sorted_by_its_record_and_the_registry():
    """New content is fresh, rejected content is retried, accepted content resumes, finishes or is a duplicate."""
    from lepton.tasks.ingest import sort_landing
    from lepton.tasks.registry import Registration

    moved = new_move([], alias="champion", kind="promote", from_version=None, to_version=1, reason="first champion")
    assert sort_landing(None, None) == "fresh"
    assert sort_landing(record("rejected"), None) == "retry"
    assert sort_landing(record("accepted"), None) == "resume"
    assert sort_landing(record("accepted"), Registration(1, "run", created=False, champion=1, move=moved)) == "finished"
    assert sort_landing(record("accepted"), Registration(1, "run", created=False, champion=1)) == "duplicate"


def test_a_manifest_without_attempts_still_reads_and_keeps_its_verdict():
    """A manifest from before attempts were kept loads with none; the next attempt keeps the old verdict first, time unknown."""
    old = {"increments": [{"id": "abc", "file": "data/quarantine/abc.csv", "source": "a.csv", "state": "rejected", "reasons": ["too few rows"]}]}
    known = Manifest.model_validate_json(json.dumps(old)).find("abc")
    assert known is not None and known.attempts == []
    after = known.attempted(Attempt(verdict="accepted"), "data/increments/abc.csv")
    assert (after.state, after.reasons, after.file) == ("accepted", [], "data/increments/abc.csv")
    assert [(a.verdict, a.reasons) for a in after.attempts] == [("rejected", ["too few rows"]), ("accepted", [])]


def strict_workspace(root):
    ws = make_workspace(root / "ws", "digit", "retry", STRICT)
    [path] = write_increments(root, 1, "day-{}.parquet")
    return ws, path


def quarantine_files(ws) -> list[str]:
    folder = ws.data / "quarantine"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.integration
def test_a_rejected_file_is_processed_once_the_config_is_fixed(clean_dir, prefect_api, one_thread):
    """Rejected under data.min_rows=10000; lepton.yaml fixed; the same file again: accepted, trained, registered, promoted."""
    from lepton.flows.continual import continual_training
    from tests.test_flow import registry

    ws, path = strict_workspace(clean_dir)
    rejected = continual_training(str(path), str(ws.root), FAST)
    assert (rejected.status, rejected.exit_code) == ("rejected", 2)
    assert "fewer than the 10000 required" in rejected.message
    increment = rejected.increment_id
    assert quarantine_files(ws) == [f"{increment}.parquet", f"{increment}.parquet.reasons.json"]

    config = yaml.safe_load((ws.root / "lepton.yaml").read_text())
    config["data"]["min_rows"] = 10
    (ws.root / "lepton.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    outcome = continual_training(str(path), str(ws.root), FAST)
    assert (outcome.status, outcome.exit_code, outcome.version, outcome.increment_id) == ("promoted", 0, 1, increment)
    assert outcome.message == "promoted as version 1 (first champion)"

    # Out of quarantine, filed with the accepted increments, and both attempts on record.
    assert quarantine_files(ws) == []
    [kept] = ws.read_manifest().increments
    assert (kept.id, kept.state, kept.file, kept.source, kept.reasons) == (increment, "accepted", f"data/increments/{increment}.parquet", path.name, [])
    assert [a.verdict for a in kept.attempts] == ["rejected", "accepted"]
    assert "fewer than the 10000 required" in kept.attempts[0].reasons[0] and kept.attempts[1].reasons == []
    client, name, champion = registry(ws)
    tags = client.get_model_version(name, "1").tags
    assert champion == 1 and tags["lepton.increment_id"] == increment and tags["lepton.increment_file"] == kept.file
    # status says it was refused first, and why, where a plain "accepted" would read as never refused.
    from lepton.cli.versions import gather_status

    [shown] = gather_status(ws)["increments"]
    assert shown["state"] == "accepted" and shown["reasons"][0].startswith("accepted at attempt 2; rejected 1 time(s) before: ")
    assert "fewer than the 10000 required" in shown["reasons"][0]

    # Accepted now: the same file once more is a plain duplicate, and the manifest is unchanged.
    again = continual_training(str(path), str(ws.root), FAST)
    assert (again.status, again.exit_code) == ("duplicate", 0)
    assert ws.read_manifest().increments == [kept]


@pytest.mark.integration
def test_retry_runs_the_quarantined_copy_without_the_original(clean_dir, prefect_api, one_thread):
    """`lepton retry ID`: still bad is exit 2 with the new reasons; good now is processed; not rejected or unknown is exit 2."""
    from lepton.flows.continual import continual_training

    ws, path = strict_workspace(clean_dir)
    increment = continual_training(str(path), str(ws.root), FAST).increment_id
    path.unlink()  # only the quarantined copy is left

    # Under another setting that still rejects it: exit 2, the reasons the current configuration gives.
    still = run_cli(["retry", increment, "--workspace", str(ws.root), "--set", "data.min_rows=5000", *SETS], api_url=prefect_api)
    assert still.returncode == 2, still.stdout + still.stderr
    last = still.stdout.strip().splitlines()[-1]
    assert last.startswith("rejected because") and "fewer than the 5000 required" in last and f"data/quarantine/{increment}.parquet" in last
    reasons = json.loads((ws.data / "quarantine" / f"{increment}.parquet.reasons.json").read_text())["reasons"]
    assert len(reasons) == 1 and "fewer than the 5000 required" in reasons[0]
    [kept] = ws.read_manifest().increments
    assert [(a.verdict, "5000" in a.reasons[0]) for a in kept.attempts] == [("rejected", False), ("rejected", True)]

    fixed = run_cli(["retry", increment, "--workspace", str(ws.root), "--set", "data.min_rows=10", "--json", *SETS], api_url=prefect_api)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    outcome = json.loads(fixed.stdout)
    assert (outcome["status"], outcome["version"], outcome["increment_id"]) == ("promoted", 1, increment)
    assert outcome["file"] == f"data/increments/{increment}.parquet" and (ws.root / outcome["file"]).is_file()
    assert quarantine_files(ws) == []
    assert [a.verdict for a in ws.read_manifest().find(increment).attempts] == ["rejected", "rejected", "accepted"]

    accepted = run_cli(["retry", increment, "--workspace", str(ws.root)], api_url=prefect_api)
    assert accepted.returncode == 2 and f"increment {increment} was accepted, not rejected: nothing to retry" in accepted.stderr
    unknown = run_cli(["retry", "0123456789abcdef", "--workspace", str(ws.root)], api_url=prefect_api)
    assert unknown.returncode == 2 and "no increment 0123456789abcdef" in unknown.stderr
