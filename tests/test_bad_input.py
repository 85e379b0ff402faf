"""Bad increments: each gets a specific, readable reason (frame-level cases through the real GX suite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lepton.config import DataConfig
from lepton.models.schema import DataSchema
from lepton.validation import validate_frame

CONFIG = DataConfig(label="y")


def good(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(0, 10, size=n), "y": rng.integers(0, 2, size=n)})


SCHEMA = DataSchema.infer(good(200, seed=1), "y")


@pytest.mark.parametrize(
    ("name", "frame", "needle"),
    [
        ("missing column", good().drop(columns=["b"]), "missing column(s) 'b'; if the export no longer writes it, declare it in lepton.yaml (data.columns: {b: ignore})"),
        ("renamed column", good().rename(columns={"b": " B"}), "missing column(s) 'b'; unexpected column(s) ' B'; renamed only in case or spacing: ' B' was 'b'"),
        ("wrong type", good().assign(b="x"), "column 'b' held numbers and now holds text (40 of 40 values"),
        ("missing jump", good().assign(a=[np.nan] * 20 + [0.0] * 20), "column 'a' has 20 empty value(s) (50.0%), more than the share seen so far plus data.missing_jump"),
        ("infinity", good().assign(a=[np.inf] + [0.0] * 39), "column 'a' has 1 infinite value(s)"),
        ("orders of magnitude", good().assign(b=[1e6] + [1.0] * 39), "column 'b' has 1 value(s) orders of magnitude beyond its range"),
        ("infinity and magnitude", good().assign(a=[np.inf, -np.inf, 1e9] + [0.0] * 37),
         "column 'a' has 2 infinite value(s), and 1 value(s) orders of magnitude beyond its range"),
        ("missing labels", good().assign(y=[None] * 10 + [1] * 30), "label column 'y' is empty in 10 row(s) (25.0%), more than data.max_missing_labels=0.1"),
        ("label type", good().assign(y="yes"), "column 'y' does not hold integer labels, as before"),
        ("too few rows", good(5), "5 rows, fewer than the 10 required"),
        # Inside the range seen, where the magnitude bounds do not look: grams that became kilograms.
        ("unit change", good().assign(b=lambda f: f.b / 1000), "column 'b': its typical value is "),
        ("words in numbers", good().assign(a=["west"] * 6 + [0.5] * 34), "column 'a' held numbers and now holds text (6 of 40 values, e.g. 'west'"),
    ],
)
def test_each_bad_increment_names_its_problem(name, frame, needle):
    """A bad increment fails validation with a message that names what is wrong."""
    report = validate_frame(frame, SCHEMA, CONFIG)
    assert not report.passed, name
    # The cause alone: no second message that only follows from it (a range check on text, say).
    assert len(report.problems) == 1 and needle in report.problems[0], report.problems


def test_a_new_column_is_said_and_a_column_declared_ignore_may_go():
    """An export that grows a column was rejected whole ('unexpected column'): it is kept with the data and said. A column
    the export stopped writing is refused until lepton.yaml declares it ignore, and then said."""
    grown = validate_frame(good().assign(c=1.0), SCHEMA, CONFIG)
    assert grown.passed, grown.problems
    assert "1 column(s) new to this workspace ('c'): kept with the data, not read by the model, whose inputs are the columns of the first increment" in grown.warnings
    gone = validate_frame(good().drop(columns=["b"]), SCHEMA, CONFIG.model_copy(update={"columns": {"b": "ignore"}}))
    assert gone.passed, gone.problems
    assert "column(s) 'b' not in this increment, and declared ignore in lepton.yaml (data.columns)" in gone.warnings


def test_unusual_but_clean_data_is_processed_with_warnings():
    """Gaps, duplicates, growth beyond the seen range and a few unlabelled rows are reported, not rejected."""
    frame = pd.concat([good(), good().head(5)], ignore_index=True)
    frame.loc[10, "a"] = np.nan  # a gap
    frame.loc[11, "b"] = 24.0  # seen within [0, 10]: far beyond, yet short of corruption
    frame.loc[12, "y"] = None  # one row without a label
    report = validate_frame(frame, SCHEMA, CONFIG)
    assert report.passed, report.problems
    text = " | ".join(report.warnings)
    assert "5 repeated row(s) (11.1%) kept (data.duplicates=keep)" in text
    # 24 only: a value a little past the range's edge (within data.range_tolerance of its width) is a new extreme, not growth.
    assert "column 'b': 1 value(s) beyond the range seen so far" in text and "(24; data.range_tolerance=0.05)" in text
    assert "1 row(s) without a label dropped" in text


def test_duplicates_rejected_only_when_asked():
    """data.duplicates=reject refuses repeated rows and names the setting."""
    frame = pd.concat([good(), good().head(5)], ignore_index=True)
    report = validate_frame(frame, SCHEMA, DataConfig(label="y", duplicates="reject"))
    assert not report.passed and "data.duplicates=reject" in report.problems[0]


def test_one_corrupt_value_in_many_is_rejected():
    """1e9 in a column seen within [0, 1] is a unit error or corruption, even as one row of 250."""
    rng = np.random.default_rng(2)
    seen = pd.DataFrame({"a": rng.uniform(0, 1, 300), "y": rng.integers(0, 2, 300)})
    schema = DataSchema.infer(seen, "y")
    frame = pd.DataFrame({"a": rng.uniform(0, 1, 250), "y": rng.integers(0, 2, 250)})
    frame.loc[7, "a"] = 1e9
    report = validate_frame(frame, schema, CONFIG)
    assert not report.passed
    assert "column 'a' has 1 value(s) orders of magnitude beyond its range" in report.problems[0]
    assert "data.magnitude_limit=1000" in report.problems[0]


@pytest.mark.parametrize(
    ("name", "frame", "needle"),
    [
        ("poison cell", good(60).assign(a=[1e308] + [0.5] * 59), "column 'a' has 1 value(s) orders of magnitude beyond its range"),
        ("one class", good(60).assign(y=1), "label column 'y' holds a single class (1): a first increment needs at least two classes"),
    ],
)
def test_a_first_increment_that_cannot_train_is_rejected(name, frame, needle):
    """A first increment defines the schema and the scaler: one class or one absurd value must not get in."""
    report = validate_frame(frame, None, CONFIG)
    assert not report.passed, name
    assert len(report.problems) == 1 and needle in report.problems[0], report.problems


def test_a_first_increment_of_a_real_export_passes_and_says_what_it_decided():
    """Text, gaps, dates and ids in a first increment: accepted, each column's kind named."""
    rng = np.random.default_rng(4)
    n = 80
    frame = pd.DataFrame({
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(18, 80, n)),
        "plan": rng.choice(["free", "pro", None], n),
        "customer": [f"C-{i:05d}" for i in range(n)],
        "signup": pd.date_range("2025-01-01", periods=n, freq="D").astype(str),
        "y": rng.choice(["stay", "churn"], n),
    })
    report = validate_frame(frame, None, CONFIG)
    assert report.passed, report.problems
    notes = " | ".join(report.notes)
    assert "label 'y': classes" in notes and "numeric: age" in notes and "categorical: plan" in notes
    assert "column 'customer': identifier" in notes and "not used by the model" in notes
    assert "column 'signup': datetime (date strings)" in notes


