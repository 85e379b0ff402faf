"""Drift against the accepted history: the statistics on generated data, and the flow's warn/block/replay/joint/compete."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton.config import DriftConfig
from lepton.models.datasets import class_incremental, digits_frame
from lepton.models.drift import chi2_test, holm, ks_test, matched_reference, measure, psi, respond

DEFAULT = DriftConfig()
FEATURES = [f"f{i}" for i in range(64)]


def gaussian(n: int, seed: int, shift: dict[str, float] | None = None, classes: int = 3) -> pd.DataFrame:
    """64 standard-normal features and a uniform label; ``shift`` moves named features' means (in SDs)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 64)), columns=FEATURES)
    for name, delta in (shift or {}).items():
        frame[name] += delta
    frame["y"] = rng.integers(0, classes, n)
    return frame


def digits_parts(seed: int, parts: int = 5) -> list[pd.DataFrame]:
    """The digits shuffled and cut into ``parts`` increments that each hold every class (the same distribution)."""
    shuffled = digits_frame().sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return [shuffled.iloc[idx].reset_index(drop=True) for idx in np.array_split(np.arange(len(shuffled)), parts)]


SHIFTED = ["pixel_20", "pixel_28", "pixel_36", "pixel_44"]
HEAVY = [f"pixel_{8 * row + column}" for row in range(2, 6) for column in range(2, 6)]  # the middle 4 x 4 pixels


def shift_pixels(frame: pd.DataFrame, columns: list[str] = SHIFTED, by: int = 4) -> pd.DataFrame:
    """A few pixels brighter, kept in the 0-16 range (so validation's bounds still pass): a sensor or export change."""
    return frame.assign(**{c: np.minimum(frame[c] + by, 16) for c in columns})


# -- the tests themselves ---------------------------------------------------------------


def test_holm_steps_down():
    """Holm compares the k-th smallest p-value with alpha / (m - k + 1) and stops at the first that fails."""
    assert holm([0.001, 0.02, 0.04], 0.05) == [True, True, True]  # 0.001<=0.0167, 0.02<=0.025, 0.04<=0.05
    assert holm([0.03, 0.001, 0.04], 0.05) == [False, True, False]  # 0.03 > 0.025 stops the procedure
    assert holm([0.2, 0.3], 0.05) == [False, False]


def test_ks_on_constant_features():
    """Identical constants: no gap, p = 1. A constant that changed value: the largest gap there is."""
    statistic, p = ks_test(np.zeros((50, 2)), np.column_stack([np.zeros(30), np.ones(30)]))
    assert statistic.tolist() == [0.0, 1.0] and p[0] == 1.0 and p[1] < 1e-10


