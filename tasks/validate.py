"""Validation of an increment with a Great Expectations suite built from the workspace schema."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DataConfig
from models.schema import DataSchema
from models.splits import holdout_mask

NUMERIC = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64"]
INTEGER_LABEL = [t for t in NUMERIC if "int" in t.lower()] + ["bool"]
STRING_LABEL = ["str", "object", "category"]
FINITE = float(np.finfo(np.float64).max)


@dataclass
class ValidationReport:
    passed: bool
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    expectations: int = 0
    failed: int = 0  # expectations that failed (problems may add checks beyond the suite)
    data_docs: str | None = None  # GX Data Docs page of this validation, when one was built


def build_suite(frame_columns: list[str], schema: DataSchema | None, config: DataConfig):
    """The expectations an increment must meet: one per line, each with its intent."""
    import great_expectations.expectations as gxe

    label = config.label
    suite: list[Any] = []
    # Enough rows to split into a training part and a holdout.
    suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows))
    if schema is None:
        # First increment: it defines the schema, so only its own consistency is checked.
        suite.append(gxe.ExpectColumnToExist(column=label))
        # The label and at least one feature.
        suite.append(gxe.ExpectTableColumnCountToBeBetween(min_value=2))
        features = [c for c in frame_columns if c != label]
    else:
        # Exactly the columns of the schema, no more, no fewer.
        suite.append(gxe.ExpectTableColumnsToMatchSet(column_set=[*schema.features, label], exact_match=True))
        features = schema.features
    present = set(frame_columns)
    for column in features:
        if column not in present:
            continue  # the column-set expectation already names it
        # The network needs numbers.
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=NUMERIC))
        # No gaps: a missing value would silently become a wrong one.
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        declared = config.bounds.get(column) or config.bounds.get("*")
        if declared is None:
            # Infinities pass a null check and poison the scaler's running statistics.
            # (Declared bounds are hard limits, checked below for every row: they exclude them already.)
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-FINITE, max_value=FINITE))
        bounds = declared
        if bounds is None and schema is not None and column in schema.ranges:
            bounds = schema.bounds(column, config.range_tolerance)
        if bounds is not None:
            # Values far outside what has been seen mean a unit change or a broken export.
            # Declared bounds are hard limits; learned ones allow a few outliers.
            mostly = 1.0 if declared is not None else config.range_mostly
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=bounds[0], max_value=bounds[1], mostly=mostly))
    if label in present:
        # Every row needs its label.
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=label))
        if schema is not None:
            # Labels keep their kind (integers stay integers, strings stay strings).
            kinds = INTEGER_LABEL if schema.label_kind == "int" else STRING_LABEL
            suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=label, type_list=kinds))
            if not config.allow_new_classes:
                # Only known classes, unless the config allows new ones.
                suite.append(gxe.ExpectColumnValuesToBeInSet(column=label, value_set=list(schema.classes)))
    if features and all(c in present for c in features):
        # A repeated row is a join or export gone wrong, and would weigh twice in training.
        suite.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=[*features, label] if label in present else features))
    return suite


def _describe(result: Any) -> str:
    """One failed expectation in plain words."""
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
        return "; ".join(parts) or "columns do not match the schema"
    if kind == "expect_column_values_to_be_in_type_list":
        expected = {tuple(NUMERIC): "numbers", tuple(INTEGER_LABEL): "integer labels, as before", tuple(STRING_LABEL): "string labels, as before"}
        observed = res.get("observed_value")
        return f"column {column!r} does not hold {expected.get(tuple(kwargs.get('type_list') or []), 'the expected type')}" + (f" (found {observed})" if observed else "")
    if kind == "expect_column_values_to_not_be_null":
        return f"column {column!r} has {count} empty value(s)"
    if kind == "expect_column_values_to_be_between" and kwargs.get("max_value") == FINITE:
        return f"column {column!r} has {count} infinite value(s)"
    if kind == "expect_column_values_to_be_between":
        share = res.get("unexpected_percent") or 0.0
        return f"column {column!r} has {count} value(s) ({share:.1f}%) outside [{kwargs['min_value']:g}, {kwargs['max_value']:g}] (e.g. {examples})"
    if kind == "expect_column_values_to_be_in_set":
        return f"label column {column!r} has {count} value(s) never seen before (e.g. {examples}) and data.allow_new_classes is false"
    if kind == "expect_compound_columns_to_be_unique":
        return f"{count} row(s) are repeated (duplicate rows)"
    return f"{kind} failed on {column or 'the table'}"


def run_suite(frame: pd.DataFrame, suite: list[Any], data_docs: Path | None = None, run_name: str = "increment") -> tuple[list[str], Path | None]:
    """Run the expectations on an in-memory frame: the failures in plain words, and the Data Docs page if asked for.

    The suite runs in an ephemeral context (a file context costs seconds per run in
    writes); ``data_docs`` names the folder of a file context that only stores the
    result and renders its page.
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
    page = build_data_docs(results, data_docs, run_name) if data_docs is not None else None
    return [_describe(r) for r in failed if not _consequence(r, failed)], page


