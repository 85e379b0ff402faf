"""Inputs chosen to break things (issue 13): poison first increments, repeated column names, markup in names, garbage sent to `lepton serve`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton.config import DataConfig
from lepton.models.schema import DataSchema
from lepton.tasks.ingest import read_increment
from lepton.validation import validate_frame
from tests.conftest import FAST, LEPTON, free_port, invoke, make_workspace, run_cli, start_process, stop_process, wait_for_http

HOSTILE = "<script>alert(1)</script>"


def rows(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two float features, a count, and a label that follows the floats."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.uniform(0, 10, size=n)
    return pd.DataFrame({"a": a, "b": b, "n": rng.integers(0, 5, size=n), "y": (a + (b - 5) / 3 > 0).astype(int)})


def strict_json(text: str):
    """JSON as the standard defines it: NaN and Infinity are not values."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# 8. Repeated column names


def test_a_repeated_csv_header_is_rejected_with_its_names(tmp_path):
    """`x0,x0,x1,x2,label`: pandas reads x0 and x0.1; validation names x0, read from the header as written."""
    path = tmp_path / "dup.csv"
    path.write_text("x0,x0,x1,x2,label\n" + "".join(f"{i},{i * 2},{i % 3},{i % 5},{i % 2}\n" for i in range(40)))
    frame = read_increment(path)
    assert list(frame.columns) == ["x0", "x0.1", "x1", "x2", "label"]  # what pandas makes of it
    report = validate_frame(frame, None, DataConfig(label="label"))
    assert not report.passed
    assert report.problems == ["duplicate column name(s) 'x0' (2 columns): each column needs a name of its own; rename them in the export"]
    # A header that really says x0.1 is a name of its own.
    path.write_text("x0,x0.1,x1,label\n" + "".join(f"{i},{i * 2},{i % 3},{i % 2}\n" for i in range(40)))
    assert validate_frame(read_increment(path), None, DataConfig(label="label")).passed


