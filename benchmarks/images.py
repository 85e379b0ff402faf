"""Benchmark: class-incremental digits as images, the CNN beside the MLP on the same image column.

The split and seeds of ``lepton bench continual``'s class-incremental scenario; each 8x8
digit is encoded as PNG bytes in one ``image`` column, so both networks read what a user's
image export would hold (pixels decoded and standardised by the preprocessing). Final
accuracy on all 450 test images after the fifth increment, for the default strategy at
5% and 10% replay memory. Writes ``benchmarks/results/images.json`` and ``images.md``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.continual import DEFAULT, run
from benchmarks.scenarios import LABEL, Scenario, class_incremental
from lepton.config import StrategyConfig, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2, 3, 4, 5)  # six: one seed's final accuracy varies by about a point
NETWORKS = ("mlp", "cnn")
MEMORY = (0.05, 0.10)
CNN_AT_10 = 0.965  # the target for the CNN at 10% memory (the MLP on columns: 95.3%)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((pixels.reshape(8, 8) * 255).round().astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def as_images(frame: pd.DataFrame) -> pd.DataFrame:
    """A digits frame (64 pixel columns in [0, 1]) as one column of PNG bytes and the label."""
    pixels = frame.drop(columns=[LABEL]).to_numpy()
    return pd.DataFrame({"image": [_png(row) for row in pixels], LABEL: frame[LABEL].to_numpy()})


def scenario() -> Scenario:
    digits = class_incremental()
    return Scenario("class_incremental_images", [as_images(f) for f in digits.increments], [as_images(f) for f in digits.tests])


def images(*, seeds: tuple[int, ...] = SEEDS, epochs: int = 30, out: Path = RESULTS, progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every network x memory budget x seed through the five increments; writes images.json and images.md."""
    out.mkdir(parents=True, exist_ok=True)
    data = scenario()
    records = []
    for network in NETWORKS:
        for fraction in MEMORY:
            for seed in seeds:
                started = time.perf_counter()
                result = run(data, StrategyConfig(memory_fraction=fraction), TrainConfig(seed=seed, epochs=epochs, network=network))
                records.append({"network": network, "memory_fraction_target": fraction, "seed": seed, "epochs": epochs,
                                "final_accuracy": result["final_accuracy"], "forgetting": result["forgetting"],
                                "train_seconds": result["train_seconds"], "memory_size": result["memory_size"]})
                progress(f"{network} memory {fraction:.0%} seed {seed}: final {result['final_accuracy']:.3f} ({time.perf_counter() - started:.0f}s)")
    cost = loop_cost(epochs=epochs)
    progress(f"cnn loop: Lepton {cost['lepton_loop_seconds']:.2f}s, plain PyTorch {cost['raw_loop_seconds']:.2f}s ({cost['ratio']:.2f}x)")
    (out / "images.json").write_text(json.dumps({"runs": records, "loop": cost}, indent=1) + "\n")
    (out / "images.md").write_text(markdown(records, cost))
    return records, cost


LOOP_ROWS = 1000


def loop_cost(*, epochs: int = 30, seed: int = 0) -> dict[str, float]:
    """Lepton's training of the CNN on 1,000 digit images beside a plain PyTorch loop training the same network on the
    same decoded, standardised pixels (Adam, batch 32, the same epochs), in this process: the cost of Lepton's loop."""
    import torch
    from torch import nn

    from lepton.models.network import SmallCNN

    frame = as_images(pd.concat(class_incremental().increments, ignore_index=True)).sample(LOOP_ROWS, random_state=seed).reset_index(drop=True)
    from lepton.models.training import fine_tune

    started = time.perf_counter()
    model, report = fine_tune(None, frame, label=LABEL, train=TrainConfig(seed=seed, epochs=epochs, network="cnn"), strategy=StrategyConfig(name="naive"))
    lepton_total = time.perf_counter() - started
    x = torch.from_numpy(model.preprocessor.transform(model.preprocessor.raw_matrix(frame)))
    y = torch.from_numpy(model.preprocessor.encode(frame[LABEL]))
    torch.manual_seed(seed)
    network = nn.Sequential(SmallCNN(x.shape[1], **model.network.arch["factory_args"]), nn.Linear(model.network.features.width, 10))
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimiser.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(network(x[batch]), y[batch]).backward()
            optimiser.step()
    raw = time.perf_counter() - started
    return {"rows": LOOP_ROWS, "epochs": epochs, "lepton_loop_seconds": round(report.seconds, 3), "lepton_fine_tune_seconds": round(lepton_total, 3),
            "raw_loop_seconds": round(raw, 3), "ratio": round(report.seconds / raw, 3), "threads": torch.get_num_threads()}


def _mean(records: list[dict[str, Any]]) -> pd.Series:
    return pd.DataFrame(records).groupby(["network", "memory_fraction_target"])["final_accuracy"].mean()


def targets(records: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    mean = _mean(records)
    out = []
    if ("cnn", 0.10) in mean.index:
        out.append((f"images, CNN at 10% memory: final accuracy >= {CNN_AT_10:.1%}", mean["cnn", 0.10] >= CNN_AT_10, f"{mean['cnn', 0.10]:.1%}"))
    if ("cnn", 0.05) in mean.index and ("mlp", 0.05) in mean.index:
        out.append(("images, CNN at 5% memory: at least the MLP's", mean["cnn", 0.05] >= mean["mlp", 0.05],
                    f"{mean['cnn', 0.05]:.1%} vs MLP {mean['mlp', 0.05]:.1%}"))
    return out


def markdown(records: list[dict[str, Any]], cost: dict[str, float] | None = None) -> str:
    frame = pd.DataFrame(records)
    stats = frame.groupby(["network", "memory_fraction_target"]).agg(
        final=("final_accuracy", "mean"), spread=("final_accuracy", "std"), forgetting=("forgetting", "mean"), seconds=("train_seconds", "mean"))
    seeds = sorted(frame.seed.unique().tolist())
    lines = [
        f"Class-incremental digits (classes two by two, the split of `lepton bench continual`), each 8x8 digit as PNG bytes in one image "
        f"column. Default strategy `{DEFAULT}`, {records[0]['epochs']} epochs per increment, seeds {seeds}; final accuracy on all 450 "
        "test images after the fifth increment, mean ± std over seeds. The MLP reads the decoded pixels as 64 inputs; the CNN "
        "(`train.network: cnn`, two 3x3 convolutions of 32 and 64 channels, each with batch normalisation and max pooling, a hidden layer of 128) reads them as an image.",
        "",
        "| network | memory | final accuracy | forgetting | train seconds (5 increments) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (network, fraction), row in stats.iterrows():
        lines.append(f"| {network} | {fraction:.0%} | {row['final']:.1%} ± {row['spread']:.1%} | {row['forgetting']:+.3f} | {row['seconds']:.1f} |")
    if cost is not None:
        lines += ["", f"The CNN's training loop on {cost['rows']} images, {cost['epochs']} epochs, one process ({cost['threads']} thread(s)): "
                  f"Lepton's {cost['lepton_loop_seconds']:.2f} s (fine_tune as a whole, preprocessing included, {cost['lepton_fine_tune_seconds']:.2f} s) "
                  f"against a plain PyTorch loop on the same network and pixels {cost['raw_loop_seconds']:.2f} s: {cost['ratio']:.2f}x."]
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {text} | {'yes' if ok else '**no**'} | {measured} |" for text, ok, measured in targets(records)]
    return "\n".join(lines) + "\n"
