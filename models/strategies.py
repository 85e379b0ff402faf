"""Anti-forgetting strategies: small objects that return things, never reach into the trainer.

A strategy may change what the model trains on (``training_data``), add a term to
the loss (``penalty``) and learn from an increment once training is done
(``after_increment``). Its state travels with the model version.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from models.memory import ClassBalancedMemory


class Strategy(Protocol):
    name: str

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What to train on for an increment (raw features, class ids)."""
        ...

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term for a batch, or None."""
        ...

    def after_increment(self, x: np.ndarray, y: np.ndarray) -> None:
        """Learn from the increment just trained on."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


class Naive:
    """Plain fine-tuning on the new increment: the baseline that forgets."""

    name = "naive"

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_increment(self, x: np.ndarray, y: np.ndarray) -> None:
        return None

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None


class Replay(Naive):
    """Rehearse a class-balanced memory of earlier samples alongside the new ones."""

    name = "replay"

    def __init__(self, *, n_features: int, capacity: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        self.n_features = n_features
        self.memory = ClassBalancedMemory(capacity=capacity, fraction=fraction, seed=seed)

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mx, my = self.memory.samples(self.n_features)
        return np.concatenate([x, mx]), np.concatenate([y, my])

    def after_increment(self, x: np.ndarray, y: np.ndarray) -> None:
        self.memory.update(x, y)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"memory.{k}": v for k, v in self.memory.state_dict(self.n_features).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        prefix = "memory."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            self.memory.load_state_dict(own)


def build(name: str, *, n_features: int, memory_size: int | None, memory_fraction: float, seed: int) -> Strategy:
    """The strategy named in the config."""
    if name == "naive":
        return Naive()
    if name == "replay":
        if memory_size is not None:
            return Replay(n_features=n_features, capacity=memory_size, seed=seed)
        return Replay(n_features=n_features, fraction=memory_fraction, seed=seed)
    raise ValueError(f"unknown strategy {name!r}; choose one of: naive, replay")
