"""The continual-training flow end to end: real Prefect, MLflow on SQLite, DVC in a git repo, GX, PyTorch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FAST, make_workspace, run_cli, write_increments

pytestmark = pytest.mark.integration

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}


def snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every file under a directory, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def registry(ws):
    from lepton.config import load
    from lepton.tasks.tracking import champion_version, connect

    config = load(ws.root)
    client, _ = connect(ws, config.registry)
    return client, config.registry.model_name, champion_version(client, config.registry.model_name)


@pytest.fixture(scope="module")
def digits(tmp_path_factory, prefect_api):
    """A digits workspace after three class-incremental increments, one naive run kept out, and a duplicate.

    Yields the workspace, the increment files, the outcomes in order and a snapshot of
    data/ after the first increment (for the lineage test).
    """
    from lepton.flows.continual import continual_training

    root = tmp_path_factory.mktemp("digits-ws")
    ws = make_workspace(root, "digit", "digits", DIGITS)
    landing = tmp_path_factory.mktemp("landing")
    files = write_increments(landing, 4, "inc{}.parquet")

    outcomes, aliases, snapshots = [], [], []
    for path in files[:3]:
        outcomes.append(continual_training(str(path), str(ws.root), FAST))
        aliases.append(registry(ws)[2])
        snapshots.append(snapshot(ws.data))
    # Naive fine-tuning on new classes forgets the old ones: the gate must keep it out (without the fallback, which
    # would retrain on everything instead: tests/test_real_data.py).
    outcomes.append(continual_training(str(files[3]), str(ws.root), [*FAST, "strategy.name=naive", "gate.max_forgetting=0.0", "gate.fallback=none"]))
    aliases.append(registry(ws)[2])
    snapshots.append(snapshot(ws.data))
    yield {"ws": ws, "files": files, "outcomes": outcomes, "aliases": aliases, "snapshots": snapshots, "landing": landing}
    shutil.rmtree(root, ignore_errors=True)


def test_champion_moves_exactly_when_the_gate_passes(digits):
    """Each run registers a version; the champion alias points at it if and only if the gate passed."""
    outcomes, aliases = digits["outcomes"], digits["aliases"]
    client, name, _ = registry(digits["ws"])
    assert [o.version for o in outcomes] == [1, 2, 3, 4]
    previous = None
    for outcome, alias in zip(outcomes, aliases, strict=True):
        tags = client.get_model_version(name, str(outcome.version)).tags
        passed = tags["lepton.gate_passed"] == "true"
        assert passed == (outcome.status == "promoted")
        assert alias == (outcome.version if passed else previous)
        assert tags["lepton.parent_version"] == (str(previous) if previous else "none")
        previous = alias
    assert [o.status for o in outcomes] == ["promoted", "promoted", "promoted", "kept_out"]
    assert "forgetting" in outcomes[3].message and outcomes[3].message.startswith("kept out by the gate because")


def test_replay_keeps_old_classes(digits):
    """The promoted candidates keep what earlier increments taught (replay), unlike naive fine-tuning."""
    promoted = digits["outcomes"][2]
    assert promoted.metrics["candidate_old_accuracy"] > 0.85
    assert promoted.metrics["candidate_new_accuracy"] > 0.9
    assert digits["outcomes"][3].metrics["candidate_old_accuracy"] < 0.5


def test_lineage_tags(digits):
    """A model version carries increment id, DVC data hash, git commit, parent, strategy, config, gate and metrics."""
    client, name, _ = registry(digits["ws"])
    outcome = digits["outcomes"][1]
    tags = client.get_model_version(name, str(outcome.version)).tags
    assert tags["lepton.increment_id"] == outcome.increment_id
    assert tags["lepton.data_hash"] == outcome.data_hash and tags["lepton.data_hash"].endswith(".dir")
    assert tags["lepton.git_commit"]
    from lepton.config import StrategyConfig

    assert tags["lepton.strategy"] == StrategyConfig().name
    assert json.loads(tags["lepton.config"])["train"]["epochs"] == 15
    assert json.loads(tags["lepton.gate_reasons"])
    assert json.loads(tags["lepton.metrics"])["candidate_new_accuracy"] == pytest.approx(outcome.metrics["candidate_new_accuracy"], abs=1e-6)
    run = client.get_run(client.get_model_version(name, str(outcome.version)).run_id)
    assert run.data.metrics["candidate_new_accuracy"] == pytest.approx(outcome.metrics["candidate_new_accuracy"])


def test_accuracy_matrix_is_tracked(digits):
    """Each version's run carries R[i][j] (JSON and heatmap) and the continual metrics derived from it."""
    client, name, _ = registry(digits["ws"])
    version = client.get_model_version(name, "3")
    run = client.get_run(version.run_id)
    for key in ("lineage_average_accuracy", "lineage_forgetting", "lineage_bwt", "prequential_accuracy"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "report")}
    assert {"report/accuracy_matrix.json", "report/accuracy_matrix.svg"} <= artifacts
    local = client.download_artifacts(version.run_id, "report/accuracy_matrix.json")
    matrix = json.loads(Path(local).read_text())
    ids = [o.increment_id for o in digits["outcomes"][:3]]
    assert matrix["columns"] == ids and matrix["trained"] == ids
    assert len(matrix["rows"]) == 3
    # The diagonal is each model on the increment it just learned; the last row is version 3's own scores.
    assert matrix["rows"][2][2] == pytest.approx(digits["outcomes"][2].metrics["candidate_new_accuracy"])
    assert run.data.metrics["prequential_accuracy"] == pytest.approx(matrix["rows"][1][2])


