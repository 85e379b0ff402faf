"""`lepton versions` and `lepton compare`, through the real CLI, on a workspace with one promoted version and one kept out; `--version` and flags in `--help`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version as package_version

import pytest

from tests.conftest import make_workspace, run_cli
from tests.test_history import DIGITS, QUICK

# The second candidate cannot gain a whole point of accuracy: the gate keeps it out.
KEEP_OUT = [*QUICK, "gate.policy=superior", "gate.min_improvement=1.0"]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, prefect_api):
    """A digits workspace: version 1 promoted, version 2 kept out by the gate (a different gate config)."""
    from lepton.flows.continual import continual_training
    from lepton.models.datasets import class_incremental

    root = tmp_path_factory.mktemp("versions-ws")
    ws = make_workspace(root / "ws", "digit", "digits", DIGITS)
    outcomes = []
    for i, frame in enumerate(class_incremental()[:2], start=1):
        path = root / f"day-{i}.parquet"
        frame.to_parquet(path, index=False)
        outcomes.append(continual_training(str(path), str(ws.root), KEEP_OUT if i == 2 else QUICK))
    assert [(o.status, o.version) for o in outcomes] == [("promoted", 1), ("kept_out", 2)]
    yield ws, outcomes
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_versions_lists_every_version_with_its_verdict_metrics_and_champion_part(two_versions):
    """Both versions, oldest first: the champion with no parent, the kept-out one with its parent and the gate's reasons."""
    ws, outcomes = two_versions
    listed = run_cli(["versions", "--workspace", str(ws.root), "--json"], api_url=None)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [(r["version"], r["gate_passed"], r["champion"], r["parent_version"]) for r in records] == [(1, True, "current", None), (2, False, "never", 1)]
    assert [r["increment_id"] for r in records] == [o.increment_id for o in outcomes]
    for record, outcome in zip(records, outcomes, strict=True):
        assert record["metrics"]["candidate_new_accuracy"] == pytest.approx(outcome.metrics["candidate_new_accuracy"], abs=1e-6)
    assert any(reason.startswith("gain on the new holdout: lower 95% bound") and "<= +1.000 (point estimate" in reason for reason in records[1]["gate_reasons"])

    table = run_cli(["versions", "--workspace", str(ws.root)], api_url=None)
    assert table.returncode == 0, table.stderr
    assert "kept out" in table.stdout and "champion" in table.stdout and "lepton compare A B" in table.stdout
    status = run_cli(["status", "--workspace", str(ws.root)], api_url=None)
    assert "2 version(s) (each one: `lepton versions`)" in status.stdout


@pytest.mark.integration
def test_compare_shows_holdouts_config_differences_and_lineage(two_versions):
    """Per holdout, the first version has only its own; only the gate keys that differ are shown; an unknown version is one error line."""
    ws, outcomes = two_versions
    compared = run_cli(["compare", "1", "2", "--workspace", str(ws.root), "--json"], api_url=None)
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["versions"] == [1, 2]
    assert result["lineage"]["parent_version"] == [None, 1]
    assert result["lineage"]["increment_id"] == [o.increment_id for o in outcomes]
    assert result["lineage"]["gate_passed"] == [True, False]
    assert result["config_differences"] == {"gate.min_improvement": [0.0, 1.0], "gate.policy": [result["config_differences"]["gate.policy"][0], "superior"]}
    assert result["config_differences"]["gate.policy"][0] != "superior"
    first, second = result["holdouts"]["holdout 0 accuracy"], result["holdouts"]["holdout 1 accuracy"]
    assert first[0] == pytest.approx(outcomes[0].metrics["candidate_new_accuracy"], abs=1e-6) and first[1] is not None
    assert second[0] is None and second[1] == pytest.approx(outcomes[1].metrics["candidate_new_accuracy"], abs=1e-6)

    table = run_cli(["compare", "1", "2", "--workspace", str(ws.root)], api_url=None)
    assert table.returncode == 0, table.stderr
    assert "configuration differences" in table.stdout and "gate.policy" in table.stdout and "superior" in table.stdout

    missing = run_cli(["compare", "1", "99", "--workspace", str(ws.root)], api_url=None)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "'digits' has no version 99 (it has 1, 2" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout


