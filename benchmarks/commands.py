"""Benchmark 4: what each command costs a user, wall time of the real ``lepton`` process, beside the floor.

The floor is a plain PyTorch script (``benchmarks/floor.py``) that reads the increment
file and trains the same network for the same epochs on the same share of its rows:
imports plus training, the least any tool could spend. Measured side by side in one run,
each command a fresh process as a user (or cron) starts it, on a fresh workspace:

- ``lepton run`` of a 1,000-row increment and of a duplicate with Prefect's temporary
  server (nothing configured) on the new workspace, which creates its databases; then
  with ``lepton server start`` up; then, the server stopped, the first run of the day
  (the workspace and its databases there, nothing running);
- the read-only commands ``status``, ``history``, ``report`` and ``--help``.

Writes ``benchmarks/results/commands.json`` and ``commands.md`` with each target met or missed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = Path(__file__).resolve().parent / "floor.py"
LABEL = "digit"
ROWS = 1000
EPOCHS = 30
RUN_FACTOR = 3.0  # lepton run at most 3x the floor
READ_FACTOR = 0.5  # status, history, report and a duplicate at most half the floor
HELP_SECONDS = 1.0
FIRST_OF_DAY = "run, first of the day (temporary server)"
# The floor with Adam stepped as Lepton steps it: torch.optim's constructor imports torch._dynamo, Lepton's loop does not.
LEAN_FLOOR = "floor, Adam without torch.optim"
NEW_WORKSPACE = "run, first in a new workspace (temporary server, creates its databases)"


def _lepton() -> str:
    return str(Path(sys.executable).with_name("lepton"))


def _environment() -> dict[str, str]:
    """A user's shell: nothing points at a server, and Prefect's home is the workspace's own."""
    # LEPTON_WORKER_CHILD marks a command the warm worker forked: set here, no command would use the worker.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LEPTON_WORKER_CHILD")}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def _timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=900)
    return time.perf_counter() - started, done


def increments(folder: Path) -> tuple[Path, Path, Path]:
    """A 1,000-row increment of all ten digits, the remaining 797 rows as a second, and the first 1,000 again with
    a little pixel noise as a third (new content, the same work)."""
    import numpy as np
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.rename(columns={"target": LABEL})
    frame.columns = [f"pixel_{i}" for i in range(64)] + [LABEL]
    first, second, third = folder / "digits-1000.parquet", folder / "digits-797.parquet", folder / "digits-1000-noisy.parquet"
    frame.iloc[:ROWS].to_parquet(first, index=False)
    frame.iloc[ROWS:].to_parquet(second, index=False)
    noisy = frame.iloc[:ROWS].copy()
    pixels = noisy.columns[:64]
    noisy[pixels] = np.clip(noisy[pixels].to_numpy() + np.random.default_rng(0).integers(-1, 2, size=(ROWS, 64)), 0, 16)
    noisy.to_parquet(third, index=False)
    return first, second, third


