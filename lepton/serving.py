"""The registered model: an MLflow pyfunc that bundles preprocessing with the network.

Consumers load ``models:/NAME@champion`` and pass a DataFrame of raw feature columns;
they get back labels in the original label values, or class probabilities with
``params={"probabilities": True}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from models.bundle import Bundle


class LeptonClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.bundle = Bundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if params and params.get("probabilities"):
            proba = self.bundle.predict_proba(frame)
            return pd.DataFrame(proba, columns=[str(c) for c in self.bundle.preprocessor.classes])
        return self.bundle.predict(frame)