def test_ks_where_the_exact_p_value_fails_says_nothing_on_stderr():
    """300 counts against 300, one row apart (a hotel table's previous cancellations): SciPy's exact p-value does not
    converge and it warned on stderr, in the middle of the run's output. The asymptotic p-value is the answer."""
    import warnings

    one_apart = np.zeros((300, 1))
    one_apart[0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistic, p = ks_test(one_apart, np.zeros((300, 1)))
    assert statistic[0] == pytest.approx(1 / 300) and p[0] == 1.0


def test_a_flagged_feature_under_the_drift_share_is_said_as_flagged():
    """No drift, as drift.min_share asks for more, but one feature flagged: the line said it was not significant."""
    from lepton.models.drift import DriftReport, FeatureDrift

    report = DriftReport([FeatureDrift("a", "ks", 0.5, 1e-12, True), FeatureDrift("b", "ks", 0.1, 0.4, False)], None, False, None, 300, 100)
    assert report.message() == "no drift in 2 features or the label (100 rows against 300 of the history; 1 flagged (a), fewer than drift.min_share of the features)"


def test_constant_feature_in_an_increment():
    """A feature constant in history and increment is tested and not flagged; one that jumps to another constant is."""
    history = gaussian(1000, 0).assign(const=3.0, jumps=0.0)
    increment = gaussian(200, 1).assign(const=3.0, jumps=5.0)
    report = measure(history, increment, label="y", config=DEFAULT)
    by_name = {f.feature: f for f in report.features}
    assert by_name["const"].statistic == 0.0 and by_name["const"].p_value == 1.0 and not by_name["const"].drifted
    assert by_name["jumps"].drifted and report.drifted_features == ["jumps"]


@pytest.mark.parametrize("seed", range(3))
def test_mean_shift_flags_exactly_the_shifted_features(seed):
    """Three of 64 features moved by half a standard deviation: those three, and no other, drift."""
    shifted = {"f3": 0.5, "f17": -0.5, "f40": 0.5}
    report = measure(gaussian(2000, seed), gaussian(300, 100 + seed, shifted), label="y", config=DEFAULT)
    assert set(report.drifted_features) == set(shifted)
    assert report.drifted and report.action == "compete"  # the default
    assert all(f.test == "ks" for f in report.features) and len(report.features) == 64
    assert report.share == pytest.approx(3 / 64)


def test_same_distribution_rarely_alarms():
    """Gaussian data, history and increment from the same distribution: at p_value=0.01 (family-wise)
    at most 2 of 60 seeds may alarm (expected 0.6; 3 or more has probability 2% under a correct 1%)."""
    alarms = [seed for seed in range(60) if measure(gaussian(1000, seed), gaussian(200, 1000 + seed), label="y", config=DEFAULT).drifted]
    assert len(alarms) <= 2, alarms


def test_digits_from_one_distribution_do_not_drift():
    """The digits cut at random into five increments: no increment drifts against those before it, over 10 shuffles."""
    alarms = []
    for seed in range(10):
        parts = digits_parts(seed)
        for k in range(1, 5):
            report = measure(pd.concat(parts[:k]), parts[k], label="digit", config=DEFAULT)
            assert len(report.features) == 64 and report.label is not None
            if report.drifted:
                alarms.append((seed, k, report.message()))
    assert alarms == []


def test_class_incremental_digits_are_not_drift():
    """The demo's increments bring only new classes: nothing to compare, so nothing is flagged, and the new classes are named."""
    increments = class_incremental()
    for k in range(1, len(increments)):
        report = measure(pd.concat(increments[:k]), increments[k], label="digit", config=DEFAULT)
        assert not report.drifted and report.features == [] and report.label is None
        assert report.new_classes == sorted(increments[k]["digit"].unique().tolist())
        assert "only classes never seen before" in report.message()


def test_new_classes_are_left_out_of_the_comparison():
    """An increment with a known class (same distribution) and a new class (very different): no drift."""
    parts = digits_parts(0)
    history = parts[0][parts[0]["digit"] < 5]
    known = parts[1][parts[1]["digit"] < 5]
    novel = parts[1][parts[1]["digit"] >= 5]
    report = measure(history, pd.concat([known, novel]), label="digit", config=DEFAULT)
    assert not report.drifted
    assert report.current_rows == len(known) and report.new_classes == [5, 6, 7, 8, 9]


def test_shifted_digits_flag_the_shifted_pixels():
    """Four pixels made brighter in one increment: exactly those four drift, over several shuffles."""
    for seed in range(5):
        parts = digits_parts(seed)
        report = measure(pd.concat(parts[:4]), shift_pixels(parts[4]), label="digit", config=DEFAULT)
        assert set(report.drifted_features) == set(SHIFTED), (seed, report.message())


def test_unseen_category_drifts():
    """A categorical feature where a third of the increment holds a category the history never had: chi-square and PSI both flag it."""
    rng = np.random.default_rng(0)
    history = pd.DataFrame({"colour": rng.choice(["red", "green"], 1000), "x": rng.normal(size=1000), "y": rng.integers(0, 2, 1000)})
    increment = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], 300, p=[0.35, 0.35, 0.3]), "x": rng.normal(size=300), "y": rng.integers(0, 2, 300)})
    chi2 = measure(history, increment, label="y", config=DEFAULT)
    colour = next(f for f in chi2.features if f.feature == "colour")
    assert colour.test == "chi2" and colour.drifted and colour.p_value < 1e-10
    assert chi2.drifted_features == ["colour"]
    by_psi = measure(history, increment, label="y", config=DriftConfig(categorical_test="psi"))
    colour = next(f for f in by_psi.features if f.feature == "colour")
    assert colour.test == "psi" and colour.p_value is None and colour.statistic > 0.25 and colour.drifted
    # The same categories in the same shares: no drift either way.
    same = pd.DataFrame({"colour": rng.choice(["red", "green"], 300), "x": rng.normal(size=300), "y": rng.integers(0, 2, 300)})
    assert not measure(history, same, label="y", config=DEFAULT).drifted
    assert not measure(history, same, label="y", config=DriftConfig(categorical_test="psi")).drifted


def test_declared_categorical_numeric_feature_uses_chi2():
    """An integer code listed in drift.categorical is compared as categories."""
    history = gaussian(500, 0).assign(code=np.tile([1, 2, 3, 4, 5], 100))
    increment = gaussian(200, 1).assign(code=np.tile([1, 2, 3, 4, 5], 40))
    report = measure(history, increment, label="y", config=DriftConfig(categorical=["code"]))
    code = next(f for f in report.features if f.feature == "code")
    assert code.test == "chi2" and code.p_value > 0.5 and not code.drifted


def test_chi2_pools_rare_categories_and_handles_one_category():
    """Categories with under five rows share a bucket; one category on both sides is no evidence of anything."""
    assert chi2_test(np.array([[100.0], [40.0]])) == (0.0, 1.0)
    pooled = chi2_test(np.array([[50.0, 50.0, 1.0, 0.0], [20.0, 20.0, 0.0, 2.0]]))
    assert pooled[1] > 0.05
    assert psi(np.array([[50.0, 50.0], [50.0, 50.0]])) == pytest.approx(0.0)


def test_label_shift_over_known_classes():
    """The known classes' mix moved from uniform to 70/20/10: the label drifts, the features (class by class) do not."""
    history = gaussian(3000, 0)
    rng = np.random.default_rng(5)
    increment = gaussian(400, 1).assign(y=rng.choice([0, 1, 2], 400, p=[0.7, 0.2, 0.1]))
    report = measure(history, increment, label="y", config=DEFAULT)
    assert report.label is not None and report.label.feature == "y" and report.label.test == "chi2"
    assert report.label_drifted and report.drifted and report.drifted_features == []
    assert report.rows()[-1] == {**report.label.as_dict(), "label": True}


