"""Real servers: the flow against `mlflow server` on PostgreSQL, a consumer over HTTP, and `lepton serve`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LEPTON, free_port, make_workspace, start_process, stop_process, wait_for_http

pytestmark = pytest.mark.integration

DIGITS = {"data": {"bounds": {"*": [0, 16]}}}
QUICK = ["train.epochs=5", "train.hidden=[64]", "gate.bootstrap_samples=200", "gate.max_forgetting=1.0", "strategy.name=replay"]
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def postgres_binaries() -> Path | None:
    """Debian's PostgreSQL server binaries (initdb, postgres), newest version first."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a loopback port; yields the URL of an empty ``mlflow`` database."""
    import psycopg2

    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs Debian's postgresql)")
    # PostgreSQL refuses to run as root: run it as the postgres user the Debian package creates.
    user = "postgres" if os.geteuid() == 0 else None
    # Under /tmp, not pytest's tmp dir: that one is private to root, and postgres must reach its data.
    base = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
    if user:
        shutil.chown(base, user, user)
    data = base / "data"
    subprocess.run(
        [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True, user=user, group=user, extra_groups=[] if user else None,
    )
    port = free_port()
    log = base / "postgres.log"
    server = start_process(
        [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
         "-c", f"unix_socket_directories={base}", "-c", "fsync=off"],
        log=log, user=user,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"PostgreSQL did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        stop_process(server, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store with a local artifact destination; yields its URL."""
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = base / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = start_process(
        [MLFLOW, "server", "--backend-store-uri", postgres, "--artifacts-destination", str(base / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        log=log, env=env,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, log, timeout=180)
        yield {"url": f"http://127.0.0.1:{port}", "artifacts": base / "artifacts", "store": postgres}
    finally:
        stop_process(server)


def holdout(files: list[Path]) -> pd.DataFrame:
    from lepton.models.splits import split

    return pd.concat([split(pd.read_parquet(f), 0.2)[1] for f in files], ignore_index=True)


def test_flow_against_mlflow_server_on_postgres(mlflow_server, increments, clean_dir, prefect_api, monkeypatch):
    """MLFLOW_TRACKING_URI switches the flow to a tracking server on PostgreSQL; a consumer loads the champion over HTTP."""
    import psycopg2

    from lepton.config import load
    from lepton.flows.continual import continual_training
    from lepton.tasks.tracking import history

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    outcomes = [continual_training(str(path), str(ws.root), QUICK) for path in increments]
    assert [o.status for o in outcomes] == ["promoted", "promoted"]
    assert not ws.mlflow_db.exists()  # nothing went to the embedded store
    assert any(mlflow_server["artifacts"].rglob("MLmodel"))  # the server stored the models

    moves = history(ws, load(ws.root).registry)
    assert [(m.from_version, m.to_version) for m in moves] == [(None, 1), (1, 2)]
    # The history is rows of PostgreSQL's registry, not something beside it.
    with psycopg2.connect(mlflow_server["store"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT key FROM registered_model_tags WHERE name = 'digits' AND key LIKE 'lepton.history.%%' ORDER BY key")
        assert [row[0] for row in cursor.fetchall()] == [m.tag()[0] for m in moves]

    # A consumer in a process of its own, knowing only the server's URL.
    rows = holdout(increments)
    rows_path = clean_dir / "rows.parquet"
    rows.to_parquet(rows_path, index=False)
    consumer = (
        "import json, sys, mlflow.pyfunc, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/digits@champion')\n"
        "frame = pd.read_parquet(sys.argv[1]).drop(columns=['digit'])\n"
        "print(json.dumps([int(v) for v in model.predict(frame)]))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"]}
    result = subprocess.run([sys.executable, "-c", consumer, str(rows_path)], cwd=clean_dir, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert set(predicted.tolist()) <= {0, 1, 2, 3}
    newest = rows["digit"].isin([2, 3]).to_numpy()
    assert (predicted[newest] == rows["digit"].to_numpy()[newest]).mean() > 0.9
    assert (predicted == rows["digit"].to_numpy()).mean() > 0.6


def test_lepton_serve_answers_invocations(increments, clean_dir, prefect_api):
    """`lepton serve` puts the champion behind MLflow's scoring server on 127.0.0.1: raw columns in, labels out."""
    from lepton.flows.continual import continual_training

    ws = make_workspace(clean_dir / "ws", "digit", "digits", DIGITS)
    assert continual_training(str(increments[0]), str(ws.root), QUICK).status == "promoted"
    port = free_port()
    log = clean_dir / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    server = start_process([LEPTON, "serve", "--port", str(port), "--workspace", str(ws.root)], log=log, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, timeout=180)
        rows = holdout(increments[:1])
        raw = rows.drop(columns=["digit"])

        def invoke(payload: dict) -> list:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["predictions"]

        split = {"columns": list(raw.columns), "data": raw.to_numpy().tolist()}
        labels = np.array(invoke({"dataframe_split": split}))
        assert set(labels.tolist()) <= {0, 1}
        assert (labels == rows["digit"].to_numpy()).mean() > 0.9
        probabilities = invoke({"dataframe_split": {**split, "data": split["data"][:3]}, "params": {"probabilities": True}})
        assert len(probabilities) == 3 and set(probabilities[0]) == {"0", "1"}
        assert sum(probabilities[0].values()) == pytest.approx(1.0, abs=1e-5)
        assert f"serving digits version 1 (champion) on http://127.0.0.1:{port}/invocations" in log.read_text()
    finally:
        stop_process(server)
    assert server.returncode is not None
