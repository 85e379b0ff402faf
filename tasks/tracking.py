"""The MLflow connection and what reads the registry: the tracking URI, a client and its experiment, the champion,
its recorded history, retry timing. No Prefect here, so the read-only commands answer without importing it."""

from __future__ import annotations

import os
from typing import Any

from lepton.config import RegistryConfig
from lepton.history import AliasMove
from lepton.history import parse as parse_history
from lepton.lineage import TAG, Lineage
from lepton.secrets import credentials_out_of_uri
from lepton.workspace import Workspace

ALIAS = "champion"


def tracking_uri(ws: Workspace, config: RegistryConfig) -> str:
    """MLFLOW_TRACKING_URI, else the config, else SQLite in the workspace's ``.lepton/``."""
    return ws.tracking_uri(config.tracking_uri)


def connect(ws: Workspace, config: RegistryConfig):
    """An MLflow client on the workspace's tracking server, and the experiment id of its runs."""
    import mlflow
    from mlflow import MlflowClient

    # A password in lepton.yaml's URI travels as basic auth, as one in the environment does: never in a URL an error can print.
    uri = credentials_out_of_uri(tracking_uri(ws, config), os.environ)
    if uri.startswith("sqlite:"):
        ws.state.mkdir(parents=True, exist_ok=True)
    # set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI,
    # where tracking_uri() would take them for the user's choice: the first workspace a
    # process connects to would capture every later one. Keep the environment as it was.
    exported = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    # A local store keeps artifacts next to its database, not wherever the command ran.
    location = ws.mlflow_artifacts.as_uri() if uri.startswith("sqlite:") else None
    return client, client.create_experiment(config.experiment, artifact_location=location)


def not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def champion_version(client: Any, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    # Read from the registered model: asking for a missing alias directly is an
    # INVALID_PARAMETER_VALUE error, indistinguishable from a real one.
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if not_found(err):
            return None
        raise
    version = aliases.get(ALIAS)
    return int(version) if version is not None else None


# Retry delays (seconds) for registry steps where a second attempt is harmless (reads, and moves
# that find themselves already made): they back off for a tracking server that is restarting.
BACKOFF = [2, 10]








def version_tags(ws: Workspace, config: RegistryConfig, version: int) -> dict[str, str]:
    client, _ = connect(ws, config)
    return dict(client.get_model_version(config.model_name, str(version)).tags)


def champion_history(client: Any, name: str) -> list[AliasMove]:
    """Every recorded move of the champion alias, oldest first (empty for an unknown model)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as err:
        if not_found(err):
            return []
        raise
    return parse_history(tags, ALIAS)


def history(ws: Workspace, config: RegistryConfig) -> list[AliasMove]:
    """The champion's recorded moves for the workspace's model, oldest first."""
    client, _ = connect(ws, config)
    return champion_history(client, config.model_name)


def describe(ws: Workspace, config: RegistryConfig) -> dict[str, Any]:
    """The registered model, its champion and the champion's lineage, as plain data."""
    client, _ = connect(ws, config)
    info: dict[str, Any] = {
        "model_name": config.model_name,
        "tracking_uri": tracking_uri(ws, config),
        "champion_version": None,
        "versions": 0,
        "champion": None,
    }
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{config.model_name}'")
    except MlflowException as err:
        if not not_found(err):
            raise
        versions = []
    info["versions"] = len(versions)
    version = champion_version(client, config.model_name) if versions else None
    if version is not None:
        tags = client.get_model_version(config.model_name, str(version)).tags
        info["champion_version"] = version
        info["champion"] = {
            "version": version,
            "lineage": {k[len(TAG):]: v for k, v in tags.items() if k.startswith(TAG) and not k.startswith(TAG + "metric")},
            "metrics": Lineage.from_tags(tags).metrics,
        }
    return info
