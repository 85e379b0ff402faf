"""The command-line contract: init, run's exit statuses and messages, configuration errors, the demo."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

from tests.conftest import LEPTON, ROOT, make_workspace, run_cli

pytestmark = pytest.mark.integration


def test_help_lists_the_commands():
    """`lepton --help` answers without starting anything and names every command."""
    result = subprocess.run([LEPTON, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("init", "run", "status", "demo", "data"):
        assert command in result.stdout


def test_init_makes_a_workspace(clean_dir):
    """init: git repo, DVC with a remote under .lepton/, lepton.yaml with the label, data/ tracked by data.dvc."""
    target = clean_dir / "new-ws"
    result = run_cli(["init", str(target), "--label", "species", "--name", "flowers"], api_url=None)
    assert result.returncode == 0, result.stderr
    assert (target / ".git").is_dir() and (target / ".dvc").is_dir()
    config = yaml.safe_load((target / "lepton.yaml").read_text())
    assert config["data"]["label"] == "species" and config["registry"]["model_name"] == "flowers"
    pointer = yaml.safe_load((target / "data.dvc").read_text())
    assert pointer["outs"][0]["path"] == "data" and pointer["outs"][0]["md5"].endswith(".dir")
    assert "../.lepton/dvc-remote" in (target / ".dvc" / "config").read_text()
    assert ".lepton/" in (target / ".gitignore").read_text().splitlines()
    # A second init leaves the config alone.
    again = run_cli(["init", str(target), "--label", "other"], api_url=None)
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert yaml.safe_load((target / "lepton.yaml").read_text())["data"]["label"] == "species"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "train.epochs=zero"], "train.epochs"),
        (["--set", "epochs=5"], "section.key=value"),
        (["--set", "strategy.name=magic"], "strategy.name"),
    ],
)
def test_bad_overrides_fail_readably(clean_dir, args, needle):
    """A wrong --set exits 1 with a message naming the setting, before any work is done."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    increment = clean_dir / "inc.csv"
    increment.write_text("x,y\n1,0\n2,1\n")
    result = run_cli(["run", str(increment), "--workspace", str(ws.root), *args], api_url=None)
    assert result.returncode == 1
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not list((ws.root / "data").rglob("*.csv"))


def test_missing_file_and_missing_workspace(clean_dir, prefect_api):
    """A file that is not there or a folder that is no image increment: exit 2 (a bad increment); a directory that is no workspace: exit 1."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    result = run_cli(["run", str(clean_dir / "nope.csv"), "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2
    assert "nope.csv does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["run", str(clean_dir), "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2
    assert "is a folder: an increment folder holds one CSV of file names and labels beside its images (CSV files found: none)" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(["status", "--workspace", str(clean_dir)], api_url=None)
    assert result.returncode == 1 and "not a Lepton workspace" in result.stderr


def test_unreadable_increment_is_rejected(clean_dir, prefect_api):
    """A file that claims to be Parquet but is not: rejected (exit 2) and quarantined, not lost."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    bogus = clean_dir / "export.parquet"
    bogus.write_text("this is not parquet\n")
    result = run_cli(["run", str(bogus), "--workspace", str(ws.root)], api_url=prefect_api, cwd=clean_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("rejected because could not be read as Parquet")
    kept = list((ws.root / "data" / "quarantine").glob("*.parquet"))
    assert len(kept) == 1 and kept[0].read_bytes() == bogus.read_bytes()
    # Run from the workspace's parent (run_cli's cwd): the path printed resolves from there, the JSON keeps the workspace's.
    where = result.stdout.strip().splitlines()[-1].split("quarantined at ")[1]
    assert where == f"ws/data/quarantine/{kept[0].name}" and (clean_dir / where).is_file()
    again = run_cli(["run", str(bogus), "--workspace", str(ws.root), "--json"], api_url=prefect_api, cwd=clean_dir)
    assert json.loads(again.stdout)["file"] == f"data/quarantine/{kept[0].name}"


def test_demo_tells_its_story_and_matches_the_committed_data(clean_dir, prefect_api):
    """`lepton demo` runs 5 increments and a broken one; its data is byte-for-byte what data.dvc records."""
    workspace = clean_dir / "demo"
    result = run_cli(["demo", "--workspace", str(workspace), "--set", "train.epochs=10"], api_url=prefect_api)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "starting from a fresh embedded state" in out
    assert out.count("promoted as version") >= 3
    assert "rejected because missing column(s) 'pixel_10'" in out
    # Paths resolve from where the command ran (not the workspace): absolute here.
    assert f"quarantined: {workspace.resolve() / 'data' / 'quarantine'}/" in out
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    produced = yaml.safe_load((workspace / "data.dvc").read_text())["outs"][0]
    assert produced["md5"] == committed["md5"]
    # Run twice, same story: the same increments and data version; --json gives each run's outcome and seconds.
    again = run_cli(["demo", "--workspace", str(workspace), "--set", "train.epochs=10", "--json"], api_url=prefect_api)
    assert again.returncode == 0
    assert yaml.safe_load((workspace / "data.dvc").read_text())["outs"][0]["md5"] == committed["md5"]
    told = json.loads(again.stdout)
    assert [run["status"] for run in told["runs"]].count("rejected") == 1 and len(told["runs"]) == 6
    for run in told["runs"]:
        assert run["seconds"]["total"] >= sum(run["seconds"]["steps"].values()) > 0
        assert "ingest" in run["seconds"]["steps"]


def test_demo_refuses_to_clear_another_workspace_or_a_data_folder(clean_dir):
    """The demo starts afresh by removing .lepton/ and data/: in another model's workspace, or a project with a data/
    folder, it deleted them and exited 0. It now refuses, names the folder, and leaves everything as it was."""
    ws = make_workspace(clean_dir / "ws", "species", "penguins")
    (ws.data / "increments").mkdir(parents=True, exist_ok=True)
    (ws.data / "increments" / "kept.csv").write_text("a,species\n1,x\n")
    project = clean_dir / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "important.csv").write_text("a,b\n")
    for folder, said in ((ws.root, "is a workspace of model 'penguins' (label 'species')"), (project, "holds a data/ folder and is no workspace")):
        before = {str(p): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}
        result = run_cli(["demo", "--workspace", str(folder)], api_url=None)
        assert result.returncode == 1 and said in result.stderr and "lepton demo --workspace" in result.stderr, result.stderr
        assert {str(p): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()} == before


