"""The validation prepared aside: a forked child imports Great Expectations while the command imports the pipeline,
then validates the increment exactly as the flow's own process would, or leaves it to that process."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton import validation_aside
from lepton.config import DataConfig
from lepton.models.schema import DataSchema
from lepton.validation import validate_frame

CONFIG = DataConfig(label="species")


def table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, a text column and a text label: what a real export brings."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "bill": rng.normal(40, 5, n), "mass": rng.integers(3000, 6000, n).astype(float),
        "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n), "species": rng.choice(["Adelie", "Gentoo"], n),
    })
    frame.loc[::9, "bill"] = np.nan
    return frame


@pytest.fixture
def forkable(monkeypatch):
    """A process that has not forked yet. This test session has imported GX already, where a command that forks has
    not: the check only saves a fork, and the child imports GX either way."""
    if not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("forks on Linux with two cores or more")
    monkeypatch.setattr(validation_aside, "why_not", lambda: None)
    monkeypatch.setattr(validation_aside, "_forked", False)
    yield
    validation_aside.discard()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def told(said: list[str]) -> str:
    return said[-1]


@pytest.mark.parametrize(
    ("name", "frame", "schema"),
    [
        ("first increment", table(), None),
        ("later increment", table(seed=1), DataSchema.infer(table(), "species")),
        ("unit error", table(seed=2).assign(mass=lambda f: f["mass"].where(f.index != 5, 4e9)), DataSchema.infer(table(), "species")),
        ("text where numbers were", table(seed=3).assign(bill="n/a"), DataSchema.infer(table(), "species")),
        ("nullable and categorical dtypes", table(seed=4).astype({"mass": "Int64", "island": "category", "species": "string"}), None),
    ],
)
def test_the_child_validates_as_this_process_would(forkable, name, frame, schema):
    assert validation_aside.prepare()
    report, said = validation_aside.validate(frame, schema, CONFIG, None, name)
    assert report == validate_frame(frame, schema, CONFIG, None, name), name
    assert told(said).startswith("validated in process "), said
    if name in ("unit error", "text where numbers were"):
        assert not report.passed and report.problems


def test_a_rejection_s_data_docs_page_is_written_by_the_child(forkable, tmp_path):
    """The page a rejection renders (data.data_docs=rejected) is the child's to write, where this process would."""
    bad = table(seed=5).assign(mass=lambda f: f["mass"].where(f.index != 3, 4e9))
    schema = DataSchema.infer(table(), "species")
    assert validation_aside.prepare()
    report, _ = validation_aside.validate(bad, schema, CONFIG, tmp_path / "child", "rejected")
    assert not report.passed and report.data_docs and Path(report.data_docs).is_file()
    assert Path(report.data_docs).is_relative_to(tmp_path / "child")
    here = validate_frame(bad, schema, CONFIG, tmp_path / "here", "rejected")
    ours, theirs = Path(here.data_docs).relative_to(tmp_path / "here"), Path(report.data_docs).relative_to(tmp_path / "child")
    assert (ours.parent.parent, ours.name) == (theirs.parent.parent, theirs.name)  # the folder between is the time it ran
    assert dataclasses.replace(report, data_docs=None) == dataclasses.replace(here, data_docs=None)


def test_the_repeated_header_a_csv_brings_reaches_the_child(forkable):
    frame = table()
    frame.attrs["header"] = ["bill", "bill", "island", "species"]
    assert validation_aside.prepare()
    report, _ = validation_aside.validate(frame, None, CONFIG, None, "repeated")
    assert report == validate_frame(frame, None, CONFIG)
    assert not report.passed and "'bill'" in report.problems[0]


def test_this_process_works_meanwhile_until_the_child_is_done(forkable):
    """What ``prepare`` is given runs while the child validates, and stops once it has answered."""
    rounds = []

    def meanwhile(until):
        while not until():
            rounds.append(time.monotonic())
            time.sleep(0.01)

    assert validation_aside.prepare(meanwhile)
    report, said = validation_aside.validate(table(), None, CONFIG, None, "meanwhile")
    assert report is not None and told(said).startswith("validated in process ")
    assert rounds, "nothing ran while the child validated"


def test_a_dead_child_leaves_the_validation_here(forkable):
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    os.kill(child.pid, signal.SIGKILL)
    report, said = validation_aside.validate(table(), None, CONFIG, None, "dead")
    assert report is None
    assert told(said).endswith("validating here"), said
    assert gone(child.pid)


def test_an_unpicklable_table_validates_here(forkable):
    frame = table().assign(handle=lambda f: [lambda: None] * len(f))
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    report, said = validation_aside.validate(frame, None, CONFIG, None, "unpicklable")
    assert report is None and "did not take the increment" in told(said), said
    assert gone(child.pid)


def test_a_table_too_large_to_hand_over_validates_here(forkable, monkeypatch):
    monkeypatch.setattr(validation_aside, "MAX_CELLS", 100)
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    report, said = validation_aside.validate(table(), None, CONFIG, None, "large")
    assert report is None
    assert "480 cells are more than the 100" in told(said)
    assert gone(child.pid)


def test_one_child_per_process_and_a_discarded_one_ends(forkable):
    assert validation_aside.validate(table(), None, CONFIG, None, "none") == (None, [])
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    validation_aside.discard()
    assert gone(child.pid)
    assert validation_aside.validate(table(), None, CONFIG, None, "after") == (None, [])
    assert not validation_aside.prepare(), "a second run in this process (the demo's) validates here"


def test_no_child_where_gx_is_imported_already(monkeypatch):
    import great_expectations  # noqa: F401  (as in any process that has validated once)

    monkeypatch.setattr(validation_aside, "_forked", False)
    assert validation_aside.why_not() == "Great Expectations is imported here already"
    assert not validation_aside.prepare()
    assert validation_aside._waiting is None
