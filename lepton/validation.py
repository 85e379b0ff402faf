"""Validation of an increment with a Great Expectations suite built from the workspace schema.

No orchestration here (the flow's task is ``lepton.tasks.validate``), so that a process can import
it, and Great Expectations, without Prefect: see ``lepton.validation_aside``.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from pandas.api import types

from lepton.config import DataConfig
from lepton.models import columns as kinds_of
from lepton.models.schema import SEEN_VALUES, DataSchema, label_kind_of, typical_magnitude
from lepton.models.splits import holdout_split, row_hashes

NUMERIC = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64"]
FINITE = float(np.finfo(np.float64).max)
# What exports write for a missing number: read as missing in a numeric column, however many there are (a column
# that empties is judged by data.missing_jump).
MISSING_MARKERS = frozenset({"", "?", "-", "--", ".", "na", "n/a", "n.a.", "nan", "null", "none", "nil", "missing", "unknown", "#n/a"})
# Share of a numeric column's values that may be other text ('west', '12 kg') before the column counts as text: what
# the first increment allows a column it reads as numbers.
TEXT_IN_NUMBERS = 0.1
# More whole-number classes than this, and the run asks whether they are amounts (data.task: regression).
MANY_CLASSES = 20


@dataclass
class ValidationReport:
    passed: bool
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    expectations: int = 0
    failed: int = 0  # expectations that failed (problems may add checks beyond the suite)
    data_docs: str | None = None  # GX Data Docs page of this validation, when one was built
    warnings: list[str] = field(default_factory=list)  # unusual but not wrong: processed, reported, fed to drift
    notes: list[str] = field(default_factory=list)  # decisions taken (column kinds, the task) on a first increment


def kinds_for(frame: pd.DataFrame, schema: DataSchema | None, config: DataConfig) -> DataSchema:
    """The schema the checks hold the increment to: the workspace's, or for a first increment the one it implies."""
    if schema is not None:
        return schema
    return DataSchema.infer(
        frame, config.label, declared=config.columns, task=config.task, max_categories=config.max_categories, text=config.text
    )


def needed_columns(schema: DataSchema, config: DataConfig) -> list[str]:
    """The columns a later increment must hold: the label and every feature of the schema but those lepton.yaml now
    declares ``ignore`` (a column an export stopped writing). Columns beyond the schema are reported, not refused."""
    return [*(c for c in schema.features if config.columns.get(c) != "ignore"), schema.label]


def _first_bounds(values: np.ndarray, limit: float) -> tuple[float, float] | None:
    """For a first increment: ``limit`` times the bulk's scale beyond its 5th-95th percentile range.

    The bulk, not the extremes: one absurd value in a small first increment would stretch
    a 99th percentile to itself.
    """
    finite = values[np.isfinite(values)]
    if len(finite) < 3:
        return None
    lo, hi = (float(q) for q in np.quantile(finite, [0.05, 0.95]))
    scale = max(hi - lo, abs(lo), abs(hi)) or 1.0
    return lo - limit * scale, hi + limit * scale


def magnitude_bounds(column: str, values: np.ndarray, schema: DataSchema, first: bool, limit: float) -> tuple[float, float] | None:
    """Where a value stops being growth and becomes a unit error or corruption."""
    if first:
        return _first_bounds(values, limit)
    if column not in schema.ranges:
        return None
    lo, hi = schema.ranges[column]
    scale = schema.scale(column)
    return lo - limit * scale, hi + limit * scale


