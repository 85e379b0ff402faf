"""Anti-forgetting strategies: each hook on tiny synthetic data, and through fine_tune on small digit increments."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lepton.config import StrategyConfig, TrainConfig
from lepton.models.bundle import Bundle
from lepton.models.datasets import LABEL, class_incremental
from lepton.models.evaluation import score
from lepton.models.loop import fit
from lepton.models.network import MLP, NME_SCALE
from lepton.models.settings import STRATEGIES
from lepton.models.splits import split
from lepton.models.strategies import (
    EWC,
    NAMES,
    REGISTRY,
    Composite,
    Context,
    DarkReplay,
    Distillation,
    Freeze,
    Interpolation,
    Joint,
    Naive,
    NearestMean,
    Replay,
    WeightAlign,
    build,
    distillation_loss,
    interpolate,
    recorded_logits_loss,
    target_bins,
)
from lepton.models.training import fine_tune

CPU = torch.device("cpu")
TINY = TrainConfig(epochs=2, hidden=[16])  # enough to move every weight, fast on a busy machine


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (see conftest)."""


def blobs(classes: tuple[int, ...], n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw float64 rows per class around well-separated centres in 4 dimensions, int64 labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(scale=4.0, size=(10, 4))  # the same centres for every call
    y = np.repeat(np.array(classes, dtype=np.int64), n)
    x = centres[y] + rng.normal(size=(len(y), 4))
    return x, y


def as_inputs(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def value(penalty: torch.Tensor | None) -> float:
    assert penalty is not None
    return float(penalty.detach())


def context(model: MLP, old_classes: int, validation: tuple[np.ndarray, np.ndarray] | None = None) -> Context:
    return Context(model, as_inputs, old_classes, CPU, torch.Generator().manual_seed(0), validation)


def train(model: MLP, x: np.ndarray, y: np.ndarray, strategy=None, epochs: int = 5) -> None:
    fit(model, as_inputs(x), y, epochs=epochs, batch_size=16, lr=1e-2, device=CPU, generator=torch.Generator().manual_seed(0), strategy=strategy)


def tiny_model(n_classes: int = 2) -> MLP:
    torch.manual_seed(0)
    return MLP(n_features=4, n_classes=n_classes, hidden=(8,))


@pytest.fixture(scope="module")
def small_digits() -> list[pd.DataFrame]:
    """The first three class-incremental digit increments, 12 rows per class (24 rows each)."""
    return [frame.groupby(LABEL).head(12).reset_index(drop=True) for frame in class_incremental()[:3]]


# Freeze and interpolation


def test_freeze_keeps_feature_layers_byte_identical(small_digits: list[pd.DataFrame]) -> None:
    """On a warm-started second increment, freeze leaves features.* byte-identical while the head trains."""
    config = TrainConfig(epochs=3, hidden=[16])
    champion, _ = fine_tune(None, small_digits[0], label=LABEL, train=config, strategy=StrategyConfig(name="freeze"))
    candidate, report = fine_tune(champion, small_digits[1], label=LABEL, train=config, strategy=StrategyConfig(name="freeze"))
    assert report.warm_start
    before, after = champion.network.features.state_dict(), candidate.network.features.state_dict()
    assert before.keys() == after.keys() and len(before) == 2
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not torch.equal(candidate.network.head.weight[:2], champion.network.head.weight)
    # Freezing is undone once the increment is over: the next one may train everything.
    assert all(p.requires_grad for p in candidate.network.parameters())
    # The same run without freeze does move the feature layers: the check above had something to catch.
    unfrozen, _ = fine_tune(champion, small_digits[1], label=LABEL, train=config, strategy=StrategyConfig(name="naive"))
    assert not torch.equal(unfrozen.network.features[0].weight, champion.network.features[0].weight)


def test_freeze_names_what_it_keeps_and_leaves_the_model_alone() -> None:
    """Freeze says which parameters stay fixed (none on a first increment); fit keeps them byte-identical, and the model's flags untouched."""
    model = tiny_model()
    freeze = Freeze()
    freeze.begin(context(model, 0))
    assert freeze.frozen(model) == set()
    freeze.begin(context(model, 2))
    assert freeze.frozen(model) == {"features.0.weight", "features.0.bias"}
    assert all(p.requires_grad for p in model.parameters())  # said, not done: the trainer acts on it
    assert Composite([Naive(), freeze]).frozen(model) == freeze.frozen(model)
    before = copy.deepcopy(model.state_dict())
    train(model, *blobs((0, 1)), strategy=freeze)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in freeze.frozen(model))
    assert not torch.equal(model.head.weight, before["head.weight"])
    assert all(p.requires_grad for p in model.parameters())


def test_interpolate_mixes_champion_and_tuned_parameters() -> None:
    """alpha 0 gives the champion's rows exactly, 1 the tuned weights, 0.5 their mean; new head rows stay tuned."""
    champion = tiny_model(2)
    torch.manual_seed(1)
    tuned = MLP(n_features=4, n_classes=3, hidden=(8,))
    tuned_before = copy.deepcopy(tuned.state_dict())
    champ, tune = dict(champion.named_parameters()), dict(tuned.named_parameters())

    zero = dict(interpolate(champion, tuned, 0.0).named_parameters())
    assert torch.equal(zero["features.0.weight"], champ["features.0.weight"])
    assert torch.equal(zero["head.weight"][:2], champ["head.weight"])
    assert torch.equal(zero["head.bias"][:2], champ["head.bias"])
    assert torch.equal(zero["head.weight"][2], tune["head.weight"][2])  # a new class has no champion row

    one = dict(interpolate(champion, tuned, 1.0).named_parameters())
    assert all(torch.equal(one[k], tune[k]) for k in tune)

    half = dict(interpolate(champion, tuned, 0.5).named_parameters())
    torch.testing.assert_close(half["features.0.weight"], (champ["features.0.weight"] + tune["features.0.weight"]) / 2, rtol=0, atol=1e-7)
    torch.testing.assert_close(half["head.weight"][:2], (champ["head.weight"] + tune["head.weight"][:2]) / 2, rtol=0, atol=1e-7)
    assert torch.equal(half["head.bias"][2], tune["head.bias"][2])
    # Neither input is modified.
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in tuned_before.items())


