"""ClassBalancedMemory: size, balance, provenance, herding and resumable state, on tiny synthetic increments."""

from __future__ import annotations

import numpy as np
import pytest

from lepton.models.memory import ClassBalancedMemory, herding_order

N_FEATURES = 3


class Stream:
    """Increments whose rows are unique and self-describing: (row id, label, noise)."""

    def __init__(self, seed: int = 0) -> None:
        self.next_id = 0
        self.rng = np.random.default_rng(seed)
        self.offered: dict[float, int] = {}

    def increment(self, counts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in counts.items()])
        self.rng.shuffle(y)
        ids = np.arange(self.next_id, self.next_id + len(y), dtype=np.float64)
        self.next_id += len(y)
        x = np.column_stack([ids, y.astype(np.float64), self.rng.normal(size=len(y))])
        self.offered.update({float(i): int(c) for i, c in zip(ids, y)})
        return x, y


def test_len_is_min_of_capacity_and_seen_across_increments() -> None:
    """With a fixed capacity, the memory holds min(capacity, samples seen) after every increment."""
    memory, stream = ClassBalancedMemory(capacity=40, selection="reservoir", seed=0), Stream()
    seen = 0
    sizes = []
    for counts in ({0: 6, 1: 6}, {0: 20, 1: 20, 2: 20}, {3: 30}, {1: 15, 4: 15}):
        x, y = stream.increment(counts)
        memory.update(x, y)
        seen += len(y)
        sizes.append(len(memory))
        assert len(memory) == min(40, seen)
    assert sizes == [12, 40, 40, 40]


def test_each_class_gets_an_even_share_of_the_capacity() -> None:
    """When every class has enough samples, each class count is within 1 of capacity / n_classes."""
    memory, stream = ClassBalancedMemory(capacity=40, selection="reservoir", seed=1), Stream(1)
    memory.update(*stream.increment({0: 50, 1: 80}))
    assert memory.class_counts() == {0: 20, 1: 20}
    # Skewed arrivals must not skew the memory: class 2 arrives 4x as often as class 0.
    memory.update(*stream.increment({0: 25, 2: 100}))
    counts = memory.class_counts()
    assert sorted(counts) == [0, 1, 2]
    assert sum(counts.values()) == 40
    assert all(abs(n - 40 / 3) <= 1 for n in counts.values()), counts
    memory.update(*stream.increment({3: 30, 4: 30}))
    counts = memory.class_counts()
    assert counts == {0: 8, 1: 8, 2: 8, 3: 8, 4: 8}


def test_fraction_mode_fills_on_the_first_increment() -> None:
    """A fraction-sized memory holds int(fraction * seen) right after the first increment (it used to hold 0)."""
    memory, stream = ClassBalancedMemory(fraction=0.1, selection="reservoir", seed=0), Stream()
    memory.update(*stream.increment({0: 50, 1: 50}))
    assert len(memory) == 10
    assert memory.capacity == 10
    # The capacity grows with what was seen; the classes offered now can fill it.
    memory.update(*stream.increment({0: 60, 1: 60, 2: 60}))
    assert len(memory) == int(0.1 * 280) == 28
    assert memory.class_counts() == {0: 10, 1: 9, 2: 9}


def test_samples_are_rows_that_were_offered_with_their_labels() -> None:
    """Every stored sample is an offered row, unchanged, under the label it was offered with."""
    memory, stream = ClassBalancedMemory(capacity=25, selection="reservoir", seed=2), Stream(2)
    for counts in ({0: 30, 1: 30}, {2: 40}, {0: 10, 3: 40}):
        memory.update(*stream.increment(counts))
    x, y = memory.samples(N_FEATURES)
    assert x.shape == (25, N_FEATURES) and y.shape == (25,)
    assert len(np.unique(x[:, 0])) == 25, "a row is stored twice"
    for row, label in zip(x, y):
        assert stream.offered[float(row[0])] == label
        assert row[1] == label
    # Classes come out in ascending order.
    assert np.all(np.diff(y) >= 0)


