"""The training loop and the fine-tuning step of one increment."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from lepton.config import StrategyConfig, TrainConfig
from models import strategies
from models.bundle import Bundle
from models.network import MLP
from models.preprocessing import Preprocessor


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for or available, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on the CPU."""
    if device.type != "cuda":
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    strategy: strategies.Strategy | None = None,
) -> list[float]:
    """Train ``model`` in place with Adam and cross-entropy; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if device.type == "cuda":
        xt, yt = xt.pin_memory(), yt.pin_memory()
    # The whole increment fits on the device: moving it once beats a DataLoader per batch.
    xt, yt = xt.to(device, non_blocking=True), yt.to(device, non_blocking=True)
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    autocast, scaler = _autocast(device)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = xt[idx], yt[idx]
            with autocast:
                loss = loss_fn(model(xb), yb)
                extra = strategy.penalty(model, xb, yb) if strategy is not None else None
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
            total += float(loss.detach()) * len(idx)
        losses.append(total / max(len(order), 1))
    model.eval()
    return losses


@dataclass
class TrainReport:
    """What a fine-tuning step did, for tracking."""

    losses: list[float]
    train_samples: int
    new_samples: int
    memory_samples: int
    seconds: float
    device: str
    warm_start: bool
    classes: list = field(default_factory=list)


def fine_tune(
    champion: Bundle | None,
    frame: pd.DataFrame,
    *,
    label: str,
    train: TrainConfig,
    strategy: StrategyConfig,
) -> tuple[Bundle, TrainReport]:
    """The candidate: the champion (or a new network) fine-tuned on ``frame`` with the configured strategy.

    The champion itself is never modified: its weights are copied into a new network.
    """
    torch.manual_seed(train.seed)
    features = [c for c in frame.columns if c != label] if champion is None else champion.preprocessor.features
    previous = champion.preprocessor if champion is not None else Preprocessor(features)
    preprocessor = previous.updated(frame, frame[label])

    network = MLP(n_features=len(features), n_classes=len(preprocessor.classes), hidden=tuple(train.hidden))
    if champion is not None:
        network = MLP(n_features=len(features), n_classes=champion.network.n_classes, hidden=champion.network.hidden)
        network.load_state_dict(champion.network.state_dict())
        network.expand_head(len(preprocessor.classes))

    plan = strategies.build(
        strategy.name,
        n_features=len(features),
        memory_size=strategy.memory_size,
        memory_fraction=strategy.memory_fraction,
        seed=train.seed,
    )
    if champion is not None and champion.meta.get("strategy", {}).get("name") == strategy.name:
        plan.load_state_dict(champion.strategy_state)

    x_new = preprocessor.raw_matrix(frame)
    y_new = preprocessor.encode(frame[label])
    x_raw, y = plan.training_data(x_new, y_new)
    device = select_device(train.device)
    started = time.perf_counter()
    losses = fit(
        network,
        preprocessor.transform(x_raw),
        y,
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        seed=train.seed,
        device=device,
        strategy=plan,
    )
    seconds = time.perf_counter() - started
    plan.after_increment(x_new, y_new)
    network.cpu()
    meta = {"label": label, "train": train.model_dump(), "strategy": strategy.model_dump()}
    candidate = Bundle(network, preprocessor, plan.state_dict(), meta)
    report = TrainReport(
        losses=losses,
        train_samples=len(y) * train.epochs,
        new_samples=len(y_new),
        memory_samples=len(y) - len(y_new),
        seconds=seconds,
        device=str(device),
        warm_start=champion is not None,
        classes=list(preprocessor.classes),
    )
    return candidate, report
