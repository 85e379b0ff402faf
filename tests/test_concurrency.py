"""Concurrent runs: two `lepton run` processes at once never both promote from the same champion, and a
consumer loading ``models:/NAME@champion`` in a loop while increments are promoted always gets a whole model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import LEPTON, make_workspace, write_increments

pytestmark = pytest.mark.integration

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}
# Small, and every candidate passes the gate: these tests are about who promotes from what.
QUICK = ["train.epochs=2", "train.hidden=[32]", "gate.bootstrap_samples=100", "gate.max_forgetting=1.0", "gate.min_accuracy=0.0", "strategy.name=replay"]


def start_run(path: Path, ws, api_url: str) -> subprocess.Popen:
    """A real `lepton run` in the background."""
    sets = [arg for pair in QUICK for arg in ("--set", pair)]
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.Popen([LEPTON, "run", str(path), "--workspace", str(ws.root), *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def together(*procs: subprocess.Popen) -> list[tuple[int, str, str]]:
    """Wait for every process; (exit status, the message it ended with, all its output) of each."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        lines = out.strip().splitlines()
        results.append((proc.returncode, lines[-1] if lines else "", out + err))
    return results


def registry_state(ws) -> dict:
    from lepton.config import load
    from lepton.tasks.tracking import champion_history, champion_version, connect

    config = load(ws.root).registry
    client, _ = connect(ws, config)
    versions = client.search_model_versions(f"name='{config.model_name}'")
    return {
        "versions": {int(v.version): dict(v.tags) for v in versions},
        "champion": champion_version(client, config.model_name),
        "history": champion_history(client, config.model_name),
    }


def assert_consistent(state: dict) -> None:
    """History is a chain (each move's from is the previous move's to, ending at the champion), and every
    promoted version was trained from the champion it replaced."""
    history = state["history"]
    assert history and history[0].from_version is None
    for prev, move in zip(history, history[1:]):
        assert move.from_version == prev.to_version, [(m.from_version, m.to_version) for m in history]
    assert history[-1].to_version == state["champion"]
    for move in history:
        parent = state["versions"][move.to_version]["lepton.parent_version"]
        assert parent == (str(move.from_version) if move.from_version else "none"), f"version {move.to_version} promoted from a stale parent"


def live_versions(state: dict, increment_id: str) -> list[int]:
    return [v for v, tags in state["versions"].items() if tags.get("lepton.increment_id") == increment_id and "lepton.superseded_by" not in tags]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, prefect_api):
    """A digits workspace whose first increment is champion (version 1), and the next three increments."""
    from lepton.flows.continual import continual_training

    root = tmp_path_factory.mktemp("concurrent-ws")
    ws = make_workspace(root, "digit", "digits", DIGITS)
    files = write_increments(tmp_path_factory.mktemp("concurrent-landing"), 4, "inc{}.parquet")
    assert continual_training(str(files[0]), str(ws.root), QUICK).status == "promoted"
    return ws, files


def test_two_runs_on_different_increments_at_once(workspace, prefect_api):
    """Both exit 0, both increments promoted in turn: the later one is retrained from the new champion, never promoted from the old."""
    from lepton.tasks.ingest import content_id

    ws, files = workspace
    started = time.monotonic()
    results = together(start_run(files[1], ws, prefect_api), start_run(files[2], ws, prefect_api))
    elapsed = time.monotonic() - started
    for code, _, output in results:
        assert code == 0, output[-3000:]
    state = registry_state(ws)
    assert_consistent(state)
    for path in files[1:3]:
        assert len(live_versions(state, content_id(path))) == 1
    # Both were promoted one after the other, the second from the first.
    assert [(m.from_version, m.to_version) for m in state["history"]][0] == (None, 1)
    assert len(state["history"]) == 3
    manifest = ws.read_manifest()
    assert sorted(r.id for r in manifest.increments) == sorted(content_id(p) for p in files[:3])
    retrained = sum("training again" in output for _, _, output in results)
    print(f"\ntwo increments at once: {elapsed:.1f}s, {retrained} run(s) retrained on the new champion")


