"""The validation prepared aside: a forked child imports Great Expectations while the command imports the pipeline,
then validates the increment exactly as the flow's own process would, or leaves it to that process."""

from __future__ import annotations

import os
import signal

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
    """This test session has imported GX already; a command that forks has not (the check only saves a fork)."""
    monkeypatch.setattr(validation_aside, "why_not", lambda: None)
    yield
    validation_aside.discard()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(validation_aside.why_not() not in (None, "Great Expectations is imported here already"), reason="needs Linux and two cores")
@pytest.mark.parametrize(
    ("name", "frame", "schema"),
    [
        ("first increment", table(), None),
        ("later increment", table(seed=1), DataSchema.infer(table(), "species")),
        ("unit error", table(seed=2).assign(mass=lambda f: f["mass"].where(f.index != 5, 4e9)), DataSchema.infer(table(), "species")),
        ("text where numbers were", table(seed=3).assign(bill="n/a"), DataSchema.infer(table(), "species")),
    ],
)
def test_the_child_validates_as_this_process_would(forkable, name, frame, schema):
    assert validation_aside.prepare()
    report, said = validation_aside.validate(frame, schema, CONFIG, None, name)
    assert report == validate_frame(frame, schema, CONFIG, None, name), name
    assert said.startswith("validated in process "), said
    if name in ("unit error", "text where numbers were"):
        assert not report.passed and report.problems


def test_the_repeated_header_a_csv_brings_reaches_the_child(forkable):
    frame = table()
    frame.attrs["header"] = ["bill", "bill", "island", "species"]
    assert validation_aside.prepare()
    report, _ = validation_aside.validate(frame, None, CONFIG, None, "repeated")
    assert not report.passed
    assert report.problems == validate_frame(frame, None, CONFIG).problems
    assert "'bill'" in report.problems[0]


def test_a_dead_child_leaves_the_validation_here(forkable):
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    os.kill(child.pid, signal.SIGKILL)
    report, said = validation_aside.validate(table(), None, CONFIG, None, "dead")
    assert report is None
    assert said.endswith("validating here"), said
    assert gone(child.pid)


def test_a_table_too_large_to_hand_over_validates_here(forkable, monkeypatch):
    monkeypatch.setattr(validation_aside, "MAX_CELLS", 100)
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    report, said = validation_aside.validate(table(), None, CONFIG, None, "large")
    assert report is None
    assert "480 cells are more than the 100" in said
    assert gone(child.pid)


def test_nothing_prepared_says_nothing_and_a_discarded_child_ends(forkable):
    assert validation_aside.validate(table(), None, CONFIG, None, "none") == (None, None)
    assert validation_aside.prepare()
    child, _ = validation_aside._waiting
    validation_aside.discard()
    assert gone(child.pid)
    assert validation_aside.validate(table(), None, CONFIG, None, "after") == (None, None)


def test_no_child_where_gx_is_imported_already():
    # As in any process that has validated once (lepton.validation imports it only when a suite runs).
    import great_expectations  # noqa: F401

    assert validation_aside.why_not() == "Great Expectations is imported here already"
    assert not validation_aside.prepare()
    assert validation_aside._waiting is None