def test_same_content_is_not_trained_twice(digits, prefect_api):
    """The first increment landed again under another name is recognised; no version is added."""
    from lepton.flows.continual import continual_training

    ws = digits["ws"]
    client, name, champion = registry(ws)
    versions = len(client.search_model_versions(f"name='{name}'"))
    before = snapshot(ws.data)
    again = digits["landing"] / "same-as-inc1.parquet"
    shutil.copyfile(digits["files"][0], again)
    outcome = continual_training(str(again), str(ws.root), FAST)
    assert outcome.status == "duplicate" and outcome.exit_code == 0
    assert outcome.increment_id == digits["outcomes"][0].increment_id
    assert len(client.search_model_versions(f"name='{name}'")) == versions
    assert registry(ws)[2] == champion
    assert snapshot(ws.data) == before


def test_champion_predicts_on_raw_columns(digits):
    """models:/NAME@champion loads as a pyfunc and returns the original label values from raw pixels."""
    import mlflow.pyfunc

    from lepton.models.datasets import class_incremental
    from lepton.models.splits import split

    registry(digits["ws"])  # sets the tracking URI
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    holdout = pd.concat([split(f, 0.2)[1] for f in class_incremental()[:3]])
    raw = holdout.drop(columns=["digit"])
    predicted = np.asarray(model.predict(raw))
    assert set(predicted.tolist()) <= {0, 1, 2, 3, 4, 5}
    assert (predicted == holdout["digit"].to_numpy()).mean() > 0.85
    proba = model.predict(raw.head(3), params={"probabilities": True})
    assert list(proba.columns) == ["0", "1", "2", "3", "4", "5"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_lineage_restore_is_byte_identical(digits):
    """`lepton data checkout --model-version 1` restores exactly the data version 1 was trained at."""
    ws = digits["ws"]
    current = snapshot(ws.data)
    result = run_cli(["data", "checkout", "--model-version", "1", "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 0, result.stderr
    assert snapshot(ws.data) == digits["snapshots"][0]
    # And back to the newest version, so the workspace is whole again.
    result = run_cli(["data", "checkout", "--model-version", "4", "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 0, result.stderr
    assert snapshot(ws.data) == current


def test_bad_increment_is_quarantined(digits, prefect_api):
    """A missing column: exit 2, a readable reason, the file kept in data/quarantine/, the champion untouched."""
    ws = digits["ws"]
    _, _, champion = registry(ws)
    broken = digits["landing"] / "broken.parquet"
    pd.read_parquet(digits["files"][3]).drop(columns=["pixel_10"]).head(100).to_parquet(broken, index=False)
    result = run_cli(["run", str(broken), "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("rejected because") and "pixel_10" in result.stdout
    quarantined = list((ws.data / "quarantine").glob("*.parquet"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == broken.read_bytes()
    assert registry(ws)[2] == champion
    status = json.loads(run_cli(["status", "--json", "--workspace", str(ws.root)], api_url=None).stdout)
    states = {i["id"]: i["state"] for i in status["increments"]}
    assert list(states.values()).count("rejected") == 1
    assert status["champion_version"] == champion


def test_status_json_contract(digits):
    """status --json names the model, the tracking URI, the champion and every increment with its file and state."""
    ws = digits["ws"]
    result = run_cli(["status", "--json", "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["model_name"] == "digits"
    assert status["tracking_uri"].startswith("sqlite:///") and str(ws.root) in status["tracking_uri"]
    assert status["champion_version"] == 3
    accepted = [i for i in status["increments"] if i["state"] == "accepted"]
    assert [i["id"] for i in accepted] == [o.increment_id for o in digits["outcomes"]]
    # Each with the version trained on it and the gate's verdict: kept-out increments do not read as plain "accepted".
    assert [(i["version"], i["gate"]) for i in accepted] == [(o.version, "passed" if o.status == "promoted" else "kept out") for o in digits["outcomes"]]
    for item in status["increments"]:
        assert {"id", "file", "state"} <= set(item)
        assert (ws.root / item["file"]).exists()
    # The table shows the champion's increment file as the increments' files, from where the command ran.
    table = run_cli(["status", "--workspace", str(ws.root)], api_url=None, cwd=ws.root.parent)
    champion_file = status["champion"]["lineage"]["increment_file"]
    assert table.returncode == 0 and f"{ws.root.name}/{champion_file}" in table.stdout and f"│ {champion_file}" not in table.stdout, table.stdout


def test_string_binary_labels(clean_dir, prefect_api):
    """A binary dataset with string labels: trained, promoted, and predicted back as the same strings."""
    import mlflow.pyfunc
    from sklearn.datasets import load_breast_cancer

    from lepton.flows.continual import continual_training

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.drop(columns=["target"]).rename(columns=lambda c: c.replace(" ", "_"))
    frame["diagnosis"] = np.where(data.target == 0, "malignant", "benign")
    ws = make_workspace(clean_dir / "ws", "diagnosis", "cancer")
    halves = [frame.iloc[::2], frame.iloc[1::2]]
    outcomes = []
    for i, half in enumerate(halves):
        path = clean_dir / f"cancer-{i}.csv"
        half.to_csv(path, index=False)
        outcomes.append(continual_training(str(path), str(ws.root), FAST))
    assert outcomes[0].status == "promoted"
    assert outcomes[0].metrics["candidate_new_accuracy"] > 0.85
    assert outcomes[1].status in {"promoted", "kept_out"}
    registry(ws)
    model = mlflow.pyfunc.load_model("models:/cancer@champion")
    predicted = np.asarray(model.predict(frame.drop(columns=["diagnosis"]).head(50)))
    assert set(predicted.tolist()) <= {"malignant", "benign"}
    assert (predicted == frame["diagnosis"].head(50).to_numpy()).mean() > 0.85
    assert outcomes[1].metrics["candidate_all_accuracy"] > 0.85


def test_an_interrupted_run_resumes_at_training(clean_dir, prefect_api, increments, monkeypatch):
    """Accepted, then the registry was unreachable: the same file again trains and registers it once, then is a duplicate."""
    from lepton.flows.continual import continual_training

    ws = make_workspace(clean_dir / "ws", "digit", "resume", DIGITS)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(Exception):
        continual_training(str(increments[0]), str(ws.root), [*FAST, "registry.tracking_uri=http://127.0.0.1:9"])
    assert [r.state for r in ws.read_manifest().increments] == ["accepted"]
    assert registry(ws)[2] is None

    outcome = continual_training(str(increments[0]), str(ws.root), FAST)
    assert outcome.status == "promoted" and outcome.version == 1
    again = continual_training(str(increments[0]), str(ws.root), FAST)
    assert again.status == "duplicate"
    client, name, _ = registry(ws)
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    assert len(ws.read_manifest().increments) == 1


def test_a_run_parses_only_the_new_increment(tmp_path, prefect_api, monkeypatch):
    """Drift, the split and the training plan share one read of the history, and the earlier increments come from the
    workspace's rows cache: only the new file is parsed, once; the history is the same frames as the files hold."""
    from collections import Counter

    from lepton.flows.continual import continual_training
    from lepton.tasks import splits

    files = write_increments(tmp_path, 3)
    ws = make_workspace(tmp_path / "ws", "digit", "digits", DIGITS)
    quick = [*FAST, "train.epochs=2", "drift.action=replay"]  # replay: the plan wants the earlier increments too
    for path in files[:2]:
        continual_training(str(path), str(ws.root), quick)
    reads: Counter[str] = Counter()
    real = splits.read_increment

    def counted(path: Path) -> pd.DataFrame:
        reads[str(Path(path).relative_to(ws.root)) if Path(path).is_relative_to(ws.root) else "landing"] += 1
        return real(path)

    monkeypatch.setattr(splits, "read_increment", counted)
    assert continual_training(str(files[2]), str(ws.root), quick).status in ("promoted", "kept_out")
    stored = [r.file for r in ws.read_manifest().accepted()]
    assert len(stored) == 3 and {f: reads[f] for f in stored} == {stored[0]: 0, stored[1]: 0, stored[2]: 1}
    monkeypatch.setattr(splits, "read_increment", real)
    history = splits.read_history.fn(ws)
    assert list(history.frames) == [r.id for r in ws.read_manifest().accepted()]
    for record in ws.read_manifest().accepted():
        pd.testing.assert_frame_equal(history.frames[record.id], real(ws.root / record.file))