def test_the_same_increment_twice_at_once(workspace, prefect_api):
    """Both exit 0; the increment is recorded once, registered once, and one run says it was a duplicate."""
    from lepton.tasks.ingest import content_id

    ws, files = workspace
    before = registry_state(ws)
    results = together(start_run(files[3], ws, prefect_api), start_run(files[3], ws, prefect_api))
    for code, _, output in results:
        assert code == 0, output[-3000:]
    state = registry_state(ws)
    assert_consistent(state)
    increment = content_id(files[3])
    assert len(live_versions(state, increment)) == 1
    assert len(state["versions"]) == len(before["versions"]) + 1
    assert [r.id for r in ws.read_manifest().increments].count(increment) == 1
    endings = sorted(message.split(" ")[0].rstrip(":") for _, message, _ in results)
    assert endings == ["duplicate", "promoted"], [message for _, message, _ in results]
    print("\nthe same increment twice at once:", *(message for _, message, _ in results), sep="\n  ")


CONSUMER = textwrap.dedent(
    """
    import json, sys, time
    import mlflow, mlflow.pyfunc, pandas as pd, torch
    torch.set_num_threads(1)
    uri, name, rows, stop, out = sys.argv[1:6]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    frame = pd.read_parquet(rows)
    with open(out, "w") as log:
        while True:
            done = __import__("os").path.exists(stop)
            started = time.monotonic()
            try:
                model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
                predicted = list(model.predict(frame))
                entry = {"ok": len(predicted) == len(frame), "run_id": model.metadata.run_id, "labels": sorted(set(int(p) for p in predicted))}
            except Exception as error:
                entry = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            entry["seconds"] = time.monotonic() - started
            log.write(json.dumps(entry) + "\\n")
            log.flush()
            if done:
                break
    """
)


def test_a_consumer_always_loads_a_whole_champion(tmp_path, prefect_api):
    """A consumer process loads models:/digits@champion and predicts in a loop while 5 increments are promoted one after another."""
    from lepton.flows.continual import continual_training
    from lepton.models.datasets import class_incremental
    from lepton.tasks.tracking import tracking_uri

    ws = make_workspace(tmp_path / "ws", "digit", "digits", DIGITS)
    frames = class_incremental()
    seed = tmp_path / "seed.parquet"
    frames[0].iloc[::2].to_parquet(seed, index=False)
    files = write_increments(tmp_path, 5, "inc{}.parquet")
    assert continual_training(str(seed), str(ws.root), QUICK).status == "promoted"
    rows = tmp_path / "rows.parquet"
    pd.concat(frames).drop(columns=["digit"]).sample(50, random_state=0).to_parquet(rows, index=False)

    from lepton.config import load

    registry = load(ws.root).registry
    stop, out = tmp_path / "stop", tmp_path / "loads.jsonl"
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, tracking_uri(ws, registry), registry.model_name, str(rows), str(stop), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        started = time.monotonic()
        outcomes = [continual_training(str(path), str(ws.root), QUICK) for path in files]
        promoting = time.monotonic() - started
        stop.touch()
        consumer.wait(timeout=120)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert [o.status for o in outcomes] == ["promoted"] * 5
    loads = [json.loads(line) for line in out.read_text().splitlines()]
    failures = [entry for entry in loads if not entry["ok"]]
    assert failures == [], failures[:3]
    state = registry_state(ws)
    assert_consistent(state)
    runs = set(_version_runs(ws))
    seen = {entry["run_id"] for entry in loads}
    assert seen <= runs
    print(f"\nconsumer: {len(loads)} loads, all predicted, {len(seen)} different champions seen, during {promoting:.1f}s of 5 promotions")
    assert len(loads) >= 5 and len(seen) >= 2


