"""The classifier network: an MLP whose head grows when new classes arrive."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    """Feature layers followed by a linear head, one logit per known class."""

    def __init__(self, *, n_features: int, n_classes: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)
        self.n_features = n_features
        self.hidden = tuple(hidden)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    @property
    def arch(self) -> dict[str, Any]:
        """Constructor arguments: enough to rebuild the network from a checkpoint."""
        return {"n_features": self.n_features, "n_classes": self.n_classes, "hidden": list(self.hidden)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def expand_head(self, n_classes: int) -> None:
        """Add output units for new classes, keeping the weights of the known ones."""
        if n_classes < self.n_classes:
            raise ValueError(f"cannot shrink the head from {self.n_classes} to {n_classes} classes")
        if n_classes == self.n_classes:
            return
        old = self.head
        new = nn.Linear(old.in_features, n_classes).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.head = new


def build(arch: dict[str, Any]) -> MLP:
    return MLP(n_features=arch["n_features"], n_classes=arch["n_classes"], hidden=tuple(arch["hidden"]))
