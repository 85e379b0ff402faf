"""The champion's history on the registered model: promotions and rollbacks recorded, rollback by default and by version."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import pytest

from lepton.history import AliasMove, new_move, previous_champion, recorded
from tests.conftest import make_workspace, run_cli

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}
# Small and fast, and every model promoted: these tests are about the history, not the gate.
QUICK = ["train.epochs=5", "train.hidden=[64]", "gate.bootstrap_samples=200", "gate.max_forgetting=1.0", "strategy.name=replay"]


def moves(*steps: tuple[str, int | None, int], history: list[AliasMove] | None = None) -> list[AliasMove]:
    """``history`` (or a new one) with the given (kind, from, to) moves appended."""
    history = list(history or [])
    for kind, source, target in steps:
        history.append(new_move(history, alias="champion", kind=kind, from_version=source, to_version=target, reason=kind))
    return history


def test_previous_champion_steps_back_through_the_history():
    """Default rollback target: the latest earlier champion never rolled back from, so two rollbacks go back two steps."""
    history = moves(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3))
    assert previous_champion(history, 3) == 2
    history = moves(("rollback", 3, 2), history=history)
    assert previous_champion(history, 2) == 1
    history = moves(("rollback", 2, 1), history=history)
    assert previous_champion(history, 1) is None  # 3 and 2 were both rolled back from
    history = moves(("promote", 1, 4), history=history)
    assert previous_champion(history, 4) == 1
    assert previous_champion([], None) is None
    assert [m.seq for m in history] == [1, 2, 3, 4, 5, 6]


def test_a_retried_move_is_recognised():
    """A move recorded but not yet applied (the alias call failed) is the last record: a retry writes no second one."""
    history = moves(("promote", None, 1), ("promote", 1, 2))
    assert recorded(history, 1, 2)
    assert not recorded(history, 2, 3) and not recorded(history, None, 2) and not recorded([], None, 1)


def test_a_record_is_one_small_tag():
    """Each move is one registered-model tag, under the SQL store's 5000-character value limit even with a long reason."""
    move = new_move([], alias="champion", kind="rollback", from_version=3, to_version=2, reason="x" * 10_000, flow_run_name="r", user="u")
    key, value = move.tag()
    assert key.startswith("lepton.history.000001.") and len(key) < 250
    assert len(value) < 5000 and json.loads(value)["reason"].endswith("...")
    assert AliasMove.model_validate_json(value).at.tzinfo is not None
    assert move.at <= datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, prefect_api):
    """A digits workspace after two promotions (versions 1 and 2)."""
    from lepton.flows.continual import continual_training
    from lepton.models.datasets import class_incremental

    root = tmp_path_factory.mktemp("history-ws")
    ws = make_workspace(root / "ws", "digit", "digits", DIGITS)
    outcomes = []
    for i, frame in enumerate(class_incremental()[:2], start=1):
        path = root / f"day-{i}.parquet"
        frame.to_parquet(path, index=False)
        outcomes.append(continual_training(str(path), str(ws.root), QUICK))
    assert [o.status for o in outcomes] == ["promoted", "promoted"]
    yield ws
    shutil.rmtree(root, ignore_errors=True)


def registry(ws):
    from lepton.config import load
    from lepton.tasks.tracking import champion_history, champion_version, connect

    config = load(ws.root)
    client, _ = connect(ws, config.registry)
    name = config.registry.model_name
    return client, name, champion_version(client, name), champion_history(client, name)


@pytest.mark.integration
def test_promotions_are_recorded_on_the_registered_model(promoted):
    """Every promotion is a tag on the registered model: from, to, the run that moved it, when, and the gate's reasons."""
    client, name, champion, history = registry(promoted)
    assert champion == 2
    assert [(m.seq, m.kind, m.from_version, m.to_version) for m in history] == [(1, "promote", None, 1), (2, "promote", 1, 2)]
    for move in history:
        assert move.reason.startswith("gate passed: ")
        assert move.flow_run_id and move.flow_run_name  # the continual-training run that promoted it
    tags = client.get_registered_model(name).tags
    assert sorted(k for k in tags if k.startswith("lepton.history.")) == [m.tag()[0] for m in history]