def test_class_mix_change_is_label_drift_not_feature_drift():
    """Digits with most of classes 5-9 left out: the pixels' distribution moves with the class mix, but class by class
    nothing changed, so only the label drifts (the history is sampled to the increment's mix)."""
    for seed in range(3):
        parts = digits_parts(seed)
        rest = parts[4]
        increment = pd.concat([rest[rest["digit"] < 5], rest[rest["digit"] >= 5].sample(frac=0.2, random_state=seed)])
        report = measure(pd.concat(parts[:4]), increment, label="digit", config=DEFAULT)
        assert report.label_drifted and report.drifted_features == [], report.message()


def test_a_vanished_class_is_drift_only_with_a_fixed_label_set():
    """History of classes 0-2, an increment of classes 0 and 1 in equal shares: label drift only when the label set is fixed."""
    history = gaussian(3000, 0)
    increment = gaussian(400, 1).assign(y=np.tile([0, 1], 200))
    assert not measure(history, increment, label="y", config=DEFAULT).drifted
    fixed = measure(history, increment, label="y", config=DEFAULT, fixed_classes=True)
    assert fixed.label_drifted


def test_tiny_increment_is_not_tested():
    """Fewer rows of known classes than drift.min_rows: not measured, with the reason, and nothing flagged."""
    report = measure(gaussian(1000, 0), gaussian(12, 1), label="y", config=DEFAULT)
    assert not report.drifted and report.features == [] and "12 rows of known classes, fewer than drift.min_rows=20" in report.skipped


def test_min_share_needs_that_many_features():
    """With drift.min_share=0.1, three drifted features of 64 (5%) are reported but do not make the increment drifted."""
    shifted = {"f3": 1.0, "f17": 1.0, "f40": 1.0}
    report = measure(gaussian(2000, 0), gaussian(300, 1, shifted), label="y", config=DriftConfig(min_share=0.1))
    assert set(report.drifted_features) == set(shifted) and not report.drifted and report.action is None


def test_reference_matches_the_increment_class_mix_and_is_deterministic():
    """The history sample has the increment's class proportions, at most the cap, and is the same every time."""
    history = gaussian(20000, 0)
    increment = gaussian(400, 1).assign(y=np.repeat([0, 1, 2], [200, 150, 50]))
    a = matched_reference(history, increment, "y", 800, np.random.default_rng(0))
    b = matched_reference(history, increment, "y", 800, np.random.default_rng(0))
    assert a.index.equals(b.index) and len(a) == 800
    assert a["y"].value_counts().to_dict() == {0: 400, 1: 300, 2: 100}
    report_a = measure(history, increment, label="y", config=DEFAULT)
    report_b = measure(history, increment, label="y", config=DEFAULT)
    assert report_a.rows() == report_b.rows()


def test_a_class_rare_in_the_history_does_not_leave_the_features_untested():
    """The history holds one row of class 2, the increment 30: matched on all classes, the sample would be 5 rows and no
    feature tested; class 2 is left out of the comparison, and the features are tested on classes 0 and 1."""
    history = gaussian(400, 0, classes=2)
    history.loc[0, "y"] = 2
    increment = gaussian(150, 1, classes=2)
    increment.loc[:29, "y"] = 2
    report = measure(history, increment, label="y", config=DEFAULT)
    assert report.skipped is None and len(report.features) == 64
    assert report.current_rows == 120 and report.reference_rows >= DEFAULT.min_rows


def test_missing_history_column_is_named():
    with pytest.raises(ValueError, match="no column"):
        measure(gaussian(100, 0).drop(columns=["f5"]), gaussian(100, 1), label="y", config=DEFAULT)


def test_64_features_against_a_large_history_is_fast():
    """An increment of 400 rows x 64 features against 200,000 history rows: the capped sample keeps it under 3 s."""
    history = gaussian(200_000, 0)
    increment = gaussian(400, 1)
    started = time.perf_counter()
    report = measure(history, increment, label="y", config=DEFAULT)
    seconds = time.perf_counter() - started
    print(f"drift of 64 features against 200,000 rows: {seconds:.2f}s")
    assert report.reference_rows <= DEFAULT.reference_cap and len(report.features) == 64
    assert seconds < 3.0


def test_a_numeric_target_compares_every_labelled_row_and_tests_the_target_itself():
    """Regression: the features are compared on every labelled row (not on rows whose float label happens to equal one
    seen before, a handful), and the target's own distribution is tested with KS."""

    def table(n: int, seed: int, offset: float = 0.0) -> pd.DataFrame:
        r = np.random.default_rng(seed)
        frame = pd.DataFrame(r.normal(size=(n, 3)), columns=["a", "b", "c"])
        frame["y"] = (frame["a"] * 2 + r.normal(size=n) * 0.1 + offset).round(3)
        return frame

    history, same, higher = table(600, 1), table(200, 2), table(200, 3, offset=3.0)
    steady = measure(history, same, label="y", config=DEFAULT, regression=True)
    assert steady.current_rows == 200 and steady.reference_rows == 600 and len(steady.features) == 3
    assert steady.label is not None and steady.label.test == "ks" and not steady.drifted and steady.new_classes == []
    moved = measure(history, higher, label="y", config=DEFAULT, regression=True)
    assert moved.label_drifted and moved.drifted_features == [] and "the target 'y' drifted (ks " in moved.message()
    # Read as classes, almost no float label of the increment was seen before: nothing is left to compare.
    as_classes = measure(history, same, label="y", config=DEFAULT)
    assert as_classes.current_rows < 20 and as_classes.skipped is not None


