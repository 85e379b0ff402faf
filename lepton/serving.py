"""The registered model: an MLflow pyfunc that bundles preprocessing with the network.

Consumers load ``models:/NAME@champion`` and pass a DataFrame of raw feature columns;
they get back labels in the original label values, or class probabilities with
``params={"probabilities": True}``. A missing value (None, NaN) is imputed like in
training; an input the model cannot score raises ``MlflowException`` with the reason
(HTTP 400 from the scoring server), so no answer is ever a made-up label or a NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from pandas.api import types

# Relative imports: this module travels with every model version as part of its runtime (lepton/runtime.py).
from .models import columns as kinds_of
from .models.bundle import Bundle
from .models.preprocessing import Preprocessor


def unscorable(reason: str) -> MlflowException:
    """The error for an input the model cannot score: 400 with ``reason`` from the scoring server."""
    return MlflowException(f"cannot score this input: {reason}", error_code=INVALID_PARAMETER_VALUE)


def input_problems(frame: pd.DataFrame, preprocessor: Preprocessor) -> list[str]:
    """What in raw feature columns is neither a value the model reads nor a missing one: a column not sent, text or
    infinities where numbers go, text where dates go."""
    missing = [c for c in preprocessor.used if c not in frame.columns]
    problems = [f"missing column(s) {', '.join(map(repr, missing))} (send null values for a column whose values are unknown)"] if missing else []
    dtypes = frame.dtypes
    wanted = [c for c in preprocessor.used if c in dtypes.index and preprocessor.kinds.get(c, "numeric") in ("numeric", "boolean")]
    # Columns that arrive as numbers hold no text: only their infinities need finding, all in one step.
    direct = [c for c in wanted if kinds_of.is_number_dtype(dtypes[c])]
    counted = dict(zip(direct, np.isinf(frame[direct].to_numpy(dtype=np.float64, na_value=np.nan)).sum(axis=0), strict=True)) if direct else {}
    for column in wanted:
        if column in counted:
            if counted[column]:
                problems.append(f"column {column!r} holds {int(counted[column])} infinite value(s)")
            continue
        raw = frame[column]
        numbers = kinds_of.as_numbers(raw, boolean=preprocessor.kinds.get(column) == "boolean")
        # Training read placeholders ('?', 'n/a') as missing; a consumer says missing with null, so text here is a bug to report.
        text = raw[np.isnan(numbers) & raw.notna().to_numpy()]
        if len(text):
            problems.append(f"column {column!r} holds {len(text)} value(s) that are not numbers (e.g. {', '.join(repr(v) for v in text.head(3).tolist())}); send null for a missing value")
        infinite = int(np.isinf(numbers).sum())
        if infinite:
            problems.append(f"column {column!r} holds {infinite} infinite value(s)")
    for column in [c for c in preprocessor.used if c in dtypes.index and preprocessor.kinds.get(c) == "datetime"]:
        raw = frame[column]
        if types.is_datetime64_any_dtype(raw):
            continue
        dayfirst = column in preprocessor.dayfirst
        day, month = kinds_of.date_order(raw)
        # Read in the model's order, a date written the other way is another date (01/05 a month off): refused, not misread.
        against = month if dayfirst else day
        if against is not None:
            order, other = ("day first", "month first") if dayfirst else ("month first", "day first")
            problems.append(f"column {column!r} holds dates written {other} (e.g. {against!r}), where the model reads such dates {order}: "
                            f"send them {order}, or in ISO form (2015-05-13)")
            continue
        text = raw[kinds_of.as_datetimes(raw, dayfirst).isna().to_numpy() & raw.notna().to_numpy()]
        if len(text):
            problems.append(f"column {column!r} holds {len(text)} value(s) that are not dates (e.g. {', '.join(repr(v) for v in text.head(3).tolist())}); send null for a missing value")
    return problems


def as_read_in_training(frame: pd.DataFrame, preprocessor: Preprocessor) -> pd.DataFrame:
    """``frame`` with its numeric columns read as training read its CSV files: the cells a CSV reader takes for
    missing ('?', 'n/a') missing, and numbers as a spreadsheet writes them ("$1,200", "12%", "151,2", "1.819,4") read as
    numbers. A consumer that reads the same exports with its own reader sends them so. The caller's frame is left as it was."""
    found = {}
    for column in preprocessor.used:
        if column in frame.columns and preprocessor.kinds.get(column, "numeric") == "numeric" and not kinds_of.is_number_dtype(frame[column].dtype):
            raw = frame[column]
            values = kinds_of.without_placeholders(raw)
            # Decimal commas only where the column is not read otherwise: '7,300' alone is seven thousand three hundred.
            read = kinds_of.written_numbers(values) or kinds_of.written_numbers(values, decimal_comma=True)
            if read is not None:
                found[column] = read[0]
            elif values is not raw:
                found[column] = values
    if not found:
        return frame
    frame = frame.copy(deep=False)
    for column, values in found.items():
        frame[column] = values
    return frame


def as_frame(model_input: Any) -> pd.DataFrame:
    """Rows to score as a frame: a frame, a dict of one value per column or a Series (one row), a dict of lists or a list
    of dicts (rows). A column named twice is refused by name: which of the two is the feature?"""
    if isinstance(model_input, pd.Series):
        frame = model_input.to_frame().T
    elif isinstance(model_input, dict) and model_input and all(np.ndim(v) == 0 for v in model_input.values()):
        frame = pd.DataFrame([model_input])
    elif isinstance(model_input, pd.DataFrame):
        frame = model_input
    else:
        try:
            frame = pd.DataFrame(model_input)
        except (ValueError, TypeError) as err:
            raise unscorable(f"pass a DataFrame of feature columns, a dict of one value per column, or a list of such dicts ({err})") from None
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if repeated:
        raise unscorable(f"column(s) {', '.join(map(repr, repeated))} given more than once: send each feature column once")
    return frame


def _refuse_non_finite(scores: np.ndarray) -> None:
    """Rows whose scores overflowed (a value far beyond anything seen, such as 1e308) have no answer."""
    bad = np.flatnonzero(~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1))
    if len(bad):
        rows = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise unscorable(f"row(s) {rows} hold values too large for the model to score (no finite output)")


class LeptonClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.bundle = Bundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        frame = as_frame(model_input)
        preprocessor = self.bundle.preprocessor
        frame = as_read_in_training(frame, preprocessor)
        problems = input_problems(frame, preprocessor)
        if problems:
            raise unscorable("; ".join(problems))
        if self.bundle.regression and params and params.get("probabilities"):
            raise unscorable("a regression model predicts numbers, not class probabilities")
        if frame.empty:  # no rows: no answers, of the type rows would get
            if params and params.get("probabilities"):
                return pd.DataFrame(columns=[str(c) for c in preprocessor.classes], dtype=np.float64)
            return preprocessor.decode(np.zeros(0, dtype=np.float32 if self.bundle.regression else np.int64))
        try:
            outputs = self.bundle.outputs(frame)
        except ValueError as err:  # a value the columns cannot encode (an image that does not decode, or of another size)
            raise unscorable(str(err)) from None
        if self.bundle.regression:
            _refuse_non_finite(outputs)
            return preprocessor.decode(outputs[:, 0])
        proba = self.bundle.probabilities(outputs)
        _refuse_non_finite(proba)
        if params and params.get("probabilities"):
            return pd.DataFrame(proba, columns=[str(c) for c in preprocessor.classes])
        return preprocessor.decode(proba.argmax(axis=1))
