"""Preprocessor: merged running statistics, a stable label vocabulary and a faithful round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lepton.models.preprocessing import Preprocessor

FEATURES = ["a", "b", "flat"]


def frame_of(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": rng.normal(loc=shift, scale=2.0, size=n),
            "b": rng.integers(0, 17, size=n),
            "flat": np.full(n, 7.0),
        }
    )


def test_running_mean_and_std_match_numpy_on_the_concatenation() -> None:
    """Two `updated` calls give the mean and population std of both frames together."""
    rng = np.random.default_rng(0)
    first, second = frame_of(rng, 37, shift=5.0), frame_of(rng, 113, shift=-3.0)
    p = Preprocessor(FEATURES).updated(first, pd.Series([0] * 37)).updated(second, pd.Series([1] * 113))
    both = pd.concat([first, second])[FEATURES].to_numpy(dtype=np.float64)
    assert p.count == 150
    np.testing.assert_allclose(p.mean, both.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.scale[:2], both.std(axis=0)[:2], rtol=1e-12)
    standardised = p.transform(both)
    assert standardised.dtype == np.float32
    np.testing.assert_allclose(standardised[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised[:, :2].std(axis=0), 1.0, atol=1e-5)


def test_constant_column_has_unit_scale() -> None:
    """A column that never varies is scaled by 1, so it maps to exactly 0 rather than blowing up."""
    rng = np.random.default_rng(1)
    p = Preprocessor(FEATURES).updated(frame_of(rng, 20, 0.0), pd.Series([0] * 20)).updated(frame_of(rng, 30, 1.0), pd.Series([0] * 30))
    assert p.scale[2] == 1.0
    assert p.mean[2] == pytest.approx(7.0)
    x = p.raw_matrix(frame_of(rng, 4, 0.0))
    np.testing.assert_allclose(p.transform(x)[:, 2], 0.0, atol=1e-6)


def test_classes_are_appended_and_keep_their_ids() -> None:
    """New labels are appended in sorted order; labels already known keep their ids."""
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0, 1, 2], "flat": [7.0] * 3})
    p1 = Preprocessor(FEATURES).updated(frame, pd.Series([3, 1, 3]))
    assert p1.classes == [1, 3]
    np.testing.assert_array_equal(p1.encode(np.array([1, 3, 3])), [0, 1, 1])
    p2 = p1.updated(frame, pd.Series([5, 0, 1]))
    assert p2.classes == [1, 3, 0, 5]
    np.testing.assert_array_equal(p2.encode(np.array([1, 3, 3])), p1.encode(np.array([1, 3, 3])))
    np.testing.assert_array_equal(p2.encode(pd.Series([0, 5])), [2, 3])
    # The earlier version is not changed by deriving a new one.
    assert p1.classes == [1, 3]


def test_int_labels_round_trip_as_ints() -> None:
    """decode(encode(x)) == x for integer labels, and the decoded values are integers."""
    frame = pd.DataFrame({"a": [0.0] * 5, "b": [0] * 5, "flat": [7.0] * 5})
    labels = pd.Series([9, 2, 4, 2, 9], dtype=np.int64)
    p = Preprocessor(FEATURES).updated(frame, labels)
    decoded = p.decode(p.encode(labels))
    np.testing.assert_array_equal(decoded, labels.to_numpy())
    assert np.issubdtype(decoded.dtype, np.integer)


def test_string_labels_round_trip_as_strings() -> None:
    """decode(encode(x)) == x for string labels, and the decoded values are Python str."""
    frame = pd.DataFrame({"a": [0.0] * 4, "b": [0] * 4, "flat": [7.0] * 4})
    labels = pd.Series(["dog", "cat", "ant", "cat"])
    p = Preprocessor(FEATURES).updated(frame, labels)
    assert p.classes == ["ant", "cat", "dog"]
    decoded = p.decode(p.encode(labels))
    assert list(decoded) == ["dog", "cat", "ant", "cat"]
    assert all(type(v) is str for v in decoded)


def test_unknown_label_raises_key_error() -> None:
    """Encoding a label outside the vocabulary raises KeyError naming that label."""
    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [0, 1], "flat": [7.0, 7.0]})
    p = Preprocessor(FEATURES).updated(frame, pd.Series([0, 1]))
    with pytest.raises(KeyError, match="unknown label 7"):
        p.encode(np.array([0, 7]))


def test_to_dict_from_dict_round_trip_through_json() -> None:
    """A preprocessor rebuilt from its JSON state has the same statistics and classes and transforms identically."""
    rng = np.random.default_rng(2)
    frame = frame_of(rng, 50, 3.0)
    p = Preprocessor(FEATURES).updated(frame, pd.Series(rng.integers(0, 4, size=50)))
    q = Preprocessor.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.features == p.features
    assert q.classes == p.classes == [0, 1, 2, 3]
    assert q.count == p.count == 50
    np.testing.assert_array_equal(q.mean, p.mean)
    np.testing.assert_array_equal(q.m2, p.m2)
    x = p.raw_matrix(frame)
    np.testing.assert_array_equal(q.transform(x), p.transform(x))
    np.testing.assert_array_equal(q.encode(np.array([3, 0])), p.encode(np.array([3, 0])))


def test_missing_feature_column_raises_key_error_naming_it() -> None:
    """A frame without a training feature is refused with a KeyError that names the missing column."""
    p = Preprocessor(FEATURES)
    frame = pd.DataFrame({"a": [1.0], "flat": [7.0]})
    with pytest.raises(KeyError, match="missing feature columns: b"):
        p.raw_matrix(frame)
    with pytest.raises(KeyError, match="b"):
        p.updated(frame, pd.Series([0]))


def test_a_date_later_than_any_seen_reads_as_the_latest_seen():
    """A datetime's year beyond the latest seen is held there (no trend extrapolated years ahead); a missing date is imputed;
    month and weekday are not held; a preprocessor saved before this carries no limit."""
    from lepton.models.preprocessing import Encoding, Preprocessor

    seen = pd.DataFrame({"when": pd.to_datetime(["2012-01-01", "2012-06-01", "2012-12-01"]), "y": [0, 1, 0]})
    pre = Preprocessor.create(Encoding(label="y", kinds={"when": "datetime"})).updated(seen, seen["y"])
    later = pd.DataFrame({"when": pd.to_datetime(["2012-12-01", "2015-12-01", None])})
    z = pre.transform(pre.raw_matrix(later))
    assert z[1, 0] == z[0, 0]  # 2015 reads as December 2012 ...
    assert z[1, 1] == z[0, 1]  # ... and its month is its own
    assert z[2, 0] == 0.0 and z[2, -1] > 0  # missing: the running mean, and the indicator says so
    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(restored.transform(restored.raw_matrix(later)), z)
    old = pre.to_dict()
    del old["latest"]
    legacy = Preprocessor.from_dict(old)
    assert legacy.transform(legacy.raw_matrix(later))[1, 0] > z[1, 0]  # no limit: as it read before


def test_a_skewed_amount_spanning_orders_of_magnitude_reads_on_a_log_scale():
    """A rainfall (many dry days, drizzles, a few storms) is read as log(1 + x / unit), the unit its positive values'
    10th percentile, chosen on the first increment and kept by every later version and its saved state; a bounded
    count (pixel intensities 0-16) and a symmetric column read as they are."""
    from lepton.models.preprocessing import Encoding, Preprocessor, signed_log

    rng = np.random.default_rng(3)
    n = 400
    rain = np.where(rng.random(n) < 0.5, 0.0, rng.lognormal(mean=0.5, sigma=1.5, size=n))
    frame = pd.DataFrame({"rain": rain, "pixel": rng.choice([0, 0, 0, 0, 1, 4, 16], size=n), "wind": rng.normal(3, 1, size=n), "y": rng.integers(0, 2, n)})
    kinds = {"rain": "numeric", "pixel": "numeric", "wind": "numeric"}
    pre = Preprocessor.create(Encoding(label="y", kinds=kinds)).updated(frame, frame["y"])
    unit = float(np.percentile(rain[rain > 0], 10))
    assert pre.logged == {"rain": pytest.approx(unit)}
    x = pre.raw_matrix(frame)
    np.testing.assert_allclose(x[:, 0], np.log1p(rain / unit))
    np.testing.assert_array_equal(x[:, 2], frame["pixel"].to_numpy(dtype=float))
    # Later increments keep the scale chosen first, even where they would choose another (or none).
    storms = frame.assign(rain=rain * 100)
    later = pre.updated(storms, storms["y"])
    assert later.logged == pre.logged
    restored = Preprocessor.from_dict(json.loads(json.dumps(later.to_dict())))
    np.testing.assert_array_equal(restored.transform(restored.raw_matrix(storms)), later.transform(later.raw_matrix(storms)))
    # A negative value, never seen when the scale was chosen, mirrors; a missing one stays missing.
    np.testing.assert_allclose(signed_log(np.array([-unit, np.nan]), unit), [-np.log(2), np.nan])
    # A model saved before log scales reads every column as it is.
    old = later.to_dict()
    del old["logged"]
    assert Preprocessor.from_dict(old).raw_matrix(storms)[0, 0] == storms["rain"].iloc[0]


def test_a_small_first_increment_reads_unrepeated_strings_as_one_value_per_row():
    """Sixteen names in sixteen rows (or fifteen: one repeated) are an identifier (and addresses of three words or more,
    text), not sixteen categories; a column whose values repeat is categorical however small the increment, and so is
    one too short to tell."""
    from lepton.models.columns import infer_kind

    names = pd.Series([f"{first} {last}." for first, last in zip("ABCDEFGHIJKLMNOP", "QRSTUVWXYZABCDEF", strict=True)])
    addresses = pd.Series([f"{100 + i} Main Street West" for i in range(16)])
    plans = pd.Series(["basic", "pro", "team", "basic"] * 4)
    surnames = pd.Series([*(f"Name{i}" for i in range(15)), "Name0"])  # one repeated: still nearly one per row
    assert infer_kind(names, max_categories=31) == ("identifier", "16 distinct values in 16 rows (nearly one per row)")
    assert infer_kind(addresses, max_categories=31)[0] == "text"
    assert infer_kind(plans, max_categories=31)[0] == "categorical"
    assert infer_kind(surnames, max_categories=31)[0] == "identifier"
    assert infer_kind(pd.Series([f"Area{i % 12}" for i in range(16)]), max_categories=31)[0] == "categorical"
    assert infer_kind(names.head(8), max_categories=31)[0] == "categorical"


@pytest.mark.parametrize("written", ["Jan 1 2000", "1 January 2000", "01-Jan-2000", "Sep 30, 2010 14:05", "2000-01-01"])
def test_dates_with_the_month_in_words_are_dates(written):
    """Vega's stocks table writes 'Jan 1 2000': read as 103 categories, later dates shared the unknown slot and drifted
    on every increment. Words that only start like a month stay text."""
    from lepton.models.columns import as_datetimes, infer_kind

    column = pd.Series([written] * 30)
    assert infer_kind(column, max_categories=31) == ("datetime", "date strings")
    assert not as_datetimes(column).isna().any()
    names = pd.Series(["Jane 2000", "Mayfair 12", "Marco 1999"] * 10)
    assert infer_kind(names, max_categories=31)[0] != "datetime"


def test_a_target_never_below_zero_is_never_predicted_below_zero():
    """An outlying row's prediction went to -30 on an investment seen from 0.9 up: a target whose every value seen is at
    least zero (a count, an amount) is predicted at least zero. Once a negative value is seen, outputs are as they are;
    a model from before the lowest value was kept decodes as it did."""
    from lepton.models.preprocessing import Encoding, Preprocessor

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.9, 10.0, 30.0, 120.0]})
    pre = Preprocessor.create(Encoding(label="y", kinds={"x": "numeric"}, task="regression")).updated(frame, frame["y"])
    far_below = (0.0 - 200.0 - pre.target_mean) / pre.target_scale  # an output that decodes to -200
    assert pre.target_low == 0.9 and pre.decode(np.array([far_below, 0.0]))[0] == 0.0
    assert pre.decode(np.array([0.0]))[0] == pytest.approx(pre.target_mean)
    assert Preprocessor.from_dict(pre.to_dict()).decode(np.array([far_below]))[0] == 0.0
    older = {k: v for k, v in pre.to_dict().items() if k != "target_low"}
    assert Preprocessor.from_dict(older).decode(np.array([far_below]))[0] == pytest.approx(-200.0)
    signed = pre.updated(frame.assign(y=-5.0), frame.assign(y=-5.0)["y"])
    assert signed.target_low == -5.0 and signed.decode(np.array([far_below]))[0] < 0


def test_dates_written_day_first_read_day_first_in_every_row_and_after_a_restart():
    """A European export writes 13/05/2015 and 01/05/2015 in one column: the parser read the first day first and the
    second month first (5 January). Once a value can only be read day first, the column reads day first, at training
    and in a consumer's batch of dates that would each read either way; ISO dates are untouched. A settled order
    never changes, and a batch is read by the model's order, whatever its other rows say."""
    from lepton.models.columns import as_datetimes, date_order, infer_kind, reads_day_first
    from lepton.models.preprocessing import Encoding, Preprocessor

    dates = pd.Series(["13/05/2015", "01/05/2015", "02.06.2015 14:05", "2015-05-01"])
    assert date_order(dates) == ("13/05/2015", None)
    assert infer_kind(dates, max_categories=31) == ("datetime", "date strings, day first")  # what the run and status say
    assert date_order(pd.Series(["05/13/2015", "05/01/2015"])) == (None, "05/13/2015")
    assert date_order(pd.Series(["01/05/2015", "2015-05-13"])) == (None, None)  # nothing tells
    # Monthly dates on the first, or a US week of early January: the same look, so neither is guessed.
    assert not reads_day_first(pd.Series([f"01/{m:02d}/2015" for m in range(1, 13)]))
    assert as_datetimes(dates, dayfirst=True).dt.strftime("%Y-%m-%d %H:%M").tolist() == ["2015-05-13 00:00", "2015-05-01 00:00", "2015-06-02 14:05", "2015-05-01 00:00"]
    assert as_datetimes(dates).dt.month.tolist()[1:] == [1, 2, 5]  # month first, as before, where nothing says otherwise

    def fresh() -> Preprocessor:
        return Preprocessor.create(Encoding(label="y", kinds={"when": "datetime"}))

    seen = pd.DataFrame({"when": dates, "y": [0, 1, 0, 1]})
    pre = fresh().updated(seen, seen["y"])
    assert pre.dayfirst == ["when"] and pre.monthfirst == []
    consumer = pd.DataFrame({"when": ["01/05/2015"]})  # alone, it would read as 5 January
    restored = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    for p in (pre, restored):
        assert p.raw_matrix(consumer)[0, 1] == 5.0  # the month part: May
    # Nothing says day first: month first, whatever a batch's other rows say; a later increment that says day first
    # turns the column day first; one settled month first (05/13/2015) stays so.
    us = pd.DataFrame({"when": ["01/05/2015", "02/06/2015"], "y": [0, 1]})
    pre = fresh().updated(us, us["y"])
    assert pre.dayfirst == [] == pre.monthfirst and pre.raw_matrix(consumer)[0, 1] == 1.0
    assert pre.raw_matrix(pd.DataFrame({"when": ["01/05/2015", "02/05/2015"]}))[0, 1] == 1.0
    assert pre.updated(seen, seen["y"]).dayfirst == ["when"]
    settled = fresh().updated(pd.DataFrame({"when": ["05/13/2015"], "y": [0]}), pd.Series([0]))
    assert settled.monthfirst == ["when"] and settled.updated(seen, seen["y"]).dayfirst == []
    legacy = pre.to_dict()
    del legacy["dayfirst"], legacy["monthfirst"]
    assert Preprocessor.from_dict(legacy).dayfirst == [] == Preprocessor.from_dict(legacy).monthfirst