def test_interpolation_picks_the_mixing_weight_that_scores_best_on_validation() -> None:
    """With a good champion and a tuned network whose head is reversed, the validation data picks alpha 0."""
    x, y = blobs((0, 1), n=20)
    champion = tiny_model(2)
    train(champion, x, y)
    tuned = copy.deepcopy(champion)
    with torch.no_grad():
        tuned.head.weight.neg_()
        tuned.head.bias.neg_()
    strategy = Interpolation(alphas=(1.0, 0.5, 0.0))
    strategy.begin(context(champion, 2, validation=(x, y)))
    chosen = strategy.finish(tuned)
    assert strategy.chosen == 0.0
    assert all(torch.equal(a, b) for a, b in zip(chosen.parameters(), champion.parameters()))
    # Without a champion (first increment) the tuned network is kept as it is.
    first = Interpolation()
    first.begin(context(champion, 0, validation=(x, y)))
    assert first.finish(tuned) is tuned and first.chosen == 1.0


def test_interpolation_through_fine_tune_keeps_new_class_rows_as_tuned(small_digits: list[pd.DataFrame]) -> None:
    """Through fine_tune, alpha 0 gives the champion's weights for what it knew and the tuned rows for the new classes."""
    config = TrainConfig(epochs=3, hidden=[16])
    champion, _ = fine_tune(None, small_digits[0], label=LABEL, train=config, strategy=StrategyConfig(name="replay+interpolate"))

    def candidate(alpha: float) -> MLP:
        strategy = StrategyConfig(name="replay+interpolate", interpolation_alphas=[alpha])
        return fine_tune(champion, small_digits[1], label=LABEL, train=config, strategy=strategy)[0].network

    # Same seed, same held-out rows: both runs train the same network and differ only in the mix.
    kept, tuned = candidate(0.0), candidate(1.0)
    assert torch.equal(kept.features[0].weight, champion.network.features[0].weight)
    assert torch.equal(kept.head.weight[:2], champion.network.head.weight)
    # The champion has no rows for classes 2 and 3: they must be the trained ones, not expand_head's random init.
    assert torch.equal(kept.head.weight[2:], tuned.head.weight[2:])
    assert torch.equal(kept.head.bias[2:], tuned.head.bias[2:])


# Replay


@pytest.mark.parametrize("selection", ["herding", "reservoir"])
def test_replay_memory_is_bounded_balanced_and_cost_stays_flat(small_digits: list[pd.DataFrame], selection: str) -> None:
    """Through fine_tune, the memory holds min(capacity, seen) class-balanced rows; replay doubles samples per step only."""
    strategy = StrategyConfig(name="replay", memory_size=40, memory_selection=selection)
    champion, seen, sizes = None, 0, []
    for i, frame in enumerate(small_digits):
        champion, report = fine_tune(champion, frame, label=LABEL, train=TINY, strategy=strategy)
        new = len(frame)
        # The first increment has no memory to replay; later ones pair every batch with a memory batch.
        assert report.new_samples == new == 24
        assert report.train_samples == (1 if i == 0 else 2) * new * TINY.epochs
        assert report.memory_samples == (0 if i == 0 else new)
        seen += new
        y = champion.strategy_state["replay.memory.y"]
        assert len(y) == len(champion.strategy_state["replay.memory.x"]) == min(40, seen)
        counts = np.bincount(y)
        assert len(counts) == 2 * (i + 1) and counts.min() > 0
        assert counts.max() - counts.min() <= 1, counts
        sizes.append(len(y))
    assert sizes == [24, 40, 40]
    # The memory grew from 24 to 40 rows between increments 2 and 3, and the cost did not move.
    x = champion.strategy_state["replay.memory.x"]
    assert len(np.unique(x, axis=0)) == 40, "a row is stored twice"