def _consequence(result: Any, failed: list[Any]) -> bool:
    """A failure that only follows from another on the same column: the range check of a text or infinite column."""
    config = result.expectation_config
    if config.type != "expect_column_values_to_be_between":
        return False
    column = config.kwargs.get("column")
    causes = [
        r for r in failed if r is not result and r.expectation_config.kwargs.get("column") == column
        and (r.expectation_config.type == "expect_column_values_to_be_in_type_list" or r.expectation_config.kwargs.get("max_value") == FINITE)
    ]
    return bool(causes)


def build_data_docs(results: Any, root: Path, run_name: str) -> Path | None:
    """Store one validation result in the file context under ``root/gx/`` and render its Data Docs page.

    Only this result's page is built: rebuilding the index reads every stored result,
    which grows with each run. Returns None (and logs why) when GX cannot render it:
    the page is a view of the validation, never a reason to fail it.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    try:
        context = gx.get_context(mode="file", project_root_dir=str(root))
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name="increment"),
            run_id=RunIdentifier(run_name=run_name),
            batch_identifier=run_name,
        )
        context.validation_results_store.set(key, results)
        context.build_data_docs(resource_identifiers=[key], build_index=False)
        urls = context.get_docs_sites_urls(resource_identifier=key, only_if_exists=True)
    except Exception as err:  # GX's renderers raise many kinds; none should reject an increment
        logging.getLogger(__name__).warning("could not build the Data Docs page of this validation: %s", err)
        return None
    url = next((u["site_url"] for u in urls if u.get("site_url")), None)
    return Path(unquote(urlparse(url).path)) if url else None


def validate_frame(
    frame: pd.DataFrame, schema: DataSchema | None, config: DataConfig, data_docs: Path | None = None, run_name: str = "increment"
) -> ValidationReport:
    suite = build_suite(list(map(str, frame.columns)), schema, config)
    # GX's type check predates pandas' string dtypes; as objects, strings compare as they always did.
    strings = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c]) and not pd.api.types.is_object_dtype(frame[c])]
    problems, page = run_suite(frame.astype({c: object for c in strings}) if strings else frame, suite, data_docs, run_name)
    failed = len(problems)
    if not problems:
        # Both sides of the split must hold rows, or the increment can neither train nor be measured.
        held = int(holdout_mask(frame, config.holdout_fraction).sum())
        split = f"(data.holdout_fraction={config.holdout_fraction}); send a larger increment"
        if held == 0:
            problems.append(f"{len(frame)} rows leave no rows for the holdout {split}")
        elif held == len(frame):
            problems.append(f"{len(frame)} rows leave only holdout rows and none for training {split}")
    return ValidationReport(
        passed=not problems, problems=problems, rows=len(frame), expectations=len(suite), failed=failed,
        data_docs=str(page) if page else None,
    )


@task(name="validate", cache_policy=NO_CACHE)
def validate(
    frame: pd.DataFrame | None,
    read_error: str | None,
    schema_state: dict | None,
    config: DataConfig,
    data_docs: Path | None = None,
    run_name: str = "increment",
) -> ValidationReport:
    """Check an increment against the schema with Great Expectations.

    With ``data_docs`` (a folder), GX also renders the result as a Data Docs page under
    ``data_docs/gx/uncommitted/data_docs/``, filed under ``run_name``.
    """
    if frame is None:
        return ValidationReport(passed=False, problems=[read_error or "could not be read"])
    schema = DataSchema.from_dict(schema_state) if schema_state else None
    return validate_frame(frame, schema, config, data_docs, run_name)