def test_unseen_labels_rejected_when_the_config_says_so():
    """allow_new_classes=false: a label never seen before is named."""
    report = validate_frame(good().assign(y=7), SCHEMA, DataConfig(label="y", allow_new_classes=False))
    assert any("never seen before" in p and "7" in p for p in report.problems)


def test_new_classes_are_accepted_and_said_with_a_lookalike_named():
    """A class never seen is learnt (class-incremental data) and said, as a new category is; 'Car ' beside a known 'car'
    is named as differing only in case or spacing. Known classes alone say nothing."""
    schema = DataSchema.infer(good(200, seed=1).assign(y=np.where(good(200, seed=1)["y"] == 1, "car", "bus")), "y")
    frame = good().assign(y=["car", "bus", "train", "Car "] * 10)
    report = validate_frame(frame, schema, CONFIG)
    assert report.passed, report.problems
    [said] = [w for w in report.warnings if w.startswith("label 'y'")]
    assert said == (
        "label 'y': 2 new class(es) ('train', 'Car '), learnt from now on; 'Car ' differs from the known 'car' only in case or spacing: "
        "if it is the same class, fix the export, as these rows teach a class of their own (data.allow_new_classes=false rejects new classes)"
    )
    known = validate_frame(good().assign(y=["car", "bus"] * 20), schema, CONFIG)
    assert not [w for w in known.warnings if w.startswith("label")]
    assert not [w for w in validate_frame(good(), SCHEMA, CONFIG).warnings if w.startswith("label")]