def test_replay_batch_appends_a_class_balanced_memory_batch() -> None:
    """batch() doubles the batch with memory rows; without the increment's class counts, each memory class about equally often despite a 9:1 memory."""
    replay = Replay(n_features=4, capacity=100, selection="reservoir", seed=0)
    x0, y0 = blobs((0,), n=90)
    x1, y1 = blobs((1,), n=10, seed=1)
    replay.memory.update(np.concatenate([x0, x1]), np.concatenate([y0, y1]))
    assert replay.memory.class_counts() == {0: 90, 1: 10}
    replay.begin(context(tiny_model(), 2))
    xb, yb = torch.zeros(2000, 4), torch.full((2000,), 5)
    xo, yo = replay.batch(xb, yb)
    assert xo.shape == (4000, 4) and torch.equal(yo[:2000], yb) and torch.equal(xo[:2000], xb)
    share = float((yo[2000:] == 1).float().mean())
    assert 0.45 < share < 0.55, share
    # An empty memory (first increment) leaves the batch alone.
    empty = Replay(n_features=4, capacity=10, selection="reservoir")
    empty.begin(context(tiny_model(), 0))
    assert empty.batch(xb, yb)[0] is xb


def replay_shares(memory: tuple[np.ndarray, np.ndarray], class_rows: dict[int, int], n_classes: int) -> np.ndarray:
    """Each class's share of 4000 replayed rows, the memory holding ``memory`` and the increment ``class_rows``."""
    replay = Replay(n_features=4, capacity=1000, selection="reservoir", seed=0)
    replay.memory.update(*memory)
    old = int(memory[1].max()) + 1
    replay.begin(Context(tiny_model(n_classes), as_inputs, old, CPU, torch.Generator().manual_seed(0), class_rows=class_rows))
    _, y = replay.batch(torch.zeros(4000, 4), torch.full((4000,), n_classes - 1))
    return np.bincount(y[4000:].numpy(), minlength=n_classes) / 4000


def test_replay_keeps_the_class_mix_of_a_table_whose_mix_holds() -> None:
    """A 9:1 table stays 9:1 in replay: equal shares would pull every fine-tune towards the rare class."""
    x0, y0 = blobs((0,), n=90)
    x1, y1 = blobs((1,), n=10, seed=1)
    shares = replay_shares((np.concatenate([x0, x1]), np.concatenate([y0, y1])), {0: 90, 1: 10}, 2)
    assert 0.86 < shares[0] < 0.94, shares


def test_replay_makes_up_the_classes_the_new_rows_lack() -> None:
    """After new classes, the old ones in even shares, however unevenly seen; a class under its share, enough to restore the mix."""
    x0, y0 = blobs((0,), n=80)
    x1, y1 = blobs((1,), n=20, seed=1)
    shares = replay_shares((np.concatenate([x0, x1]), np.concatenate([y0, y1])), {2: 20, 3: 20}, 4)
    assert shares[2:].sum() == 0 and 0.46 < shares[0] < 0.54, shares
    x, y = blobs((0, 1), n=50)
    # Seen 50:50, then 50 rows of class 0: everything is 2:1, so replay is 1:2 and the step as a whole 2:1.
    shares = replay_shares((x, y), {0: 50}, 2)
    assert 0.62 < shares[1] < 0.71, shares
    # A class the increment holds too much of (1 here) does not crowd out one it lacks (2, 5% of everything).
    x0, y0 = blobs((0,), n=900)
    x1, y1 = blobs((1,), n=50, seed=1)
    x2, y2 = blobs((2,), n=50, seed=2)
    shares = replay_shares((np.concatenate([x0, x1, x2]), np.concatenate([y0, y1, y2])), {0: 1, 1: 100}, 3)
    assert 0.03 < shares[2] < 0.08 and shares[1] == 0, shares


def test_replay_draws_a_numeric_targets_bins_as_often_as_they_come() -> None:
    """A skewed target: the memory keeps its bins evenly, so that the tails are there, but replay draws each bin
    as often as the data holds it: even draws replayed the few extreme values as often as the common ones."""
    rng = np.random.default_rng(0)
    raw = rng.lognormal(0.0, 0.8, size=2000)
    mean, scale = raw.mean(), raw.std()

    def encode(v: np.ndarray) -> np.ndarray:
        return ((np.asarray(v) - mean) / scale).astype(np.float32)

    bins = target_bins(encode(raw))
    replay = Replay(n_features=4, capacity=300, selection="reservoir", seed=0)
    replay.memory.update(np.column_stack([rng.normal(size=(2000, 4)), raw]), bins)
    kept = np.bincount(np.array(replay.memory.samples(5)[1]), minlength=7) / 300
    new = target_bins(encode(rng.lognormal(0.0, 0.8, size=300)))
    rows = {int(b): int(n) for b, n in zip(*np.unique(new, return_counts=True), strict=True)}
    replay.begin(Context(tiny_model(1), as_inputs, 1, CPU, torch.Generator().manual_seed(0), target=(encode, lambda z: z * scale + mean), class_rows=rows))
    _, y = replay.batch(torch.zeros(4000, 4), torch.zeros(4000))
    drawn = np.bincount(target_bins(y[4000:].numpy()), minlength=7) / 4000
    everything = np.bincount(np.concatenate([bins, new]), minlength=7) / (len(bins) + len(new))
    assert kept[6] > 3 * everything[6], (kept, everything)  # the tail is kept beyond its share ...
    assert np.abs(drawn - everything).max() < 0.05, (drawn, everything)  # ... and drawn as often as it comes


