"""Crash safety: a real ``lepton run`` SIGKILLed at each step, then run again, converges to one clean end state.

One workspace, four increments; increment n is killed at the n-th fault point (lepton/faults.py)
and then sent again with a plain ``lepton run``. After each re-run the workspace must look as
if the run had never been interrupted: one model version for the increment, promoted from the
previous champion, the history a chain with no gap and no repeat, the increment recorded once,
``data.dvc`` pointing at the data that is on disk, and the champion loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton.faults import POINTS, VARIABLE
from tests.conftest import LEPTON, make_workspace, run_cli, write_increments

pytestmark = pytest.mark.integration

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}
# Small and fast, and every candidate passes: these tests are about what a crash leaves, not the gate.
QUICK = ["train.epochs=2", "train.hidden=[32]", "gate.bootstrap_samples=100", "gate.max_forgetting=1.0", "gate.min_accuracy=0.0", "strategy.name=replay"]


def run(path, ws, api_url, kill_at: str | None = None):
    """``lepton run`` of one file, SIGKILLed at ``kill_at`` when given."""
    sets = [arg for pair in QUICK for arg in ("--set", pair)]
    env_before = os.environ.pop(VARIABLE, None)
    try:
        if kill_at:
            os.environ[VARIABLE] = kill_at
        return run_cli(["run", str(path), "--workspace", str(ws.root), *sets], api_url=api_url)
    finally:
        os.environ.pop(VARIABLE, None)
        if env_before is not None:
            os.environ[VARIABLE] = env_before


def registry_state(ws) -> dict:
    """What the registry says: versions by increment, the champion, its history, and each version's parent."""
    from lepton.config import load
    from lepton.tasks.tracking import champion_history, champion_version, connect

    config = load(ws.root).registry
    client, _ = connect(ws, config)
    versions = client.search_model_versions(f"name='{config.model_name}'")
    by_increment: dict[str, list[int]] = {}
    parents = {}
    for v in versions:
        by_increment.setdefault(v.tags.get("lepton.increment_id", "?"), []).append(int(v.version))
        parents[int(v.version)] = v.tags.get("lepton.parent_version")
    runs = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    return {
        "by_increment": {k: sorted(v) for k, v in by_increment.items()},
        "parents": parents,
        "champion": champion_version(client, config.model_name),
        "history": [(m.from_version, m.to_version) for m in champion_history(client, config.model_name)],
        "running": [r.info.run_id for r in runs if r.info.status == "RUNNING"],
    }


@pytest.fixture(scope="module")
def crashes(tmp_path_factory, prefect_api):
    """For each fault point: an increment killed there, the state it left, and the state after a plain re-run."""
    root = tmp_path_factory.mktemp("crash-ws")
    ws = make_workspace(root, "digit", "digits", DIGITS)
    files = write_increments(tmp_path_factory.mktemp("crash-landing"), len(POINTS), "inc{}.parquet")
    steps = {}
    for point, path in zip(POINTS, files, strict=True):
        before = registry_state(ws)
        killed = run(path, ws, prefect_api, kill_at=point)
        left = {"registry": registry_state(ws), "manifest": ws.read_manifest().model_dump(), "data": sorted(str(p.relative_to(ws.root)) for p in ws.data.rglob("*"))}
        rerun = run(path, ws, prefect_api)
        after = registry_state(ws)
        steps[point] = {"path": path, "before": before, "killed": killed, "left": left, "rerun": rerun, "after": after, "manifest": ws.read_manifest()}
    # And once more, in process: a plain duplicate now.
    from lepton.flows.continual import continual_training

    again = continual_training(str(files[-1]), str(ws.root), QUICK)
    yield {"ws": ws, "steps": steps, "files": files, "again": again}
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_there_converges_when_run_again(crashes, point):
    """SIGKILL at the point, then `lepton run` of the same file: exit 0, one version for the increment, promoted from the champion before."""
    from lepton.tasks.ingest import content_id

    step = crashes["steps"][point]
    assert step["killed"].returncode == -signal.SIGKILL, f"the run was not killed at {point}: {step['killed'].stdout[-2000:]}{step['killed'].stderr[-2000:]}"
    assert step["rerun"].returncode == 0, step["rerun"].stdout[-3000:] + step["rerun"].stderr[-3000:]
    increment = content_id(step["path"])
    before, after = step["before"], step["after"]
    versions = after["by_increment"].get(increment, [])
    assert len(versions) == 1, f"versions for the increment after a kill at {point}: {versions}"
    version = versions[0]
    assert after["champion"] == version
    assert after["parents"][version] == (str(before["champion"]) if before["champion"] else "none")
    # The history gained exactly this move, and still reads as a chain.
    assert after["history"] == [*before["history"], (before["champion"], version)]
    # Where the killed run had registered the version, the re-run only moved the champion: its summary says why it has no report.
    finished = "none: the run that trained this version stopped before writing it; this one moved the champion" in " ".join(step["rerun"].stdout.split())
    assert finished == (point in ("register", "promote")), step["rerun"].stdout[-3000:]
    assert after["running"] == []
    records = [r for r in step["manifest"].increments if r.id == increment]
    assert [r.state for r in records] == ["accepted"]


