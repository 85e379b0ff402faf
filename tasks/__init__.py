"""Prefect tasks: each does one piece of I/O (files, DVC, Great Expectations, MLflow) around a pure function."""