def test_run_pending_on_an_empty_landing_folder_answers_without_prefect(clean_dir):
    """A cron job that looks every few minutes started Prefect's server for an empty inbox (14 s): now it answers from the
    folder. No PREFECT_API_URL here: a temporary server would have made its database in .lepton/prefect."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    result = run_cli(["run-pending", "--workspace", str(ws.root), "--json"], api_url=None)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    answer = json.loads(result.stdout)
    assert answer["message"] == "0 increment(s) processed (nothing to do)" and answer["exit_code"] == 0
    assert not (ws.state / "prefect").exists()
    plain = run_cli(["run-pending", "--workspace", str(ws.root)], api_url=None)
    assert plain.returncode == 0 and plain.stdout.strip() == "0 increment(s) processed (nothing to do)"


def test_prefect_yaml_points_at_the_flow():
    """Every deployment in prefect.yaml names an entrypoint that loads as a Prefect flow."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["deployments"]
    for deployment in config["deployments"]:
        file, _, name = deployment["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{ROOT / file}:{name}")
        assert isinstance(flow, Flow)  # which flow each deployment runs: tests/test_deployments.py
        assert set(deployment["parameters"]) <= set(flow.parameters.properties)


def test_readme_names_the_two_commands():
    """The README's front door: make demo and make test."""
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_run_dry_run_only_validates(clean_dir, prefect_api, increments):
    """`lepton run --dry-run`: a verdict and its exit status, and the workspace's data untouched."""
    import pandas as pd

    ws = make_workspace(clean_dir / "ws", "digit", "dry", {"data": {"bounds": {"*": [0, 16]}}})
    before = sorted(p.name for p in (ws.root / "data").rglob("*"))
    result = run_cli(["run", str(increments[0]), "--dry-run", "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("dry run: valid")
    broken = clean_dir / "broken.parquet"
    pd.read_parquet(increments[0]).assign(pixel_3=99).to_parquet(broken, index=False)
    result = run_cli(["run", str(broken), "--dry-run", "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2
    assert "would be rejected" in result.stdout and "pixel_3" in result.stdout
    assert sorted(p.name for p in (ws.root / "data").rglob("*")) == before


def test_progress_quiet_and_json_output(clean_dir, prefect_api, increments):
    """Piped: a line per step and epoch, then a summary table; --json: only JSON on stdout; --quiet: only the last line."""
    import json

    ws = make_workspace(clean_dir / "ws", "digit", "digits", {"data": {"bounds": {"*": [0, 16]}}})
    quick = ["--set", "train.epochs=3", "--set", "train.hidden=[32]", "--set", "gate.bootstrap_samples=200"]
    shown = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), *quick], api_url=prefect_api)
    assert shown.returncode == 0, shown.stderr
    for step in ("✓ ingest", "✓ validate (Great Expectations)", "✓ fine-tune", "✓ register and promote (MLflow)", "✓ report"):
        assert step in shown.stdout, shown.stdout
    assert "epoch 3/3: loss" in shown.stdout and "model version" in shown.stdout
    assert shown.stdout.rstrip().splitlines()[-1] == "promoted as version 1 (first champion)"
    # Prefect's own lines went to the log file, not to the terminal.
    assert "Finished in state" not in shown.stdout + shown.stderr
    assert "Finished in state" in (ws.root / ".lepton" / "logs" / "lepton.log").read_text()

    machine = run_cli(["run", str(increments[1]), "--workspace", str(ws.root), "--json", *quick], api_url=prefect_api)
    assert machine.returncode == 0, machine.stderr
    outcome = json.loads(machine.stdout)
    assert outcome["status"] == "promoted" and outcome["version"] == 2 and outcome["parent_version"] == 1
    assert 0.0 <= outcome["metrics"]["candidate_new_accuracy"] <= 1.0
    # Where the time went: the command's total and each step, the steps within it.
    seconds = outcome["seconds"]
    steps = seconds["steps"]
    for step in ("import the pipeline", "start the flow (Prefect)", "validate (Great Expectations)", "fine-tune", "register and promote (MLflow)", "report", "keep status' answers"):
        assert steps[step] > 0, steps
    assert sum(steps.values()) <= seconds["total"] + 0.05

    backfilled = clean_dir / "backfill"
    backfilled.mkdir()
    pd.read_parquet(increments[1]).to_parquet(backfilled / "01.parquet", index=False)  # run above: a duplicate
    pd.read_parquet(increments[1]).iloc[1:].to_parquet(backfilled / "02.parquet", index=False)  # other rows: trained on
    series = run_cli(["backfill", str(backfilled), "--workspace", str(ws.root), "--json", *quick], api_url=prefect_api)
    assert series.returncode == 0, series.stderr
    report = json.loads(series.stdout)
    assert [item["file"] for item in report["processed"]] == ["01.parquet", "02.parquet"], report
    first, second = (item["seconds"] for item in report["processed"])
    assert set(first["steps"]) == {"ingest", "finish an interrupted run"}
    assert second["steps"]["fine-tune"] > 0 and "finish an interrupted run" not in second["steps"]
    assert second["total"] >= sum(second["steps"].values()) and report["seconds"]["total"] >= first["total"] + second["total"]

    cron = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--quiet"], api_url=prefect_api)
    assert cron.returncode == 0, cron.stderr
    assert cron.stdout.strip().startswith("duplicate of increment") and len(cron.stdout.strip().splitlines()) == 1

    # Content whose run finished is a duplicate told without a flow; without that record the flow looks, and records it.
    ledger = len(ws.read_duplicates())
    told = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--json"], api_url=prefect_api)
    assert told.returncode == 0, told.stderr
    answer = json.loads(told.stdout)
    assert answer["status"] == "duplicate" and answer["seconds"]["steps"] == {}, answer
    assert len(ws.read_duplicates()) == ledger + 1
    markers = sorted((ws.root / ".lepton" / "finished").iterdir())
    assert len(markers) == 3  # the two runs and the backfill's new increment; the duplicates wrote none of their own
    for marker in markers:
        marker.unlink()
    looked = run_cli(["run", str(increments[0]), "--workspace", str(ws.root), "--json"], api_url=prefect_api)
    answer = json.loads(looked.stdout)
    assert answer["status"] == "duplicate" and "ingest" in answer["seconds"]["steps"], answer
    assert [m.name for m in (ws.root / ".lepton" / "finished").iterdir()] == [f"{answer['increment_id']}.json"]


def test_progress_lines_name_the_workspace_files_as_they_resolve_from_here(tmp_path, monkeypatch):
    """The flow says 'quarantined at data/quarantine/x.csv' (the workspace's form); the terminal shows it from where the
    command ran, as the last line does. Other text that only looks alike is left as it is."""
    from lepton.cli.common import paths_shown
    from lepton.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    monkeypatch.chdir(tmp_path)
    line = "rejected because missing column(s) 'b'; quarantined at data/quarantine/77e3d24e.csv"
    assert paths_shown(ws, line) == "rejected because missing column(s) 'b'; quarantined at ws/data/quarantine/77e3d24e.csv"
    assert paths_shown(ws, "see my/data/increments/x.csv") == "see my/data/increments/x.csv"


def test_a_run_whose_report_could_not_be_written_says_so(tmp_path, monkeypatch):
    """The run happened (promoted), its page did not: the summary says where the reason is, where it showed nothing."""
    from rich.console import Console

    from lepton.cli.runs import _outcome_table
    from lepton.tasks.outcome import RunOutcome
    from lepton.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    monkeypatch.chdir(tmp_path)
    outcome = RunOutcome(status="promoted", increment_id="abc", file="data/increments/abc.csv", message="promoted as version 1 (first champion)")
    console = Console(record=True, width=200)
    console.print(_outcome_table(ws, outcome))
    assert "not written: why is in ws/.lepton/logs/lepton.log" in console.export_text()
    written = outcome.model_copy(update={"report": ".lepton/reports/v1-abc/report.html"})
    console = Console(record=True, width=200)
    console.print(_outcome_table(ws, written))
    assert "ws/.lepton/reports/v1-abc/report.html" in console.export_text() and "not written" not in console.export_text()