# EWC and distillation


def test_ewc_penalty_fisher_and_state() -> None:
    """EWC: no penalty on the first increment, Fisher >= 0, penalty 0 at the anchor and > 0 once weights move; state round-trips."""
    x1, y1 = blobs((0, 1))
    x2, y2 = blobs((2, 3), seed=1)
    model = tiny_model(2)
    ewc = EWC(weight=100.0, decay=0.9)
    ewc.begin(context(model, 0))
    xt1 = torch.from_numpy(as_inputs(x1))
    assert ewc.penalty(model, xt1, torch.from_numpy(y1), model(xt1)) is None
    train(model, x1, y1, strategy=ewc)
    ewc.end(model, x1, y1)

    names = {n for n, _ in model.named_parameters()}
    assert set(ewc.fisher) == set(ewc.anchor) == names
    assert all((f >= 0).all() for f in ewc.fisher.values())
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    assert all(torch.equal(ewc.anchor[n], p) for n, p in model.named_parameters())
    first_head_fisher = ewc.fisher["head.weight"].clone()

    model.expand_head(4)
    start = copy.deepcopy(model)
    ewc.begin(context(model, 2))
    xt2, yt2 = torch.from_numpy(as_inputs(x2)), torch.from_numpy(y2)
    assert value(ewc.penalty(model, xt2, yt2, model(xt2))) == 0.0  # at the anchor, new head rows unconstrained
    train(model, x2, y2, strategy=ewc)
    moved = ewc.penalty(model, xt2, yt2, model(xt2))
    assert value(moved) > 0
    # The penalty is 0.5 * weight * sum F (theta - anchor)^2 over the anchor's rows.
    params = {n: p.detach() for n, p in model.named_parameters()}
    by_hand = sum(float((ewc.fisher[n] * (params[n][tuple(slice(0, s) for s in ewc.anchor[n].shape)] - ewc.anchor[n]) ** 2).sum()) for n in names)
    assert value(moved) == pytest.approx(0.5 * 100.0 * by_hand, rel=1e-5)
    # And it holds: the same increment without it drifts further from the anchor, as the penalty measures it.
    naive = copy.deepcopy(start)
    train(naive, x2, y2)
    assert value(ewc.penalty(naive, xt2, yt2, naive(xt2))) > 2 * value(moved)

    restored = EWC(weight=100.0)
    restored.load_state_dict({k: v.copy() for k, v in ewc.state_dict().items()})
    assert restored.fisher.keys() == ewc.fisher.keys() and restored.anchor.keys() == ewc.anchor.keys()
    assert all(torch.equal(restored.fisher[k], ewc.fisher[k]) and torch.equal(restored.anchor[k], ewc.anchor[k]) for k in ewc.fisher)
    restored.begin(context(model, 2))
    assert value(restored.penalty(model, xt2, yt2, model(xt2))) == value(moved)

    # A second increment grows the Fisher with the head and keeps decay * the old estimate underneath.
    ewc.end(model, x2, y2)
    assert ewc.fisher["head.weight"].shape == (4, 8)
    assert (ewc.fisher["head.weight"][:2] >= 0.9 * first_head_fisher - 1e-12).all()


def test_distillation_loss_values() -> None:
    """distillation_loss is 0 for identical outputs and T^2 * KL(teacher || student) of the softened outputs otherwise."""
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    assert float(distillation_loss(student, student, 2.0)) == pytest.approx(0.0, abs=1e-7)
    p_t = np.exp(teacher.numpy() / 2) / np.exp(teacher.numpy() / 2).sum(axis=1, keepdims=True)
    p_s = np.exp(student.numpy() / 2) / np.exp(student.numpy() / 2).sum(axis=1, keepdims=True)
    by_hand = 4.0 * float(np.mean((p_t * np.log(p_t / p_s)).sum(axis=1)))
    assert by_hand > 0.05
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(by_hand, rel=1e-5)