def test_state_round_trip_restores_samples_and_rng_stream(tmp_path) -> None:
    """A memory rebuilt from state_dict (via .npz) holds the same samples and evolves identically afterwards."""
    stream = Stream(3)
    first = [stream.increment({0: 40, 1: 40}), stream.increment({2: 40})]
    later = [stream.increment({0: 60, 3: 30}), stream.increment({1: 50, 2: 50})]

    original = ClassBalancedMemory(capacity=30, selection="reservoir", seed=3)
    for x, y in first:
        original.update(x, y)
    np.savez(tmp_path / "memory.npz", **original.state_dict(N_FEATURES))
    with np.load(tmp_path / "memory.npz", allow_pickle=False) as npz:
        state = {k: npz[k] for k in npz.files}

    # A different seed: only a restored RNG state can make the two continue alike.
    restored = ClassBalancedMemory(capacity=30, selection="reservoir", seed=12345)
    restored.load_state_dict(state)
    before_x, before_y = original.samples(N_FEATURES)
    np.testing.assert_array_equal(restored.samples(N_FEATURES)[0], before_x)
    np.testing.assert_array_equal(restored.samples(N_FEATURES)[1], before_y)
    assert restored.seen == original.seen

    for x, y in later:
        original.update(x, y)
        restored.update(x, y)
    after_x, after_y = original.samples(N_FEATURES)
    np.testing.assert_array_equal(restored.samples(N_FEATURES)[0], after_x)
    np.testing.assert_array_equal(restored.samples(N_FEATURES)[1], after_y)
    assert restored.seen == original.seen == {0: 100, 1: 90, 2: 90, 3: 30}
    # The continuation did draw random numbers, so the check above had something to catch.
    assert not np.isin(after_x[:, 0], before_x[:, 0]).all()


def test_fresh_memory_with_another_seed_diverges() -> None:
    """The seed drives the reservoir: two seeds keep different samples of the same stream."""
    stream = Stream(4)
    increments = [stream.increment({0: 100, 1: 100}), stream.increment({2: 100})]
    a, b = ClassBalancedMemory(capacity=20, selection="reservoir", seed=0), ClassBalancedMemory(capacity=20, selection="reservoir", seed=1)
    for x, y in increments:
        a.update(x, y)
        b.update(x, y)
    assert not np.array_equal(a.samples(N_FEATURES)[0], b.samples(N_FEATURES)[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 10, "fraction": 0.1}, "exactly one"),
        ({}, "exactly one"),
        ({"capacity": -1}, "capacity must be >= 0"),
        ({"fraction": -0.1}, r"fraction must be in \[0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be in \[0, 1\]"),
        ({"capacity": 10, "selection": "random"}, "selection must be 'reservoir' or 'herding', got 'random'"),
    ],
)
def test_constructor_rejects_bad_sizes(kwargs: dict, message: str) -> None:
    """Both or neither of capacity/fraction, a negative capacity, a fraction outside [0, 1] and an unknown selection are refused."""
    with pytest.raises(ValueError, match=message):
        ClassBalancedMemory(**kwargs)


def identity(rows: np.ndarray) -> np.ndarray:
    return rows


def test_herding_needs_an_embedding() -> None:
    """update() with herding and no embedding function raises ValueError and stores nothing."""
    memory, stream = ClassBalancedMemory(capacity=10, selection="herding"), Stream()
    with pytest.raises(ValueError, match="embedding"):
        memory.update(*stream.increment({0: 5}))
    assert len(memory) == 0


@pytest.mark.parametrize("selection", ["reservoir", "herding"])
def test_default_selection_and_quota_redistribution(selection: str) -> None:
    """Capacity 40 with 100 rows of class 0 and 5 of class 1 keeps 40: class 1's unused share goes to class 0."""
    assert ClassBalancedMemory(capacity=1).selection == "reservoir"
    memory, stream = ClassBalancedMemory(capacity=40, selection=selection, seed=0), Stream()
    memory.update(*stream.increment({0: 100, 1: 5}), embed=identity)
    assert memory.class_counts() == {0: 35, 1: 5}
    # A new class with enough rows takes back an even share; class 1 still holds all it has.
    memory.update(*stream.increment({2: 50}), embed=identity)
    assert memory.class_counts() == {0: 18, 1: 5, 2: 17}
    assert len(memory) == 40


