"""What a consumer of the champion pays: loading it, and predicting one row and batches, beside what they would have instead.

The alternative is an MLflow-logged scikit-learn pipeline (a scaler and an MLP of the same
size, trained on the same rows) with the same input signature, loaded the same way. Both
run in this process, one after the other, on the same rows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

CALLS = 200  # one-row predictions timed per model (after 10 to warm up)
BATCHES = (1, 100, 1000, 10000)


def _p50_ms(predict: Any, row: pd.DataFrame, calls: int = CALLS) -> float:
    for _ in range(10):
        predict(row)
    spent = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(row)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) * 1000


def _batch_seconds(predict: Any, frame: pd.DataFrame) -> dict[str, float]:
    out = {}
    for rows in BATCHES:
        batch = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).iloc[:rows]
        started = time.perf_counter()
        predict(batch)
        out[str(rows)] = round(time.perf_counter() - started, 4)
    return out


def consumers(tracking_uri: str, model_name: str, frame: pd.DataFrame, label: str) -> dict[str, Any]:
    """Load time of the champion, p50 of one row and batch times for it and for the scikit-learn pipeline."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlflow.set_tracking_uri(tracking_uri)
    features = frame.drop(columns=[label])
    started = time.perf_counter()
    champion = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    load_seconds = time.perf_counter() - started  # the first load in a process: the imports are most of it
    started = time.perf_counter()
    mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    again_seconds = time.perf_counter() - started  # the registry lookup and the artifact copy
    # The same signature as the champion's: a consumer passes the same frame to either.
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=30, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 30 epochs, like the champion's
        pipeline.fit(features.astype(float), frame[label])
    with tempfile.TemporaryDirectory(prefix="lepton-sklearn-") as tmp:
        path = Path(tmp) / "model"
        signature = infer_signature(features, pipeline.predict(features.astype(float)))
        mlflow.sklearn.save_model(pipeline, str(path), signature=signature, skops_trusted_types=["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"])
        started = time.perf_counter()
        sklearn = mlflow.pyfunc.load_model(str(path))
        sklearn_load = time.perf_counter() - started
        row = features.iloc[[0]]
        lepton_ms, sklearn_ms = _p50_ms(champion.predict, row), _p50_ms(sklearn.predict, row)
        batches = {"lepton": _batch_seconds(champion.predict, features), "sklearn": _batch_seconds(sklearn.predict, features)}
    return {
        "load_seconds": {"lepton_first": round(load_seconds, 3), "lepton_again": round(again_seconds, 3), "sklearn": round(sklearn_load, 3)},
        "one_row_p50_ms": {"lepton": round(lepton_ms, 3), "sklearn": round(sklearn_ms, 3)},
        "ratio": round(lepton_ms / sklearn_ms, 3),
        "batch_seconds": batches,
        "rows_per_second_at_10000": {who: round(10000 / b["10000"]) for who, b in batches.items()},
    }
