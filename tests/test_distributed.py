"""Data-parallel fine-tuning (DistributedDataParallel, 2 CPU processes with gloo) against one process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from lepton.config import StrategyConfig, TrainConfig
from lepton.models.bundle import Bundle
from lepton.models.datasets import LABEL, class_incremental
from lepton.models.distributed import fit_ddp, resolve_backend
from lepton.models.evaluation import score
from lepton.models.network import MLP
from lepton.models.splits import split
from lepton.models.training import fine_tune

CPU = torch.device("cpu")
EPOCHS = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """The parent runs on one torch thread (see conftest); each worker sets its own share."""


@pytest.fixture(scope="module")
def digits() -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(train, holdout) of the first two class-incremental digit increments (classes 0-1, then 2-3)."""
    return [split(frame, 0.2) for frame in class_incremental()[:2]]


def chain(digits: list[tuple], nproc: int) -> list[tuple[Bundle, object]]:
    """Fine-tune with replay increment by increment (the second warm-starts from the first), with ``nproc`` processes."""
    out, champion = [], None
    for train, _ in digits:
        champion, report = fine_tune(champion, train, label=LABEL, train=TrainConfig(epochs=EPOCHS, nproc=nproc), strategy=StrategyConfig(name="replay"))
        out.append((champion, report))
    return out


@pytest.fixture(scope="module")
def single(digits) -> list[tuple[Bundle, object]]:
    return chain(digits, 1)


@pytest.fixture(scope="module")
def parallel(digits) -> list[tuple[Bundle, object]]:
    return chain(digits, 2)


def test_two_processes_reach_the_accuracy_of_one(digits, single, parallel) -> None:
    """After each increment, nproc=2 scores within 0.05 of nproc=1 on every holdout seen so far, and above 0.9."""
    for step, ((one, _), (two, report)) in enumerate(zip(single, parallel)):
        assert report.warm_start == (step > 0)
        holdout = pd.concat([h for _, h in digits[: step + 1]])
        a1, a2 = score(one, holdout, LABEL).accuracy, score(two, holdout, LABEL).accuracy
        assert a2 > 0.9
        assert abs(a1 - a2) <= 0.05, (step, a1, a2)
    # The first increment's classes are not forgotten under DDP either.
    assert score(parallel[-1][0], digits[0][1], LABEL).accuracy > 0.9


def test_replay_memory_is_the_same_size_and_balance(single, parallel) -> None:
    """end() runs once in the parent: the memory after nproc=2 has nproc=1's size and per-class counts."""
    for (one, _), (two, _) in zip(single, parallel):
        y1, y2 = one.strategy_state["replay.memory.y"], two.strategy_state["replay.memory.y"]
        assert len(y1) == len(y2) > 0
        np.testing.assert_array_equal(np.bincount(y1), np.bincount(y2))
    assert set(parallel[-1][0].strategy_state["replay.memory.y"]) == {0, 1, 2, 3}


def test_samples_are_counted_over_all_ranks(digits, single, parallel) -> None:
    """Both ranks' samples count: nproc=2 processes what nproc=1 does, plus at most one padded sample per epoch."""
    for (_, r1), (_, r2) in zip(single, parallel):
        assert len(r2.losses) == EPOCHS
        # Each padded row also draws a memory row after the first increment, hence up to 2 per epoch.
        assert 0 <= r2.train_samples - r1.train_samples <= 2 * EPOCHS
    first = single[0][1]
    assert first.train_samples == EPOCHS * len(digits[0][0])  # no memory yet: one pass per epoch


