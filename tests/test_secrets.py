"""Credentials in URIs never reach tags, params, logs or reports."""

from __future__ import annotations

import pytest

from lepton.secrets import redact, redacted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://mlflow:s3cr3t@db.internal:5432/mlflow", "postgresql://mlflow:***@db.internal:5432/mlflow"),
        ("http://user:p%40ss@mlflow.internal:5000", "http://user:***@mlflow.internal:5000"),
        ("https://mlflow.internal:5000/api", "https://mlflow.internal:5000/api"),
        ("sqlite:////home/me/ws/.lepton/mlflow.db", "sqlite:////home/me/ws/.lepton/mlflow.db"),
        ("s3://bucket/lepton?access_key=AKIA123&region=eu", "s3://bucket/lepton?access_key=***&region=eu"),
        ("https://acct.blob.core.windows.net/c?sv=2024&sig=abc%2Fdef", "https://acct.blob.core.windows.net/c?sv=2024&sig=***"),
        ("connected to postgresql://a:b@h/db then http://h:80", "connected to postgresql://a:***@h/db then http://h:80"),
    ],
)
def test_passwords_and_secret_parameters_are_masked(text, expected):
    """The password of a URL and secret query parameters are masked; hosts, ports, paths and users stay readable."""
    assert redact(text) == expected


def test_nested_values_are_redacted():
    """A config dump (dicts and lists of strings and numbers) comes back with every string redacted, numbers untouched."""
    config = {"registry": {"tracking_uri": "postgresql://u:pw@h/db", "experiment": "x"}, "train": {"epochs": 3, "hidden": [8]}}
    clean = redacted(config)
    assert clean == {"registry": {"tracking_uri": "postgresql://u:***@h/db", "experiment": "x"}, "train": {"epochs": 3, "hidden": [8]}}
    assert config["registry"]["tracking_uri"] == "postgresql://u:pw@h/db"  # the original is untouched


def test_tags_and_params_of_a_model_version_carry_no_credentials():
    """The config a model version is tagged and tracked with has the tracking and remote passwords masked."""
    import json

    from lepton.config import parse
    from lepton.models.gate import GateDecision
    from lepton.tasks.registry import config_params, lineage_of

    config = parse({
        "data": {"label": "y"},
        "registry": {"tracking_uri": "postgresql://mlflow:hunter2@db.internal/mlflow"},
        "dvc": {"remote_url": "https://store.internal/dvc?token=hunter2"},
    })
    params = config_params(config)
    tags = lineage_of(
        increment_id="i", increment_file="f", data_hash="h", git_commit="c", parent_version=None, config=config,
        decision=GateDecision(passed=True, reasons=()), summary={},
    ).tags()
    assert "hunter2" not in json.dumps(params) + json.dumps(tags)
    assert params["registry.tracking_uri"] == "postgresql://mlflow:***@db.internal/mlflow"
    assert json.loads(tags["lepton.config"])["dvc"]["remote_url"] == "https://store.internal/dvc?token=***"