def test_a_repeated_parquet_column_is_named_not_an_arrow_error(tmp_path):
    """Arrow can write two fields of one name but not read them back: the message says which name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([list(range(20)), list(range(20)), [i % 2 for i in range(20)]], names=["x0", "x0", "y"]), path)
    with pytest.raises(ValueError, match=r"^duplicate column name\(s\) 'x0' \(2 columns\)"):
        read_increment(path)
    # A frame built in memory with two columns of one name (a deployment's caller, say) is refused too.
    frame = pd.DataFrame(np.ones((20, 3)), columns=["x0", "x0", "y"])
    assert validate_frame(frame, None, DataConfig(label="y")).problems[0].startswith("duplicate column name(s) 'x0' (2 columns)")


# 9. Markup in the Data Docs page


def test_data_docs_pages_are_rendered_for_rejections_unless_configured(tmp_path):
    """data.data_docs: rejected (the default) renders the page of a rejection only; always, of every validation; never, of none."""
    rng = np.random.default_rng(4)
    clean = pd.DataFrame({"a": rng.normal(size=40), "y": rng.integers(0, 2, 40)})
    broken = clean.assign(a=np.where(np.arange(40) == 0, 1e300, clean["a"]))
    assert validate_frame(clean, None, DataConfig(label="y"), data_docs=tmp_path, run_name="clean").data_docs is None
    page = validate_frame(clean, None, DataConfig(label="y", data_docs="always"), data_docs=tmp_path, run_name="asked").data_docs
    assert page is not None and Path(page).is_file()
    rejected = validate_frame(broken, None, DataConfig(label="y"), data_docs=tmp_path, run_name="broken")
    assert not rejected.passed and Path(rejected.data_docs).is_file()
    assert validate_frame(broken, None, DataConfig(label="y", data_docs="never"), data_docs=tmp_path, run_name="quiet").data_docs is None


def test_data_docs_page_holds_no_markup_from_the_data(tmp_path):
    """A column named <script>…, and labels that are <img …> tags: the GX page shows them as inert text; messages keep the real names."""
    rng = np.random.default_rng(3)
    first = pd.DataFrame({HOSTILE: rng.normal(size=40), "b": rng.normal(size=40), "y": rng.integers(0, 2, 40)})
    first.loc[0, HOSTILE] = 1e300
    report = validate_frame(first, None, DataConfig(label="y"), data_docs=tmp_path, run_name="first")
    assert not report.passed and report.problems[0].startswith(f"column {HOSTILE!r} has 1 value(s) orders of magnitude")
    page = Path(report.data_docs).read_text()
    assert "<script>alert" not in page
    assert "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e" in page  # still legible, as look-alike characters

    seen = pd.DataFrame({"a": rng.normal(size=40), "y": rng.integers(0, 2, 40)})
    tag = '<img src=x onerror="alert(2)">'
    later = seen.assign(y=[tag] * 40)
    report = validate_frame(later, DataSchema.infer(seen, "y"), DataConfig(label="y", allow_new_classes=False), data_docs=tmp_path, run_name="later")
    assert tag in report.problems[0]
    page = Path(report.data_docs).read_text()
    assert "<img src=x" not in page and "\uff1cimg src=x onerror=\uff02alert(2)\uff02\uff1e" in page


# 5 and 8 through the real flow


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "write", "needle"),
    [
        ("poison cell", lambda p: rows().assign(a=[1e308] + [0.5] * 59).to_csv(p, index=False), "column 'a' has 1 value(s) orders of magnitude beyond its range"),
        ("one class", lambda p: rows().assign(y=1).to_csv(p, index=False), "label column 'y' holds a single class (1): a first increment needs at least two classes"),
        ("repeated header", lambda p: p.write_text("a,a,b,n,y\n" + rows().assign(c=1.0)[["a", "c", "b", "n", "y"]].to_csv(index=False, header=False)), "duplicate column name(s) 'a' (2 columns)"),
    ],
)
def test_a_first_increment_that_cannot_train_is_rejected_by_the_flow_every_time(clean_dir, prefect_api, name, write, needle):
    """`lepton run`: exit 2 with the reason, no schema written, and the same file again is validated again and rejected again."""
    ws = make_workspace(clean_dir / "ws", "y", "m")
    path = clean_dir / "first.csv"
    write(path)
    for attempt in (1, 2):
        result = run_cli(["run", str(path), "--workspace", str(ws.root), *[f"--set={s}" for s in FAST]], api_url=prefect_api)
        assert result.returncode == 2, (name, attempt, result.stdout[-2000:], result.stderr[-2000:])
        last = result.stdout.strip().splitlines()[-1]
        assert last.startswith("rejected because ") and needle in last, last
        assert not ws.schema_path.exists(), "a rejected first increment must not define the schema"
    assert "validating it again under the current configuration" in result.stdout
    (record,) = ws.read_manifest().increments
    assert record.state == "rejected" and [a.verdict for a in record.attempts] == ["rejected", "rejected"]
    assert not list((ws.root / "data" / "increments").glob("*.csv"))
    if name == "poison cell":
        # The poison never reached the schema: a clean first increment sets ranges from its own values.
        clean = clean_dir / "clean.csv"
        rows(seed=1).to_csv(clean, index=False)
        result = run_cli(["run", str(clean), "--workspace", str(ws.root), *[f"--set={s}" for s in FAST]], api_url=prefect_api)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        low, high = DataSchema.from_dict(ws.read_schema()).ranges["a"]
        assert -10 < low < high < 10


# 7. `lepton serve` on inputs the model cannot score


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_api):
    """A champion trained on ``rows()`` behind `lepton serve`; yields a function that POSTs a body and returns (status, text)."""
    from lepton.flows.continual import continual_training

    base = tmp_path_factory.mktemp("serve")
    ws = make_workspace(base / "ws", "y", "m")
    first = base / "first.parquet"
    rows(200).to_parquet(first, index=False)
    assert continual_training(str(first), str(ws.root), FAST).status == "promoted"
    port = free_port()
    log = base / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    server = start_process([LEPTON, "serve", "--port", str(port), "--workspace", str(ws.root)], log=log, env=env)

    def post(body: bytes | dict, content_type: str = "application/json") -> tuple[int, str]:
        return invoke(port, body if isinstance(body, bytes) else json.dumps(body).encode(), content_type)

    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, timeout=180)
        yield post
    finally:
        stop_process(server)


def split(data: list[list]) -> dict:
    return {"dataframe_split": {"columns": ["a", "b", "n"], "data": data}}


@pytest.mark.integration
def test_serve_reads_a_csv_request(served):
    """A CSV body as a consumer's export writes it: whole numbers in a float column, an empty cell. The model's
    signature declares no input types, which MLflow's server would read the CSV by (and fails to for any-type columns)."""
    status, text = served(b"a,b,n\n1,2,3\n0.5,,1\n", "text/csv")
    assert status == 200, text
    assert len(strict_json(text)["predictions"]) == 2