def test_holdout_must_not_be_empty():
    """An increment too small to split off a holdout (one row) is rejected with the fraction named; from two rows on
    each side holds one at least."""
    config = DataConfig(label="y", min_rows=1, holdout_fraction=0.01)
    report = validate_frame(good(1), SCHEMA, config)
    assert not report.passed and "holdout_fraction=0.01" in report.problems[0]
    assert validate_frame(good(3), SCHEMA, config).passed


def test_the_holdout_check_counts_the_rows_the_split_keeps():
    """With data.duplicates=drop, one row sent 50 times is one row to split: validation judges the holdout the steps
    will have, not the 50 rows as sent (whose later copies fill a holdout of their own)."""
    from lepton.models.splits import holdout_mask, holdout_split

    rows = good(200, seed=1).drop_duplicates().reset_index(drop=True)
    # A row whose first copy falls outside the holdout: deduplicated, nothing is left to score.
    distinct = rows[~holdout_mask(rows, 0.2)].head(1)
    frame = pd.concat([distinct] * 50, ignore_index=True)
    drop = DataConfig(label="y", duplicates="drop")
    assert holdout_mask(frame, 0.2).any() and len(holdout_split(frame, "y", 0.2, drop_duplicates=True)[1]) == 0
    report = validate_frame(frame, SCHEMA, drop)
    assert not report.passed and any("leave no rows for the holdout" in p for p in report.problems), report.problems
    assert validate_frame(frame, SCHEMA, CONFIG).passed  # kept, the copies are split one by one: both sides hold rows


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
    from lepton.tasks.ingest import read_increment

    packed = clean_dir / "day.gz"
    packed.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported format \.gz; use \.csv or \.parquet \(a compressed file: unpack it first, e\.g\. `gunzip FILE`\)"):
        read_increment(packed)


def test_a_column_of_lists_is_rejected_with_its_name():
    """A Parquet list column: named and rejected, not a crash on hashing rows."""
    frame = good().assign(tags=[[1, 2]] * 40)
    report = validate_frame(frame, None, CONFIG)
    assert not report.passed and report.problems == ["column(s) 'tags' hold lists or maps, not values: flatten them in the export (one value per cell)"]


def test_each_numeric_column_has_one_range_expectation():
    """The magnitude bounds are finite, so they also stop infinities: one expectation per column, not two (GX's cost is per expectation)."""
    from lepton.validation import build_suite

    for schema, frame in ((SCHEMA, good()), (None, good(200, seed=1))):
        suite = build_suite(list(frame.columns), schema, CONFIG, frame)
        ranges = [e.column for e in suite if type(e).__name__ == "ExpectColumnValuesToBeBetween"]
        assert sorted(ranges) == ["a", "b"], ranges
    first = validate_frame(good().assign(a=[np.inf] + [0.0] * 39), None, CONFIG)
    assert not first.passed and "column 'a' has 1 infinite value(s)" in first.problems, first.problems