def test_distillation_penalty_only_after_the_first_increment() -> None:
    """No penalty without a champion; 0 while the student equals the teacher; weighted loss on old logits once it moves."""
    model = tiny_model(2)
    x, _ = blobs((0, 1))
    xt = torch.from_numpy(as_inputs(x))
    y = torch.zeros(len(xt), dtype=torch.int64)
    distill = Distillation(weight=0.5, temperature=2.0)
    distill.begin(context(model, 0))
    assert distill.penalty(model, xt, y, model(xt)) is None

    model.expand_head(4)
    teacher_logits = model(xt)[:, :2].detach()
    distill.begin(context(model, 2))
    assert value(distill.penalty(model, xt, y, model(xt))) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.head.weight[:2] += torch.randn(2, 8)
    logits = model(xt)
    penalty = distill.penalty(model, xt, y, logits)
    assert value(penalty) > 0.01
    assert value(penalty) == pytest.approx(0.5 * float(distillation_loss(logits[:, :2].detach(), teacher_logits, 2.0)), rel=1e-5)
    assert penalty.requires_grad  # it trains the student
    distill.end(model, x, y.numpy())
    assert distill.penalty(model, xt, y, logits) is None


# Joint retraining


def test_joint_training_data_is_everything_seen() -> None:
    """joint's training data is every row accepted so far plus the new increment: sizes add up, rows intact."""
    joint = Joint(n_features=4)
    model = tiny_model(2)
    seen_x, seen_y = np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    for i, classes in enumerate([(0, 1), (2,), (0, 3)]):
        x, y = blobs(classes, n=10 + i, seed=i)
        joint.begin(context(model, 0))
        tx, ty = joint.training_data(x, y)
        seen_x, seen_y = np.concatenate([seen_x, x]), np.concatenate([seen_y, y])
        assert len(ty) == len(seen_y) == [20, 31, 55][i]
        order, expected = np.lexsort(tx.T), np.lexsort(seen_x.T)
        np.testing.assert_array_equal(tx[order], seen_x[expected])
        np.testing.assert_array_equal(ty[order], seen_y[expected])
        joint.end(model, x, y)
    xb, yb = torch.ones(3, 4), torch.zeros(3, dtype=torch.int64)
    assert joint.batch(xb, yb) == (xb, yb)  # no replay batches on top of the full data


def test_joint_fine_tune_starts_from_a_fresh_network(small_digits: list[pd.DataFrame]) -> None:
    """fine_tune with joint builds a new network from the seed (not the champion's weights) and trains on all rows seen."""
    strategy = StrategyConfig(name="joint")
    champion, _ = fine_tune(None, small_digits[0], label=LABEL, train=TrainConfig(epochs=3, hidden=[16], seed=1), strategy=strategy)
    # One epoch at a tiny learning rate: the candidate stays within ~1e-5 of where it started.
    candidate, report = fine_tune(champion, small_digits[1], label=LABEL, train=TrainConfig(epochs=1, lr=1e-6, hidden=[16], seed=0), strategy=strategy)
    torch.manual_seed(0)
    # 64 pixels, each a value and a missing indicator; a new network starts with the indicators' weights at zero.
    fresh = MLP(n_features=128, n_classes=4, hidden=(16,))
    got = candidate.network.features[0].weight.detach()
    torch.testing.assert_close(got[:, 0::2], fresh.features[0].weight[:, 0::2], rtol=0, atol=1e-4)
    torch.testing.assert_close(got[:, 1::2], torch.zeros(16, 64), rtol=0, atol=1e-4)
    assert float((got - champion.network.features[0].weight.detach()).abs().max()) > 0.05
    assert not report.warm_start
    assert report.train_samples == len(small_digits[0]) + len(small_digits[1]) == 48
    assert len(candidate.strategy_state["joint.memory.y"]) == 48


# Bias correction and nearest-mean classification


def test_weight_align_equalises_head_row_norms() -> None:
    """After finish, the new classes' head rows have the old rows' mean norm; old rows and directions are untouched."""
    model = tiny_model(2)
    model.expand_head(5)
    with torch.no_grad():
        model.head.weight[2:] *= 3.0  # the bias a skewed increment leaves behind
    before = model.head.weight.detach().clone()
    align = WeightAlign()
    align.begin(context(model, 2))
    aligned = align.finish(model)
    norms = aligned.head.weight.detach().norm(dim=1)
    assert float(norms[2:].mean()) == pytest.approx(float(norms[:2].mean()), abs=1e-5)
    assert float(before.norm(dim=1)[2:].mean()) > 1.5 * float(norms[:2].mean())
    assert torch.equal(aligned.head.weight[:2], before[:2])
    torch.testing.assert_close(F.normalize(aligned.head.weight[2:], dim=1), F.normalize(before[2:], dim=1))
    # The first increment has no old classes to align to.
    first = WeightAlign()
    first.begin(context(model, 0))
    weights = model.head.weight.detach().clone()
    assert torch.equal(first.finish(model).head.weight, weights)