@pytest.mark.integration
def test_promoting_the_champion_again_records_nothing(promoted):
    """Promote is idempotent: the alias already there, no second record (the task retries safely)."""
    from lepton.config import load
    from lepton.tasks.promotion import promote

    before = registry(promoted)[3]
    assert promote.fn(promoted, load(promoted.root).registry, 2) is None
    assert registry(promoted)[3] == before


@pytest.mark.integration
def test_rollback_and_history_commands(promoted, prefect_api):
    """`lepton rollback` goes back to the previous champion and records why; it refuses readably when it cannot; `history` lists it all."""
    from lepton.flows.rollback import rollback

    ws = str(promoted.root)
    result = run_cli(["rollback", "--reason", "version 2 mislabels 3s", "--workspace", ws], api_url=prefect_api)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "champion moved back from version 2 to version 1" in result.stdout
    _, _, champion, history = registry(promoted)
    assert champion == 1
    last = history[-1]
    assert (last.kind, last.from_version, last.to_version, last.reason) == ("rollback", 2, 1, "version 2 mislabels 3s")
    assert last.flow_run_name and last.user

    # Nothing earlier than version 1 to go back to, and no version 99: refused, readably, nothing moved.
    refused = rollback(ws, return_state=True)
    assert refused.is_failed() and "no earlier champion" in refused.message
    refused = run_cli(["rollback", "--to", "99", "--workspace", ws], api_url=prefect_api)
    assert refused.returncode == 1 and "has no version 99" in refused.stderr and "Traceback" not in refused.stderr + refused.stdout
    # One line: Prefect's own record of the refusal went to the log file.
    assert [line for line in refused.stderr.splitlines() if line.strip()] == ["error: rollback refused: model 'digits' has no version 99"], refused.stderr
    assert registry(promoted)[2] == 1

    # Forward again by version, then the history as JSON and as a table.
    forward = run_cli(["rollback", "--to", "2", "--reason", "fixed labels upstream", "--workspace", ws], api_url=prefect_api)
    assert forward.returncode == 0, forward.stdout + forward.stderr
    assert "champion moved from version 1 to version 2 (fixed labels upstream)" in forward.stdout  # forward: not 'back'
    assert registry(promoted)[2] == 2
    listed = run_cli(["history", "--json", "--workspace", ws], api_url=None)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [(r["kind"], r["from_version"], r["to_version"]) for r in records] == [
        ("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1), ("rollback", 1, 2),
    ]
    assert records[2]["reason"] == "version 2 mislabels 3s" and records[2]["at"].endswith("Z")
    table = run_cli(["history", "--workspace", ws], api_url=None)
    assert table.returncode == 0 and "fixed labels upstream" in table.stdout and "rollback" in table.stdout


def test_a_move_whose_alias_never_moved_is_told_apart():
    """A record from the current champion to elsewhere is unapplied (its run died before the alias call); earlier records all took effect."""
    from lepton.history import unapplied, was_champion

    history = moves(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3))
    assert unapplied(history, 3) is None
    assert unapplied(history, 2) == history[-1]  # 2 -> 3 recorded, alias still on 2
    assert was_champion(history, 2, 1) and was_champion(history, 2, 2) and not was_champion(history, 2, 3)
    assert was_champion(history, 3, 3) and not was_champion(history, 3, 4)
    assert unapplied([], None) is None and not was_champion([], None, 1)
    # The run promoting 2 -> 3 stopped before the alias moved, and the next file's run moved it from 2 to 4.
    from lepton.history import applied, champions

    stopped = moves(("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("promote", 2, 4))
    assert applied(stopped, 4) == [True, True, False, True] and applied(stopped, 2) == [True, True, False, False]
    assert not was_champion(stopped, 4, 3) and was_champion(stopped, 4, 2) and champions(stopped, 4) == [1, 2, 4]