def test_respond_plans_replay_and_joint():
    """replay adds replay_share earlier rows per new row (not remembered again); joint trains on everything from scratch."""
    new, earlier = gaussian(100, 0), gaussian(1000, 1)
    assert respond("warn", new, earlier, replay_share=1.0).frame is new
    replay = respond("replay", new, earlier, replay_share=0.5, seed=3)
    assert replay.frame is new and len(replay.rehearse) == 50 and replay.warm_start
    assert replay.rehearse.equals(respond("replay", new, earlier, replay_share=0.5, seed=3).rehearse)
    assert len(respond("replay", new, earlier.head(20), replay_share=1.0).rehearse) == 20
    joint = respond("joint", new, earlier, replay_share=1.0)
    assert len(joint.frame) == 1100 and not joint.warm_start and joint.rehearse is None and "1100" in joint.note
    compete = respond("compete", new, earlier, replay_share=1.0)
    assert compete.frame is new and compete.warm_start and compete.rehearse is None
    assert len(compete.rival) == 1100 and "1100" in compete.note
    assert respond("compete", new, None, replay_share=1.0).rival is None  # nothing earlier: nothing to compete with
    capped = respond("compete", new, earlier, replay_share=1.0, retrain_rows=300)
    assert capped.rival.equals(pd.concat([earlier, new], ignore_index=True).tail(300).reset_index(drop=True))  # the latest rows
    assert "300 most recent of 1100" in capped.note and "train.retrain_rows=300" in capped.note
    # The gate's fallback after a replay plan: the rival is added, the replay and its note kept.
    from lepton.models.drift import with_rival

    fallback = with_rival(replay, earlier, retrain_rows=None, why="gate.fallback=retrain")
    assert fallback.rehearse is replay.rehearse and fallback.frame is new and len(fallback.rival) == 1100
    assert fallback.note == f"{replay.note}; gate.fallback=retrain: a new network trained on all 1100 accepted training rows competes with the fine-tuned candidate"


def _scores(correct: dict[str, list[int]]):
    from lepton.models.evaluation import Score

    return {k: Score(correct=np.array(v, dtype=bool), accuracy=float(np.mean(v)), macro_f1=None) for k, v in correct.items()}


def test_the_retrained_rival_wins_when_the_gate_passes_it_alone_or_it_is_strictly_better():
    """The network the gate passes wins; when it passes both or neither, compete pools the holdouts the gate judges row
    by row, a tie keeps the fine-tuned candidate, and after a concept change at this increment only the new holdout counts."""
    from lepton.config import GateConfig
    from lepton.models.evaluation import Evaluation
    from lepton.tasks.training import rival_wins

    gate = GateConfig()
    fine_tuned = Evaluation("new", _scores({"old": [1] * 10, "new": [1] * 6 + [0] * 4}), None)
    rival = Evaluation("new", _scores({"old": [1] * 6 + [0] * 4, "new": [1] * 9 + [0]}), None)
    won, why = rival_wins(fine_tuned, rival, gate, None, True, True)
    assert not won and why == "the fine-tuned candidate goes to the gate (accuracy 80.0% against the retrained network's 75.0% on the 20 rows of the holdouts the gate judges)"
    won, why = rival_wins(fine_tuned, rival, gate, "new", False, False)
    assert won and why == "the retrained network goes to the gate (accuracy 90.0% against the fine-tuned 60.0% on the 10 rows of the holdouts the gate judges)"
    assert not rival_wins(fine_tuned, fine_tuned, gate, None, True, True)[0]
    # Better pooled, but the gate keeps it out where it passes the fine-tuned one (say, it forgets): the passing one wins.
    won, why = rival_wins(fine_tuned, rival, gate, "new", True, False)
    assert not won and why == "the fine-tuned candidate goes to the gate: it passes and the retrained network does not (accuracy 90.0% against the fine-tuned 60.0% on the 10 rows of the holdouts the gate judges)"
    won, why = rival_wins(fine_tuned, rival, gate, None, False, True)
    assert won and why == "the retrained network goes to the gate: it passes and the fine-tuned candidate does not (accuracy 75.0% against the fine-tuned 80.0% on the 20 rows of the holdouts the gate judges)"


def test_drift_hurts_when_the_champion_does_worse_on_the_new_holdout_than_the_margin_allows():
    """compete trains its rival only for drift the champion does not cope with (or a fine-tuned candidate that failed):
    its score on the new holdout's rows of classes it knows, before training, against the earlier holdouts the gate
    judges. New classes alone are not such drift."""
    from lepton.config import GateConfig, StrategyConfig, TrainConfig
    from lepton.models.evaluation import score_holdouts
    from lepton.models.training import fine_tune
    from lepton.tasks.training import drift_hurts

    def rows(n: int, seed: int, flip: float = 0.0) -> pd.DataFrame:
        """y is 'a' where x > 0, else 'b'; a share ``flip`` of the labels swapped."""
        r = np.random.default_rng(seed)
        x = r.normal(size=n)
        y = np.where(x > 0, "a", "b")
        return pd.DataFrame({"x": x, "y": np.where(r.random(n) < flip, np.where(y == "a", "b", "a"), y)})

    champion, _ = fine_tune(None, rows(400, 1), label="y", train=TrainConfig(epochs=20), strategy=StrategyConfig(name="naive"))
    gate = GateConfig()  # margin 0.02

    def judged(new: pd.DataFrame, change_at: str | None = None) -> tuple[bool, str]:
        holdouts = {"old": rows(100, 2), "new": new}
        return drift_hurts(champion, holdouts, score_holdouts(champion, holdouts, "y", new_id="new"), "new", "y", gate, change_at)

    same = judged(rows(100, 3))
    assert not same[0] and same[1].startswith("the champion copes with this drift (its accuracy "), same[1]
    hurt, how = judged(rows(100, 4, flip=0.3))
    assert hurt and how.startswith("the drift hurts the champion (its accuracy ") and how.endswith("on the earlier holdouts; gate.margin=0.02)"), how
    unknown = pd.DataFrame({"x": np.linspace(-1, 1, 20), "y": ["c"] * 20})
    assert judged(unknown) == (False, "the new holdout holds only classes the champion does not know")
    assert not judged(pd.concat([rows(100, 3), unknown], ignore_index=True))[0]  # the known rows decide
    # A concept change at this increment: the champion's rule is the old one.
    assert judged(rows(100, 3), change_at="new") == (True, "the concept changed at this increment")
    assert judged(rows(0, 3)) == (False, "the new holdout holds no rows to judge the drift's harm on")


