"""Benchmark: a first model started from another model's champion, against one from scratch.

The source is Lepton's default network trained on digits 0-4 (the split of ``lepton bench
continual``). Two targets, each with 5, 10, 20 and 50 training samples per class: digits 5-9
(other classes), and digits 0-4 under a changed sensor (intensities inverted and shifted).
Each way of starting (scratch, frozen, partial, full) trains on the target's samples and is
scored on its test digits; Lepton's choice (``train.transfer: auto``) picks one on a
validation part of the samples and trains it on all of them. Writes
``benchmarks/results/transfer.json`` and ``transfer.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.scenarios import LABEL, _frame, _split
from lepton.config import StrategyConfig, TrainConfig
from lepton.models.evaluation import score
from lepton.models.training import TRANSFERS, choose_transfer, fine_tune

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2)
SIZES = (5, 10, 20, 50)
WAYS = ("scratch", *TRANSFERS)
MARGIN = 0.01  # Lepton's choice at least the best way minus one point


def sensor(x: np.ndarray) -> np.ndarray:
    """Another sensor: intensities inverted and shifted (digits in [0, 1])."""
    return np.clip(0.9 - 0.8 * x, 0.0, 1.0)


def targets_of(x_train, y_train, x_test, y_test) -> dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
    later = y_test >= 5
    first = ~later
    return {
        "digits 5-9": (x_train, y_train, _frame(x_test[later], y_test[later]), range(5, 10)),
        "digits 0-4, another sensor": (sensor(x_train), y_train, _frame(sensor(x_test[first]), y_test[first]), range(5)),
    }


def transfer(*, seeds: tuple[int, ...] = SEEDS, epochs: int = 30, out: Path = RESULTS, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = _split()
    train = TrainConfig(epochs=epochs)
    strategy = StrategyConfig()
    records = []
    for seed in seeds:
        config = train.model_copy(update={"seed": seed})
        known = np.isin(y_train, range(5))
        source, _ = fine_tune(None, _frame(x_train[known], y_train[known]), label=LABEL, train=config, strategy=strategy)
        for target, (xs, ys, test, classes) in targets_of(x_train, y_train, x_test, y_test).items():
            rng = np.random.default_rng(seed)
            for size in SIZES:
                rows = np.concatenate([rng.choice(np.flatnonzero(ys == c), size, replace=False) for c in classes])
                samples = _frame(xs[rows], ys[rows])
                started = time.perf_counter()
                accuracy = {}
                for way in WAYS:
                    model, _ = fine_tune(None, samples, label=LABEL, train=config, strategy=strategy,
                                         source=None if way == "scratch" else source, transfer="full" if way == "scratch" else way)
                    accuracy[way] = score(model, test, LABEL).accuracy
                choice = choose_transfer(source, samples, label=LABEL, train=config, strategy=strategy)
                record = {"target": target, "per_class": size, "seed": seed, "accuracy": accuracy, "chosen": choice.chosen,
                          "lepton": accuracy[choice.chosen], "validation": choice.scores, "seconds": round(time.perf_counter() - started, 2)}
                records.append(record)
                progress(f"{target:<28} {size:>2}/class seed {seed}: " + " ".join(f"{w} {a:.3f}" for w, a in accuracy.items())
                         + f"; chose {choice.chosen}")
    (out / "transfer.json").write_text(json.dumps(records, indent=1) + "\n")
    (out / "transfer.md").write_text(markdown(records))
    return records


def _table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"target": r["target"], "per_class": r["per_class"], "seed": r["seed"], **r["accuracy"], "lepton": r["lepton"]} for r in records]
    return pd.DataFrame(rows).groupby(["target", "per_class"], sort=False)[[*WAYS, "lepton"]].mean()


def targets(records: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    out = []
    for (target, size), row in _table(records).iterrows():
        best = max(WAYS, key=lambda w: row[w])
        ok = row["lepton"] >= row[best] - MARGIN
        out.append((f"{target}, {size}/class: Lepton's choice >= the best way - 1 point", bool(ok), f"{row['lepton']:.1%} vs {best} {row[best]:.1%}"))
    return out


def markdown(records: list[dict[str, Any]]) -> str:
    table = _table(records)
    seeds = sorted({r["seed"] for r in records})
    lines = [
        "Source: Lepton's default network trained on digits 0-4 (the split of `lepton bench continual`, 30 epochs). Each target trains a "
        "first model on a few samples per class and is scored on its test digits; accuracy, mean over seeds "
        f"{seeds}. scratch: a new network; frozen, partial, full: the source's feature layers under a fresh head, none, the last or "
        "all of them training; Lepton: `train.transfer: auto`, the way that scored best on 25% of the samples (trained on the other 75%), "
        "as trained on all of them.",
        "",
        "| target | samples per class | scratch | frozen | partial | full | Lepton | Lepton's choices |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    chosen: dict[tuple[str, int], list[str]] = {}
    for r in records:
        chosen.setdefault((r["target"], r["per_class"]), []).append(r["chosen"])
    for (target, size), row in table.iterrows():
        lines.append(f"| {target} | {size} | " + " | ".join(f"{row[w]:.1%}" for w in WAYS) + f" | {row['lepton']:.1%} | {', '.join(chosen[target, size])} |")
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {text} | {'yes' if ok else '**no**'} | {measured} |" for text, ok, measured in targets(records)]
    return "\n".join(lines) + "\n"