def _version_runs(ws) -> list[str]:
    from lepton.config import load
    from lepton.tasks.tracking import connect

    config = load(ws.root).registry
    client, _ = connect(ws, config)
    return [v.run_id for v in client.search_model_versions(f"name='{config.model_name}'")]


@pytest.fixture
def three_versions(clean_dir):
    """A registry with versions 1-3 of 'cas' (no artifacts needed to move an alias) and version 1 champion."""
    from lepton.config import load
    from lepton.tasks.promotion import move_champion
    from lepton.tasks.tracking import connect

    ws = make_workspace(clean_dir / "ws", "digit", "cas", DIGITS)
    config = load(ws.root).registry
    client, _ = connect(ws, config)
    client.create_registered_model("cas")
    for _ in range(3):
        client.create_model_version("cas", source=(clean_dir / "nothing").as_uri())
    move_champion(client, "cas", 1, kind="promote", reason="first")
    return ws, client


def test_compare_and_set_refuses_a_stale_parent(three_versions):
    """Promoting with the parent a candidate was trained from fails once another version took the alias; nothing is recorded."""
    from lepton.tasks.promotion import StaleChampion, move_champion
    from lepton.tasks.tracking import champion_history, champion_version

    _, client = three_versions
    assert move_champion(client, "cas", 2, kind="promote", reason="from 1", expected=1).from_version == 1
    with pytest.raises(StaleChampion, match="champion is version 2, not version 1"):
        move_champion(client, "cas", 3, kind="promote", reason="also from 1", expected=1)
    assert champion_version(client, "cas") == 2
    assert [(m.from_version, m.to_version) for m in champion_history(client, "cas")] == [(None, 1), (1, 2)]


def test_the_champion_lock_times_out_with_a_readable_message(three_versions):
    """A second holder of the champion lock waits, then gives up naming the lock and the setting to raise."""
    from lepton.workspace import WorkspaceBusy

    ws, _ = three_versions
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from lepton.workspace import Workspace; import time\nwith Workspace.at({str(ws.root)!r}).lock('champion'):\n    print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(WorkspaceBusy, match="'champion' lock .* LEPTON_LOCK_TIMEOUT_SECONDS"):
            with ws.lock("champion", timeout=1.0):
                pass
        assert 0.9 < time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    # The kernel freed the killed holder's lock: it is free at once.
    with ws.lock("champion", timeout=1.0):
        pass


def test_an_unfinished_promotion_is_finished_or_superseded(three_versions, clean_dir):
    """A re-run finds a passing version its earlier run never promoted: promoted if the champion is still its parent, else marked superseded."""
    from lepton.config import load
    from lepton.tasks.registry import finish_increment, version_for_increment
    from lepton.tasks.tracking import champion_history, champion_version

    ws, client = three_versions
    config = load(ws.root).registry
    source = (clean_dir / "nothing").as_uri()
    passed = {"lepton.gate_passed": "true", "lepton.gate_reasons": '["fine"]'}
    client.create_model_version("cas", source=source, tags={**passed, "lepton.increment_id": "fresh", "lepton.parent_version": "1"})  # version 4
    finished = finish_increment.fn(ws, config, "fresh")
    assert finished.version == 4 and finished.move.from_version == 1 and champion_version(client, "cas") == 4
    assert finish_increment.fn(ws, config, "fresh").move is None  # done: nothing moves twice
    client.create_model_version("cas", source=source, tags={**passed, "lepton.increment_id": "late", "lepton.parent_version": "1"})  # version 5
    assert finish_increment.fn(ws, config, "late") is None  # the champion is 4 now: train it again
    assert client.get_model_version("cas", "5").tags["lepton.superseded_by"] == "champion 4"
    assert version_for_increment.fn(ws, config, "late") is None
    assert [(m.from_version, m.to_version) for m in champion_history(client, "cas")] == [(None, 1), (1, 4)]
