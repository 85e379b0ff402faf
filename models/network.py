"""The classifier network: an MLP whose head grows when new classes arrive."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Sharpness of the softmax over negative distances between unit vectors (distances lie in [0, 2]).
NME_SCALE = 20.0


class MLP(nn.Module):
    """Feature layers followed by a linear head, one logit per known class."""

    def __init__(self, *, n_features: int, n_classes: int, hidden: tuple[int, ...] = (256, 256), classifier: str = "linear") -> None:
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
        # Nearest-mean-of-exemplars classification (iCaRL): one unit-norm class mean in
        # feature space per class, used for prediction when classifier == "nme".
        self.classifier = classifier
        self.register_buffer("prototypes", torch.zeros(n_classes, width))

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    @property
    def arch(self) -> dict[str, Any]:
        """Constructor arguments: enough to rebuild the network from a checkpoint."""
        return {"n_features": self.n_features, "n_classes": self.n_classes, "hidden": list(self.hidden), "classifier": self.classifier}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training logits (the linear head)."""
        return self.head(self.features(x))

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for prediction: the linear head, or negative scaled distances to the class means."""
        if self.classifier != "nme":
            return self.forward(x)
        embedding = F.normalize(self.features(x), dim=1)
        return -NME_SCALE * torch.cdist(embedding, self.prototypes)

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
        prototypes = torch.zeros(n_classes, self.prototypes.shape[1], device=self.prototypes.device)
        prototypes[: self.prototypes.shape[0]] = self.prototypes
        self.prototypes = prototypes
        # New classes have no mean yet: predict with the head until one is computed.
        self.classifier = "linear"


def build(arch: dict[str, Any]) -> MLP:
    return MLP(
        n_features=arch["n_features"],
        n_classes=arch["n_classes"],
        hidden=tuple(arch["hidden"]),
        classifier=arch.get("classifier", "linear"),
    )