@pytest.mark.integration
def test_serve_predicts_through_missing_values(served):
    """Null features are imputed: a real label and probabilities that sum to one, as valid JSON."""
    status, text = served(split([[None, None, None], [2.0, 9.0, 1], [None, 9.0, None]]))
    assert status == 200, text
    labels = strict_json(text)["predictions"]
    assert len(labels) == 3 and set(labels) <= {0, 1} and labels[1] == 1
    status, text = served({**split([[None, None, None], [2.0, None, 3]]), "params": {"probabilities": True}})
    assert status == 200, text
    probabilities = strict_json(text)["predictions"]
    assert [set(p) for p in probabilities] == [{"0", "1"}] * 2
    assert all(sum(p.values()) == pytest.approx(1.0, abs=1e-5) for p in probabilities)


@pytest.mark.integration
def test_serve_reads_numbers_and_gaps_as_a_csv_export_writes_them(served):
    """The rows of an export as the consumer's own reader left them: '?' and 'n/a' where training read a missing value,
    '7,300' beside a number, '151,2' and '1.819,4' from a European spreadsheet. They were refused as text, and '7,300'
    counted as "not a number" beside the '?'. Each answers as the same row written as numbers does."""
    written = split([["?", "4,5", "1"], [" n/a ", "2", 3], ["0,25", "1.819,4", "?"], [1, "7,300", 2]])
    plain = split([[None, 4.5, 1], [None, 2.0, 3], [0.25, 1819.4, None], [1.0, 7300.0, 2]])
    answers = []
    for body in (written, plain, {**written, "params": {"probabilities": True}}, {**plain, "params": {"probabilities": True}}):
        status, text = served(body)
        assert status == 200, text
        answers.append(strict_json(text)["predictions"])
    assert answers[0] == answers[1]
    assert [pytest.approx(p, abs=1e-4) for p in answers[3]] == answers[2]  # float32 sums in another order


def test_a_consumer_may_pass_one_row_as_a_dict_or_a_series():
    """model.predict({"island": "Biscoe", ...}) raised pandas' 'If using all scalar values, you must pass an index', and a
    Series row was refused for missing every column. Both are one row; a list of dicts is rows; a repeated column is named."""
    from mlflow.exceptions import MlflowException

    from lepton.serving import as_frame

    row = {"a": 1.0, "plan": "pro", "n": None}
    assert as_frame(row).to_dict("records") == [row]
    assert as_frame(pd.Series(row)).to_dict("records") == [row]
    assert len(as_frame([row, row])) == 2 and len(as_frame({"a": [1.0, 2.0], "n": [1, 2]})) == 2
    with pytest.raises(MlflowException, match=r"column\(s\) 'a' given more than once"):
        as_frame(pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]))


@pytest.mark.integration
def test_serve_takes_one_row_as_a_dict_of_values(served):
    """{"inputs": {"a": 1.0, ...}}, one value per column: one row. It was a 400 whose body held a Python stack trace."""
    status, text = served({"inputs": {"a": 2.0, "b": 9.0, "n": 1}})
    assert status == 200, text
    assert strict_json(text)["predictions"] == strict_json(served(split([[2.0, 9.0, 1]]))[1])["predictions"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (split([[1e308, -1e308, 1]]), "row(s) 0 hold values too large for the model to score"),
        ({**split([[1.0, 2.0, 1], [1e308, 1e308, 1]]), "params": {"probabilities": True}}, "row(s) 1 hold values too large for the model to score"),
        (b'{"dataframe_split": {"columns": ["a", "b", "n"], "data": [[Infinity, 1.0, 1]]}, "params": {"probabilities": true}}', "column 'a' holds 1 infinite value(s)"),
        # The count's signature takes any value (MLflow refuses NaN for integers), so the model reads it itself.
        (split([[1.0, 2.0, "abc"]]), "column 'n' holds 1 value(s) that are not numbers (e.g. 'abc'); send null for a missing value"),
        ({"dataframe_split": {"columns": ["a", "a", "b", "n"], "data": [[1.0, 2.0, 3.0, 1]]}}, "column(s) 'a' given more than once"),
    ],
)
def test_serve_refuses_what_the_model_cannot_score(served, body, needle):
    """Overflowing values, infinities, text where numbers go: 400 with the reason, never 200 with NaN or a made-up label."""
    status, text = served(body)
    assert 400 <= status < 500, (status, text)
    answer = strict_json(text)
    assert needle in answer["message"], answer["message"]