def build_suite(
    frame_columns: list[str], schema: DataSchema | None, config: DataConfig, frame: pd.DataFrame | None = None, skip: set[str] | frozenset = frozenset(),
    implied: DataSchema | None = None,
):
    """The expectations an increment must meet: one per line, each with its intent.

    ``frame`` is the increment with numeric columns already read as numbers; a first
    increment's checks need its values (the bulk of each column sets its own bounds).
    ``skip``: columns already rejected for holding text where numbers were (their gaps and ranges would only repeat it).
    ``implied``: the schema the increment is held to, when the caller has it already (see ``kinds_for``).
    """
    import great_expectations.expectations as gxe

    label = config.label
    suite: list[Any] = []
    # Enough rows to split into a training part and a holdout.
    suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows))
    first = schema is None
    if first:
        # First increment: it defines the schema, so only its own consistency is checked.
        suite.append(gxe.ExpectColumnToExist(column=label))
        # The label and at least one feature.
        suite.append(gxe.ExpectTableColumnCountToBeBetween(min_value=2))
    elif set(needed_columns(schema, config)) - set(frame_columns):
        # A column the model needs is missing: named beside any new one, so a renamed header reads as renamed.
        suite.append(gxe.ExpectTableColumnsToMatchSet(column_set=[*schema.features, label], exact_match=True))
    present = set(frame_columns)
    if implied is None:
        implied = kinds_for(frame, schema, config) if frame is not None and label in present else schema
    if implied is None:
        return suite
    for column in implied.features:
        if column not in present or column in skip:
            continue  # the column-set expectation (or the kind check) already names it
        if not first:
            # Gaps are normal; a column that suddenly empties is a broken export or join.
            allowed = implied.missing_share(column) + config.missing_jump
            if allowed < 1.0:
                suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=round(1.0 - allowed, 6)))
        if implied.kind(column) not in ("numeric", "boolean"):
            continue
        declared = config.bounds.get(column) or config.bounds.get("*")
        if declared is not None:
            # Declared bounds are hard limits, for every row (they exclude infinities too).
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=declared[0], max_value=declared[1]))
            continue
        values = frame[column].to_numpy(dtype=np.float64) if frame is not None else np.zeros(0)
        bounds = magnitude_bounds(column, values, implied, first, config.magnitude_limit)
        if bounds is not None:
            # Orders of magnitude beyond what the column holds: a unit error or corruption, even in one row.
            # (Growth within that, a year or a counter, is only reported.) Held to finite bounds (a huge
            # data.magnitude_limit would make them infinite), they stop infinities too.
            low, high = max(bounds[0], -FINITE), min(bounds[1], FINITE)
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, meta={"magnitude": config.magnitude_limit}))
        else:
            # Infinities pass a null check and poison the scaler's running statistics.
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-FINITE, max_value=FINITE))
    if label in present:
        # Most rows need their label; a few without one are dropped and counted.
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=label, mostly=round(1.0 - config.max_missing_labels, 6), meta={"label": True}))
        if not first and implied.task != "regression" and not config.allow_new_classes:
            # Only known classes, unless the config allows new ones.
            suite.append(gxe.ExpectColumnValuesToBeInSet(column=label, value_set=list(schema.classes)))
    return suite