def test_nearest_mean_classifies_by_the_closest_unit_prototype(small_digits: list[pd.DataFrame]) -> None:
    """After replay+nme, prototypes are the unit means of the exemplars' embeddings and predictions follow the nearest one."""
    strategy = StrategyConfig(name="replay+nme", memory_size=8)  # 4 exemplars a class: new classes bring 3x that
    champion = None
    for frame, classifier in zip(small_digits[:2], ("linear", "nme"), strict=True):
        champion, _ = fine_tune(champion, frame, label=LABEL, train=TINY, strategy=strategy)
        # The first increment has no earlier classes to be biased against: the linear head stays.
        assert champion.network.classifier == classifier
    network, pre = champion.network, champion.preprocessor
    assert network.prototypes.shape == (4, 16)
    torch.testing.assert_close(network.prototypes.norm(dim=1), torch.ones(4), rtol=0, atol=1e-5)

    x, y = champion.strategy_state["replay.memory.x"], champion.strategy_state["replay.memory.y"]
    with torch.no_grad():
        embedding = F.normalize(network.features(torch.from_numpy(pre.transform(x))), dim=1)
    means = torch.stack([embedding[torch.from_numpy(y) == c].mean(dim=0) for c in range(4)])
    torch.testing.assert_close(network.prototypes, F.normalize(means, dim=1), rtol=0, atol=1e-6)

    rows = pd.concat([small_digits[0].iloc[::4], small_digits[1].iloc[::4]])  # 12 rows of the 4 classes
    with torch.no_grad():
        inputs = torch.from_numpy(pre.transform(pre.raw_matrix(rows)))
        distances = torch.cdist(F.normalize(network.features(inputs), dim=1), network.prototypes)
        torch.testing.assert_close(network.predict_logits(inputs), -NME_SCALE * distances)
    nearest = distances.argmin(dim=1).numpy()
    np.testing.assert_array_equal(champion.predict_proba(rows).argmax(axis=1), nearest)
    np.testing.assert_array_equal(champion.predict(rows), np.array(pre.classes)[nearest])


def test_nearest_mean_keeps_the_linear_head_when_a_class_has_no_exemplar() -> None:
    """With an empty memory, or a class missing from it, finish leaves the classifier linear."""
    model = tiny_model(3)
    replay = Replay(n_features=4, capacity=10, selection="reservoir")
    nme = NearestMean(replay=replay)
    nme.begin(context(model, 1))  # the head grew from 1 to 3 classes
    assert nme.finish(model).classifier == "linear"
    replay.memory.update(*blobs((0, 1), n=5))
    assert nme.finish(model).classifier == "linear"
    replay.memory.update(*blobs((2,), n=5))
    assert nme.finish(model).classifier == "nme"


def test_nearest_mean_is_kept_off_while_no_classes_arrive_and_on_once_they_have(small_digits: list[pd.DataFrame]) -> None:
    """Increments of the classes known from the start keep the linear head; after new classes, nme stays on for old-class increments."""
    strategy = StrategyConfig(name="replay+nme", memory_size=8)
    halves = [small_digits[0].iloc[::2], small_digits[0].iloc[1::2]]  # classes 0 and 1 twice, like domain-incremental data
    champion = None
    for frame in halves:
        champion, _ = fine_tune(champion, frame, label=LABEL, train=TINY, strategy=strategy)
        assert champion.network.classifier == "linear"
        assert not champion.network.prototypes.any()
    grown, _ = fine_tune(champion, small_digits[1], label=LABEL, train=TINY, strategy=strategy)
    assert grown.network.classifier == "nme"
    again, _ = fine_tune(grown, halves[0], label=LABEL, train=TINY, strategy=strategy)
    assert again.network.classifier == "nme"
    # Its prototypes were recomputed for the retrained features, not carried over.
    assert not torch.equal(again.network.prototypes, grown.network.prototypes)


def test_nearest_mean_stays_off_for_a_new_class_that_arrives_beside_the_known_ones(small_digits: list[pd.DataFrame]) -> None:
    """A few rows of a new class among many of the known ones give the head no bias: it stays linear. An increment
    of new classes alone (the known ones only in the memory) switches nearest mean on."""
    strategy = StrategyConfig(name="replay+nme", memory_size=8)
    first, second = small_digits[0], small_digits[1]
    champion, _ = fine_tune(None, first, label=LABEL, train=TINY, strategy=strategy)
    newcomer = second[second[LABEL] == second[LABEL].iloc[0]].head(3)  # 3 rows of one new class
    beside, _ = fine_tune(champion, pd.concat([first, newcomer], ignore_index=True), label=LABEL, train=TINY, strategy=strategy)
    assert beside.network.n_classes == 3 and beside.network.classifier == "linear"
    assert not beside.network.prototypes.any()
    alone, _ = fine_tune(champion, second, label=LABEL, train=TINY, strategy=strategy)
    assert alone.network.classifier == "nme"


def test_head_bias_weighs_the_increment_and_the_memory_per_class() -> None:
    """Known classes count their rows in the increment plus their exemplars; new classes their rows; over 2x is biased."""
    model = tiny_model(3)
    replay = Replay(n_features=4, capacity=10, selection="reservoir")
    replay.memory.update(*blobs((0,), n=5))  # 5 exemplars of the one known class
    nme = NearestMean(replay=replay)
    for rows, biased in (({0: 0, 1: 10, 2: 12}, True), ({0: 1, 1: 12, 2: 12}, False), ({0: 6, 1: 4, 2: 2}, False)):
        ctx = Context(model, as_inputs, 1, CPU, torch.Generator().manual_seed(0), class_rows=rows)
        nme.begin(ctx)
        assert nme.active is biased, rows


