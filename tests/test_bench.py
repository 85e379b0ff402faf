"""The continual benchmark writes the records and tables the issue names, from real training runs."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import LEPTON


@pytest.mark.integration
def test_bench_continual_writes_records(tmp_path):
    """`lepton bench continual` on one scenario and seed: JSON records with the contract's fields, markdown, plot."""
    result = subprocess.run(
        [LEPTON, "bench", "continual", "--seeds", "1", "--scenario", "class_incremental", "--epochs", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads((tmp_path / "continual.json").read_text())
    fields = {"scenario", "strategy", "seed", "default", "final_accuracy", "forgetting", "bwt", "train_samples",
              "joint_train_samples", "memory_fraction", "train_seconds"}
    assert records and all(fields <= set(r) for r in records)
    by_name = {r["strategy"]: r for r in records}
    assert sum(r["default"] for r in records) == 1
    # Even at 5 epochs, replay keeps far more than naive fine-tuning, and costs less than joint retraining.
    assert by_name["replay"]["final_accuracy"] > by_name["naive"]["final_accuracy"] + 0.3
    assert by_name["replay"]["train_samples"] < by_name["joint"]["train_samples"]
    assert by_name["joint"]["memory_fraction"] == pytest.approx(1.0)
    assert "### Targets" in (tmp_path / "continual.md").read_text()
    assert (tmp_path / "memory_curve.png").stat().st_size > 1000
    assert "target" in result.stdout