def _describe(result: Any, frame: pd.DataFrame | None = None) -> str:
    """One failed expectation in plain words (``frame``: the increment validated, to count what GX's result only samples)."""
    config = result.expectation_config
    kind, kwargs, res = config.type, config.kwargs, result.result or {}
    column = kwargs.get("column")
    examples = ", ".join(repr(v) for v in (res.get("partial_unexpected_list") or [])[:3])
    count = res.get("unexpected_count")
    if result.exception_info and result.exception_info.get("raised_exception"):
        message = result.exception_info.get("exception_message", "").splitlines()[0]
        return f"{kind} could not be checked: {message}"
    if kind == "expect_table_row_count_to_be_between":
        return f"{res.get('observed_value')} rows, fewer than the {kwargs.get('min_value')} required"
    if kind == "expect_table_column_count_to_be_between":
        return f"{res.get('observed_value')} column(s): need the label and at least one feature"
    if kind == "expect_column_to_exist":
        return f"column {column!r} is missing"
    if kind == "expect_table_columns_to_match_set":
        mismatch = (res.get("details") or {}).get("mismatched") or {}
        parts = []
        if mismatch.get("missing"):
            parts.append("missing column(s) " + ", ".join(repr(c) for c in mismatch["missing"]))
        if mismatch.get("unexpected"):
            parts.append("unexpected column(s) " + ", ".join(repr(c) for c in mismatch["unexpected"]))
        # A header whose case or spacing changed in the export reads as one column lost and another gained: say so.
        renamed = {kinds_of.folded(c): c for c in mismatch.get("missing") or []}
        pairs = [(renamed[key], c) for c in mismatch.get("unexpected") or [] if (key := kinds_of.folded(c)) in renamed]
        if pairs:
            parts.append("renamed only in case or spacing: " + ", ".join(f"{new!r} was {old!r}" for old, new in pairs) + " (rename them back in the export)")
        elif mismatch.get("missing"):
            gone = mismatch["missing"][0]
            parts.append(f"if the export no longer writes it, declare it in lepton.yaml (data.columns: {{{gone}: ignore}}): a new network then learns without it")
        return "; ".join(parts) or "columns do not match the schema"
    meta = config.meta or {}
    share = res.get("unexpected_percent") or 0.0
    if kind == "expect_column_values_to_not_be_null" and meta.get("label"):
        return (
            f"label column {column!r} is empty in {count} row(s) ({share:.1f}%), more than data.max_missing_labels="
            f"{1 - kwargs.get('mostly', 1.0):.2g} allows (below it such rows are dropped)"
        )
    if kind == "expect_column_values_to_not_be_null":
        return (
            f"column {column!r} has {count} empty value(s) ({share:.1f}%), more than the share seen so far plus "
            f"data.missing_jump allows ({(1 - kwargs.get('mostly', 1.0)):.0%}): a broken export or join?"
        )
    if kind == "expect_column_values_to_be_between" and meta.get("magnitude"):
        # The bounds are finite, so infinities fail here too: they are named as what they are, counted in
        # the column itself (GX's result samples 20 of the values that failed).
        values = pd.to_numeric(frame[column], errors="coerce") if frame is not None and column in frame.columns else pd.Series(dtype=float)
        infinite = int(np.isinf(values.to_numpy(dtype=np.float64, na_value=np.nan)).sum())
        if infinite and infinite >= (count or 0):
            return f"column {column!r} has {count} infinite value(s)"
        beyond = f"{infinite} infinite value(s), and {count - infinite} value(s)" if infinite else f"{count} value(s)"
        examples_part = "" if infinite else f"e.g. {examples}; "
        return (
            f"column {column!r} has {beyond} orders of magnitude beyond its range ({examples_part}limit "
            f"[{kwargs['min_value']:.4g}, {kwargs['max_value']:.4g}], data.magnitude_limit={meta['magnitude']:g}): a unit error or corruption? "
            "If such values are real, raise data.magnitude_limit or declare data.bounds"
        )
    if kind == "expect_column_values_to_be_between" and kwargs.get("max_value") == FINITE:
        return f"column {column!r} has {count} infinite value(s)"
    if kind == "expect_column_values_to_be_between":
        return (
            f"column {column!r} has {count} value(s) ({share:.1f}%) outside its declared bounds "
            f"[{kwargs['min_value']:g}, {kwargs['max_value']:g}] (e.g. {examples}; data.bounds)"
        )
    if kind == "expect_column_values_to_be_in_set":
        return f"label column {column!r} has {count} value(s) never seen before (e.g. {examples}) and data.allow_new_classes is false"
    return f"{kind} failed on {column or 'the table'}"