# Dark experience replay


def test_recorded_logits_loss_values() -> None:
    """Mean squared error over recorded entries only: NaN (a class unknown when recorded) and extra columns are skipped."""
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    recorded = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert float(recorded_logits_loss(logits, recorded)) == 0.0  # column 2 was never recorded
    recorded = torch.tensor([[0.0, 2.0], [1.0, float("nan")]])
    # Known entries: (1-0)^2, (2-2)^2, (0-1)^2 -> 2 / 3; the NaN entry is skipped.
    assert float(recorded_logits_loss(logits, recorded)) == pytest.approx(2.0 / 3.0)
    assert float(recorded_logits_loss(logits, torch.full((2, 2), float("nan")))) == 0.0


def test_dark_replay_records_logits_and_pulls_replayed_rows_towards_them() -> None:
    """end() stores each kept row's logits; the penalty on replayed rows is 0 until the old outputs move, then weight x MSE."""
    model = tiny_model(2)
    der = DarkReplay(n_features=4, capacity=20, selection="reservoir", weight=0.5)
    x, y = blobs((0, 1), n=20)
    der.begin(context(model, 0))
    assert der.penalty(model, torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64), model(torch.zeros(2, 4))) is None  # nothing recorded yet
    der.end(model, x, y)
    kept, _ = der.memory.samples(4)
    with torch.no_grad():
        np.testing.assert_allclose(der.memory.payload(), model(torch.from_numpy(as_inputs(kept))).numpy(), rtol=0, atol=1e-6)

    model.expand_head(4)  # new classes: the two new head rows were never recorded
    der.begin(context(model, 2))
    xb, yb = torch.from_numpy(as_inputs(blobs((2, 3), n=4)[0])), torch.tensor([2, 2, 2, 2, 3, 3, 3, 3])
    xs, ys = der.batch(xb, yb)
    start, idx = der.appended
    assert start == 8 and len(idx) == 8 and torch.equal(xs[8:], torch.from_numpy(as_inputs(kept))[idx])
    assert value(der.penalty(model, xs, ys, model(xs))) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        model.head.weight[2:] += 3.0  # only the new classes' outputs move: nothing recorded changes
    assert value(der.penalty(model, xs, ys, model(xs))) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        model.head.bias[:2] += torch.tensor([0.3, -0.1])  # the old outputs shift by a known amount
    penalty = der.penalty(model, xs, ys, model(xs))
    assert value(penalty) == pytest.approx(0.5 * (0.3**2 + 0.1**2) / 2, rel=1e-5)
    assert penalty.requires_grad


def test_der_through_fine_tune_keeps_each_rows_logits_from_when_it_entered(small_digits: list[pd.DataFrame]) -> None:
    """The bundle's memory carries logits: the recording network's for new rows, NaN-padded and unchanged for older ones."""
    strategy = StrategyConfig(name="der", memory_size=20)
    first, report = fine_tune(None, small_digits[0], label=LABEL, train=TINY, strategy=strategy)
    state = first.strategy_state
    x, payload = state["der.memory.x"], state["der.memory.payload"]
    assert payload.shape == (20, 2)
    with torch.no_grad():
        np.testing.assert_allclose(payload, first.network(torch.from_numpy(first.preprocessor.transform(x))).numpy(), rtol=0, atol=1e-5)

    second, report = fine_tune(first, small_digits[1], label=LABEL, train=TINY, strategy=strategy)
    assert report.train_samples == 2 * len(small_digits[1]) * TINY.epochs  # the cost of replay: one memory row per new row
    state = second.strategy_state
    x2, y2, payload2 = state["der.memory.x"], state["der.memory.y"], state["der.memory.payload"]
    assert payload2.shape == (20, 4)
    old, new = y2 < 2, y2 >= 2
    assert np.isnan(payload2[old, 2:]).all() and not np.isnan(payload2[old, :2]).any()
    # Old rows kept their first recording; the new rows carry the second network's logits.
    for row, logits in zip(x2[old], payload2[old, :2], strict=True):
        np.testing.assert_array_equal(logits, payload[(x == row).all(axis=1)][0])
    with torch.no_grad():
        np.testing.assert_allclose(payload2[new], second.network(torch.from_numpy(second.preprocessor.transform(x2[new]))).numpy(), rtol=0, atol=1e-5)


# Composition