def test_infinities_are_counted_in_full_and_stopped_under_any_magnitude_limit():
    """GX samples 20 of the values that fail a check: the count of infinities comes from the column. A huge
    data.magnitude_limit (the rejection's own advice is to raise it) must not let infinities through."""
    many = good(60).assign(a=[np.inf] * 25 + [0.0] * 35)
    report = validate_frame(many, SCHEMA, CONFIG)
    assert "column 'a' has 25 infinite value(s)" in report.problems, report.problems
    lenient = CONFIG.model_copy(update={"magnitude_limit": 1e308})
    for schema in (SCHEMA, None):
        report = validate_frame(good().assign(a=[np.inf] + [0.0] * 39), schema, lenient)
        assert not report.passed and "column 'a' has 1 infinite value(s)" in report.problems, report.problems


def test_new_extremes_of_the_same_data_are_not_reported_and_growth_is():
    """A shuffled table of 60 Gaussian columns brings a few new extremes per increment: no warning. Ten values a tenth of
    the width past the edge (a year that grows) are more than chance gives, and reported; so is one value far beyond."""
    rng = np.random.default_rng(7)
    columns = [f"x{i}" for i in range(60)]
    seen = pd.DataFrame(rng.normal(size=(400, 60)), columns=columns).assign(y=rng.integers(0, 2, 400))
    schema = DataSchema.infer(seen, "y")
    config = DataConfig(label="y")
    fresh = pd.DataFrame(rng.normal(size=(400, 60)), columns=columns).assign(y=rng.integers(0, 2, 400))
    report = validate_frame(fresh, schema, config)
    assert report.passed and not [w for w in report.warnings if "beyond the range" in w], report.warnings
    lo, hi = schema.ranges["x0"]
    grown = fresh.copy()
    grown.loc[:9, "x0"] = hi + 0.1 * (hi - lo)
    grown.loc[0, "x1"] = schema.ranges["x1"][1] + 1.5 * (schema.ranges["x1"][1] - schema.ranges["x1"][0])
    warned = [w.split(":")[0] for w in validate_frame(grown, schema, config).warnings if "beyond the range" in w]
    assert warned == ["column 'x0'", "column 'x1'"], warned


def test_a_unit_change_is_rejected_both_ways_and_names_its_setting():
    """A column whose typical value is 100 times smaller (percent to a fraction) or 1000 times larger (kilograms to grams)
    than in every earlier increment is rejected; so is a regression label; data.unit_change=0 lets them in."""
    rng = np.random.default_rng(3)
    seen = pd.DataFrame({"share": rng.uniform(5, 95, 300), "kg": rng.uniform(50, 90, 300), "y": rng.uniform(100, 200, 300)})
    schema = DataSchema.infer(seen, "y", task="regression")
    config = DataConfig(label="y")
    fresh = pd.DataFrame({"share": rng.uniform(5, 95, 200), "kg": rng.uniform(50, 90, 200), "y": rng.uniform(100, 200, 200)})
    assert validate_frame(fresh, schema, config).passed
    fraction = validate_frame(fresh.assign(share=fresh.share / 100), schema, config)
    assert not fraction.passed and len(fraction.problems) == 1
    assert fraction.problems[0].startswith("column 'share': its typical value is ") and " times smaller than in every earlier increment" in fraction.problems[0]
    assert "raise data.unit_change (now 50) or set it to 0" in fraction.problems[0]
    grams = validate_frame(fresh.assign(kg=fresh.kg * 1000), schema, config)
    assert not grams.passed and "column 'kg': its typical value is " in grams.problems[0] and " times larger " in grams.problems[0]
    label = validate_frame(fresh.assign(y=fresh.y / 1000), schema, config)
    assert not label.passed and label.problems[0].startswith("label column 'y': its typical value is ")
    assert validate_frame(fresh.assign(share=fresh.share / 100), schema, DataConfig(label="y", unit_change=0)).passed
    both = validate_frame(fresh.assign(share=fresh.share / 100, kg=fresh.kg * 1000), schema, config)
    assert [p.split(":")[0] for p in both.problems] == ["column 'share'", "column 'kg'"], both.problems
    assert sum("data.unit_change" in p for p in both.problems) == 1 and "units that changed" in both.problems[-1]