def run_suite(frame: pd.DataFrame, suite: list[Any]) -> tuple[list[str], Any]:
    """Run the expectations on an in-memory frame: the failures in plain words, and GX's result (for a Data Docs page).

    The suite runs in an ephemeral context (a file context costs seconds per run in
    writes); ``build_data_docs`` stores a result in a file context and renders its page.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("increment").add_dataframe_asset("increment").add_batch_definition_whole_dataframe("all")
    expectation_suite = context.suites.add(gx.ExpectationSuite(name="increment", expectations=suite))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="increment", data=batch, suite=expectation_suite))
    results = definition.run(batch_parameters={"dataframe": frame}, result_format="BOOLEAN_ONLY")
    if not results.success:
        # Only a failure needs the counts and examples, for its message and its Data Docs page:
        # passing increments (nearly all of them) validate in half the time.
        results = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    failed = [r for r in results.results if not r.success]
    return [_describe(r, frame) for r in failed], results


def build_data_docs(results: Any, root: Path, run_name: str) -> Path | None:
    """Store one validation result in the file context under ``root/gx/`` and render its Data Docs page.

    Only this result's page is built: rebuilding the index reads every stored result,
    which grows with each run. Returns None (and logs why) when GX cannot render it:
    the page is a view of the validation, never a reason to fail it.
    """
    import great_expectations as gx
    from great_expectations.core import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    try:
        # GX writes column names and values into the page as markup (a column named
        # <script>...</script> runs there): the page is rendered from a copy whose text cannot be markup.
        inert = expectationSuiteValidationResultSchema.load(_inert(results.to_json_dict()))
        context = gx.get_context(mode="file", project_root_dir=str(root))
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name="increment"),
            run_id=RunIdentifier(run_name=run_name),
            batch_identifier=run_name,
        )
        context.validation_results_store.set(key, inert)
        context.build_data_docs(resource_identifiers=[key], build_index=False)
        urls = context.get_docs_sites_urls(resource_identifier=key, only_if_exists=True)
    except Exception as err:  # GX's renderers raise many kinds; none should reject an increment
        logging.getLogger(__name__).warning("could not build the Data Docs page of this validation: %s", err)
        return None
    url = next((u["site_url"] for u in urls if u.get("site_url")), None)
    return Path(unquote(urlparse(url).path)) if url else None


# Look-alikes for the characters that make text markup or leave an attribute: the page still reads the same.
INERT = str.maketrans({"<": "\uff1c", ">": "\uff1e", "&": "\uff06", '"': "\uff02", "'": "\uff07", "`": "\uff40"})


def _inert(value: Any) -> Any:
    """A JSON value with every string made inert for HTML (keys too: GX renders some of them)."""
    if isinstance(value, str):
        return value.translate(INERT)
    if isinstance(value, dict):
        return {_inert(k): _inert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_inert(v) for v in value]
    return value


def _examples(values: pd.Series, n: int = 3) -> str:
    """Up to ``n`` different values, as they appear first."""
    return ", ".join(repr(v) for v in pd.unique(values.to_numpy(dtype=object))[:n].tolist())


def read_as_schema(frame: pd.DataFrame, schema: DataSchema) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """The increment with numeric and boolean columns read as numbers, and per column the values that were not numbers."""
    prepared, unreadable = frame.copy(deep=False), {}
    for column in schema.of_kind("numeric", "boolean"):
        if column not in frame.columns:
            continue
        numbers = kinds_of.as_numbers(frame[column], boolean=schema.kind(column) == "boolean")
        bad = frame[column][np.isnan(numbers) & frame[column].notna().to_numpy()]
        if len(bad):
            unreadable[column] = bad
        prepared[column] = numbers
    return prepared, unreadable


def _words(bad: pd.Series) -> pd.Series:
    """Of the values a numeric column could not read, those that are not a missing-value marker ('?', 'n/a')."""
    return bad[~bad.astype("string").str.strip().str.lower().isin(MISSING_MARKERS).to_numpy()]


def _now_text(bad: pd.Series, numbers: pd.Series) -> tuple[pd.Series, int] | None:
    """``(words, values)`` when a numeric column's words are more than ``TEXT_IN_NUMBERS`` of its values (it holds text
    now), else None. ``bad``: what it could not read as numbers; ``numbers``: the column as read (those as NaN)."""
    words, present = _words(bad), len(bad) + int(numbers.notna().sum())
    return (words, present) if len(words) > TEXT_IN_NUMBERS * present else None


def content_checks(
    frame: pd.DataFrame, schema: DataSchema, unreadable: dict[str, pd.Series], config: DataConfig, first: bool, hashes: np.ndarray,
) -> tuple[list[str], list[str]]:
    """What GX does not express: kinds that changed, labels of the wrong kind, a first increment that cannot train; and what is only reported.
    ``hashes``: the rows' hashes as read (``row_hashes``), which tell repeated rows without comparing every column again."""
    problems, warnings = [], []
    label = config.label
    for column, bad in unreadable.items():
        text = None if first else _now_text(bad, frame[column])  # ``frame`` holds them as NaN already
        if text is not None:
            words, present = text
            held = "true/false values" if schema.kind(column) == "boolean" else "numbers"
            problems.append(
                f"column {column!r} held {held} and now holds text ({len(words)} of {present} values, e.g. {_examples(words)}); "
                f"if it is a category now, declare it in lepton.yaml (data.columns: {{{column}: categorical}})"
            )
            continue
        warnings.append(f"column {column!r}: {len(bad)} value(s) that are not numbers (e.g. {_examples(bad)}) read as missing")
    for column in schema.of_kind("datetime"):
        if column not in frame.columns:
            continue
        present = frame[column].dropna()
        day_first, month_first = kinds_of.date_order(present)
        if day_first is not None and month_first is not None:
            problems.append(
                f"column {column!r} holds dates written day first (e.g. {day_first!r}) and month first (e.g. {month_first!r}): "
                "which 01/05 is cannot be told; export the column in one order (ISO, 2015-05-01, is unambiguous)"
            )
            continue
        ambiguous = kinds_of.either_way(present) if first else None
        if ambiguous is not None:
            read = kinds_of.as_datetimes(pd.Series([ambiguous])).iloc[0]
            warnings.append(
                f"column {column!r}: no date tells whether the day or the month comes first (e.g. {ambiguous!r}): read month first "
                f"({read:%d %B %Y}) until one does (13/05/2015); if the export writes the day first, send ISO dates (2015-05-01)"
            )
        bad = present[kinds_of.as_datetimes(present).isna().to_numpy()]
        words = _words(bad)
        if len(words) > TEXT_IN_NUMBERS * max(len(present), 1):
            problems.append(f"column {column!r} holds dates, but {len(words)} of {len(present)} values are not (e.g. {_examples(words)}); declare its kind in data.columns if it changed")
        elif len(bad):
            warnings.append(f"column {column!r}: {len(bad)} value(s) that are not dates (e.g. {_examples(bad)}) read as missing")
    for column in schema.of_kind("image"):
        if column in frame.columns and column in schema.shapes:
            problems += _image_problems(frame[column], schema.shapes[column], first)
    if label not in frame.columns:
        return problems, warnings
    labels = frame[label].dropna()
    if schema.task == "regression":
        numbers = pd.to_numeric(labels, errors="coerce")
        if numbers.isna().any():
            problems.append(f"label column {label!r} holds a number to predict (regression), but {int(numbers.isna().sum())} value(s) are not numbers (e.g. {_examples(labels[numbers.isna()])})")
        elif not np.isfinite(numbers.to_numpy(dtype=np.float64)).all():
            problems.append(f"label column {label!r} has infinite value(s)")
        elif first and numbers.nunique() < 2:
            problems.append(f"label column {label!r} is constant ({_examples(labels, 1)}): a first increment needs a target that varies to train a model")
    else:
        if not first and schema.label_kind == "int" and label_kind_of(labels) != "int":
            problems.append(f"column {label!r} does not hold integer labels, as before (e.g. {_examples(labels[~labels.map(lambda v: isinstance(v, (int, float, np.number)) and float(v).is_integer())])})")
        if first and labels.nunique() < 2:
            problems.append(
                f"label column {label!r} holds a single class ({_examples(labels, 1)}): a first increment needs at least two classes to train a model"
                + ("; if it is a number to predict, set data.task=regression" if types.is_numeric_dtype(labels) else "")
            )
        if not first and config.allow_new_classes:
            warnings += _new_classes(labels, schema)
    # Equal rows hash alike: one pass over the hashes the split needs anyway, where comparing the columns took 1.2 s of a
    # million-row increment's 5 s budget.
    repeated = int(pd.Series(hashes).duplicated().sum())
    if repeated:
        share = f"{repeated} repeated row(s) ({repeated / len(frame):.1%})"
        if config.duplicates == "reject":
            problems.append(f"{share}, and data.duplicates=reject (keep or drop to accept them)")
        else:
            warnings.append(f"{share} {'kept' if config.duplicates == 'keep' else 'dropped'} (data.duplicates={config.duplicates})")
    if not first:
        problems += _unit_changes(frame, schema, config.unit_change)
        warnings += _growth(frame, schema, config)
    return problems, warnings