def test_a_moved_or_copied_workspace_keeps_working_in_its_own_folder(tmp_path, prefect_api):
    """MLflow's store records artifact locations as absolute paths: a moved workspace failed every run ('No such file or
    directory' under the old path) and a copy registered its models into the original's folder. The next command points
    the store at the workspace's own .lepton/mlartifacts, and says so."""
    import shutil

    import mlflow.pyfunc

    from lepton.config import load
    from lepton.flows.continual import continual_training
    from lepton.tasks.tracking import connect

    original = make_workspace(tmp_path / "original", "y", "moving")
    for i in (1, 2):
        rows(200, i).to_parquet(tmp_path / f"day{i}.parquet", index=False)
    assert continual_training(str(tmp_path / "day1.parquet"), str(original.root), FAST).status == "promoted"
    before = sorted(p for p in original.mlflow_artifacts.rglob("*") if p.is_file())
    shutil.copytree(original.root, tmp_path / "copy", symlinks=True)
    shutil.move(original.root, tmp_path / "moved")
    for folder in ("copy", "moved"):
        ws = type(original).at(tmp_path / folder)
        outcome = continual_training(str(tmp_path / "day2.parquet"), str(ws.root), FAST)
        assert outcome.status in ("promoted", "kept_out") and outcome.version == 2, outcome.message
        client, _ = connect(ws, load(ws.root).registry)
        model = mlflow.pyfunc.load_model(f"models:/moving/{outcome.version}")
        assert len(np.asarray(model.predict(rows(5, 9).drop(columns=["y"])))) == 5
        assert client.get_experiment_by_name(load(ws.root).registry.experiment).artifact_location == ws.mlflow_artifacts.as_uri()
    # The copy wrote nothing into the folder it came from (which now lives at moved/).
    moved = type(original).at(tmp_path / "moved")
    written = sorted(p.relative_to(moved.root) for p in moved.mlflow_artifacts.rglob("*") if p.is_file())
    copied = sorted(p.relative_to(tmp_path / "copy") for p in type(original).at(tmp_path / "copy").mlflow_artifacts.rglob("*") if p.is_file())
    assert len(before) < len(written) and set(written).isdisjoint(set(copied) - {p.relative_to(original.root) for p in before})


def test_a_registry_that_lost_its_versions_is_said(tmp_path, prefect_api):
    """.lepton/mlflow.db deleted: status said 'no champion yet' and the next run quietly started over at version 1. Both
    now warn that runs registered accepted increments there, and say what to restore."""
    from lepton.flows.continual import continual_training

    ws = make_workspace(tmp_path / "ws", "y", "lost")
    for i in (1, 2):
        rows(200, i).to_parquet(tmp_path / f"day{i}.parquet", index=False)
    assert continual_training(str(tmp_path / "day1.parquet"), str(ws.root), FAST).status == "promoted"
    ws.mlflow_db.unlink()
    shown = run_cli(["status", "--workspace", str(ws.root), "--json"], api_url=prefect_api)
    assert shown.returncode == 0, shown.stderr
    warning = json.loads(shown.stdout)["warning"]
    assert warning.startswith("the registry holds no version of 'lost', though runs registered 1 accepted increment(s) there"), warning
    run = run_cli(["run", str(tmp_path / "day2.parquet"), "--workspace", str(ws.root)], api_url=prefect_api)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "the registry holds no version of 'lost'" in (ws.state / "logs" / "lepton.log").read_text()
