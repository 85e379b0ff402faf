"""Bad increments: each gets a specific, readable reason (frame-level cases through the real GX suite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lepton.config import DataConfig
from models.schema import DataSchema
from tasks.validate import validate_frame

CONFIG = DataConfig(label="y")


def good(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(0, 10, size=n), "y": rng.integers(0, 2, size=n)})


SCHEMA = DataSchema.infer(good(200, seed=1), "y")


@pytest.mark.parametrize(
    ("name", "frame", "needle"),
    [
        ("missing column", good().drop(columns=["b"]), "missing column(s) 'b'"),
        ("extra column", good().assign(c=1.0), "unexpected column(s) 'c'"),
        ("wrong type", good().assign(b="x"), "column 'b' does not hold numbers"),
        ("nulls", good().assign(a=[np.nan] * 3 + [0.0] * 37), "column 'a' has 3 empty value(s)"),
        ("infinity", good().assign(a=[np.inf] + [0.0] * 39), "column 'a' has 1 infinite value(s)"),
        ("out of range", good().assign(b=1000.0), "column 'b' has 40 value(s) (100.0%) outside"),
        ("duplicates", pd.concat([good(), good().head(5)], ignore_index=True), "row(s) are repeated (duplicate rows)"),
        ("label type", good().assign(y="yes"), "column 'y' does not hold integer labels, as before"),
        ("too few rows", good(5), "5 rows, fewer than the 10 required"),
    ],
)
def test_each_bad_increment_names_its_problem(name, frame, needle):
    """A bad increment fails validation with a message that names what is wrong."""
    report = validate_frame(frame, SCHEMA, CONFIG)
    assert not report.passed, name
    # The cause alone: no second message that only follows from it (a range check on text, say).
    assert len(report.problems) == 1 and needle in report.problems[0], report.problems


def test_unseen_labels_rejected_when_the_config_says_so():
    """allow_new_classes=false: a label never seen before is named."""
    report = validate_frame(good().assign(y=7), SCHEMA, DataConfig(label="y", allow_new_classes=False))
    assert any("never seen before" in p and "7" in p for p in report.problems)


def test_holdout_must_not_be_empty():
    """An increment too small to split off a holdout is rejected with the fraction named."""
    config = DataConfig(label="y", min_rows=1, holdout_fraction=0.01)
    report = validate_frame(good(3), SCHEMA, config)
    assert not report.passed and "holdout_fraction=0.01" in report.problems[0]


def test_a_good_increment_passes():
    """The same shape of data as the schema passes every expectation."""
    report = validate_frame(good(), SCHEMA, CONFIG)
    assert report.passed, report.problems


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.csv", b"", "could not be read as CSV"),
        ("undecodable.csv", b"a,b,y\n\xff\xfe,1,0\n", "could not be read as CSV"),
        ("truncated.parquet", None, "could not be read as Parquet"),
    ],
)
def test_unreadable_files_are_quarantined(clean_dir, prefect_api, name, content, needle):
    """Zero bytes, undecodable bytes, a truncated Parquet file: exit 2, the reason, and the bytes kept in quarantine."""
    from tests.conftest import make_workspace, run_cli

    ws = make_workspace(clean_dir / "ws", "y", "bad")
    path = clean_dir / name
    if content is None:
        good().to_parquet(path, index=False)
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    result = run_cli(["run", str(path), "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stdout.strip().splitlines()[-1]
    kept = [p for p in (ws.root / "data" / "quarantine").iterdir() if not p.name.endswith(".reasons.json")]
    assert len(kept) == 1 and kept[0].read_bytes() == content


@pytest.mark.integration
def test_unsupported_format_is_quarantined(clean_dir, prefect_api):
    """A file that is neither CSV nor Parquet: exit 2, the format named, and its bytes kept in quarantine."""
    from tests.conftest import make_workspace, run_cli

    ws = make_workspace(clean_dir / "ws", "y", "bad")
    path = clean_dir / "notes.txt"
    path.write_bytes(b"a,b,y\n1,2,0\n")
    result = run_cli(["run", str(path), "--workspace", str(ws.root)], api_url=prefect_api)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "rejected because unsupported format .txt; use .csv or .parquet" in result.stdout.strip().splitlines()[-1]
    kept = [p for p in (ws.root / "data" / "quarantine").iterdir() if not p.name.endswith(".reasons.json")]
    assert len(kept) == 1 and kept[0].read_bytes() == path.read_bytes()