def _columns_beyond(frame: pd.DataFrame, schema: DataSchema, config: DataConfig) -> list[str]:
    """Columns new to the schema, and those lepton.yaml declares ``ignore`` that the export no longer writes: said, not refused."""
    out = []
    new = [str(c) for c in frame.columns if c not in schema.features and c != schema.label]
    if new:
        out.append(
            f"{len(new)} column(s) new to this workspace ({', '.join(map(repr, new[:5]))}{', ...' if len(new) > 5 else ''}): kept with "
            "the data, not read by the model, whose inputs are the columns of the first increment"
        )
    gone = [c for c in schema.features if c not in frame.columns]
    if gone:
        out.append(f"column(s) {', '.join(map(repr, gone))} not in this increment, and declared ignore in lepton.yaml (data.columns)")
    return out


def _declared_nowhere(frame: pd.DataFrame, schema: DataSchema | None, config: DataConfig) -> list[str]:
    """Columns lepton.yaml declares (data.columns) that neither this increment nor the workspace has: a misspelt name
    changed nothing, and said nothing."""
    known = {str(c) for c in frame.columns} | (set(schema.features) if schema is not None else set())
    out = []
    for name in (c for c in config.columns if c not in known):
        like = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {like[0]!r}?)" if like else ""
        out.append(f"data.columns declares {name!r}, which neither this increment nor the workspace has{hint}: the declaration does nothing")
    return out


