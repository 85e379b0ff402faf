"""Benchmark 1: what each anti-forgetting strategy keeps, and what it costs, on the same splits and seeds.

Runs in one process; writes ``benchmarks/results/continual.json`` (one record per
scenario, strategy and seed), ``continual.md`` (mean and std over seeds, the targets)
and the memory-budget curve (``memory_curve.json`` and ``memory_curve.png``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.scenarios import LABEL, Scenario, class_incremental, domain_incremental, stream
from lepton.config import StrategyConfig, TrainConfig
from lepton.models import metrics
from lepton.models.evaluation import score
from lepton.models.training import fine_tune

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = StrategyConfig().name
SEEDS = (0, 1, 2)
# Avalanche 0.6.0 on the same class-incremental split (final accuracy on the 450 test samples).
PEERS = {"naive": 0.196, "LwF": 0.195, "EWC": 0.196, "A-GEM": 0.409, "GDumb (135)": 0.907, "GEM": 0.919,
         "iCaRL (135)": 0.929, "replay 67 (5%)": 0.883, "replay 135 (10%)": 0.939, "replay 269 (20%)": 0.964, "joint": 0.974}
# Distillation on every increment, lightly: the best stream setting found, shown beside
# the default because it costs accuracy under rotation (see the domain-incremental rows).
DISTILL_ALWAYS = {"distill_only_new_classes": False, "distill_weight": 0.25}
# Per scenario, the rows: a strategy name, or (name, settings that differ from StrategyConfig's defaults).
STRATEGIES: dict[str, list[str | tuple[str, dict[str, Any]]]] = {
    "class_incremental": ["naive", "ewc", "distill", "replay", "replay+distill", "replay+distill+nme", "der", "der+distill+nme", DEFAULT, "joint"],
    "domain_incremental": ["naive", "replay", "replay+distill+nme", ("der+distill", DISTILL_ALWAYS), DEFAULT, "joint"],
    "stream": ["naive", "replay", "replay+distill+nme", ("der+distill", DISTILL_ALWAYS), DEFAULT, "joint"],
}
SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "class_incremental": class_incremental,
    "domain_incremental": domain_incremental,
    "stream": stream,
}


def run(scenario: Scenario, strategy: StrategyConfig, train: TrainConfig) -> dict[str, Any]:
    """One strategy through every increment of a scenario; the accuracy matrix and the cost of each step."""
    t = len(scenario.increments)
    r = np.zeros((t, t))
    champion, samples, seconds, seen = None, [], [], 0
    for i, increment in enumerate(scenario.increments):
        champion, report = fine_tune(champion, increment, label=LABEL, train=train, strategy=strategy)
        samples.append(report.train_samples)
        seconds.append(report.seconds)
        seen += len(increment)
        for j, test in enumerate(scenario.tests):
            r[i, j] = score(champion, test, LABEL).accuracy
    memory = int(sum(len(v) for k, v in champion.strategy_state.items() if k.endswith("memory.y")))
    everything = pd.concat(scenario.tests[:t], ignore_index=True)
    return {
        "final_accuracy": score(champion, everything, LABEL).accuracy,
        # Forward transfer against chance (an untrained model's expected accuracy on ten digits).
        **metrics.summary(r, baseline=np.full(t, 1.0 / 10)),
        "r": r.round(4).tolist(),
        "train_samples": samples[-1],
        "train_samples_per_increment": samples,
        "train_seconds": float(sum(seconds)),
        "memory_size": memory,
        "memory_fraction": memory / seen,
    }


def continual(*, seeds: tuple[int, ...] = SEEDS, scenarios: list[str] | None = None, out: Path = RESULTS,
              epochs: int = 30, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every scenario x strategy x seed; joint's cost is recorded beside each record."""
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for name in scenarios or list(SCENARIOS):
        scenario = SCENARIOS[name]()
        for seed in seeds:
            train = TrainConfig(seed=seed, epochs=epochs)
            rows = []
            for entry in STRATEGIES[name]:
                strategy, settings = (entry, {}) if isinstance(entry, str) else entry
                started = time.perf_counter()
                result = run(scenario, StrategyConfig(name=strategy, **settings), train)
                progress(f"{name:<18} {strategy:<24} seed {seed}: final {result['final_accuracy']:.3f} "
                         f"forgetting {result['forgetting']:.3f} samples {result['train_samples']} ({time.perf_counter() - started:.0f}s)")
                rows.append({"scenario": name, "strategy": strategy, "settings": settings, "seed": seed,
                             "default": strategy == DEFAULT and not settings, "epochs": epochs, **result})
            joint = next(r for r in rows if r["strategy"] == "joint")
            for row in rows:
                row["joint_train_samples"] = joint["train_samples"]
                row["joint_train_samples_per_increment"] = joint["train_samples_per_increment"]
            records += rows
    (out / "continual.json").write_text(json.dumps(records, indent=1) + "\n")
    curve = memory_curve(seeds=seeds, epochs=epochs, progress=progress)
    (out / "memory_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    plot_memory_curve(curve, out / "memory_curve.png")
    (out / "continual.md").write_text(markdown(records, curve))
    return records


def memory_curve(*, seeds: tuple[int, ...] = SEEDS, fractions=(0.02, 0.05, 0.10, 0.20), epochs: int = 30,
                 progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Final accuracy of the default strategy on class-incremental digits at several memory budgets."""
    scenario = class_incremental()
    points = []
    for fraction in fractions:
        for seed in seeds:
            result = run(scenario, StrategyConfig(memory_fraction=fraction), TrainConfig(seed=seed, epochs=epochs))
            progress(f"memory {fraction:.0%} seed {seed}: final {result['final_accuracy']:.3f}")
            points.append({"memory_fraction_target": fraction, "seed": seed, "final_accuracy": result["final_accuracy"],
                           "memory_size": result["memory_size"], "memory_fraction": result["memory_fraction"]})
    return points


def plot_memory_curve(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(points).groupby("memory_fraction_target")["final_accuracy"].agg(["mean", "std"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.errorbar(frame.index * 100, frame["mean"] * 100, yerr=frame["std"] * 100, marker="o", capsize=4, label=f"Lepton default ({DEFAULT})")
    peers = {5: PEERS["replay 67 (5%)"], 10: PEERS["replay 135 (10%)"], 20: PEERS["replay 269 (20%)"]}
    ax.plot(list(peers), [v * 100 for v in peers.values()], "s--", color="grey", label="Avalanche replay")
    ax.axhline(PEERS["joint"] * 100, color="black", lw=0.8, ls=":", label="Avalanche joint")
    ax.set_xlabel("replay memory (% of training samples seen)")
    ax.set_ylabel("final accuracy on all 450 test samples (%)")
    ax.set_title("Class-incremental digits: accuracy vs memory budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def targets(records: list[dict[str, Any]], curve: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """Each target of the benchmark, whether it was met, and the measured numbers."""
    frame = pd.DataFrame(records)
    mean = frame.groupby(["scenario", "strategy"])["final_accuracy"].mean()
    by_memory = pd.DataFrame(curve).groupby("memory_fraction_target")["final_accuracy"].mean()
    out = []
    if 0.10 in by_memory.index:
        out.append(("class-incremental, memory <= 10%: final accuracy >= 95%", by_memory[0.10] >= 0.95, f"{by_memory[0.10]:.1%}"))
    if 0.05 in by_memory.index:
        out.append(("class-incremental, memory <= 5%: final accuracy >= 90%", by_memory[0.05] >= 0.90, f"{by_memory[0.05]:.1%}"))
    if ("domain_incremental", DEFAULT) in mean.index:
        gap = mean["domain_incremental", "joint"] - mean["domain_incremental", DEFAULT]
        out.append(("domain-incremental: within 2 points of joint", gap <= 0.02, f"{mean['domain_incremental', DEFAULT]:.1%} vs joint {mean['domain_incremental', 'joint']:.1%}"))
    default = frame[(frame.scenario == "class_incremental") & frame["default"]]
    if len(default):
        ratio = (default.train_samples / default.joint_train_samples).mean()
        out.append(("cost at the 5th increment <= 0.5 x joint's", ratio <= 0.5, f"{ratio:.2f} x"))
    stream_rows = frame[(frame.scenario == "stream") & frame["default"]]
    if len(stream_rows):
        per = np.array(stream_rows.train_samples_per_increment.tolist())
        flat = float((per[:, -1] / per[:, 1]).mean())
        joint_per = np.array(stream_rows.joint_train_samples_per_increment.tolist())
        growth = float((joint_per[:, -1] / joint_per[:, 1]).mean())
        out.append(("stream: increment 20 costs <= 1.2 x increment 2", flat <= 1.2, f"{flat:.2f} x (joint: {growth:.1f} x)"))
        gap = mean["stream", "joint"] - mean["stream", DEFAULT]
        out.append(("stream: final accuracy within 1 point of joint", gap <= 0.01, f"{mean['stream', DEFAULT]:.1%} vs joint {mean['stream', 'joint']:.1%}"))
    return out


def markdown(records: list[dict[str, Any]], curve: list[dict[str, Any]]) -> str:
    frame = pd.DataFrame(records)
    epochs = records[0].get("epochs", 30) if records else 30
    seeds = sorted({r["seed"] for r in records})
    defaults = StrategyConfig()
    lines = [f"Default strategy: `{DEFAULT}` (memory_fraction {defaults.memory_fraction}, {defaults.memory_selection}, der_weight {defaults.der_weight}); "
             f"rows with distill use distill_weight {defaults.distill_weight}, temperature {defaults.distill_temperature}, "
             f"only_new_classes {str(defaults.distill_only_new_classes).lower()} unless marked. "
             f"MLP 64-256-256-10, Adam 1e-3, batch 32, {epochs} epochs per increment, seeds {seeds}; mean ± std over seeds.", ""]
    tuned = sorted({(r["strategy"], json.dumps(r.get("settings") or {}, sort_keys=True)) for r in records if r.get("settings")})
    if tuned:
        lines += ["Rows marked † ran with settings other than the defaults: " + "; ".join(f"`{n}` {s}" for n, s in tuned) + ".", ""]
    for name, group in frame.groupby("scenario", sort=False):
        lines += [f"### {name}", "", "| strategy | final accuracy | forgetting | BWT | FWT | samples at last increment | vs joint | train time (s) | memory |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for strategy, rows in group.groupby("strategy", sort=False):
            def ms(col: str, pct: bool = True) -> str:
                m, s = rows[col].mean(), rows[col].std()
                return f"{m:.1%} ± {s:.1%}" if pct else f"{m:+.3f} ± {s:.3f}"
            tag = " **(default)**" if rows["default"].all() else (" †" if rows.get("settings") is not None and any(rows["settings"]) else "")
            lines.append(
                f"| `{strategy}`{tag} | {ms('final_accuracy')} | {ms('forgetting', False)} | {ms('bwt', False)} | "
                f"{ms('fwt', False) if 'fwt' in rows else '-'} | "
                f"{rows.train_samples.mean():.0f} | {(rows.train_samples / rows.joint_train_samples).mean():.2f} x | "
                f"{rows.train_seconds.mean():.1f} | {rows.memory_size.mean():.0f} ({rows.memory_fraction.mean():.1%}) |"
            )
        lines.append("")
    table = pd.DataFrame(curve).groupby("memory_fraction_target")["final_accuracy"].agg(["mean", "std"])
    lines += ["### Memory budget (class-incremental, default strategy)", "", "| memory | final accuracy | Avalanche replay |", "| --- | --- | --- |"]
    peer = {0.05: "88.3%", 0.10: "93.9%", 0.20: "96.4%"}
    for fraction, row in table.iterrows():
        lines.append(f"| {fraction:.0%} | {row['mean']:.1%} ± {row['std']:.1%} | {peer.get(fraction, '-')} |")
    lines += ["", "### Targets", "", "| target | met | measured |", "| --- | --- | --- |"]
    for text, ok, measured in targets(records, curve):
        lines.append(f"| {text} | {'yes' if ok else '**no**'} | {measured} |")
    return "\n".join(lines) + "\n"
