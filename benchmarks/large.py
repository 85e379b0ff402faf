"""Benchmark 5: one increment of 1,000,000 rows x 20 columns, end to end, in bounded memory.

Two Parquet increments from one linear 3-class rule (generated: nothing is downloaded),
each through ``lepton run --json`` as a fresh process with ``lepton server start`` up, one
epoch each. The run stays in its own process rather than going to the warm worker (which
would leave the wrapper only the client's memory to measure). Reports each run's peak
resident memory (the process's own, from ``getrusage`` of a wrapper), validation's seconds,
the training's and everything around it.
Writes ``benchmarks/results/large.json`` and ``large.md`` with the targets met or missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
# lepton.worker's CHILD_VARIABLE (the worker is the shell's, which benchmarks do not import): set, a command runs in its own process.
CHILD_VARIABLE = "LEPTON_WORKER_CHILD"
ROWS, COLUMNS, LABEL = 1_000_000, 20, "label"
VALIDATION_SECONDS = 5.0  # validation at most 5 s
AROUND_FACTOR = 2.0  # the pipeline around training at most 2x the training
TRAINING = "fine-tune"

# Runs a command and prints the peak RSS of it (its largest process), in KiB, on the last line of stderr.
PEAK = "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"


def increment(path: Path, seed: int, rows: int = ROWS) -> None:
    """``rows`` x ``COLUMNS`` Gaussian features, labelled by one fixed linear rule with noise (the rule's seed is fixed)."""
    weights = np.random.default_rng(0).normal(size=(COLUMNS, 3))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, COLUMNS))
    y = (x @ weights + rng.normal(scale=0.5, size=(rows, 3))).argmax(axis=1)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(COLUMNS)])
    frame[LABEL] = np.array(["a", "b", "c"])[y]
    frame.to_parquet(path, index=False)


def large(*, rows: int = ROWS, out: Path = RESULTS, progress: Callable[[str], None] = print) -> dict[str, Any]:
    lepton = str(Path(sys.executable).with_name("lepton"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI")}
    runs = []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lepton-large-") as tmp:
        root = Path(tmp)
        ws = root / "ws"
        subprocess.run([lepton, "init", str(ws), "--label", LABEL, "--name", "bench-large"], cwd=root, env=env, capture_output=True, check=True, timeout=300)
        subprocess.run([lepton, "server", "start"], cwd=ws, env=env, capture_output=True, check=True, timeout=300)
        try:
            for n in (1, 2):
                path = root / f"large-{n}.parquet"
                increment(path, seed=n, rows=rows)
                # Not handed to the warm worker: its fork would do the work, and the wrapper would measure only this client.
                done = subprocess.run([sys.executable, "-c", PEAK, lepton, "run", str(path), "--json", "--set", "train.epochs=1"],
                                      cwd=ws, env=env | {CHILD_VARIABLE: "1"}, capture_output=True, text=True, check=False, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"lepton run exited {done.returncode}: {done.stderr[-1500:]}")
                outcome = json.loads(done.stdout)
                seconds = outcome["seconds"]
                steps = seconds["steps"]
                record = {
                    "increment": n, "rows": rows, "columns": COLUMNS, "file_mb": round(path.stat().st_size / 2**20, 1), "status": outcome["status"],
                    "peak_rss_mb": round(int(done.stderr.strip().splitlines()[-1]) / 1024), "total": seconds["total"],
                    "validation": steps.get("validate (Great Expectations)", 0.0), "training": steps.get(TRAINING, 0.0), "steps": steps,
                }
                record["around_training"] = round(record["total"] - record["training"], 3)
                runs.append(record)
                progress(f"increment {n}: {record['status']}, {record['total']:.1f} s (training {record['training']:.1f} s, validation "
                         f"{record['validation']:.1f} s), peak {record['peak_rss_mb']} MB")
                path.unlink()
        finally:
            subprocess.run([lepton, "server", "stop"], cwd=ws, env=env, capture_output=True, check=False, timeout=60)
    result = {"runs": runs, "targets": targets(runs)}
    (out / "large.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "large.md").write_text(markdown(result))
    return result


def targets(runs: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    out = []
    for r in runs:
        out.append((f"increment {r['increment']}: validation <= {VALIDATION_SECONDS:g} s", r["validation"] <= VALIDATION_SECONDS, f"{r['validation']:.2f} s"))
        ratio = r["around_training"] / r["training"] if r["training"] else float("inf")
        out.append((f"increment {r['increment']}: the pipeline around training <= {AROUND_FACTOR:g}x the training", ratio <= AROUND_FACTOR,
                    f"{r['around_training']:.1f} s around {r['training']:.1f} s of training = {ratio:.2f}x; peak RSS {r['peak_rss_mb']} MB"))
    return out


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    names = list(dict.fromkeys(k for r in runs for k in r["steps"]))
    lines = [
        f"Two increments of {runs[0]['rows']:,} rows x {runs[0]['columns']} columns (Parquet, {runs[0]['file_mb']} MB each), one linear rule, "
        "each through `lepton run --json` as a fresh process with `lepton server start` up, one epoch, in its own process (not handed to the "
        "warm worker, so that its memory is the one measured). Seconds per step; peak RSS of the run's process.",
        "", "| step | " + " | ".join(f"increment {r['increment']}" for r in runs) + " |", "| --- | " + " | ".join("---" for _ in runs) + " |",
        "| status | " + " | ".join(r["status"] for r in runs) + " |",
        "| total | " + " | ".join(f"{r['total']:.2f}" for r in runs) + " |",
        "| peak RSS (MB) | " + " | ".join(str(r["peak_rss_mb"]) for r in runs) + " |",
    ]
    lines += [f"| {name} | " + " | ".join(f"{r['steps'].get(name, 0.0):.2f}" for r in runs) + " |" for name in names]
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {text} | {'yes' if ok else '**no**'} | {measured} |" for text, ok, measured in result["targets"]]
    return "\n".join(lines) + "\n"