def _new_classes(labels: pd.Series, schema: DataSchema) -> list[str]:
    """Label values never seen before: learnt from now on (class-incremental data), and said, as a new category is; a new
    class that differs from a known one only in case or spacing ('Car ' beside 'car') is most likely a dirty export."""
    known = {kinds_of.native(c) for c in schema.classes}
    new = [v for v in (kinds_of.native(c) for c in pd.unique(labels)) if v not in known]
    if not new:
        return []
    said = f"label {schema.label!r}: {len(new)} new class(es) ({', '.join(repr(v) for v in new[:5])}{', ...' if len(new) > 5 else ''}), learnt from now on"
    folded = {kinds_of.folded(c): c for c in schema.classes}
    alike = [(v, folded[key]) for v in new if (key := kinds_of.folded(v)) in folded]
    if alike:
        said += ("; " + ", ".join(f"{v!r} differs from the known {c!r} only in case or spacing" for v, c in alike)
                 + ": if it is the same class, fix the export, as these rows teach a class of their own")
    every = [*schema.classes, *new]
    if len(every) > MANY_CLASSES and all(isinstance(c, (int, float)) and not isinstance(c, bool) and float(c).is_integer() for c in every):
        # The first increment's question, asked again while the evidence grows: a note once was easy to miss.
        said += (f"; {len(every)} whole-number classes so far: if they are amounts to predict, set data.task: regression "
                 "(the next increment then trains a new network on everything accepted)")
    return [f"{said} (data.allow_new_classes=false rejects new classes)"]


def _unit_changes(frame: pd.DataFrame, schema: DataSchema, limit: float) -> list[str]:
    """Columns whose typical value is ``limit`` times smaller or larger than in every accepted increment: values a
    thousand times smaller stay inside the range seen, where the magnitude bounds never look."""
    out = []
    for column, (lo, hi) in schema.magnitudes.items() if limit > 0 else ():
        typical = typical_magnitude(frame[column]) if column in frame.columns else None
        if typical is None:
            continue
        if typical * limit < lo:
            factor, way = lo / typical, "smaller"
        elif typical > hi * limit:
            factor, way = typical / hi, "larger"
        else:
            continue
        what = "label column" if column == schema.label else "column"
        out.append(
            f"{what} {column!r}: its typical value is {factor:,.0f} times {way} than in every earlier increment (median magnitude "
            f"{typical:.4g}, earlier {lo:.4g} to {hi:.4g})"
        )
    if out:  # the question and the setting once, after the last column: several columns that change at once read as one list
        out[-1] += (f": {'a unit' if len(out) == 1 else 'units'} that changed (grams to kilograms, percent to a fraction)? "
                    f"If the values are right, raise data.unit_change (now {limit:g}) or set it to 0")
    return out


def _image_problems(values: pd.Series, shape: list[int], first: bool) -> list[str]:
    """Images that do not decode, or decode to another size than the column's: what a network cannot read."""
    found = [(i, p) for i, p in ((i, kinds_of.image_problem(v, shape)) for i, v in zip(values.index, values.tolist(), strict=True)) if p is not None]
    if not found:
        return []
    undecodable = [i for i, p in found if p == kinds_of.UNDECODABLE]
    resized = [(i, p) for i, p in found if p != kinds_of.UNDECODABLE]
    out = []
    if undecodable:
        out.append(f"column {values.name!r}: {len(undecodable)} of {values.notna().sum()} value(s) are not decodable images (e.g. row(s) {', '.join(map(str, undecodable[:3]))})")
    if resized:
        examples = "; ".join(f"row {i}: {p.split(', not ')[0]}" for i, p in resized[:3])
        held = "as most of this first increment's" if first else "as in its first increment"
        out.append(
            f"column {values.name!r}: {len(resized)} image(s) of another size ({examples}); the column's images are "
            f"{shape[0]}x{shape[1]} ({shape[2]} channel(s)), {held}: resize them in the export"
        )
    return out


# Fewer values beyond the range seen than this chance of as many or more from the same distribution are a sample's
# new extremes: a shuffled table of 100 columns brought 58 warnings an increment, each of a value or two.
GROWTH_CHANCE = 1e-3
# A value beyond the range by more than its whole width is reported even alone: not a new extreme, a new kind of value
# (a quarter of the width was a heavy-tailed column's new extreme, 12 warnings an increment on a 100-column table).
FAR_BEYOND = 1.0


