"""The promotion gate: floors, non-inferiority (or a significant gain) on new data, bounded forgetting, and its reasons."""

from __future__ import annotations

import numpy as np
import pytest

from lepton.config import GateConfig
from lepton.models.gate import GateDecision, concept_changed, decide, paired_bootstrap_lower, relabelled

CONFIG = GateConfig()  # non-inferiority within 0.02, floor 0.5, max forgetting 0.1, 95% bootstrap
SUPERIOR = GateConfig(policy="superior")  # the candidate must gain more than min_improvement (0)
SKIP = GateConfig(champion_holdouts="skip")  # not compared on the holdouts the champion was chosen on


def correct(n_right: int, n: int = 100) -> np.ndarray:
    """Per-row correctness: the first n_right rows right, the rest wrong."""
    return np.arange(n) < n_right


NONE = np.zeros(0, dtype=bool)


def assert_consistent(decision: GateDecision) -> None:
    """Every decision explains itself and passes exactly when nothing failed."""
    assert decision.reasons
    assert all(isinstance(r, str) and r for r in decision.reasons)
    assert decision.passed == (decision.failures == ())


def test_first_model_passes_on_the_floors() -> None:
    """Without a champion, a candidate above the accuracy floor passes on the floors alone."""
    d = decide(new_candidate=correct(80), new_champion=None, old_candidate=correct(70), old_champion=None, config=CONFIG)
    assert_consistent(d)
    assert d.passed
    assert len(d.reasons) == 3  # new-holdout floor, all-holdouts floor, no champion
    assert "no champion yet: the floors decide" in d.reasons
    # A note, not a check: it says how the verdict was reached, and shows apart from the checks.
    assert d.notes == ("no champion yet: the floors decide",) and d.checks["no champion yet: the floors decide"] is None
    # On a few rows the floors are a rough judge, and the reasons say so.
    few = decide(new_candidate=np.array([True, False]), new_champion=None, old_candidate=NONE, old_champion=None, config=CONFIG)
    assert few.passed and few.reasons[-1] == (
        "no champion yet: the floors decide, on a new holdout of 2 rows (fewer than gate.min_holdout_rows=30: a rough judge)"
    )


def test_first_model_below_the_floor_fails() -> None:
    """Without a champion, a candidate under the floor on the new holdout fails, and that is the only failure."""
    d = decide(new_candidate=correct(30), new_champion=None, old_candidate=NONE, old_champion=None, config=CONFIG)
    assert_consistent(d)
    assert not d.passed
    assert len(d.failures) == 1
    assert d.failures[0].startswith("accuracy on the new holdout 0.300 <")


def test_clearly_better_candidate_passes() -> None:
    """All correct against a champion at half, with no forgetting, passes every check."""
    d = decide(new_candidate=correct(100), new_champion=correct(50), old_candidate=correct(90), old_champion=correct(90), config=CONFIG)
    assert_consistent(d)
    assert d.passed
    assert len(d.reasons) == 5  # two floors, gain on new and earlier holdouts, the new holdout alone, forgetting
    assert any(r.startswith("gain on the new and earlier holdouts: lower 95% bound") and "> -0.020 (point estimate +0.250 over 200 rows;" in r for r in d.reasons)
    assert any(r.startswith("the new holdout alone is within the margin: upper 95% bound of its gain") and r.endswith("(point estimate +0.500)") for r in d.reasons)


def test_identical_candidate_passes_non_inferiority() -> None:
    """A candidate as good as the champion (it has seen more data) is promoted by default: a steady stream keeps learning."""
    same = np.random.default_rng(0).random(100) < 0.7
    d = decide(new_candidate=same, new_champion=same.copy(), old_candidate=correct(80), old_champion=correct(80), config=CONFIG)
    assert_consistent(d)
    assert d.passed
    assert any(r.startswith("gain on the new and earlier holdouts: lower 95% bound +0.000 > -0.020 (point estimate +0.000 over 200 rows; non-inferiority") for r in d.reasons)


def test_one_row_worse_on_a_small_new_holdout_is_not_worse() -> None:
    """One row of 49 lost (2 points on that holdout alone) among 200 rows that follow the same rule: promoted."""
    new_candidate, new_champion = correct(48, 49), correct(49, 49)
    d = decide(new_candidate=new_candidate, new_champion=new_champion, old_candidate=correct(140, 150), old_champion=correct(140, 150), config=CONFIG)
    assert_consistent(d)
    assert d.passed, d.failures
    # Alone, the same new holdout would be judged on the point estimate: -0.020 is the margin exactly, and passes.
    alone = decide(new_candidate=new_candidate, new_champion=new_champion, old_candidate=NONE, old_champion=None, config=CONFIG)
    assert any("cannot resolve the margin on 49 rows: the point estimate decides" in r for r in alone.reasons)


