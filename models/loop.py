"""The training loop: optimisation steps over one increment, on the CPU or CUDA (mixed precision there).

Shared by a single process (``training.fine_tune``) and every rank of a distributed run
(``distributed``), which is why it is a module of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lepton.models import strategies
from lepton.models.aside import note_training
from lepton.models.optim import Adam, adam

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for or available, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# Parameters x batch size of one step below which one intra-op thread trains as fast as more (measured
# on 2 cores: 0.49 against 0.42 ms a step for the default network), and several collapse when anything
# else runs (2.4 s against 6.8 s for a 1,000-row fine-tune beside two busy processes). Above it, from
# about 3e8, a second thread nearly halves a step.
THREAD_WORK = 1e8


def intra_op_threads(model: nn.Module, batch_size: int, configured: int | None = None) -> int:
    """Intra-op threads for training ``model`` on the CPU: ``configured``, else one for small work, else torch's default."""
    if configured is not None:
        return configured
    work = batch_size * sum(p.numel() for p in model.parameters())
    return 1 if work < THREAD_WORK else torch.get_num_threads()


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def quiet_epochs() -> Iterator[None]:
    """The loop's per-epoch records held back for the block: trial trainings (a transfer's choice) are not the run's."""
    drop = _Drop()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then back as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on the CPU."""
    if device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


@contextmanager
def keep_fixed(model: nn.Module, names: set[str]) -> Iterator[None]:
    """Within the block the named parameters take no gradient: no optimiser steps them and DDP leaves them out. After it, they are as before.

    ``names`` is what the strategy says it keeps fixed (``strategy.frozen(model)``): the
    trainer, not the strategy, changes its model.
    """
    params = [p for name, p in model.named_parameters() if name in names]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def frozen(model: nn.Module, strategy: strategies.Strategy | None) -> set[str]:
    """The names of the parameters ``strategy`` keeps fixed this increment (none without a strategy)."""
    return strategy.frozen(model) if strategy is not None else set()


def step(
    forward: nn.Module,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimiser: Adam | torch.optim.Optimizer,
    autocast,
    scaler,
    strategy: strategies.Strategy | None,
) -> tuple[float, int]:
    """One optimisation step: the strategy may extend the batch and add a penalty. Returns (summed loss, samples).

    ``forward`` is what computes the logits (the model, or its DistributedDataParallel
    wrapper); ``model`` is what strategies see.
    """
    if strategy is not None:
        x, y = strategy.batch(x, y)
    with autocast:
        logits = forward(x)
        loss = strategies.task_loss(logits, y)
        extra = strategy.penalty(model, x, y, logits) if strategy is not None else None
        if extra is not None:
            loss = loss + extra
    optimiser.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    else:
        loss.backward()
        optimiser.step()
    return float(loss.detach()) * len(y), len(y)


@dataclass
class FitResult:
    losses: list[float]  # mean loss of each epoch
    samples: int  # samples through forward and backward passes, memory batches included
    best_epoch: int | None = None  # with a validation set: the epoch whose weights were kept
    watched: np.ndarray | None = None  # with rows to watch: each epoch's score of each of them (epochs x rows)


def row_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Each held-out row's score, higher is better: 1 or 0 for a class predicted right or wrong, minus the
    absolute error on a (standardised) numeric target; in evaluation mode, the model's mode left as it was."""
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            out, truth = model(x[start : start + batch_size]), y[start : start + batch_size]
            parts.append(-(out[:, 0].float() - truth.float()).abs() if truth.is_floating_point() else (out.argmax(dim=1) == truth).float())
    model.train(was_training)
    return torch.cat(parts).cpu().numpy() if parts else np.zeros(0)


def validation_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """The task loss on held-out rows, in evaluation mode (no gradient); the model's mode is left as it was."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            total += float(strategies.task_loss(model(x[start : start + batch_size]), y[start : start + batch_size])) * len(y[start : start + batch_size])
    model.train(was_training)
    return total / max(len(y), 1)


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    generator: torch.Generator,
    strategy: strategies.Strategy | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    watch: tuple[np.ndarray, np.ndarray] | None = None,
) -> FitResult:
    """Train ``model`` in place with Adam and cross-entropy, letting ``strategy`` shape batches, add penalties and keep parameters fixed.

    ``validation``: held-out rows (transformed, encoded); the weights of the epoch with the lowest loss on
    them are kept (early stopping without stopping: every epoch still runs, so the cost is known).
    ``watch``: held-out rows (transformed, encoded) scored after every epoch (``row_scores``), returned as ``watched``.
    """
    note_training()  # no child forked from now on could train (see lepton.models.aside)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if device.type == "cuda":
        xt, yt = xt.pin_memory(), yt.pin_memory()
    # The whole increment fits on the device: moving it once beats a DataLoader per batch.
    xt, yt = xt.to(device, non_blocking=True), yt.to(device, non_blocking=True)
    model.to(device).train()
    # What the strategy keeps fixed takes no gradient, so Adam never steps it.
    with keep_fixed(model, frozen(model, strategy)):
        autocast, scaler = _autocast(device)
        optimiser = adam([p for p in model.parameters() if p.requires_grad], lr, scaled=scaler is not None)
        losses, samples = [], 0
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        if validation is not None:
            xv, yv = (torch.from_numpy(a).to(device) for a in validation)
        watched = []
        if watch is not None:
            xw, yw = (torch.from_numpy(a).to(device) for a in watch)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(xt), generator=generator).to(device)
            total, count = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                loss, n = step(model, model, xt[idx], yt[idx], optimiser=optimiser, autocast=autocast, scaler=scaler, strategy=strategy)
                total += loss
                count += n
            samples += count
            losses.append(total / max(count, 1))
            # For whoever watches (the CLI's progress display): structured, and free when nobody does.
            log.debug("epoch %d/%d: loss %.4f", epoch, epochs, losses[-1], extra={"epoch": epoch, "epochs": epochs, "loss": losses[-1]})
            if validation is not None:
                held = validation_loss(model, xv, yv)
                if np.isfinite(held) and (best is None or held < best[0]):
                    best = (held, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            if watch is not None:
                watched.append(row_scores(model, xw, yw))
        if best is not None:
            model.load_state_dict(best[2])
    model.eval()
    return FitResult(losses, samples, best[1] if best is not None else None, np.stack(watched) if watched else None)