def _beyond_chance(beyond: int, values: int, seen: int) -> bool:
    """``beyond`` of ``values`` new values outside the range of ``seen`` earlier ones: more than chance gives? Were
    they all drawn from one distribution, each new value would fall outside with probability 2 / (seen + 1)."""
    from scipy.special import bdtrc  # only where values lie beyond: the validation child need not import it else

    return bool(bdtrc(beyond - 1, values, min(1.0, 2.0 / (max(seen, 1) + 1))) < GROWTH_CHANCE)


def _growth(frame: pd.DataFrame, schema: DataSchema, config: DataConfig) -> list[str]:
    """Values beyond what was seen, by a plausible amount, and new categories: reported, and left to drift to judge.

    Values just past the range's edge (within ``data.range_tolerance`` of its width) say nothing; beyond it, they are
    reported when more lie there than a sample of the same data would bring (a year that grows, a count that rises),
    or when one lies far beyond (``FAR_BEYOND``)."""
    out = []
    for column in schema.of_kind("numeric"):
        if column not in schema.ranges or column not in frame.columns or config.bounds.get(column) or config.bounds.get("*"):
            continue
        lo, hi = schema.bounds(column, config.range_tolerance)
        values = frame[column].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        beyond = values[finite & ((values < lo) | (values > hi))]
        if not len(beyond):
            continue
        far_lo, far_hi = schema.bounds(column, max(FAR_BEYOND, config.range_tolerance))
        far = bool(((beyond < far_lo) | (beyond > far_hi)).any())
        if far or _beyond_chance(len(beyond), int(finite.sum()), schema.rows - schema.missing.get(column, 0)):
            seen = schema.ranges[column]
            which = f"{beyond.min():g}" if beyond.min() == beyond.max() else f"from {beyond.min():g} to {beyond.max():g}"
            out.append(
                f"column {column!r}: {len(beyond)} value(s) beyond the range seen so far [{seen[0]:g}, {seen[1]:g}] "
                f"({which}; data.range_tolerance={config.range_tolerance:g})"
            )
    for column in schema.of_kind("categorical"):
        if column not in frame.columns:
            continue
        known = set(schema.values.get(column, []))
        if len(known) >= SEEN_VALUES:
            continue
        new = [v for v in kinds_of.as_strings(frame[column]).dropna().unique() if str(v) not in known]
        if new:
            out.append(f"column {column!r}: {len(new)} new categor{'y' if len(new) == 1 else 'ies'} ({', '.join(repr(str(v)) for v in new[:3])}{', ...' if len(new) > 3 else ''})")
    return out