def test_growth_and_zeros_are_not_a_unit_change():
    """A count that is mostly zero in one increment, and a value that grows tenfold, keep their unit."""
    rng = np.random.default_rng(4)
    seen = pd.DataFrame({"count": rng.integers(1, 6, 300), "visits": rng.uniform(10, 20, 300), "y": rng.integers(0, 2, 300)})
    schema = DataSchema.infer(seen, "y")
    quiet = pd.DataFrame({"count": [0] * 195 + [1] * 5, "visits": rng.uniform(100, 200, 200), "y": rng.integers(0, 2, 200)})
    report = validate_frame(quiet, schema, CONFIG)
    assert report.passed, report.problems


def test_missing_value_markers_in_numbers_are_read_as_missing_however_many():
    """'?', 'n/a' and the like stand for a missing number: a fifth of them is a gap, not text; a word or two is warned about."""
    frame = good().astype({"a": object})
    frame.loc[:7, "a"] = ["?", "n/a", "NA", "-", "?", "null", "?", " N/A "]
    frame.loc[8, "a"] = "west"
    report = validate_frame(frame, SCHEMA, CONFIG)
    assert report.passed, report.problems
    assert any(w.startswith("column 'a': 9 value(s) that are not numbers") and w.endswith("read as missing") for w in report.warnings), report.warnings


def test_a_rejected_increment_drops_no_rows():
    """Labels missing past data.max_missing_labels reject the increment whole: no warning that its unlabelled rows were dropped."""
    report = validate_frame(good().assign(y=[None] * 10 + [1] * 30), SCHEMA, CONFIG)
    assert not report.passed and not any("dropped" in w for w in report.warnings), report.warnings


def test_many_whole_number_labels_are_classes_that_ask_whether_they_are_amounts():
    """Many whole numbers numbered like class ids (0 to 29) stay classes under data.task=auto, and the run says how to make
    them a number to predict; ten digit classes get no such question. Weights in grams (35 to 129, several rows each) are
    no class ids: a number to predict (read as classes, a chick-weight table never got a champion). Whole numbers with
    about one row each (megawatt-hours, 13 in 13 rows) cannot be classes to learn: a number to predict."""
    rng = np.random.default_rng(5)
    ids = pd.DataFrame({"x": rng.normal(size=300), "kind": rng.integers(0, 30, 300)})
    (note, *_) = validate_frame(ids, None, DataConfig(label="kind")).notes
    assert note.startswith("label 'kind': classes (") and note.endswith(" whole numbers, from 0 to 29: if they are amounts to predict, set data.task: regression)"), note
    grams = pd.DataFrame({"time": rng.integers(0, 21, 300), "weight": rng.integers(35, 130, 300)})
    assert validate_frame(grams, None, DataConfig(label="weight")).notes[0] == "label 'weight': a number to predict (regression)"
    # Asked again, as a warning, while increments bring more such classes.
    more = pd.DataFrame({"x": rng.normal(size=50), "kind": rng.integers(30, 40, 50)})
    [again] = [w for w in validate_frame(more, DataSchema.infer(ids, "kind"), DataConfig(label="kind")).warnings if w.startswith("label 'kind'")]
    assert "; 40 whole-number classes so far: if they are amounts to predict, set data.task: regression" in again, again
    digits = pd.DataFrame({"x": rng.normal(size=100), "y": rng.integers(0, 10, 100)})
    assert validate_frame(digits, None, DataConfig(label="y")).notes[0] == "label 'y': classes"
    energy = pd.DataFrame({"year": range(2001, 2014), "generation": rng.choice(np.arange(1000, 40000), 13, replace=False)})
    assert validate_frame(energy, None, DataConfig(label="generation")).notes[0] == "label 'generation': a number to predict (regression)"


