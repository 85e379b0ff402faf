"""Continual-learning metrics on a hand-made accuracy matrix whose answers were worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lepton.models.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summary

# R[i, j]: accuracy on increment j's holdout after training on increment i.
# Increment 0 peaks after increment 1 (0.95), not right after it was learned (0.90),
# so forgetting (from the best) and BWT (from the diagonal) disagree.
R = np.array(
    [
        [0.90, 0.10, 0.20],
        [0.95, 0.80, 0.30],
        [0.60, 0.40, 0.95],
    ]
)
BASELINE = np.array([0.10, 0.20, 0.25])  # an untrained model on each holdout


def test_average_accuracy_over_the_holdouts_seen() -> None:
    """Average accuracy after step i is the mean of R[i, :i+1]: 0.9, 0.875, 0.65."""
    assert average_accuracy(R, 0) == pytest.approx(0.90)
    assert average_accuracy(R, 1) == pytest.approx((0.95 + 0.80) / 2)
    assert average_accuracy(R) == pytest.approx((0.60 + 0.40 + 0.95) / 3) == pytest.approx(0.65)


def test_forgetting_is_measured_from_the_best_accuracy() -> None:
    """Forgetting = mean of (0.95 - 0.60, 0.80 - 0.40) = 0.375."""
    assert forgetting(R) == pytest.approx(0.375)


def test_backward_transfer_is_measured_from_the_diagonal() -> None:
    """BWT = mean of (0.60 - 0.90, 0.40 - 0.80) = -0.35."""
    assert backward_transfer(R) == pytest.approx(-0.35)


def test_forward_transfer_against_the_baseline() -> None:
    """FWT = mean of (R[0,1] - b1, R[1,2] - b2) = mean of (-0.10, 0.05) = -0.025."""
    assert forward_transfer(R, BASELINE) == pytest.approx(-0.025)


def test_metrics_read_only_their_entries() -> None:
    """Entries a metric does not use can change freely: R[0, 2] is read by none of them."""
    other = R.copy()
    other[0, 2] = 0.99
    assert summary(other, BASELINE) == pytest.approx(summary(R, BASELINE))
    # An entry they do use changes them: the final accuracy on increment 0.
    other[2, 0] = 0.70
    assert forgetting(other) == pytest.approx(0.325)
    assert backward_transfer(other) == pytest.approx(-0.30)


def test_summary_collects_the_metrics() -> None:
    """summary() has the three metrics, plus FWT only when a baseline is given."""
    assert summary(R) == pytest.approx({"average_accuracy": 0.65, "forgetting": 0.375, "bwt": -0.35})
    assert summary(R, BASELINE) == pytest.approx({"average_accuracy": 0.65, "forgetting": 0.375, "bwt": -0.35, "fwt": -0.025})


def test_a_single_increment_has_nothing_to_forget() -> None:
    """With one increment, forgetting, BWT and FWT are 0 and the average is its accuracy."""
    single = np.array([[0.8]])
    assert summary(single, np.array([0.1])) == {"average_accuracy": pytest.approx(0.8), "forgetting": 0.0, "bwt": 0.0, "fwt": 0.0}


def test_macro_f1_counts_only_the_classes_a_holdout_holds():
    """A class absent from the holdout but predicted once does not count as a zero: (1 + 2/3) / 2, not (1 + 2/3 + 0) / 3."""
    import numpy as np

    from lepton.models.evaluation import macro_f1

    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 7])) == pytest.approx((1 + 2 / 3) / 2)
    assert macro_f1(np.array(["a", "b"]), np.array(["a", "b"])) == 1.0
    assert np.isnan(macro_f1(np.array([]), np.array([])))


def test_macro_f1_agrees_with_scikit_learn_over_the_classes_of_the_truth():
    from sklearn.metrics import f1_score

    from lepton.models.evaluation import macro_f1

    rng = np.random.default_rng(0)
    for _ in range(50):
        truth = rng.integers(0, 5, size=rng.integers(1, 40))
        predicted = np.where(rng.random(len(truth)) < 0.6, truth, rng.integers(0, 7, size=len(truth)))
        expected = f1_score(truth.astype(str), predicted.astype(str), labels=np.unique(truth.astype(str)), average="macro", zero_division=0)
        assert macro_f1(truth, predicted) == pytest.approx(expected)


def test_a_lineage_of_holdouts_too_small_for_r2_summarises_without_warnings():
    """R² is NaN on a holdout of a row or two, in every row of the matrix: the summary is NaN, said by no RuntimeWarning
    on a --json run's stderr."""
    import warnings

    from lepton.models.metrics import lineage_summary

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = lineage_summary({"rows": [[None, None], [None, None]], "columns": ["a", "b"], "trained": ["a", "b"]})
    assert np.isnan(summary["average_accuracy"]) and np.isnan(summary["forgetting"])