def describe_kinds(schema: DataSchema) -> list[str]:
    """What a first increment decided: the task and each column's kind, and why."""
    what = "a number to predict (regression)" if schema.task == "regression" else "classes"
    numbers = [c for c in schema.classes if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if schema.task != "regression" and len(numbers) > MANY_CLASSES and len(numbers) == len(schema.classes):
        # Whole numbers are classes unless declared (class ids are whole numbers too): grams or counts need saying so.
        what += f" ({len(numbers)} whole numbers, from {min(numbers):g} to {max(numbers):g}: if they are amounts to predict, set data.task: regression)"
    notes = [f"label {schema.label!r}: {what}"]
    by_kind: dict[str, list[str]] = {}
    for column in schema.features:
        by_kind.setdefault(schema.kind(column), []).append(column)
    for kind, names in by_kind.items():
        if kind in ("identifier", "ignore", "text", "datetime", "image"):
            notes += [f"column {c!r}: {kind} ({schema.why.get(c, '')}){'; not used by the model' if kind in ('identifier', 'ignore') else ''}" for c in names]
        else:
            notes.append(f"{kind}: {', '.join(names)}")
    return notes


def repeated_names(names: list[Any]) -> str | None:
    """The problem with a header that names a column twice (pandas would read the second ``x`` as ``x.1``), or None."""
    counts = pd.Series([str(n) for n in names if str(n) != ""]).value_counts()
    repeated = counts[counts > 1]
    if repeated.empty:
        return None
    listed = ", ".join(f"{name!r} ({count} columns)" for name, count in repeated.items())
    return f"duplicate column name(s) {listed}: each column needs a name of its own; rename them in the export"


def validate_frame(
    frame: pd.DataFrame, schema: DataSchema | None, config: DataConfig, data_docs: Path | None = None, run_name: str = "increment"
) -> ValidationReport:
    # Two columns of one name cannot be told apart by the schema, the suite or a consumer:
    # the header as written (read_increment keeps it) or the frame's own columns.
    repeated = repeated_names(frame.attrs.get("header") or list(frame.columns))
    if repeated is not None:
        return ValidationReport(passed=False, problems=[repeated], rows=len(frame))
    first = schema is None
    nested = [str(c) for c in frame.columns if pd.api.types.is_object_dtype(frame[c]) and frame[c].dropna().head(100).map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any()]
    if nested:
        # Lists or maps in a cell (a Parquet list column): nothing to compare, hash or encode as a value.
        problem = f"column(s) {', '.join(map(repr, nested))} hold lists or maps, not values: flatten them in the export (one value per cell)"
        return ValidationReport(passed=False, problems=[problem], rows=len(frame), failed=1)
    implied = kinds_for(frame, schema, config) if config.label in frame.columns or schema is not None else None
    prepared, unreadable = read_as_schema(frame, implied) if implied is not None else (frame, {})
    retyped = {c for c, bad in unreadable.items() if not first and _now_text(bad, prepared[c]) is not None}
    suite = build_suite(list(map(str, frame.columns)), schema, config, prepared, skip=retyped, implied=implied)
    # GX predates pandas' string dtypes; as objects, strings compare as they always did.
    strings = [c for c in prepared.columns if pd.api.types.is_string_dtype(prepared[c]) and not pd.api.types.is_object_dtype(prepared[c])]
    problems, results = run_suite(prepared.astype({c: object for c in strings}) if strings else prepared, suite)
    failed = len(problems)
    warnings: list[str] = []
    hashes = row_hashes(frame)
    if implied is not None and not (set(implied.features if first else needed_columns(implied, config)) - set(frame.columns)):
        more, warnings = content_checks(prepared, implied, unreadable, config, first, hashes)
        problems += [p for p in more if p not in problems]
    if not first and not problems:
        warnings += _columns_beyond(frame, schema, config)
    warnings += _declared_nowhere(frame, schema, config)
    if frame.attrs.get("separator"):  # see tasks.ingest.separator_of
        warnings.append(f"read as separated by {frame.attrs['separator']!r}: its header line holds no comma")
    if frame.attrs.get("unquoted"):  # see tasks.ingest.read_increment
        warnings.append("column names read without the single quotes around every one of them in the header")
    for column, example in (frame.attrs.get("grouped") or {}).items():  # see tasks.ingest.with_written_numbers
        warnings.append(f"column {column!r}: numbers written with thousands separators (e.g. {example!r}), read as numbers")
    for column, example in (frame.attrs.get("written") or {}).items():  # see tasks.ingest.with_written_numbers
        warnings.append(f"column {column!r}: numbers written with a currency or percent sign or grouped digits (e.g. {example!r}), read as numbers")
    for column, example in (frame.attrs.get("decimal_commas") or {}).items():  # see tasks.ingest.with_written_numbers
        warnings.append(f"column {column!r}: numbers written with a decimal comma (e.g. {example!r}), read as numbers")
    dropped = int(frame[config.label].isna().sum()) if config.label in frame.columns else 0
    if dropped and not problems:  # a rejected increment drops nothing: it is quarantined whole
        warnings.append(f"{dropped} row(s) without a label dropped (data.max_missing_labels={config.max_missing_labels:g})")
    if not problems:
        # Both sides of the split must hold rows, or the increment can neither train nor be measured.
        # The rows the steps split: labelled ones, each once when data.duplicates=drop.
        kept, held = (len(part) for part in holdout_split(frame, config.label, config.holdout_fraction, drop_duplicates=config.duplicates == "drop", hashes=hashes))
        split = f"(data.holdout_fraction={config.holdout_fraction}); send a larger increment"
        if held == 0:
            problems.append(f"{len(frame)} rows leave no rows for the holdout {split}")
        elif kept == 0:
            problems.append(f"{len(frame)} rows leave only holdout rows and none for training {split}")
    # The page is rendered where someone will look: a rejection (data.data_docs=rejected), or every run when asked.
    wanted = config.data_docs == "always" or (config.data_docs == "rejected" and bool(problems))
    page = build_data_docs(results, data_docs, run_name) if data_docs is not None and wanted else None
    return ValidationReport(
        passed=not problems, problems=problems, rows=len(frame), expectations=len(suite), failed=failed,
        data_docs=str(page) if page else None, warnings=warnings,
        notes=describe_kinds(implied) if first and implied is not None else [],
    )
