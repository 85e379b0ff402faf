"""A model version as files: network, preprocessing, strategy state and what produced them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

# Relative imports: this module travels with every model version as part of its runtime (lepton/runtime.py).
from .network import MLP, build
from .preprocessing import Preprocessor

NETWORK = "network.pt"
PREPROCESSOR = "preprocessor.json"
STRATEGY = "strategy.npz"
META = "meta.json"


@dataclass
class Bundle:
    """Everything the next increment needs to resume, and a consumer needs to predict."""

    network: MLP
    preprocessor: Preprocessor
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        cpu_state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        torch.save({"arch": self.network.arch, "state_dict": cpu_state}, directory / NETWORK)
        (directory / PREPROCESSOR).write_text(json.dumps(self.preprocessor.to_dict()))
        np.savez(directory / STRATEGY, **self.strategy_state)
        (directory / META).write_text(json.dumps(self.meta, sort_keys=True, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        directory = Path(directory)
        checkpoint = torch.load(directory / NETWORK, map_location="cpu", weights_only=True)
        network = build(checkpoint["arch"])
        network.load_state_dict(checkpoint["state_dict"])
        network.eval()
        preprocessor = Preprocessor.from_dict(json.loads((directory / PREPROCESSOR).read_text()))
        with np.load(directory / STRATEGY, allow_pickle=False) as npz:
            strategy_state = {k: npz[k] for k in npz.files}
        meta = json.loads((directory / META).read_text())
        return cls(network, preprocessor, strategy_state, meta)

    @property
    def regression(self) -> bool:
        return self.preprocessor.task == "regression"

    @torch.no_grad()
    def outputs(self, frame: pd.DataFrame) -> np.ndarray:
        """The network's outputs for raw feature columns (logits, or the standardised target)."""
        x = torch.from_numpy(self.preprocessor.transform(self.preprocessor.raw_matrix(frame)))
        self.network.eval()
        device = next(self.network.parameters()).device
        return self.network.predict_logits(x.to(device)).float().cpu().numpy()

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities for raw feature columns, columns in ``preprocessor.classes`` order."""
        if self.regression:
            raise ValueError("a regression model predicts numbers, not class probabilities")
        return self.probabilities(self.outputs(frame))

    @staticmethod
    def probabilities(outputs: np.ndarray) -> np.ndarray:
        """Class probabilities from the network's outputs (logits)."""
        return torch.softmax(torch.from_numpy(outputs), dim=1).numpy()

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Labels in the original label values, or numbers in the target's units."""
        if self.regression:
            return self.preprocessor.decode(self.outputs(frame)[:, 0])
        return self.preprocessor.decode(self.predict_proba(frame).argmax(axis=1))