def test_herding_order_follows_the_running_mean() -> None:
    """herding_order picks the row nearest the target first, then whichever keeps the running mean closest."""
    features = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.1, 0.0]])
    target = np.array([1.0, 0.0])
    # Step 1: row 3 is 0.1 away. Step 2: mean with row 0 is (0.55, 0), 0.45 away, closer than rows 1 (0.55) and 2 (~0.50).
    # Step 3: with row 1 the mean is (1.03, 0), with row 2 (0.70, 0.33).
    assert herding_order(features, target, 4) == [3, 0, 1, 2]
    assert herding_order(features, target, 2) == [3, 0]
    assert herding_order(features, target, 10) == [3, 0, 1, 2], "asks for more rows than there are"
    assert herding_order(features, target, 0) == []


def test_herding_exemplars_track_the_class_mean_better_than_random_subsets() -> None:
    """On a 16-d Gaussian blob, 10 herded exemplars' mean is nearer the class mean than any of 200 random 10-row subsets."""
    rng = np.random.default_rng(0)
    # 16 dimensions, like a (small) embedding: in 2-5 dimensions unit vectors all sit about
    # 1 - |mean| from their mean, and greedy herding gains little over chance there.
    x = rng.normal(loc=2.0, size=(200, 16))
    y = np.zeros(200, dtype=np.int64)
    memory = ClassBalancedMemory(capacity=10, selection="herding")
    memory.update(x, y, embed=identity)
    kept, labels = memory.samples(16)
    assert kept.shape == (10, 16) and (labels == 0).all()
    # Herding works on unit-norm embeddings: compare means there.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centre = unit.mean(axis=0)

    def gap(rows: np.ndarray) -> float:
        return float(np.linalg.norm((rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(axis=0) - centre))

    random_gaps = [gap(x[rng.choice(200, size=10, replace=False)]) for _ in range(200)]
    assert gap(kept) < min(random_gaps)
    assert gap(kept) < 0.5 * float(np.median(random_gaps))
    # The exemplars are offered rows, each kept once.
    assert all(any(np.array_equal(row, offered) for offered in x) for row in kept)
    assert len(np.unique(kept, axis=0)) == 10


def test_herding_keeps_exemplars_in_priority_order_when_shares_shrink() -> None:
    """A class's share shrinking drops its last (least representative) exemplars: the rest is the old prefix."""
    stream = Stream(5)
    memory = ClassBalancedMemory(capacity=12, selection="herding")
    memory.update(*stream.increment({0: 30, 1: 30}), embed=identity)
    before = {c: [row.copy() for row in rows] for c, rows in memory.buffers.items()}
    assert memory.class_counts() == {0: 6, 1: 6}
    memory.update(*stream.increment({2: 30}), embed=identity)
    assert memory.class_counts() == {0: 4, 1: 4, 2: 4}
    for c in (0, 1):
        np.testing.assert_array_equal(np.stack(memory.buffers[c]), np.stack(before[c][:4]))


def test_herding_state_round_trip(tmp_path) -> None:
    """A herding memory rebuilt from state_dict holds the same exemplars and selects the same ones afterwards."""
    stream = Stream(6)
    first, later = stream.increment({0: 20, 1: 20}), stream.increment({0: 10, 2: 20})
    original = ClassBalancedMemory(capacity=12, selection="herding")
    original.update(*first, embed=identity)
    np.savez(tmp_path / "memory.npz", **original.state_dict(N_FEATURES))
    with np.load(tmp_path / "memory.npz", allow_pickle=False) as npz:
        restored = ClassBalancedMemory(capacity=12, selection="herding")
        restored.load_state_dict({k: npz[k] for k in npz.files})
    for memory in (original, restored):
        memory.update(*later, embed=identity)
    np.testing.assert_array_equal(restored.samples(N_FEATURES)[0], original.samples(N_FEATURES)[0])
    assert restored.seen == original.seen == {0: 30, 1: 20, 2: 20}


# Payloads (e.g. the logits dark experience replay records with each sample)


@pytest.mark.parametrize("selection", ["reservoir", "herding"])
def test_payload_stays_with_its_row_through_selection(selection: str) -> None:
    """Whatever the memory keeps, drops or reorders, each stored row's payload is the one offered with it."""
    stream, memory = Stream(7), ClassBalancedMemory(capacity=15, selection=selection, seed=7)
    embed = identity if selection == "herding" else None
    for counts in ({0: 20, 1: 20}, {0: 10, 2: 25}, {3: 30}):
        x, y = stream.increment(counts)
        # A payload that names its row: (10 x row id, row id + label).
        memory.update(x, y, embed=embed, payload=np.column_stack([10 * x[:, 0], x[:, 0] + y]))
        kept, labels = memory.samples(N_FEATURES)
        payload = memory.payload()
        assert payload.shape == (len(kept), 2) == (15, 2)
        np.testing.assert_array_equal(payload[:, 0], 10 * kept[:, 0])
        np.testing.assert_array_equal(payload[:, 1], kept[:, 0] + labels)


def test_payload_pads_narrower_rows_and_survives_a_round_trip(tmp_path) -> None:
    """Payloads recorded with 2 then 4 columns come out NaN-padded to 4, and the same after save and load."""
    stream, memory = Stream(8), ClassBalancedMemory(capacity=8, selection="reservoir", seed=8)
    x1, y1 = stream.increment({0: 4, 1: 4})
    memory.update(x1, y1, payload=np.full((8, 2), 1.5))
    x2, y2 = stream.increment({2: 4, 3: 4})
    memory.update(x2, y2, payload=np.full((8, 4), 2.5))
    _, labels = memory.samples(N_FEATURES)
    payload = memory.payload()
    assert payload.shape == (8, 4)
    old = labels < 2
    assert old.sum() == 4
    np.testing.assert_array_equal(payload[old, :2], 1.5)
    assert np.isnan(payload[old, 2:]).all()
    np.testing.assert_array_equal(payload[~old], 2.5)

    np.savez(tmp_path / "memory.npz", **memory.state_dict(N_FEATURES))
    with np.load(tmp_path / "memory.npz", allow_pickle=False) as npz:
        restored = ClassBalancedMemory(capacity=8, selection="reservoir")
        restored.load_state_dict({k: npz[k] for k in npz.files})
    np.testing.assert_array_equal(restored.payload(), payload)  # NaNs in the same places
    assert [len(p) for p in restored.payloads[0]] == [2, 2]


def test_payload_is_optional_and_checked() -> None:
    """Without payloads the payload matrix has no columns; a payload of the wrong length is refused, nothing stored."""
    stream, memory = Stream(9), ClassBalancedMemory(capacity=6, selection="reservoir")
    memory.update(*stream.increment({0: 3, 1: 3}))
    assert memory.payload().shape == (6, 0)
    x, y = stream.increment({2: 4})
    with pytest.raises(ValueError, match="payload has 3 rows for 4 samples"):
        memory.update(x, y, payload=np.zeros((3, 2)))
    assert len(memory) == 6 and memory.seen == {0: 3, 1: 3}


def test_herding_a_large_increment_herds_the_first_exemplars_and_draws_the_rest():
    """Past HERDING_MAX a class, herding picks the first exemplars among a sample and fills the quota by a weighted draw:
    the quota is kept, no row twice, and the kept mean stays near the class mean."""
    from lepton.models.memory import HERDING_MAX, herding_order

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30000, 6))
    y = np.zeros(30000, dtype=np.int64)
    memory = ClassBalancedMemory(capacity=1200, selection="herding", seed=0)
    memory.update(x, y, embed=lambda rows: rows)
    kept = np.stack(memory.buffers[0])
    assert len(kept) == 1200 > HERDING_MAX
    assert len(np.unique(kept, axis=0)) == 1200
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept_unit = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    # The herded exemplars track the class mean far closer than a uniform sample of as many rows does.
    gap = np.linalg.norm(kept_unit[:HERDING_MAX].mean(axis=0) - unit.mean(axis=0))
    uniform = np.linalg.norm(unit[rng.choice(30000, HERDING_MAX, replace=False)].mean(axis=0) - unit.mean(axis=0))
    assert gap < uniform / 5
    # A small class is herded over every row, as before: the same picks as herding_order on all of them.
    small = ClassBalancedMemory(capacity=30, selection="herding", seed=0)
    small.update(x[:300], y[:300], embed=lambda rows: rows)
    order = herding_order(unit[:300], unit[:300].mean(axis=0), 30)
    assert np.array_equal(np.stack(small.buffers[0]), x[:300][order])