@pytest.mark.integration
def test_read_only_commands_never_import_prefect(two_versions):
    """`versions` and `compare` only read MLflow: Prefect's import would cost them more than their work."""
    ws, _ = two_versions
    script = (
        "import sys\nfrom lepton.cli import app\n"
        f"for args in (['versions', '-w', {str(ws.root)!r}, '--json'], ['compare', '1', '2', '-w', {str(ws.root)!r}, '--json']):\n"
        "    try:\n        app(args)\n    except SystemExit as exit:\n        assert exit.code in (0, None), exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect')\n"
        "assert not loaded, loaded[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_version_flag_and_flags_shown_as_flags():
    """`lepton --version` prints the installed version; boolean options carry no `<bool>` in `--help`."""
    shown = run_cli(["--version"], api_url=None)
    assert shown.returncode == 0 and shown.stdout.strip() == f"lepton {package_version('lepton')}"
    for command in (["run"], ["versions"], ["promote"], ["report"]):
        helped = run_cli([*command, "--help"], api_url=None)
        assert helped.returncode == 0, helped.stderr
        flags = [line for line in helped.stdout.splitlines() if any(f in line for f in ("--json", "--quiet", "--dry-run", "--force", "--open"))]
        assert flags and not any("<bool>" in line for line in flags), flags
    # --help itself too, on every command and group.
    from typer.testing import CliRunner

    from lepton.cli import app

    for command in ([], ["data"], ["bench"], ["data", "checkout"], ["bench", "tables"], *([c] for c in ("init", "status", "serve", "run-pending"))):
        helped = CliRunner().invoke(app, [*command, "--help"], terminal_width=120)
        assert helped.exit_code == 0 and "--help" in helped.output and "<bool>" not in helped.output, (command, helped.output)


@pytest.mark.integration
def test_archive_hides_kept_out_versions_and_keeps_champions(two_versions):
    """`lepton archive --kept-out` tags version 2 (kept out, never champion); the champion is refused; nothing is deleted."""
    ws, _ = two_versions
    refused = run_cli(["archive", "1", "--workspace", str(ws.root)], api_url=None)
    assert refused.returncode == 1 and "version 1 is the champion" in refused.stderr and "nothing archived" in refused.stderr
    done = run_cli(["archive", "--kept-out", "--reason", "superseded", "--workspace", str(ws.root)], api_url=None)
    assert done.returncode == 0, done.stderr
    assert "archived version(s) 2 of digits (superseded)" in done.stdout
    listed = json.loads(run_cli(["versions", "--workspace", str(ws.root), "--json"], api_url=None).stdout)
    assert [r["version"] for r in listed] == [1]
    everything = json.loads(run_cli(["versions", "--all", "--workspace", str(ws.root), "--json"], api_url=None).stdout)
    assert [(r["version"], (r["archived"] or {}).get("reason")) for r in everything] == [(1, None), (2, "superseded")]
    table = run_cli(["versions", "--workspace", str(ws.root)], api_url=None).stdout
    assert "1 archived version(s) not shown (--all shows them)" in table
    again = run_cli(["archive", "--kept-out", "--workspace", str(ws.root)], api_url=None)
    assert again.returncode == 0 and "nothing to archive" in again.stdout
    # Still a version of the registry, with its artifacts: compare reads it.
    assert run_cli(["compare", "1", "2", "--workspace", str(ws.root)], api_url=None).returncode == 0


@pytest.mark.integration
def test_read_only_commands_do_not_import_prefect(two_versions):
    """status, history, versions and compare read MLflow and the workspace's files only: no Prefect import, no server start."""
    ws, _ = two_versions
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom lepton.cli import app\n"
        "for args in (['status'], ['history'], ['versions'], ['compare', '1', '2']):\n"
        "    result = CliRunner().invoke(app, [*args, '--workspace', sys.argv[1]])\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'great_expectations', 'torch')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(ws.root)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.integration
def test_status_and_history_answer_from_the_cache_while_the_registry_is_unchanged(two_versions):
    """A second status or history reads nothing from MLflow (not even its import) until the registry is written again."""
    ws, _ = two_versions
    script = (
        "import json, sys\nfrom lepton.cli.versions import gather_status\nfrom lepton.config import load\n"
        "from lepton.tasks.tracking import history\nfrom lepton.workspace import Workspace\n"
        "ws = Workspace.at(sys.argv[1])\ninfo = gather_status(ws)\nmoves = history(ws, load(ws.root).registry)\n"
        "print(json.dumps({'champion': info['champion_version'], 'versions': info['versions'], 'moves': len(moves),"
        " 'reason': moves[-1].reason, 'mlflow': 'mlflow' in sys.modules}))\n"
    )

    def ask() -> dict:
        done = subprocess.run([sys.executable, "-c", script, str(ws.root)], capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    shutil.rmtree(ws.state / "cache", ignore_errors=True)
    first, second = ask(), ask()
    assert first["mlflow"] and not second["mlflow"]
    assert {k: v for k, v in first.items() if k != "mlflow"} == {k: v for k, v in second.items() if k != "mlflow"}
    assert (first["champion"], first["versions"]) == (1, 2)
    # A write to the registry (here a tag set by hand) changes the database file: the next answer is read afresh.
    import mlflow

    mlflow.MlflowClient(ws.tracking_uri(None)).set_model_version_tag("digits", "2", "note", "looked at")
    assert ask()["mlflow"]
    # What writes the registry (a run, a rollback) keeps the answers for the registry it leaves: the next status reads them.
    from lepton.config import load
    from lepton.tasks.tracking import answer_ahead

    mlflow.MlflowClient(ws.tracking_uri(None)).set_model_version_tag("digits", "2", "note", "looked at again")
    answer_ahead(ws, load(ws.root).registry)
    ahead = ask()
    assert not ahead["mlflow"] and {k: v for k, v in ahead.items() if k != "mlflow"} == {k: v for k, v in first.items() if k != "mlflow"}