def test_numbers_with_thousands_separators_are_read_as_numbers(tmp_path):
    """A spreadsheet's "8,855" beside 955: read as numbers, and said; in a first file the column is numeric (it was an
    identifier, left out of the model), in a later one it is accepted (it was 'now holds text'). Comma decimals
    ("3,5") and text with commas stay text."""
    from lepton.tasks.ingest import read_increment

    rng = np.random.default_rng(9)
    miles = rng.integers(100, 20000, 60)
    frame = pd.DataFrame({"miles": [f"{m:,}" for m in miles], "note": ["a, b"] * 60, "eu": ["3,5"] * 60, "y": rng.integers(0, 2, 60)})
    path = tmp_path / "first.csv"
    frame.to_csv(path, index=False)
    read = read_increment(path)
    assert read["miles"].tolist() == miles.astype(float).tolist() and read["note"].iloc[0] == "a, b" and read["eu"].iloc[0] == "3,5"
    first = validate_frame(read, None, DataConfig(label="y"))
    assert first.passed and "numeric: miles" in first.notes, first.notes
    example = next(s for s in frame["miles"] if "," in s)
    assert f"column 'miles': numbers written with thousands separators (e.g. {example!r}), read as numbers" in first.warnings
    schema = DataSchema.infer(read, "y")
    assert schema.kind("miles") == "numeric"
    later = tmp_path / "later.csv"
    frame.assign(miles=[f"{m + 7:,}" for m in miles]).to_csv(later, index=False)
    assert validate_frame(read_increment(later), schema, DataConfig(label="y")).passed


def test_amounts_and_shares_as_spreadsheets_write_them_are_read_as_numbers(tmp_path):
    """"$1,200", "12%" and "1 200" (a no-break space too): numbers, and said. A first file read them as identifiers, left
    out of the model; a later one was rejected as a column that now holds text. Codes, text and '12 kg' stay text."""
    from lepton.tasks.ingest import read_increment

    rng = np.random.default_rng(5)
    price, share, rooms = rng.integers(1, 5000, 60), rng.integers(0, 100, 60), rng.integers(1000, 9000, 60)
    frame = pd.DataFrame({
        "price": [f"${p:,}" if i % 3 else f"-${p}" for i, p in enumerate(price)], "share": [f"{v}%" for v in share],
        "rooms": [f"{r // 1000}\u00a0{r % 1000:03d}" if i % 2 else f"{r // 1000} {r % 1000:03d}" for i, r in enumerate(rooms)],
        "weight": ["12 kg"] * 60, "code": [f"A-{i}" for i in range(60)], "y": rng.integers(0, 2, 60),
    })
    path = tmp_path / "first.csv"
    frame.to_csv(path, index=False)
    read = read_increment(path)
    assert read["price"].tolist() == [float(p) if i % 3 else -float(p) for i, p in enumerate(price)]
    assert read["share"].tolist() == share.astype(float).tolist() and read["rooms"].tolist() == rooms.astype(float).tolist()
    assert read["weight"].iloc[0] == "12 kg" and read["code"].iloc[0] == "A-0"
    first = validate_frame(read, None, DataConfig(label="y"))
    assert first.passed and "numeric: price, share, rooms" in first.notes, first.notes
    assert "column 'share': numbers written with a currency or percent sign or grouped digits (e.g. '%d%%'), read as numbers" % share[0] in first.warnings
    schema = DataSchema.infer(read, "y")
    later = tmp_path / "later.csv"
    frame.assign(price=[f"${p + 3:,}" for p in price]).to_csv(later, index=False)
    assert validate_frame(read_increment(later), schema, DataConfig(label="y")).passed