def test_the_training_note_is_a_version_tag_and_reads_back():
    """What changed in training (compete, the gate's fallback) is tagged on the version, and only when something did."""
    from lepton.lineage import Lineage

    note = "gate.fallback=retrain: a new network trained on all 900 accepted training rows competes with the fine-tuned candidate"
    lineage = Lineage("i", "f", "h.dir", "c", 3, "der+nme", training=note)
    assert lineage.tags()["lepton.training"] == note
    assert Lineage.from_tags(lineage.tags()).training == note
    assert "lepton.training" not in Lineage("i", "f", "h.dir", "c", 3, "der+nme").tags()


# -- the flow ----------------------------------------------------------------------------

QUICK = ["train.epochs=5", "gate.bootstrap_samples=200"]
DIGITS = {"data": {"bounds": {"*": [0, 16]}}}


@pytest.fixture(scope="module")
def drift_runs(tmp_path_factory, prefect_api):
    """A digits workspace: a first increment, a clean one, then shifted ones under block (CLI), warn, joint, replay and compete."""
    from lepton.flows.continual import continual_training
    from tests.conftest import make_workspace, run_cli

    root = tmp_path_factory.mktemp("drift-ws")
    ws = make_workspace(root, "digit", "drifting", DIGITS)
    landing = tmp_path_factory.mktemp("drift-landing")
    shuffled = digits_frame().sample(frac=1.0, random_state=0).reset_index(drop=True)
    cuts = {"first": (0, 720), "clean": (720, 1080), "block": (1080, 1260), "warn": (1260, 1440), "joint": (1440, 1560), "replay": (1560, 1680), "compete": (1680, 1797)}
    files = {}
    for name, (lo, hi) in cuts.items():
        frame = shuffled.iloc[lo:hi].reset_index(drop=True)
        files[name] = landing / f"{name}.parquet"
        # compete's increment is shifted hard enough that the champion does worse on it (drift it does not cope with).
        shifted = shift_pixels(frame, HEAVY, by=10) if name == "compete" else shift_pixels(frame)
        (frame if name in ("first", "clean") else shifted).to_parquet(files[name], index=False)
    # Rows the champion learnt, a few pixels brighter: drift it copes with.
    files["compete-mild"] = landing / "compete-mild.parquet"
    shift_pixels(shuffled.iloc[:240].reset_index(drop=True)).to_parquet(files["compete-mild"], index=False)

    from tests.test_flow import registry

    outcomes, champions = {}, {}
    for name in ("first", "clean"):
        outcomes[name] = continual_training(str(files[name]), str(ws.root), QUICK)
    champions["block"] = registry(ws)[2]
    blocked = run_cli(["run", str(files["block"]), "--workspace", str(ws.root), "--json", *sum((["--set", o] for o in [*QUICK, "drift.action=block"]), [])], api_url=prefect_api)
    champions["after_block"] = registry(ws)[2]
    for name in ("warn", "joint", "replay", "compete", "compete-mild"):
        outcomes[name] = continual_training(str(files[name]), str(ws.root), [*QUICK, f"drift.action={name.split('-')[0]}"])
    yield {"ws": ws, "files": files, "outcomes": outcomes, "blocked": blocked, "champions": champions}
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_first_and_clean_increments(drift_runs):
    """The first increment has nothing to compare with; a clean second one is compared on all 64 features and the label, and nothing drifts."""
    first, clean = drift_runs["outcomes"]["first"], drift_runs["outcomes"]["clean"]
    assert first.drift is None and first.drift_action is None
    assert first.drift_skipped.startswith("the first increment") and clean.drift_skipped is None  # why, in the summary and the report
    assert clean.status in ("promoted", "kept_out") and clean.drift_action is None
    assert len(clean.drift) == 65 and not any(row["drifted"] for row in clean.drift)
    assert all(set(row) == {"feature", "test", "statistic", "p_value", "drifted", "label"} for row in clean.drift)
    assert clean.drift[-1]["feature"] == "digit" and clean.drift[-1]["test"] == "chi2" and clean.drift[-1]["label"]
    assert not any(row["label"] for row in clean.drift[:-1])