def commands(*, repeats: int = 3, out: Path = RESULTS, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every command's wall time (the median of ``repeats`` for the floor and the read-only ones); writes commands.json and .md."""
    env = _environment()
    lepton = _lepton()
    seconds: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}  # each run's own account of its steps (its --json seconds)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lepton-commands-") as tmp:
        root = Path(tmp)
        first, second, third = increments(root)
        ws = root / "ws"

        def check(name: str, done: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (0,)) -> None:
            if done.returncode not in codes:
                raise RuntimeError(f"{name} exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")

        def record(name: str, args: list[str], *, times: int = 1, codes: tuple[int, ...] = (0,)) -> None:
            spent = []
            for _ in range(times):
                took, done = _timed(args, root if name.startswith("floor") else ws, env)
                check(name, done, codes)
                spent.append(took)
                if "--json" in args and done.stdout.strip():  # a run says where its time went
                    steps[name] = json.loads(done.stdout).get("seconds", {}).get("steps", {})
            seconds[name] = round(statistics.median(spent), 3)
            progress(f"{name:<34} {seconds[name]:6.2f} s" + (f"  (median of {times})" if times > 1 else ""))

        record("floor", [sys.executable, str(FLOOR), str(first), LABEL, str(EPOCHS)], times=repeats)
        record(LEAN_FLOOR, [sys.executable, str(FLOOR), str(first), LABEL, str(EPOCHS), "lepton"], times=repeats)
        _, done = _timed([lepton, "init", str(ws), "--label", LABEL, "--name", "bench-commands"], root, env)
        check("init", done)
        record("--help", [lepton, "--help"], times=repeats)
        run = [lepton, "run", "--json", "--set", f"train.epochs={EPOCHS}"]
        record(NEW_WORKSPACE, [*run, str(first)])
        record("duplicate (temporary server)", [*run, str(first)])
        record("server start", [lepton, "server", "start"])
        try:
            record("run (lepton server)", [*run, str(second)])
            record("duplicate (lepton server)", [*run, str(second)], times=repeats)
            # Right after the run (which kept their answers), once reading the registry (the cache cleared, as after
            # a change made outside Lepton), then as repeated (answered from the cache).
            record("status after a run", [lepton, "status"])
            record("history after a run", [lepton, "history"])
            shutil.rmtree(ws / ".lepton" / "cache", ignore_errors=True)
            record("status, reading the registry", [lepton, "status"])
            record("history, reading the registry", [lepton, "history"])
            record("status", [lepton, "status"], times=repeats)
            record("history", [lepton, "history"], times=repeats)
            record("report", [lepton, "report"], times=repeats)
        finally:
            subprocess.run([lepton, "server", "stop"], cwd=ws, env=env, capture_output=True, check=False, timeout=60)
        # The next morning: the workspace and its databases are there, nothing runs (the page cache may still be warm).
        record(FIRST_OF_DAY, [*run, str(third)])
        import pandas as pd

        from benchmarks.consumers import consumers

        served = consumers(f"sqlite:///{ws / '.lepton' / 'mlflow.db'}", "bench-commands", pd.read_parquet(second), LABEL)
        progress(f"{'consumer: one row p50':<34} {served['one_row_p50_ms']['lepton']:6.2f} ms (scikit-learn pipeline {served['one_row_p50_ms']['sklearn']:.2f} ms)")
        series = backfill(root, env, progress)
    result = {"rows": ROWS, "epochs": EPOCHS, "repeats": repeats, "seconds": seconds, "consumers": served, "backfill": series,
              "steps": steps, "targets": targets(seconds) + consumer_targets(served) + backfill_targets(series)}
    (out / "commands.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "commands.md").write_text(markdown(result))
    return result


BACKFILL = 30
BACKFILL_ROWS = 100
FLAT_FACTOR = 1.25  # median cost of increments 26-30 at most 1.25x that of increments 2-6


def backfill_increments(folder: Path, n: int = BACKFILL, rows: int = BACKFILL_ROWS) -> None:
    """``n`` increments from one distribution: digits drawn afresh each time, with a little pixel noise so each file is new."""
    import numpy as np
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [f"pixel_{i}" for i in range(64)] + [LABEL]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        part = frame.sample(rows, random_state=k).reset_index(drop=True)
        pixels = part.columns[:-1]
        part[pixels] = np.clip(part[pixels].to_numpy() + rng.normal(0, 0.5, size=(rows, 64)), 0, 16).round(2)
        part.to_parquet(folder / f"{k + 1:02d}.parquet", index=False)


def backfill(root: Path, env: dict[str, str], progress: Callable[[str], None]) -> dict[str, Any]:
    """A 30-increment backfill in one command, the server up: each increment's seconds, and how each step's median grew."""
    lepton = _lepton()
    ws, folder = root / "backfill-ws", root / "backfill"
    backfill_increments(folder)
    subprocess.run([lepton, "init", str(ws), "--label", LABEL, "--name", "bench-backfill"], cwd=root, env=env, capture_output=True, check=True, timeout=300)
    subprocess.run([lepton, "server", "start"], cwd=ws, env=env, capture_output=True, check=True, timeout=300)
    try:
        done = subprocess.run([lepton, "backfill", str(folder), "--json", "--set", f"train.epochs={EPOCHS}"], cwd=ws, env=env,
                              capture_output=True, text=True, check=False, timeout=1800)
    finally:
        subprocess.run([lepton, "server", "stop"], cwd=ws, env=env, capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"backfill exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    items = json.loads(done.stdout)["processed"]
    early, late = items[1:6], items[-5:]

    def median(part: list[dict[str, Any]], step: str | None = None) -> float:
        return statistics.median(i["seconds"]["total"] if step is None else i["seconds"]["steps"].get(step, 0.0) for i in part)

    steps = {step: {"early": round(median(early, step), 3), "late": round(median(late, step), 3)}
             for step in dict.fromkeys(k for i in items for k in i["seconds"]["steps"])}
    result = {"increments": len(items), "rows": BACKFILL_ROWS, "statuses": [i["outcome"]["status"] for i in items],
              "totals": [i["seconds"]["total"] for i in items], "early": round(median(early), 3), "late": round(median(late), 3), "steps": steps}
    progress(f"{'backfill: increments 2-6 / 26-30':<34} {result['early']:6.2f} s / {result['late']:.2f} s (median)")
    return result


def backfill_targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    ratio = result["late"] / result["early"]
    growing = [f"{step} {v['early']:.2f} -> {v['late']:.2f} s" for step, v in result["steps"].items() if v["late"] - v["early"] > 0.05]
    return [(f"backfill: the median increment of 26-30 costs <= {FLAT_FACTOR:g}x one of 2-6", ratio <= FLAT_FACTOR,
             f"{result['late']:.2f} s against {result['early']:.2f} s = {ratio:.2f}x; grew by over 0.05 s: {', '.join(growing) or 'none'}")]


def targets(seconds: dict[str, float]) -> list[tuple[str, bool, str]]:
    floor = seconds["floor"]
    out = []
    for name in (FIRST_OF_DAY, "run (lepton server)"):
        ratio = seconds[name] / floor
        out.append((f"{name} <= {RUN_FACTOR:g}x the floor", ratio <= RUN_FACTOR, f"{seconds[name]:.2f} s = {ratio:.2f}x the floor's {floor:.2f} s"))
    for name in ("status after a run", "history after a run", "status, reading the registry", "history, reading the registry", "status", "history", "report",
                 "duplicate (lepton server)", "duplicate (temporary server)"):
        ratio = seconds[name] / floor
        out.append((f"{name} <= {READ_FACTOR:g}x the floor", ratio <= READ_FACTOR, f"{seconds[name]:.2f} s = {ratio:.2f}x"))
    out.append((f"--help under {HELP_SECONDS:g} s", seconds["--help"] < HELP_SECONDS, f"{seconds['--help']:.2f} s"))
    return out


CONSUMER_FACTOR = 1.5  # the champion's one-row p50 at most 1.5x the scikit-learn pipeline's


def consumer_targets(served: dict[str, Any]) -> list[tuple[str, bool, str]]:
    p50 = served["one_row_p50_ms"]
    batches = served["batch_seconds"]["lepton"]
    # Linear: 100x the rows cost at most 100x the time (a fixed cost per call makes it sublinear).
    linear = batches["10000"] <= 100 * max(batches["100"], 1e-4) * 1.2
    return [
        (f"consumer: one-row p50 <= {CONSUMER_FACTOR:g}x an MLflow-logged scikit-learn pipeline", served["ratio"] <= CONSUMER_FACTOR,
         f"{p50['lepton']:.2f} ms against {p50['sklearn']:.2f} ms = {served['ratio']:.2f}x"),
        ("consumer: batches scale linearly (10,000 rows <= 100x 100 rows, +20%)", linear,
         f"100 rows {batches['100'] * 1000:.1f} ms, 10,000 rows {batches['10000'] * 1000:.1f} ms"),
    ]


def markdown(result: dict[str, Any]) -> str:
    seconds = result["seconds"]
    lines = [
        f"Wall time of each command as a fresh process on a fresh workspace, beside the floor: a plain PyTorch script that reads "
        f"the {result['rows']}-row increment and trains the same network for {result['epochs']} epochs on the same 80% of its rows. "
        f"Medians of {result['repeats']} for the floor, --help, the read-only commands and the duplicate with the server up; one run each otherwise. "
        f"status and history run right after a run (which keeps their answers for the registry it leaves), once reading the registry "
        f"(their cache cleared, as after a change made outside Lepton), then repeated, answered from the cache while the registry is unchanged. "
        f"A duplicate is content whose run finished: told from the workspace's records, without a flow. "
        f"The first run in a new workspace creates Prefect's and MLflow's databases, once; the first of the day runs after the server "
        f"is stopped, on a third 1,000-row increment (the first with a little pixel noise), as the next morning's run would, the page cache warm. "
        f"server start: Prefect's server and the warm worker, which imports the pipeline once; with it up, a run is a fork of the worker.",
        "",
        "| command | seconds | x floor |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {value:.2f} | {value / seconds['floor']:.2f} |" for name, value in seconds.items()]
    runs = {name: spent for name, spent in result.get("steps", {}).items() if spent and name.startswith("run")}
    if runs:
        names = list(runs)
        order = list(dict.fromkeys(step for spent in runs.values() for step in spent))
        lines += ["", "Where each run's time went, by its own account (`--json` seconds; the rest of the wall time is the process starting and exiting):", "",
                  "| step | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        lines += [f"| {step} | " + " | ".join(f"{runs[n].get(step, 0.0):.2f}" for n in names) + " |" for step in order]
    served = result["consumers"]
    load = served["load_seconds"]
    lines += ["", "Consumers, in one process: the champion and an MLflow-logged scikit-learn pipeline (StandardScaler and an MLP of "
              "256 x 256) with the same signature.", "", "| | Lepton's champion | scikit-learn pipeline |", "| --- | --- | --- |",
              f"| load (Lepton's first in the process, imports included; scikit-learn's after it) | {load['lepton_first']:.2f} s | {load['sklearn']:.2f} s |",
              f"| load again (registry lookup and artifact copy) | {load['lepton_again']:.2f} s | |",
              f"| one row, p50 | {served['one_row_p50_ms']['lepton']:.2f} ms | {served['one_row_p50_ms']['sklearn']:.2f} ms |"]
    lines += [f"| {rows} rows | {served['batch_seconds']['lepton'][rows] * 1000:.1f} ms | {served['batch_seconds']['sklearn'][rows] * 1000:.1f} ms |"
              for rows in served["batch_seconds"]["lepton"]]
    lines += [f"| rows per second at 10,000 | {served['rows_per_second_at_10000']['lepton']:,} | {served['rows_per_second_at_10000']['sklearn']:,} |"]
    series = result.get("backfill")
    if series:
        lines += ["", f"A {series['increments']}-increment backfill of {series['rows']} rows each, in one `lepton backfill --json`, the server up; "
                  "the median seconds of increments 2-6 and of the last five, per step (the first increment pays the cold start):",
                  "", "| step | increments 2-6 | last 5 |", "| --- | --- | --- |", f"| whole increment | {series['early']:.3f} | {series['late']:.3f} |"]
        lines += [f"| {step} | {v['early']:.3f} | {v['late']:.3f} |" for step, v in series["steps"].items()]
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {text} | {'yes' if ok else '**no**'} | {measured} |" for text, ok, measured in result["targets"]]
    lean = seconds.get(LEAN_FLOOR)
    if lean:
        runs = ", ".join(f"{name} {seconds[name] / lean:.2f}x" for name in (FIRST_OF_DAY, "run (lepton server)") if name in seconds)
        lines += ["", f"The targets compare with the floor as a user writes it, `torch.optim.Adam`, whose constructor imports `torch._dynamo`; "
                  f"Lepton's training loop steps the same Adam without it. Against the floor stepped that way too ({lean:.2f} s): {runs}."]
    return "\n".join(lines) + "\n"
