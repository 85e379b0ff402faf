"""Data-parallel training on one machine: ``fit`` in ``nproc`` processes with DistributedDataParallel.

The parent pickles the job (network, data, begun strategy), spawns one worker per rank and
waits for all of them. Every rank draws the same permutation of the data each epoch (one
seed) and steps on its own disjoint shard of it, ``batch_size`` samples per step: the
effective batch is ``nproc x batch_size``. Strategies run their ``batch`` and ``penalty``
hooks on every rank; ``end`` and ``finish`` stay in the parent, so what they learn (replay
memory, Fisher information) is computed once, exactly as with one process.

Nothing listens beyond the loopback interface: the ranks meet through a file store in a
temporary directory, and gloo (or NCCL) connects them over loopback.

Across machines, ``fit_torchrun`` hands the same job to ``torchrun`` (``torch.distributed.run``)
instead: torchrun starts the ranks, on this node and on every other node started with the same
rendezvous, and each rank runs ``python -m lepton.models.distributed`` (``main`` below), which joins
the group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lepton.models import strategies
from lepton.models.loop import FitResult, _autocast, frozen, keep_fixed, step
from lepton.models.optim import adam

log = logging.getLogger(__name__)

# Seconds a worker that will not stop is given after SIGTERM before SIGKILL.
_GRACE = 10.0


def resolve_backend(backend: str, device: torch.device) -> str:
    """The torch.distributed backend for ``device``: ``auto`` is nccl on CUDA and gloo on the CPU."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("train.backend=nccl needs CUDA devices; use gloo (or auto) on the CPU")
    return backend


@dataclass
class _Job:
    """Everything a rank needs, pickled once by the parent."""

    model: nn.Module
    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    lr: float
    device: torch.device
    generator: torch.Generator  # the shuffling generator; every rank gets the same copy
    strategy: strategies.Strategy | None


def fit_ddp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    nproc: int,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    strategy: strategies.Strategy | None = None,
    backend: str = "auto",
) -> FitResult:
    """Train ``model`` like ``fit`` but in ``nproc`` DDP processes; rank 0's weights are loaded back into ``model``.

    ``strategy`` must already have begun (``fine_tune`` does that): each rank begins it again
    on its own copy of the network, device and sampling generator. Losses are means over all
    ranks, samples are counted over all ranks. A failing worker raises here, after every
    worker has been stopped.
    """
    backend = resolve_backend(backend, device)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ValueError(f"train.nproc={nproc} but only {torch.cuda.device_count()} CUDA devices are visible")
    # Plain pickle copies tensors; torch.multiprocessing's own pickler would share their
    # memory, and every rank would then step on the same weights.
    job = pickle.dumps(_Job(model, x, y, epochs, batch_size, lr, device, generator, strategy))
    with tempfile.TemporaryDirectory(prefix="lepton-ddp-") as tmp:
        store, out = str(Path(tmp) / "store"), str(Path(tmp) / "rank0.pt")
        context = mp.start_processes(_worker, args=(nproc, backend, job, store, out), nprocs=nproc, join=False, start_method="spawn")
        try:
            while not context.join():
                pass
        except BaseException:
            # join() stops the other ranks when one fails; this also covers the parent being interrupted.
            _stop(context.processes)
            raise
        return _load_result(model, device, out)


def fit_torchrun(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    nproc: int,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    strategy: strategies.Strategy | None = None,
    backend: str = "auto",
    torchrun_args: list[str] | tuple[str, ...] = (),
    shared_dir: str | None = None,
) -> FitResult:
    """Train like ``fit_ddp``, with the ranks started by ``torchrun``; rank 0's weights are loaded back into ``model``.

    ``nproc`` ranks run on this node. ``torchrun_args`` (e.g. ``--nnodes=2 --node-rank=0
    --rdzv-backend=c10d --rdzv-endpoint=head:29500``) let other nodes join; without a
    rendezvous they default to ``--standalone``. The job and rank 0's result go through
    ``shared_dir``/job.pkl and rank0.pt (a temporary folder when None), which every node must read.
    """
    backend = resolve_backend(backend, device)
    job = pickle.dumps(_Job(model, x, y, epochs, batch_size, lr, device, generator, strategy))
    with tempfile.TemporaryDirectory(prefix="lepton-torchrun-") as tmp:
        folder = Path(shared_dir) if shared_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        job_path, out = folder / "job.pkl", folder / "rank0.pt"
        out.unlink(missing_ok=True)
        job_path.write_bytes(job)
        rendezvous = [] if any(a.startswith(("--rdzv", "--nnodes", "--standalone", "--master")) for a in torchrun_args) else ["--standalone"]
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *rendezvous, *torchrun_args,
            "-m", "lepton.models.distributed", backend, str(job_path), str(out),
        ]
        log.info("starting %s", " ".join(command))
        # The ranks import this package as the parent does (same interpreter, same sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"torchrun exited with status {done.returncode}:\n{tail}")
        return _load_result(model, device, out)