def test_placeholders_in_labels_and_categories_are_missing_and_yes_no_is_a_boolean(tmp_path):
    """'?' and '-' for an unknown class were learnt as classes and took category slots: they are missing values (a row
    without a label is dropped and counted). A true/false column exported as yes/no was rejected as one that now holds text."""
    from lepton.tasks.ingest import read_increment

    rng = np.random.default_rng(6)
    first = pd.DataFrame({"x": rng.normal(size=60), "plan": rng.choice(["free", "pro"], 60), "active": rng.random(60) < 0.5, "y": rng.choice(["a", "b"], 60)})
    schema = DataSchema.infer(first, "y")
    assert schema.kind("active") == "boolean"
    later = first.assign(active=first["active"].map({True: "yes", False: "no"}))
    later.loc[:2, "y"] = ["?", "-", "--"]
    later.loc[3:5, "plan"] = ["-", "?", "--"]
    path = tmp_path / "later.csv"
    later.to_csv(path, index=False)
    read = read_increment(path)
    assert read["y"].isna().sum() == 3 and read["plan"].isna().sum() == 3
    report = validate_frame(read, schema, DataConfig(label="y"))
    assert report.passed, report.problems
    assert "3 row(s) without a label dropped (data.max_missing_labels=0.1)" in report.warnings
    assert not any("new class" in w or "new categor" in w for w in report.warnings), report.warnings
    words = later.assign(active=["maybe"] * 60)
    [problem] = validate_frame(words, schema, DataConfig(label="y")).problems
    assert problem.startswith("column 'active' held true/false values and now holds text (60 of 60 values, e.g. 'maybe')"), problem


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_file_separated_by_semicolons_or_tabs_is_read_as_its_columns(tmp_path, sep):
    """A European spreadsheet's export (';' between columns, a comma as the decimal mark) and a tab-separated one: their
    columns and numbers, and said; they read as one column before, rejected for missing the label. Text with commas stays text."""
    from lepton.tasks.ingest import read_increment

    rng = np.random.default_rng(4)
    weight = rng.uniform(1, 9, 50).round(2)
    decimal = "," if sep == ";" else "."
    quote = "'" if sep == "\t" else ""  # a statistics package's tab-separated export quotes every name
    lines = [sep.join(f"{quote}{n}{quote}" for n in ("weight", "plan", "note", "y"))]
    lines += [f"{str(w).replace('.', decimal)}{sep}{'pro' if i % 2 else 'free'}{sep}late, again{sep}{i % 2}" for i, w in enumerate(weight)]
    path = tmp_path / "export.csv"
    path.write_text("\n".join(lines) + "\n")
    read = read_increment(path)
    assert list(read.columns) == ["weight", "plan", "note", "y"]
    assert read["weight"].tolist() == weight.tolist() and read["note"].iloc[0] == "late, again"
    report = validate_frame(read, None, DataConfig(label="y"))
    assert report.passed, report.problems
    assert f"read as separated by {sep!r}: its header line holds no comma" in report.warnings
    assert ("column names read without the single quotes around every one of them in the header" in report.warnings) == (sep == "\t")
    said = [w for w in report.warnings if "decimal comma" in w]
    assert said == ([f"column 'weight': numbers written with a decimal comma (e.g. {str(weight[0]).replace('.', ',')!r}), read as numbers"] if sep == ";" else [])


