"""The flow's validation step: ``lepton.validation`` under a Prefect task."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lepton import validation_aside
from lepton.config import DataConfig
from lepton.models.schema import DataSchema
from lepton.validation import ValidationReport, validate_frame


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
    ``data_docs/gx/uncommitted/data_docs/``, filed under ``run_name``. A command that prepared
    the validation aside (``lepton.validation_aside``) has it done there, GX imported already.
    """
    if frame is None:
        validation_aside.discard()
        return ValidationReport(passed=False, problems=[read_error or "could not be read"])
    schema = DataSchema.from_dict(schema_state) if schema_state else None
    report, said = validation_aside.validate(frame, schema, config, data_docs, run_name)
    for n, line in enumerate(said):  # the last line says how it went: a fallback is a warning, like the child's own
        get_run_logger().log(logging.INFO if report is not None and n == len(said) - 1 else logging.WARNING, line)
    return report if report is not None else validate_frame(frame, schema, config, data_docs, run_name)