@pytest.mark.parametrize("point", POINTS)
def test_each_kill_left_the_state_its_point_names(crashes, point):
    """The kills are where they say: what each left behind, before the re-run cleaned it up."""
    from lepton.tasks.ingest import content_id

    step = crashes["steps"][point]
    increment = content_id(step["path"])
    left, before = step["left"]["registry"], step["before"]
    states = {r["id"]: r["state"] for r in step["left"]["manifest"]["increments"]}
    versions = left["by_increment"].get(increment, [])
    assert left["champion"] == before["champion"]  # no kill moved the champion
    if point == "ingest":
        assert increment not in states and not any(increment in name for name in step["left"]["data"])
    elif point == "train":
        assert states[increment] == "accepted" and versions == []
    elif point == "register":
        assert len(versions) == 1 and left["history"] == before["history"] and len(left["running"]) == 1
    else:  # promote: the move is recorded, the alias has not followed
        assert len(versions) == 1 and left["history"] == [*before["history"], (before["champion"], versions[0])]


def test_history_is_a_chain_and_every_increment_recorded_once(crashes):
    """After all four crashes: each move starts where the previous one ended, one record and one version per increment."""
    from lepton.tasks.ingest import content_id

    last = crashes["steps"][POINTS[-1]]["after"]
    history = last["history"]
    assert history[0][0] is None
    assert all(prev[1] == nxt[0] for prev, nxt in zip(history, history[1:]))
    assert len(history) == len(POINTS) == len({to for _, to in history})
    ids = [content_id(p) for p in crashes["files"]]
    manifest = crashes["steps"][POINTS[-1]]["manifest"]
    assert [r.id for r in manifest.increments] == ids
    assert all(len(last["by_increment"][i]) == 1 for i in ids)
    # A third send of the last file is a plain duplicate: nothing added.
    assert crashes["again"].status == "duplicate"
    assert registry_state(crashes["ws"])["by_increment"] == last["by_increment"]


def test_data_version_matches_the_data_on_disk(crashes):
    """data.dvc points at exactly what is in data/ (no half-copied or leftover file), and the champion was trained at it."""
    from lepton.config import load
    from lepton.tasks.tracking import connect
    from lepton.tasks.versioning import current_hash

    ws = crashes["ws"]
    result = run_cli(["status", "--json", "--workspace", str(ws.root)], api_url=None)
    assert result.returncode == 0, result.stderr

    dvc = str(Path(LEPTON).parent / "dvc")
    status = subprocess.run([dvc, "status", "--json", "data.dvc"], cwd=ws.root, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    stray = [p.name for p in ws.data.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix in {".tmp", ".partial"})]
    assert stray == []
    config = load(ws.root).registry
    client, _ = connect(ws, config)
    champion = crashes["steps"][POINTS[-1]]["after"]["champion"]
    assert client.get_model_version(config.model_name, str(champion)).tags["lepton.data_hash"] == current_hash(ws)