@pytest.mark.integration
def test_block_rejects_quarantines_and_keeps_the_champion(drift_runs):
    """drift.action=block: exit 2, the shifted pixels named, the file in quarantine, the champion unchanged."""
    result, ws = drift_runs["blocked"], drift_runs["ws"]
    assert result.returncode == 2, result.stdout + result.stderr
    outcome = json.loads(result.stdout)  # --json: the outcome and nothing else on stdout
    last = outcome["message"]
    assert last.startswith("rejected because drift against the accepted history") and all(c in last for c in SHIFTED)
    quarantined = list((ws.data / "quarantine").glob("*.parquet"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == drift_runs["files"]["block"].read_bytes()
    reasons = json.loads(quarantined[0].with_name(quarantined[0].name + ".reasons.json").read_text())["reasons"]
    assert "drift.action=block" in reasons[0]
    assert drift_runs["champions"]["after_block"] == drift_runs["champions"]["block"]
    assert [r.state for r in ws.read_manifest().increments].count("rejected") == 1
    assert outcome["drift_action"] == "block"
    assert {row["feature"] for row in outcome["drift"] if row["drifted"]} == set(SHIFTED)


@pytest.mark.integration
def test_warn_carries_on_and_logs_to_mlflow(drift_runs):
    """drift.action=warn: trained and gated as usual, the drift in the outcome and on the candidate's run (metrics and drift.json)."""
    from tests.test_flow import registry

    outcome = drift_runs["outcomes"]["warn"]
    assert outcome.status in ("promoted", "kept_out") and outcome.version is not None
    assert outcome.drift_action == "warn"
    assert {row["feature"] for row in outcome.drift if row["drifted"]} == set(SHIFTED)
    client, name, _ = registry(drift_runs["ws"])
    run_id = client.get_model_version(name, str(outcome.version)).run_id
    run = client.get_run(run_id)
    rows = {row["feature"]: row for row in outcome.drift}
    for pixel in SHIFTED:
        assert run.data.metrics[f"drift.{pixel}.drifted"] == 1.0
        assert run.data.metrics[f"drift.{pixel}.p_value"] == pytest.approx(rows[pixel]["p_value"])
        assert run.data.metrics[f"drift.{pixel}.statistic"] == pytest.approx(rows[pixel]["statistic"])
    assert run.data.metrics["drift.drifted_features"] == len(SHIFTED)
    assert run.data.tags["lepton.drift_action"] == "warn"
    document = json.loads(Path(client.download_artifacts(run_id, "report/drift.json")).read_text())
    assert document["drifted_features"] == [c for c in rows if rows[c]["drifted"] and c != "digit"]
    assert document["tests"] == outcome.drift


@pytest.mark.integration
def test_joint_and_replay_train_on_more(drift_runs):
    """joint retrains on every accepted training row; replay rehearses earlier rows: both step on more samples than warn."""
    from lepton.models.splits import split
    from tests.test_flow import registry

    outcomes, ws = drift_runs["outcomes"], drift_runs["ws"]
    client, name, _ = registry(ws)

    def run_of(key):
        version = client.get_model_version(name, str(outcomes[key].version))
        return client.get_run(version.run_id)

    samples = {key: run_of(key).data.metrics["train_samples"] for key in ("warn", "joint", "replay")}
    print(f"train_samples by drift.action: {samples}")
    assert outcomes["joint"].drift_action == "joint" and outcomes["replay"].drift_action == "replay"
    # Joint: every accepted increment's training part (block's was rejected), every epoch.
    accepted = [pd.read_parquet(drift_runs["files"][k]) for k in ("first", "clean", "warn", "joint")]
    rows = sum(len(split(f, 0.2)[0]) for f in accepted)
    assert samples["joint"] >= 5 * rows
    assert "retraining from scratch" in run_of("joint").data.tags["lepton.drift_training"]
    # Replay: as many earlier rows as new ones (replay_share=1), so about twice the warn run's samples (same increment size).
    assert samples["replay"] > 1.8 * samples["warn"] * len(pd.read_parquet(drift_runs["files"]["replay"])) / len(pd.read_parquet(drift_runs["files"]["warn"]))
    assert "rehearsed" in run_of("replay").data.tags["lepton.drift_training"]


@pytest.mark.integration
def test_compete_registers_the_network_it_says_went_to_the_gate(drift_runs):
    """Drift the champion does not cope with: compete trains the fine-tuned candidate and a new network on every accepted
    training row; the note names the one that went to the gate with both scores, and the registered version is that one
    (its samples say which)."""
    import re

    from lepton.models.splits import split
    from tests.test_flow import registry

    outcome, ws = drift_runs["outcomes"]["compete"], drift_runs["ws"]
    assert outcome.drift_action == "compete" and outcome.status in ("promoted", "kept_out")
    client, name, _ = registry(ws)
    run = client.get_run(client.get_model_version(name, str(outcome.version)).run_id)
    note = run.data.tags["lepton.drift_training"]
    print(note)
    assert note == outcome.training_note
    assert "competes with the fine-tuned candidate" in note
    accepted = [pd.read_parquet(drift_runs["files"][k]) for k in ("first", "clean", "warn", "joint", "replay", "compete")]
    everything = sum(len(split(f, 0.2)[0]) for f in accepted)
    samples = run.data.metrics["train_samples"]
    shown = re.search(r"accuracy ([\d.]+)% against the (?:fine-tuned|retrained network's) ([\d.]+)%", note)
    assert shown is not None, note
    by_score = "it passes and" not in note  # else the gate passed one of them only, and that one went
    if "the retrained network goes to the gate" in note:
        assert not by_score or float(shown[1]) > float(shown[2])
        assert samples >= 5 * everything  # a new network, every accepted training row, every epoch
    else:
        assert "the fine-tuned candidate goes to the gate" in note and (not by_score or float(shown[1]) >= float(shown[2]))
        assert samples < 5 * everything


@pytest.mark.integration
def test_compete_trains_no_rival_for_drift_the_champion_copes_with(drift_runs):
    """Rows the champion learnt, a few pixels brighter: drift, but the champion scores on them as on the earlier
    holdouts and the fine-tuned candidate passes, so no new network is trained; the note says why, with the scores."""
    outcome = drift_runs["outcomes"]["compete-mild"]
    assert outcome.drift_action == "compete" and outcome.status == "promoted", outcome.message
    assert outcome.training_note.startswith("drift.action=compete: no new network trained: the champion copes with this drift (its accuracy "), outcome.training_note
    assert outcome.training_note.endswith("gate.margin=0.02), and the fine-tuned candidate passed the gate")


def test_rehearsed_rows_are_trained_on_but_not_remembered():
    """fine_tune(rehearse=...): more samples stepped on, while the scaler and the replay memory count only the new rows."""
    import torch

    from lepton.config import StrategyConfig, TrainConfig
    from lepton.models.training import fine_tune

    torch.set_num_threads(1)
    parts = digits_parts(0)
    train, strategy = TrainConfig(epochs=2, hidden=[16], device="cpu"), StrategyConfig(name="replay")
    champion, _ = fine_tune(None, parts[0], label="digit", train=train, strategy=strategy)
    plain, plain_report = fine_tune(champion, parts[1], label="digit", train=train, strategy=strategy)
    rehearsed, report = fine_tune(champion, parts[1], label="digit", train=train, strategy=strategy, rehearse=parts[0].head(100))
    assert report.train_samples == plain_report.train_samples + 2 * 2 * 100  # 100 rows, paired with memory, 2 epochs
    assert report.new_samples == plain_report.new_samples == len(parts[1])
    assert rehearsed.preprocessor.count == plain.preprocessor.count == len(parts[0]) + len(parts[1])
    seen = {k: v for k, v in rehearsed.strategy_state.items() if k.endswith("seen_counts")}
    assert all(np.array_equal(v, plain.strategy_state[k]) for k, v in seen.items()) and seen


def test_block_turns_drift_into_a_failed_validation():
    """with_drift fails the validation report only for a drifted increment under drift.action=block, naming the features."""
    from lepton.tasks.drift import with_drift
    from lepton.validation import ValidationReport

    passed = ValidationReport(passed=True, rows=300, expectations=10)
    shifted = gaussian(300, 1, {"f3": 1.0})
    blocked = with_drift(passed, measure(gaussian(2000, 0), shifted, label="y", config=DriftConfig(action="block")))
    assert not blocked.passed and "f3" in blocked.problems[0] and "drift.action=block" in blocked.problems[0]
    assert with_drift(passed, measure(gaussian(2000, 0), shifted, label="y", config=DEFAULT)) is passed
    assert with_drift(passed, measure(gaussian(2000, 0), gaussian(300, 2), label="y", config=DriftConfig(action="block"))) is passed
    assert with_drift(passed, None) is passed


def test_drift_metrics_are_flat_and_valid_mlflow_keys():
    """Per test a statistic and a flag (a p-value unless PSI), keys MLflow accepts whatever the column is called."""
    from lepton.tasks.drift import drift_metrics, metric_key

    assert metric_key("price (€)/m²") == "price ___/m_"
    frame = gaussian(300, 0).rename(columns={"f0": "width (cm)"}).assign(colour=np.tile(["a", "b", "c"], 100))
    report = measure(gaussian(2000, 1).rename(columns={"f0": "width (cm)"}).assign(colour=np.tile(["a", "b"], 1000)), frame, label="y", config=DriftConfig(categorical_test="psi"))
    metrics = drift_metrics(report)
    assert "drift.width _cm_.p_value" in metrics and "drift.colour.statistic" in metrics and "drift.colour.p_value" not in metrics
    assert metrics["drift.colour.drifted"] == 1.0 and metrics["drift.drifted"] == 1.0
    assert len([k for k in metrics if k.endswith(".statistic")]) == 66  # 65 features and the label


def test_drift_settings_reach_overrides_and_deployment_parameters():
    """--set drift.action=block and the deployments' typed parameters get the drift section, validated."""
    from prefect.utilities.callables import parameter_schema

    from lepton.config import ConfigError, ConfigOverrides, parse
    from lepton.flows.deployments import run_increment

    overrides = ConfigOverrides.from_list(["drift.action=block", "drift.p_value=0.05"])
    config = parse({"data": {"label": "y"}}, overrides.to_list())
    assert config.drift.action == "block" and config.drift.p_value == 0.05
    with pytest.raises(ConfigError, match="drift.action"):
        ConfigOverrides.from_list(["drift.action=retrain"])
    schema = json.dumps(parameter_schema(run_increment).model_dump())
    assert "DriftOverrides" in schema and "replay_share" in schema


def test_joint_replays_exactly_the_training_rows_the_split_keeps():
    """drift.action=joint retrains on the earlier increments' training rows as split_increments splits them: with
    data.duplicates=drop, no copy of an earlier holdout row is trained on (the forgetting check would be inflated)."""
    from lepton.config import LeptonConfig
    from lepton.models.drift import DriftReport
    from lepton.tasks.drift import plan_training
    from lepton.tasks.splits import History, split_increments

    rng = np.random.default_rng(0)
    base = pd.DataFrame({"a": rng.integers(0, 6, 300), "b": rng.integers(0, 6, 300), "y": rng.integers(0, 2, 300)})
    earlier = pd.concat([base, base.sample(200, random_state=1)], ignore_index=True)  # repeats
    new = pd.DataFrame({"a": rng.integers(0, 6, 100), "b": rng.integers(0, 6, 100), "y": rng.integers(0, 2, 100)})
    config = LeptonConfig(data={"label": "y", "duplicates": "drop"}, drift={"action": "joint"})
    history = History({"old": earlier, "new": new})
    train, holdouts = split_increments.fn(history, "new", config.data)
    drift = DriftReport([], None, True, "joint", 0, 0)
    plan = plan_training.fn(history, drift, "new", train, config)
    held = set(map(tuple, holdouts["old"].to_numpy().tolist()))
    trained = set(map(tuple, plan.frame.to_numpy().tolist()))
    assert len(plan.frame) > len(train) and not held & trained


def test_joint_retrains_once_on_increments_the_candidate_learns_already():
    """Increments the gate kept out are learnt with the new one (split_increments' ``also``): joint training on
    drift adds the other earlier increments, not those a second time."""
    from lepton.config import LeptonConfig
    from lepton.models.drift import DriftReport
    from lepton.models.splits import split
    from lepton.tasks.drift import plan_training
    from lepton.tasks.splits import History, split_increments

    rng = np.random.default_rng(1)
    frames = {k: pd.DataFrame({"a": rng.normal(size=100), "y": rng.integers(0, 2, 100)}) for k in ("first", "kept-out", "new")}
    config = LeptonConfig(data={"label": "y"}, drift={"action": "joint"})
    history = History(frames)
    train, _ = split_increments.fn(history, "new", config.data, also=["kept-out"])
    plan = plan_training.fn(history, DriftReport([], None, True, "joint", 0, 0), "new", train, config, ["kept-out"])
    assert len(plan.frame) == sum(len(split(f, 0.2)[0]) for f in frames.values())  # each training part once
    assert not plan.frame.duplicated().any()


def test_a_rival_for_harmful_drift_trains_beside_the_fine_tune_in_a_fresh_process(clean_dir, prefect_api):
    """`lepton run` has trained nothing when it reaches an increment whose drift hurts the champion (pixel noise on
    digits that were constant, as the commands benchmark's first run of the day): the rival trains in a forked
    process while the fine-tune runs, and the run goes on with it as with one trained after."""
    from benchmarks.commands import increments
    from tests.conftest import make_workspace, run_cli

    ws = make_workspace(clean_dir / "ws", "digit", "aside")
    first, _, noisy = increments(clean_dir)
    outcomes = []
    for path in (first, noisy):
        done = run_cli(["run", str(path), "--workspace", str(ws.root), "--json", "--set", "train.epochs=10"], api_url=prefect_api)
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes.append(json.loads(done.stdout))
    note = outcomes[1]["training_note"]
    assert "competes with the fine-tuned candidate, as the concept changed at this increment" in note, note
    log = (ws.state / "logs" / "lepton.log").read_text()
    assert re.search(r"retrain.* - trained in process \d+ beside the fine-tune \(\d+\.\d s of training\)", log), log[-3000:]
    assert "the training beside the fine-tune failed" not in log
    # Great Expectations imported in a child while the command imported the pipeline: both increments validated there.
    assert len(re.findall(r"validate.* - validated in process \d+, which imported Great Expectations beside the pipeline", log)) == 2, log[-3000:]
    assert outcomes[1]["status"] == "promoted"


def test_a_rival_learns_no_row_from_before_an_earlier_concept_change():
    """After a concept change the earlier rows follow the old rule: a retrained rival (the gate's fallback, drift's compete)
    learns the rows from the change on, and its note says so; without a change, every accepted row."""
    from lepton.config import parse
    from lepton.models.drift import DriftReport, TrainingPlan
    from lepton.tasks.drift import plan_retraining, plan_training
    from lepton.tasks.splits import History

    config = parse({"data": {"label": "y"}}, [])
    frames = {k: pd.DataFrame({"x": np.arange(100, dtype=float) + 1000 * i, "y": ["a", "b"] * 50}) for i, k in enumerate(["old", "change", "after", "new"])}
    history = History(frames)
    new = frames["new"].head(80)
    since = plan_retraining.fn(TrainingPlan(new), history, "new", config, since="change")
    assert set(since.rival["x"] // 1000) == {1, 2, 3}
    assert "training rows accepted since the concept change at increment change competes" in since.note, since.note
    everything = plan_retraining.fn(TrainingPlan(new), history, "new", config)
    assert set(everything.rival["x"] // 1000) == {0, 1, 2, 3} and "accepted training rows competes" in everything.note
    drift = DriftReport(features=[], label=None, drifted=True, action="compete", reference_rows=300, current_rows=100)
    compete = plan_training.fn(history, drift, "new", new, config, since="change")
    assert set(compete.rival["x"] // 1000) == {1, 2, 3} and compete.note.startswith("drift.action=compete: a new network trained on all ")
    assert "since the concept change at increment change" in compete.note