class Constant(Naive):
    """A strategy whose penalty is a known number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def penalty(self, model, x, y, logits):
        return torch.tensor(self.value)


def test_composite_adds_penalties() -> None:
    """A composite's penalty is the sum of its parts' (None parts skipped), and None when all are None."""
    model, x = tiny_model(2), torch.zeros(3, 4)
    y = torch.zeros(3, dtype=torch.int64)
    both = Composite([Constant(1.5), Naive(), Constant(2.25)])
    assert value(both.penalty(model, x, y, model(x))) == 3.75
    assert Composite([Naive(), Naive()]).penalty(model, x, y, model(x)) is None
    # Two real penalties: two distillations with weights 1 and 2 give 3 times the loss.
    model.expand_head(3)
    parts = [Distillation(weight=1.0), Distillation(weight=2.0)]
    composite = Composite(parts)
    composite.begin(context(model, 2))
    with torch.no_grad():
        model.head.weight[:2] += 1.0
    xs = torch.from_numpy(as_inputs(blobs((0, 1))[0]))
    logits = model(xs)
    single = value(parts[0].penalty(model, xs, y, logits))
    assert single > 0
    assert value(composite.penalty(model, xs, y, logits)) == pytest.approx(3 * single, rel=1e-6)


def test_build_follows_the_configured_names() -> None:
    """build() returns the named strategies in order; unknown names and nme/balance without a memory are refused."""
    assert tuple(REGISTRY) == NAMES == STRATEGIES  # every configurable name can be built
    plan = build(StrategyConfig(name="replay+distill+ewc+nme", memory_size=7, memory_selection="reservoir"), n_features=4, seed=0)
    assert [type(p) for p in plan.parts] == [Replay, Distillation, EWC, NearestMean]
    assert plan.name == "replay+distill+ewc+nme"
    assert plan.parts[0].memory.fixed_capacity == 7 and plan.parts[0].memory.selection == "reservoir"
    assert plan.parts[3].replay is plan.parts[0]  # nme reads the same memory replay fills
    der = build(StrategyConfig(name="der+distill+nme", memory_fraction=0.2, der_weight=0.7), n_features=4, seed=0)
    assert [type(p) for p in der.parts] == [DarkReplay, Distillation, NearestMean]
    assert der.parts[0].weight == 0.7 and der.parts[0].memory.fraction == 0.2 and der.parts[0].memory.selection == "herding"
    assert der.parts[2].replay is der.parts[0]
    assert [type(p) for p in build(StrategyConfig(name="freeze+interpolate+align"), n_features=4, seed=0).parts] == [Freeze, Interpolation, WeightAlign]
    assert type(build(StrategyConfig(name="joint+nme"), n_features=4, seed=0).parts[1]) is NearestMean

    with pytest.raises(ValidationError, match="'magic'"):
        StrategyConfig(name="replay+magic")
    with pytest.raises(ValueError, match="unknown strategy 'magic'"):
        build(StrategyConfig.model_construct(name="replay+magic"), n_features=4, seed=0)
    for name in ("nme", "distill+balance", "nme+replay"):
        with pytest.raises(ValueError, match="needs a memory"):
            build(StrategyConfig(name=name), n_features=4, seed=0)


# Forgetting on digits


@pytest.fixture(scope="module")
def digits() -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(train, holdout) of the first three class-incremental digit increments."""
    return [split(frame, 0.2) for frame in class_incremental()[:3]]


def chain(digits: list[tuple[pd.DataFrame, pd.DataFrame]], name: str) -> Bundle:
    champion = None
    for train_frame, _ in digits:
        champion, _ = fine_tune(champion, train_frame, label=LABEL, train=TrainConfig(epochs=10), strategy=StrategyConfig(name=name))
    assert champion is not None
    return champion


def test_default_strategy_remembers_what_naive_forgets(digits: list[tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    """After three digit increments, the default (der+nme) keeps > 0.85 on the first holdout while naive falls below 0.3."""
    assert StrategyConfig().name == "der+nme"
    kept, forgot = chain(digits, StrategyConfig().name), chain(digits, "naive")
    first, last = digits[0][1], digits[2][1]
    assert kept.network.classifier == "nme"
    assert score(kept, first, LABEL).accuracy > 0.85
    assert score(forgot, first, LABEL).accuracy < 0.3
    # Both learned the newest classes: the difference is forgetting, not failing to train.
    assert score(kept, last, LABEL).accuracy > 0.85
    assert score(forgot, last, LABEL).accuracy > 0.85


def test_interpolation_validates_on_rows_of_the_new_increment(monkeypatch) -> None:
    """interpolate chooses its mixing weight on held-out rows of the new increment and the memory. The training rows
    it draws them from are what the holdout split left, so its split must be salted: unsalted, its buckets lie inside
    the holdout's and the new increment gave it no row at all."""
    from lepton.models import training
    from lepton.models.training import fine_tune

    held: list[int] = []
    mask = training.holdout_mask

    def recorded(frame, fraction, **kwargs):
        out = mask(frame, fraction, **kwargs)
        held.append(int(out.sum()))
        return out

    monkeypatch.setattr(training, "holdout_mask", recorded)
    first, second = (split(part, 0.2)[0] for part in class_incremental()[:2])  # the training parts, as the flow passes them
    config = StrategyConfig(name="replay+interpolate")
    champion, _ = fine_tune(None, first, label=LABEL, train=TrainConfig(epochs=2), strategy=config)
    fine_tune(champion, second, label=LABEL, train=TrainConfig(epochs=2), strategy=config)
    assert held and 0.05 * len(second) < held[-1] < 0.15 * len(second), (held, len(second))