def test_the_champion_loads_and_predicts(crashes):
    """models:/NAME@champion after the crashes is a whole model: it loads and predicts the classes it was taught."""
    import mlflow.pyfunc

    from lepton.config import load
    from lepton.tasks.tracking import connect

    ws = crashes["ws"]
    connect(ws, load(ws.root).registry)
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    frame = pd.concat([pd.read_parquet(p) for p in crashes["files"]])
    predicted = np.asarray(model.predict(frame.drop(columns=["digit"]).head(200)))
    assert len(predicted) == 200 and set(predicted.tolist()) <= set(frame["digit"].unique().tolist())


def test_a_move_recorded_but_never_applied_is_dropped_by_the_next_one(clean_dir):
    """The history records a move whose run died before the alias moved; the next move from the same champion replaces it."""
    from lepton.config import load
    from lepton.history import new_move
    from lepton.tasks.promotion import move_champion
    from lepton.tasks.tracking import champion_history, connect

    ws = make_workspace(clean_dir / "ws", "digit", "dangling", DIGITS)
    client, _ = connect(ws, load(ws.root).registry)
    client.create_registered_model("dangling")
    for _ in range(3):
        client.create_model_version("dangling", source=(clean_dir / "nothing").as_uri())
    move_champion(client, "dangling", 1, kind="promote", reason="first")
    # What a run killed at the 'promote' point leaves: the record 1 -> 2, the alias still on 1.
    dangling = new_move(champion_history(client, "dangling"), alias="champion", kind="promote", from_version=1, to_version=2, reason="died")
    client.set_registered_model_tag("dangling", *dangling.tag())
    move_champion(client, "dangling", 3, kind="promote", reason="next", expected=1)
    assert [(m.seq, m.from_version, m.to_version) for m in champion_history(client, "dangling")] == [(1, None, 1), (2, 1, 3)]


def test_dvc_recovers_from_a_killed_dvc(clean_dir):
    """A DVC process SIGKILLed while holding the repo lock, and an rwlock file cut off mid-write: the next data version works."""
    from lepton.config import load
    from lepton.tasks.versioning import clear_broken_lock, version

    ws = make_workspace(clean_dir / "ws", "digit", "dvc", DIGITS)
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys\nfrom dvc.repo import Repo\nrepo = Repo(sys.argv[1])\nrepo.lock.lock()\nos.kill(os.getpid(), signal.SIGKILL)", str(ws.root)],
        capture_output=True, text=True, check=False,
    )
    assert holder.returncode == -signal.SIGKILL
    assert (ws.root / ".dvc" / "tmp" / "lock").exists()  # left behind, but its fcntl lock died with the process
    rwlock = ws.root / ".dvc" / "tmp" / "rwlock"
    rwlock.write_text('{"read": {}, "wri')
    (ws.data / "extra.txt").write_text("one more file\n")
    digest = version(ws, load(ws.root).dvc)
    from lepton.tasks.versioning import current_hash

    assert digest.endswith(".dir") and current_hash(ws) == digest
    assert clear_broken_lock(ws) is False  # DVC left a whole rwlock file behind it this time


@pytest.mark.parametrize("point", ["train", "promote"])
def test_an_increment_whose_run_stopped_is_learnt_once_when_the_next_file_runs_first(tmp_path, prefect_api, point):
    """The run of inc2 is killed (while training, or before the champion moved to its version); inc3 runs next and its
    candidate learns inc2 with its own. Running inc2 again said 'resuming at training' and trained it a second time (a
    third version for two increments): now it says the champion learnt it since, and does nothing (exit 0)."""
    ws = make_workspace(tmp_path / "ws", "digit", "digits", DIGITS)
    (tmp_path / "landing").mkdir()
    files = write_increments(tmp_path / "landing", 3, "inc{}.parquet")
    assert run(files[0], ws, prefect_api).returncode == 0
    assert run(files[1], ws, prefect_api, kill_at=point).returncode == -signal.SIGKILL
    after_next = run(files[2], ws, prefect_api)
    assert after_next.returncode == 0, after_next.stdout[-2000:] + after_next.stderr[-2000:]
    state = registry_state(ws)
    again = run(files[1], ws, prefect_api)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    last = again.stdout.strip().splitlines()[-1]
    assert "its run stopped before a version of its own was promoted; version " in last and last.endswith("nothing to do"), last
    assert registry_state(ws)["by_increment"] == state["by_increment"]  # nothing trained or registered again