def test_a_european_export_with_grouped_digits_is_read_as_its_numbers(tmp_path):
    """Excel with grouping on writes '1.819,4' beside '46,1' in a ';' file: a dot there groups digits. The whole column
    was rejected as one that now holds text, and the advice was to declare it a category. A column that writes its
    decimals with a dot ('n.a.' making it text) keeps them."""
    from lepton.tasks.ingest import read_increment

    rng = np.random.default_rng(7)
    value = rng.uniform(10, 5000, 40).round(1)
    share = rng.uniform(0, 1, 40).round(3)
    european = [f"{v:,.1f}".replace(",", " ").replace(".", ",").replace(" ", ".") for v in value]  # 1.819,4
    assert any("." in v for v in european) and any("." not in v for v in european)
    lines = ["value;share;y"] + [f"{v};{'n.a.' if i == 0 else s};{i % 2}" for i, (v, s) in enumerate(zip(european, share, strict=True))]
    path = tmp_path / "export.csv"
    path.write_text("\n".join(lines) + "\n")
    read = read_increment(path)
    assert read["value"].tolist() == value.tolist()
    assert read["share"].iloc[0] == "n.a." and read["share"].iloc[1] == str(share[1])  # not read as thousands
    schema = DataSchema.infer(pd.DataFrame({"value": value, "y": np.arange(40) % 2}), "y")
    report = validate_frame(read.drop(columns="share"), schema, DataConfig(label="y"))
    assert report.passed, report.problems
    assert any(w.startswith("column 'value': numbers written with a decimal comma") for w in report.warnings), report.warnings


def test_dates_written_both_day_first_and_month_first_are_rejected():
    """13/05/2015 and 05/13/2015 in one column: which 01/05/2015 is cannot be told, so no order reads it right."""
    frame = good().assign(when=["13/05/2015", "05/13/2015"] + ["01/05/2015"] * 38)
    schema = DataSchema.infer(good(200, seed=1).assign(when="2015-05-01"), "y")
    report = validate_frame(frame, schema, CONFIG)
    assert not report.passed
    assert report.problems == [
        "column 'when' holds dates written day first (e.g. '13/05/2015') and month first (e.g. '05/13/2015'): which 01/05 is "
        "cannot be told; export the column in one order (ISO, 2015-05-01, is unambiguous)"
    ]
    assert validate_frame(frame.assign(when=["13/05/2015"] + ["01/05/2015"] * 39), schema, CONFIG).passed


def test_a_first_increment_whose_dates_read_either_way_says_how_they_are_read():
    """Monthly dates on the first (01/05/2015) look like a US week of early January: read month first, and said."""
    monthly = good(36).assign(when=[f"01/{m:02d}/2015" for m in range(1, 13)] * 3)
    report = validate_frame(monthly, None, CONFIG)
    assert report.passed, report.problems
    assert ("column 'when': no date tells whether the day or the month comes first (e.g. '01/02/2015'): read month first (02 January 2015) "
            "until one does (13/05/2015); if the export writes the day first, send ISO dates (2015-05-01)") in report.warnings, report.warnings
    told = validate_frame(monthly.assign(when=["13/05/2015"] * 36), None, CONFIG)
    assert not [w for w in told.warnings if "comes first" in w]


def test_a_misspelt_column_declaration_is_said():
    """data.columns: {body_mass: ignore} beside a body_mass_g column changed nothing and said nothing; it is a warning
    naming the closest column. A declaration of a column the workspace has (one the export stopped writing) is no typo."""
    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"body_mass_g": rng.uniform(3000, 6000, 40), "sex": rng.choice(["m", "f"], 40), "y": rng.integers(0, 2, 40)})
    config = DataConfig(label="y", columns={"body_mass": "ignore", "sex": "categorical"})
    report = validate_frame(frame, None, config)
    assert report.passed, report.problems
    assert report.warnings == ["data.columns declares 'body_mass', which neither this increment nor the workspace has (did you mean 'body_mass_g'?): the declaration does nothing"]
    schema = DataSchema.infer(frame, "y")
    later = validate_frame(frame.drop(columns="sex"), schema, DataConfig(label="y", columns={"sex": "ignore"}))
    assert later.passed and not any("declares" in w for w in later.warnings), later.warnings