def test_a_skewed_never_negative_target_is_learnt_on_a_log_scale_and_answered_in_its_units():
    """Decided on the first increment, as for a feature (``log_scaled``); kept with the model; a model saved before it has none."""
    from lepton.models.preprocessing import Encoding, Preprocessor

    rng = np.random.default_rng(0)
    costs = np.where(rng.random(400) < 0.25, 0.0, np.exp(rng.normal(3, 1.3, 400)))
    frame = pd.DataFrame({"x": rng.normal(size=400), "y": costs})
    pre = Preprocessor.create(Encoding(label="y", kinds={"x": "numeric"}, task="regression")).updated(frame, frame["y"])
    assert pre.target_log is not None and pre.target_log > 0
    encoded = pre.encode(frame["y"])
    assert abs(float(encoded.mean())) < 1e-3 and abs(float(encoded.std()) - 1) < 1e-3  # standardised on the log scale
    np.testing.assert_allclose(pre.decode(encoded), costs, rtol=1e-4, atol=1e-6)
    assert Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict()))).target_log == pre.target_log
    assert np.isfinite(pre.decode(np.array([10.0, 500.0, 3e38]))).all()  # far beyond anything seen: large, not infinite
    assert pre.updated(frame.assign(y=frame["y"] * 0 + 5.0), frame["y"] * 0 + 5.0).target_log == pre.target_log  # kept, not redecided
    legacy = pre.to_dict()
    del legacy["target_log"]
    assert Preprocessor.from_dict(legacy).target_log is None
    even = pd.DataFrame({"x": rng.normal(size=400), "y": rng.normal(50, 10, 400)})
    assert Preprocessor.create(Encoding(label="y", kinds={"x": "numeric"}, task="regression")).updated(even, even["y"]).target_log is None
