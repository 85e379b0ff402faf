"""Hash-based holdout split: stable across runs and row order, close to the requested share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton.models.splits import holdout_mask, split


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x": rng.normal(size=n),
            "pixel": rng.integers(0, 17, size=n),
            "label": rng.integers(0, 10, size=n),
        }
    )


def test_same_frame_gives_the_same_mask() -> None:
    """Splitting the same frame (or an equal copy of it) twice gives the same mask."""
    frame = rows(500)
    mask = holdout_mask(frame, 0.2)
    np.testing.assert_array_equal(holdout_mask(frame, 0.2), mask)
    np.testing.assert_array_equal(holdout_mask(frame.copy(deep=True), 0.2), mask)
    assert 0 < mask.sum() < len(frame)


def test_shuffled_rows_land_on_the_same_side() -> None:
    """Reordering the rows (and renumbering the index) does not move any row across the split."""
    frame = rows(500)
    side = {tuple(r): bool(m) for r, m in zip(frame.itertuples(index=False), holdout_mask(frame, 0.3))}
    shuffled = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert not shuffled["id"].equals(frame["id"])
    shuffled_mask = holdout_mask(shuffled, 0.3)
    for r, m in zip(shuffled.itertuples(index=False), shuffled_mask):
        assert side[tuple(r)] == bool(m)
    assert shuffled_mask.sum() == sum(side.values())


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_holdout_share_is_close_to_the_requested_fraction(fraction: float) -> None:
    """On 1,000 rows the holdout share is within 0.05 of the requested fraction."""
    mask = holdout_mask(rows(1000, seed=1), fraction)
    assert abs(mask.mean() - fraction) <= 0.05


def test_a_small_increment_always_has_both_sides() -> None:
    """Rows that all hash to one side (a 15-row export was refused for leaving no holdout): the row nearest the line
    goes to the other side; a split with both sides is left as it is."""
    rng = np.random.default_rng(2)
    rows = pd.DataFrame({"x": rng.normal(size=400)})
    mask = holdout_mask(rows, 0.2)
    trains, held = rows[~mask].head(12).reset_index(drop=True), rows[mask].head(3).reset_index(drop=True)
    assert holdout_mask(trains, 0.2).sum() == 1 and (~holdout_mask(held, 0.2)).sum() == 1
    both = pd.concat([trains, held], ignore_index=True)
    assert holdout_mask(both, 0.2).tolist() == [False] * 12 + [True] * 3
    assert holdout_mask(rows.head(1), 0.2).tolist() == mask[:1].tolist()


def test_split_partitions_the_frame() -> None:
    """split() returns the rows outside and inside the mask, every row exactly once."""
    frame = rows(300)
    train, holdout = split(frame, 0.25)
    mask = holdout_mask(frame, 0.25)
    assert len(train) == (~mask).sum() and len(holdout) == mask.sum()
    assert sorted(pd.concat([train, holdout])["id"]) == list(range(300))
    assert set(holdout["id"]) == set(frame.loc[mask, "id"])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_invalid_fraction_raises(fraction: float) -> None:
    """A fraction outside the open interval (0, 1) is refused."""
    with pytest.raises(ValueError, match="holdout fraction must be in"):
        holdout_mask(rows(10), fraction)


def test_copies_of_a_repeated_row_are_split_one_by_one() -> None:
    """A row repeated 200 times (a table of counts or codes) puts about the holdout's share of its copies in the
    holdout, not all of them on one side; a table without repeats is split exactly as by the row hash alone."""
    unique = rows(300)
    common = pd.DataFrame([{"id": -1, "x": 0.0, "pixel": 0, "label": 0}] * 200)
    frame = pd.concat([unique, common], ignore_index=True)
    mask = holdout_mask(frame, 0.2)
    assert 20 <= mask[300:].sum() <= 60  # about 40; all or none before
    hashes = pd.util.hash_pandas_object(unique, index=False).to_numpy()
    np.testing.assert_array_equal(holdout_mask(unique, 0.2), (hashes % 10_000) < 2_000)
    np.testing.assert_array_equal(mask[:300], holdout_mask(unique, 0.2))  # the first copy of every row keeps its side
    np.testing.assert_array_equal(holdout_mask(frame.iloc[::-1].reset_index(drop=True), 0.2).sum(), mask.sum())


def test_stored_rows_come_from_the_cache_until_the_file_changes(tmp_path, monkeypatch) -> None:
    """An accepted increment's rows are parsed once and kept; a file whose size or mtime differs, or a damaged entry,
    is read again from the file (the truth) and kept again."""
    import os

    from lepton.tasks import splits
    from lepton.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    file = tmp_path / "ws" / "data" / "increments" / "a.csv"
    file.parent.mkdir(parents=True)
    rows(50).to_csv(file, index=False)
    parsed: list[Path] = []
    real = splits.read_increment

    def counted(path):
        parsed.append(path)
        return real(path)

    monkeypatch.setattr(splits, "read_increment", counted)
    first = splits.stored_rows(ws, "a", file)[0]
    again = splits.stored_rows(ws, "a", file)[0]
    assert len(parsed) == 1 and (ws.state / "cache" / "rows" / "a.pickle").is_file()
    pd.testing.assert_frame_equal(again, first)
    assert again.attrs["header"] == ["id", "x", "pixel", "label"]  # the CSV header as written travels with the rows

    changed = rows(50, seed=1)  # the same size on disk is not enough: the mtime differs
    changed.to_csv(file, index=False)
    size = file.stat().st_size
    os.utime(file, ns=(1, 1))
    assert splits.file_key(file)[-2] == size
    pd.testing.assert_frame_equal(splits.stored_rows(ws, "a", file)[0], real(file))
    assert len(parsed) == 2

    (ws.state / "cache" / "rows" / "a.pickle").write_bytes(b"not a pickle")
    pd.testing.assert_frame_equal(splits.stored_rows(ws, "a", file)[0], real(file))
    assert len(parsed) == 3
    splits.stored_rows(ws, "a", file)[0]
    assert len(parsed) == 3  # kept again after the damaged entry


def test_a_large_increment_is_not_cached(tmp_path, monkeypatch) -> None:
    """Past data.CACHED_CELLS an increment is parsed each run: its cache entry would be its size in memory again."""
    from lepton.tasks import splits
    from lepton.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    file = tmp_path / "a.csv"
    rows(50).to_csv(file, index=False)
    monkeypatch.setattr(splits, "CACHED_CELLS", 199)  # 50 rows x 4 columns = 200 cells
    splits.stored_rows(ws, "a", file)[0]
    assert not (ws.state / "cache" / "rows").exists() or not list((ws.state / "cache" / "rows").iterdir())


def test_a_salted_split_is_independent_of_the_holdout() -> None:
    """interpolate's validation split of the training rows (salted) holds rows; unsalted, its buckets lie inside the holdout's."""
    frame = rows(2000)
    train = frame[~holdout_mask(frame, 0.2)]
    assert holdout_mask(train, 0.1).sum() == 1  # why the salt: the same hash, a smaller share of it (one row, as no side is left empty)
    held = holdout_mask(train, 0.1, salt=1)
    assert 0.05 < held.mean() < 0.15


def test_the_split_is_the_same_from_cached_hashes(tmp_path) -> None:
    """The rows cache keeps each increment's row hashes; split from them, every increment's training part and holdout
    are exactly those split from the rows (repeats and unlabelled rows included), and hashes of other rows are refused."""
    from lepton.config import DataConfig
    from lepton.tasks import splits
    from lepton.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    frames = {}
    for name, seed in (("a", 0), ("b", 1)):
        frame = pd.concat([rows(80, seed=seed), rows(80, seed=seed).head(20)], ignore_index=True)
        file = tmp_path / f"{name}.csv"
        frame.to_csv(file, index=False)
        frames[name] = splits.stored_rows(ws, name, file)[0]  # parsed, and kept with its hashes
    frames["b"].loc[3, "label"] = np.nan  # an unlabelled row: the split falls back to hashing the rows it keeps
    cached = splits.History(dict(frames), {k: splits.stored_rows(ws, k, tmp_path / f"{k}.csv")[1] for k in frames})
    assert set(cached.hashes) == {"a", "b"}
    for data in (DataConfig(label="label"), DataConfig(label="label", duplicates="drop")):
        with_hashes = splits.split_increments.fn(cached, "b", data)
        without = splits.split_increments.fn(splits.History(dict(frames)), "b", data)
        pd.testing.assert_frame_equal(with_hashes[0], without[0])
        for key in frames:
            pd.testing.assert_frame_equal(with_hashes[1][key], without[1][key])
    with pytest.raises(ValueError, match="row hashes"):
        holdout_mask(frames["a"], 0.2, hashes=cached.hashes["a"][:-1])


def test_the_candidate_learns_what_the_champion_has_not() -> None:
    """Every accepted increment while there is no champion; those after the champion's own increment (kept out by the
    gate since) when there is one; none when it is the last, or a model from elsewhere. Their training rows come
    before the new one's, and every holdout stays where it was."""
    from lepton.config import DataConfig
    from lepton.tasks.splits import History, not_learnt, split_increments

    rng = np.random.default_rng(0)
    history = History({k: pd.DataFrame({"a": rng.normal(size=50), "y": rng.integers(0, 2, 50)}) for k in ("a", "b", "c", "new")})
    assert not_learnt(history, "new", None) == ["a", "b", "c"]
    assert not_learnt(history, "new", "a") == ["b", "c"]
    assert not_learnt(history, "new", "c") == []
    assert not_learnt(history, "new", "elsewhere") == []
    data = DataConfig(label="y")
    alone, holdouts = split_increments.fn(history, "new", data)
    both, same = split_increments.fn(history, "new", data, also=["b", "c"])
    trained_b, _ = split(history.frames["b"], 0.2)
    assert len(both) == len(alone) + len(trained_b) + len(split(history.frames["c"], 0.2)[0])
    pd.testing.assert_frame_equal(both.head(len(trained_b)), trained_b.reset_index(drop=True))
    assert list(same) == list(holdouts) and all(same[k].equals(holdouts[k]) for k in holdouts)