def _children() -> set[int]:
    """PIDs of this process's live children, besides multiprocessing's resource tracker."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            found.add(int(stat.parent.name))
    return found


def test_a_failing_worker_raises_in_the_parent_and_leaves_no_process() -> None:
    """A label outside the head (an error raised inside both workers) surfaces as an exception; no child survives."""
    before = _children()
    torch.manual_seed(0)
    model = MLP(n_features=4, n_classes=2, hidden=(8,))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.full(40, 5, dtype=np.int64)  # class 5 of a 2-class head
    with pytest.raises(Exception, match="out of bounds"):
        fit_ddp(model, x, y, nproc=2, epochs=1, batch_size=8, lr=1e-3, device=CPU, generator=torch.Generator().manual_seed(0))
    assert _children() <= before
    # The parent's network is untouched when training failed.
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_backend_follows_the_device_and_nproc_is_validated() -> None:
    """auto is gloo on the CPU and nccl on CUDA; nccl without CUDA and nproc < 1 are refused before anything starts."""
    assert resolve_backend("auto", CPU) == "gloo"
    assert resolve_backend("auto", torch.device("cuda")) == "nccl"
    assert resolve_backend("gloo", CPU) == "gloo"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        resolve_backend("nccl", CPU)
    with pytest.raises(ValidationError):
        TrainConfig(nproc=0)
    assert TrainConfig().nproc == 1 and TrainConfig().backend == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ddp_on_cuda_with_nccl() -> None:
    """On CUDA (one rank per device, nccl, mixed precision) the loss falls and the weights come back to the parent."""
    nproc = min(2, torch.cuda.device_count())
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400).astype(np.int64)
    x = (rng.normal(size=(400, 4)) + np.where(y[:, None] == 1, 3.0, -3.0)).astype(np.float32)
    torch.manual_seed(0)
    model = MLP(n_features=4, n_classes=2, hidden=(16,))
    device = torch.device("cuda")
    result = fit_ddp(model, x, y, nproc=nproc, epochs=10, batch_size=32, lr=1e-2, device=device, generator=torch.Generator().manual_seed(0))
    assert result.losses[-1] < result.losses[0] / 2
    with torch.no_grad():
        predicted = model(torch.from_numpy(x).to(device)).argmax(dim=1).cpu().numpy()
    assert (predicted == y).mean() > 0.95


TORCHRUN_SCRIPT = """
import json, sys
import torch
from lepton.config import StrategyConfig, TrainConfig
from lepton.models.datasets import LABEL, class_incremental
from lepton.models.evaluation import score
from lepton.models.splits import split
from lepton.models.training import fine_tune

torch.set_num_threads(1)
digits = [split(frame, 0.2) for frame in class_incremental()[:2]]
champion, reports = None, []
for train, _ in digits:
    config = TrainConfig(epochs=int(sys.argv[2]), nproc=2, launcher="torchrun")
    champion, report = fine_tune(champion, train, label=LABEL, train=config, strategy=StrategyConfig(name="replay"))
    reports.append(report.train_samples)
torch.save({k: v for k, v in champion.network.state_dict().items()}, sys.argv[1])
print(json.dumps({"samples": reports, "memory": champion.strategy_state["replay.memory.y"].tolist()}))
"""


def _in_private_network(command: list[str]) -> list[str]:
    """``command`` in its own network namespace, where the only interface is loopback.

    torchrun's rendezvous store listens on every interface of its namespace, whatever
    address it is given; in a namespace of its own that is loopback alone.
    """
    return ["unshare", "--user", "--map-root-user", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def test_torchrun_launcher_trains_like_spawned_ranks(tmp_path, digits, parallel) -> None:
    """train.launcher=torchrun (2 ranks, gloo, --standalone) gives the weights, sample counts and memory of the spawned ranks."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) to keep torchrun's store off the network")
    probe = subprocess.run(_in_private_network(["true"]), capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here: {probe.stderr.strip()}")
    out = tmp_path / "weights.pt"
    done = subprocess.run(
        _in_private_network([sys.executable, "-c", TORCHRUN_SCRIPT, str(out), str(EPOCHS)]),
        capture_output=True, text=True, timeout=600, check=False, cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    spawned = parallel[-1][0]
    assert seen["samples"] == [report.train_samples for _, report in parallel]
    np.testing.assert_array_equal(np.array(seen["memory"]), spawned.strategy_state["replay.memory.y"])
    weights = torch.load(out, weights_only=True)
    for name, value in spawned.network.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)


def test_torchrun_arguments_are_options_only() -> None:
    """Only torchrun's own options may be added: a script or argument would replace Lepton's ranks."""
    assert TrainConfig(launcher="torchrun", torchrun_args=["--nnodes=2", "--rdzv-endpoint=head:29500"]).torchrun_args[0] == "--nnodes=2"
    with pytest.raises(ValidationError, match="torchrun options only"):
        TrainConfig(torchrun_args=["evil.py"])