def test_one_row_never_decides_where_the_point_estimate_does() -> None:
    """On 47 rows one row is 2.1 points, more than the margin: a candidate one row worse is not worse, two rows are.
    (Seattle-weather's fourth increment, compared on its new holdout alone under gate.champion_holdouts=skip, was kept out for one row.)"""
    one = decide(new_candidate=correct(39, 47), new_champion=correct(40, 47), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert_consistent(one)
    assert one.passed, one.failures
    assert any(r.startswith("gain on the new holdout -0.021 over 47 rows >= -0.021 (non-inferiority: gate.margin=0.02, one row of 47 at the least)") for r in one.reasons), one.reasons
    two = decide(new_candidate=correct(38, 47), new_champion=correct(40, 47), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert not two.passed and two.failures[0].startswith("gain on the new holdout -0.043 over 47 rows < -0.021"), two.failures
    # Where one row is within the margin, the margin is the bar, as before; under gate.min_holdout_rows too.
    sixty = decide(new_candidate=correct(49, 60), new_champion=correct(50, 60), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert any(r.startswith("gain on the new holdout -0.017 over 60 rows >= -0.020 (non-inferiority: gate.margin=0.02);") for r in sixty.reasons), sixty.reasons
    few = decide(new_candidate=correct(19, 20), new_champion=correct(20, 20), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert few.passed and any(r.startswith("gain on the new holdout -0.050 >= -0.050 (non-inferiority: gate.margin=0.02, one row of 20 at the least)") for r in few.reasons), few.reasons


def test_a_clearly_worse_candidate_is_kept_out() -> None:
    """Ten points worse on 200 rows: the bound lies far below the margin, and that is the one failure."""
    d = decide(new_candidate=correct(160, 200), new_champion=correct(180, 200), old_candidate=correct(80), old_champion=correct(80), config=CONFIG)
    assert_consistent(d)
    assert not d.passed
    assert len(d.failures) == 2
    assert d.failures[0].startswith("gain on the new and earlier holdouts: upper 95% bound") and "< -0.020 (point estimate -0.067 over 300 rows;" in d.failures[0]
    assert d.failures[1].startswith("the new holdout alone is worse than the margin allows: upper 95% bound of its gain") and d.failures[1].endswith("(point estimate -0.100)")


def test_a_small_holdout_says_the_bootstrap_cannot_decide() -> None:
    """Under gate.min_holdout_rows the point estimate decides, and the reasons say why."""
    d = decide(new_candidate=correct(9, 10), new_champion=correct(9, 10), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert d.passed
    assert any("hold 10 rows, too few for the bootstrap" in r and "gate.min_holdout_rows=30" in r for r in d.reasons)
    assert [n for n in d.notes if "too few for the bootstrap" in n] and not [f for f in d.failures if "too few" in f]
    worse = decide(new_candidate=correct(6, 10), new_champion=correct(9, 10), old_candidate=NONE, old_champion=None, config=CONFIG)
    assert not worse.passed and worse.failures[0].startswith("gain on the new holdout -0.300 < -0.100 (non-inferiority: gate.margin=0.02, one row of 10 at the least)")


def test_identical_candidate_and_champion_fail_for_lack_of_gain_when_superior() -> None:
    """policy=superior: a candidate no better than the champion shows no significant gain, and fails on that alone."""
    same = np.random.default_rng(0).random(100) < 0.7
    d = decide(new_candidate=same, new_champion=same.copy(), old_candidate=correct(80), old_champion=correct(80), config=SUPERIOR)
    assert_consistent(d)
    assert not d.passed
    assert len(d.failures) == 1
    assert d.failures[0] == "gain on the new holdout: lower 95% bound +0.000 <= +0.000 (point estimate +0.000)"


def test_gain_with_too_much_forgetting_fails() -> None:
    """A gain on new data does not excuse a drop on old data larger than max_forgetting."""
    d = decide(new_candidate=correct(100), new_champion=correct(50), old_candidate=correct(70), old_champion=correct(95), config=CONFIG)
    assert_consistent(d)
    assert not d.passed
    assert len(d.failures) == 1
    assert "forgetting" in d.failures[0]
    assert "+0.250" in d.failures[0]


def test_forgetting_within_the_allowance_passes() -> None:
    """A drop on old data up to max_forgetting is tolerated when the gain on new data is significant."""
    d = decide(new_candidate=correct(100), new_champion=correct(50), old_candidate=correct(87), old_champion=correct(95), config=CONFIG)
    assert_consistent(d)
    assert d.passed


def test_failures_list_exactly_the_failing_checks() -> None:
    """With a floor and the gain both failing, failures names those two and none of the passing checks."""
    d = decide(new_candidate=correct(30), new_champion=correct(40), old_candidate=correct(90), old_champion=correct(90), config=SUPERIOR)
    assert_consistent(d)
    assert not d.passed
    assert len(d.reasons) == 4
    assert len(d.failures) == 2
    assert d.failures[0].startswith("accuracy on the new holdout")
    assert d.failures[1].startswith("gain on the new holdout")
    passing = [r for r in d.reasons if r not in d.failures]
    assert len(passing) == 2
    assert passing[0].startswith("accuracy on all holdouts 0.600 >=")
    assert passing[1].startswith("forgetting on earlier holdouts")


def test_paired_bootstrap_lower_is_deterministic_and_below_the_mean() -> None:
    """The bootstrap bound repeats exactly for a seed and lies at or below the observed mean difference."""
    rng = np.random.default_rng(3)
    candidate, champion = rng.random(200) < 0.8, rng.random(200) < 0.7
    observed = candidate.mean() - champion.mean()
    first = paired_bootstrap_lower(candidate, champion, confidence=0.95, samples=500)
    assert first == paired_bootstrap_lower(candidate, champion, confidence=0.95, samples=500)
    assert first <= observed
    # A lower bound: looser at higher confidence.
    assert paired_bootstrap_lower(candidate, champion, confidence=0.99, samples=500) <= first
    assert paired_bootstrap_lower(correct(100), correct(50), confidence=0.95, samples=500) > 0.35
    assert paired_bootstrap_lower(candidate, candidate, confidence=0.95, samples=500) == 0.0


def test_paired_bootstrap_lower_of_nothing_is_nan() -> None:
    """With no rows there is no bound: the result is NaN (which the gate treats as no gain)."""
    assert np.isnan(paired_bootstrap_lower(NONE, NONE, confidence=0.95, samples=100))


@pytest.mark.parametrize("min_improvement", [0.0, 0.25])
def test_min_improvement_raises_the_bar(min_improvement: float) -> None:
    """An observed gain of 0.3 on 40 rows passes a zero bar but not a 0.25 bar once bootstrap uncertainty counts."""
    config = GateConfig(policy="superior", min_improvement=min_improvement)
    d = decide(new_candidate=correct(36, 40), new_champion=correct(24, 40), old_candidate=NONE, old_champion=None, config=config)
    assert_consistent(d)
    assert d.passed == (min_improvement == 0.0)


def test_regression_gate_compares_absolute_errors() -> None:
    """On a numeric target the gate pairs absolute errors: a candidate with errors 30% smaller passes, one 30% larger fails."""
    rng = np.random.default_rng(1)
    champion = np.abs(rng.normal(size=200))
    better = decide(new_candidate=champion * 0.7, new_champion=champion, old_candidate=np.ones(50), old_champion=np.ones(50),
                    config=CONFIG, regression=True, r2=(0.8, 0.75))
    assert_consistent(better)
    assert better.passed
    assert any(r.startswith("MAE gain on the new and earlier holdouts") and "gate.mae_margin=0.1 of the champion MAE" in r for r in better.reasons)
    worse = decide(new_candidate=champion * 1.3, new_champion=champion, old_candidate=np.ones(50), old_champion=np.ones(50),
                   config=CONFIG, regression=True, r2=(0.8, 0.75))
    assert not worse.passed and [f.split(" ")[:3] for f in worse.failures] == [["MAE", "gain", "on"], ["the", "new", "holdout"]]


def test_regression_floor_and_forgetting() -> None:
    """R² under the floor fails; MAE on earlier holdouts 20% above the champion's is more forgetting than 10% allows."""
    errors = np.ones(100)
    d = decide(new_candidate=errors, new_champion=errors, old_candidate=np.full(50, 1.2), old_champion=np.ones(50),
               config=CONFIG, regression=True, r2=(-0.5, 0.3))
    assert not d.passed
    assert [f.split(" ")[0] for f in d.failures] == ["R²", "forgetting"]
    assert d.failures[1].startswith("forgetting on earlier holdouts: lower 95% bound +0.200 > 0.100 (gate.max_forgetting; point estimate +0.200 of the champion MAE)")


def test_forgetting_is_judged_beyond_the_noise_of_small_holdouts() -> None:
    """Two rows of twelve lost is a point estimate of 0.17 but no evidence of forgetting more than 0.1; the same loss on 600 rows is."""
    small = decide(new_candidate=correct(95), new_champion=correct(90), old_candidate=correct(10, 12), old_champion=correct(12, 12), config=CONFIG)
    assert small.passed, small.failures
    large = decide(new_candidate=correct(90), new_champion=correct(90), old_candidate=correct(500, 600), old_champion=correct(600, 600), config=CONFIG)
    assert not large.passed and any(f.startswith("forgetting on earlier holdouts: lower 95% bound") and "(gate.max_forgetting; point estimate +0.167 accuracy)" in f for f in large.failures)
    # Below zero the candidate does better on the earlier holdouts than the champion, and the check says so.
    better = decide(new_candidate=correct(90), new_champion=correct(90), old_candidate=correct(600, 600), old_champion=correct(500, 600), config=CONFIG)
    assert better.passed and any(r.endswith("(gate.max_forgetting; point estimate -0.167 accuracy: below zero, it does better there)") for r in better.reasons)


def test_concept_change_needs_a_large_significant_drop() -> None:
    """The champion at 60% on the new increment against 95% before is a change; 85% against 95% is not (a noisy holdout can do that)."""
    before = correct(190, 200)
    assert concept_changed(correct(60), before, regression=False, confidence=0.95, samples=500)
    assert not concept_changed(correct(85), before, regression=False, confidence=0.95, samples=500)
    # Errors more than twice as large on a numeric target are a change too; 50% larger is not.
    assert concept_changed(np.full(50, 2.5), np.ones(200), regression=True, confidence=0.95, samples=500)
    assert not concept_changed(np.full(50, 1.5), np.ones(200), regression=True, confidence=0.95, samples=500)


def labels(**counts: int) -> np.ndarray:
    return np.asarray([name for name, n in counts.items() for _ in range(n)], dtype=object)


def test_a_relabelling_is_told_from_class_incremental_data() -> None:
    """seattle-weather from May 2013: rainy days come labelled fog, a class the first champion never learnt. The rows
    of the unseen class look to the champion like one class it knows, that class all but left, and the others stayed."""
    before = labels(rain=50, sun=35, drizzle=10, snow=5)
    now = labels(sun=170, fog=70, rain=3)
    as_rain = np.asarray(["rain"] * 60 + ["drizzle"] * 10, dtype=object)  # the champion's classes for the 70 fog rows
    known = ["drizzle", "rain", "snow", "sun"]
    assert relabelled(before, now, as_rain, known) == ("rain", "fog")
    # Class-incremental: the increment brings new classes only; the old ones are simply not in it.
    assert relabelled(labels(a=50, b=50), labels(c=50, d=50), np.asarray(["a"] * 40 + ["b"] * 60, dtype=object), ["a", "b"]) is None
    # A new class the champion spreads over what it knows is a new class, not a renamed one.
    spread = np.asarray(["rain"] * 30 + ["sun"] * 20 + ["drizzle"] * 20, dtype=object)
    assert relabelled(before, now, spread, known) is None
    # The class it looks like is still there in its share: a new class beside it.
    assert relabelled(before, labels(sun=100, fog=70, rain=90), as_rain, known) is None
    # Too few rows of the unseen class to say.
    assert relabelled(before, labels(sun=170, fog=9, rain=3), as_rain[:9], known) is None


def test_large_holdouts_use_the_normal_bounds_the_bootstrap_converges_to():
    """Past BOOTSTRAP_ROWS the bounds come from the normal approximation: within a few thousandths of a real bootstrap of the same rows."""
    from lepton.models.gate import BOOTSTRAP_ROWS, concept_changed, paired_bootstrap_bounds

    rng = np.random.default_rng(3)
    n = BOOTSTRAP_ROWS + 2000
    candidate, champion = (rng.random(n) < 0.82).astype(float), (rng.random(n) < 0.80).astype(float)
    lower, upper = paired_bootstrap_bounds(candidate, champion, confidence=0.95, samples=1000)
    diff = candidate - champion
    resampled = diff[rng.integers(0, n, size=(1000, n))].mean(axis=1)
    assert abs(lower - np.quantile(resampled, 0.05)) < 0.003 and abs(upper - np.quantile(resampled, 0.95)) < 0.003
    assert lower < diff.mean() < upper
    # The concept-change test too: a champion 20 points worse on a large new increment is a change; 1 point is not.
    before = (rng.random(5000) < 0.9).astype(float)
    assert concept_changed((rng.random(n) < 0.7).astype(float), before, regression=False, confidence=0.95, samples=1000)
    assert not concept_changed((rng.random(n) < 0.89).astype(float), before, regression=False, confidence=0.95, samples=1000)


def test_a_floor_the_champion_misses_too_does_not_hold_back_a_candidate_no_worse() -> None:
    """A holdout whose target hardly varies puts R² under the floor for any model: a candidate with a sixth of the
    champion's errors there, and fewer elsewhere, is promoted; one under the floor and under the champion is not.
    The same for accuracy on a small, hard holdout."""
    errors = np.full(40, 1.0)
    better = decide(new_candidate=errors / 6, new_champion=errors, old_candidate=errors / 2, old_champion=errors, config=CONFIG,
                    regression=True, r2=(-4.96, 0.4), champion_r2=(-180.0, 0.1))
    assert_consistent(better)
    assert better.passed, better.failures
    assert better.reasons[0] == ("R² on the new holdout -4.960 < floor 0.000, as the champion's -180.000 there: a floor the champion "
                                 "misses on the same rows does not hold back a candidate no worse than it")
    worse = decide(new_candidate=errors, new_champion=errors, old_candidate=errors, old_champion=errors, config=CONFIG,
                   regression=True, r2=(-2.0, 0.4), champion_r2=(-1.0, 0.4))
    assert not worse.passed and worse.failures == ("R² on the new holdout -2.000 < floor 0.000 (the champion's -1.000)",)
    # Accuracy: a third right on a hard holdout, as the champion, and better on the earlier ones.
    hard = decide(new_candidate=correct(33), new_champion=correct(33), old_candidate=correct(90), old_champion=correct(80), config=CONFIG)
    assert hard.passed and hard.reasons[0].startswith("accuracy on the new holdout 0.330 < floor 0.500, as the champion's 0.330 there")
    below = decide(new_candidate=correct(30), new_champion=correct(40), old_candidate=correct(90), old_champion=correct(90), config=CONFIG)
    assert not below.passed and "accuracy on the new holdout 0.300 < floor 0.500 (the champion's 0.400)" in below.failures


def _evaluation(candidate: dict[str, np.ndarray], champion: dict[str, np.ndarray]):
    from lepton.models.evaluation import Evaluation, Score

    def scores(rows: dict[str, np.ndarray]) -> dict[str, Score]:
        return {k: Score(correct=v, accuracy=float(v.mean()), macro_f1=None) for k, v in rows.items()}

    return Evaluation(new_id=list(candidate)[-1], candidate=scores(candidate), champion=scores(champion))


def test_the_champion_is_not_compared_on_the_holdouts_it_was_promoted_on() -> None:
    """A champion passed the gate on holdouts a and b, where it leads by 5 points: the luck it was chosen for. On c
    and the new d, which it was not chosen on, the candidate is as good: skip promotes it, pool (the default) keeps it out."""
    from lepton.tasks.training import gate

    even = correct(80)
    evaluation = _evaluation({"a": correct(85), "b": correct(85), "c": even, "d": even}, {"a": correct(90), "b": correct(90), "c": even.copy(), "d": even.copy()})
    skip = gate.fn(evaluation, SKIP, chosen_on=["a", "b"])
    assert_consistent(skip)
    assert skip.passed
    assert any(r.startswith("gain on the new and 1 earlier holdout(s) since the champion's") and "over 200 rows" in r for r in skip.reasons), skip.reasons
    assert ("not compared on the 2 earlier holdout(s) the champion was promoted on: its lead there is partly the luck it was chosen for "
            "(gate.champion_holdouts=skip); forgetting is judged on them") in skip.notes
    # Forgetting is still judged on every earlier holdout: 10 rows of 300 lost.
    assert any(r.startswith("forgetting on earlier holdouts:") and "point estimate +0.033 accuracy" in r for r in skip.reasons), skip.reasons
    pool = gate.fn(evaluation, CONFIG, chosen_on=["a", "b"])  # the default
    assert_consistent(pool)
    assert not pool.passed
    assert any(f.startswith("gain on the new and earlier holdouts") and "over 400 rows" in f for f in pool.failures), pool.failures
    assert not pool.notes
    # Chosen on nothing here (a first model, a champion from elsewhere): compared on every holdout, as pool does.
    assert gate.fn(evaluation, SKIP, chosen_on=[]).reasons == pool.reasons
    # Chosen on every earlier holdout: compared on the new one alone.
    latest = gate.fn(evaluation, SKIP, chosen_on=["a", "b", "c"])
    assert any(r.startswith("gain on the new holdout") for r in latest.reasons) and latest.passed