def _load_result(model: nn.Module, device: torch.device, out: str | Path) -> FitResult:
    """Rank 0's weights into the parent's ``model``, and the losses and samples of all ranks."""
    result = torch.load(out, weights_only=True)
    model.load_state_dict(result["state"])
    model.to(device).eval()
    return FitResult(result["losses"], result["samples"])


def main(argv: list[str] | None = None) -> None:
    """One rank started by torchrun: ``python -m lepton.models.distributed BACKEND JOB OUT``."""
    backend, job_path, out = argv if argv is not None else sys.argv[1:]
    job: _Job = pickle.loads(Path(job_path).read_bytes())
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(message)s")
    device = _rank_device(job, local, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    _run_rank(rank, world, device, job, out)


def _stop(processes: list) -> None:
    """Terminate, then kill, whatever worker is still running, and reap them all."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(_GRACE)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _loopback_interface() -> str:
    """The loopback interface's name (lo on Linux, lo0 on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n.startswith("lo")), "lo")


def _worker(rank: int, nproc: int, backend: str, payload: bytes, store: str, out: str) -> None:
    """One rank: join the group, train its shards, and (rank 0 only) write the result to ``out``."""
    job: _Job = pickle.loads(payload)
    device = _rank_device(job, rank, nproc)
    # Keep gloo's and NCCL's sockets on the loopback interface.
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = _loopback_interface()
    dist.init_process_group(backend, store=dist.FileStore(store, nproc), rank=rank, world_size=nproc)
    _run_rank(rank, nproc, device, job, out)


def _rank_device(job: _Job, local_rank: int, ranks_here: int) -> torch.device:
    """This rank's device: its own GPU on CUDA, else the CPU with its share of this machine's cores."""
    if job.device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    # Tiny networks: threads beyond the cores' share only fight the other ranks.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_here))
    return torch.device("cpu")


def _run_rank(rank: int, world: int, device: torch.device, job: _Job, out: str) -> None:
    """Train this rank's shards in the joined group, write the result from rank 0, and leave the group."""
    try:
        result = _train(rank, world, device, job)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _train(rank: int, nproc: int, device: torch.device, job: _Job) -> dict:
    """The loop of ``fit`` on this rank's shard of every epoch, gradients averaged by DDP."""
    model = job.model.to(device)
    strategy = job.strategy
    context = getattr(strategy, "context", None)
    if strategy is not None and context is not None:
        # Begin again on this rank's network and device; a generator per rank draws different memory batches.
        sampler = torch.Generator().manual_seed(job.generator.initial_seed() + 1 + rank)
        strategy.begin(dataclasses.replace(context, model=model, device=device, generator=sampler))
    # What the strategy keeps fixed takes no gradient. DDP is built inside the block because it takes
    # the parameters that require one when it is built: the fixed ones stay out of its all-reduce,
    # the same ones on every rank (one strategy, begun alike).
    with keep_fixed(model, frozen(model, strategy)):
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
        xt, yt = torch.from_numpy(job.x), torch.from_numpy(job.y)
        if device.type == "cuda":
            xt, yt = xt.pin_memory(), yt.pin_memory()
        xt, yt = xt.to(device, non_blocking=True), yt.to(device, non_blocking=True)
        ddp.train()
        autocast, scaler = _autocast(device)
        optimiser = adam([p for p in model.parameters() if p.requires_grad], job.lr, scaled=scaler is not None)
        n = len(yt)
        # Pad every epoch's permutation (with its own first entries) to a multiple of nproc:
        # all ranks then take the same number of steps, which DDP's all-reduce requires.
        padded = torch.arange(math.ceil(n / nproc) * nproc) % n
        losses, samples = [], 0
        for epoch in range(job.epochs):
            order = torch.randperm(n, generator=job.generator)[padded]
            shard = order[rank::nproc].to(device)
            total, count = 0.0, 0
            for start in range(0, len(shard), job.batch_size):
                idx = shard[start : start + job.batch_size]
                loss, counted = step(ddp, model, xt[idx], yt[idx], optimiser=optimiser, autocast=autocast, scaler=scaler, strategy=strategy)
                total += loss
                count += counted
            stats = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
            dist.all_reduce(stats)
            losses.append(float(stats[0]) / max(float(stats[1]), 1.0))
            samples += int(stats[1])
            if rank == 0:
                log.info("epoch %d/%d: loss %.4f over %d ranks", epoch + 1, job.epochs, losses[-1], nproc)
    model.eval()
    return {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "losses": losses, "samples": samples}


if __name__ == "__main__":
    main()
