"""The MLflow side: tracking runs, the model registry and the ``champion`` alias."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

import lepton
import models
from lepton.config import RegistryConfig
from lepton.history import AliasMove, Kind, new_move, previous_champion, recorded
from lepton.history import parse as parse_history
from lepton.workspace import Workspace
from models.bundle import Bundle

ALIAS = "champion"
TAG = "lepton."


@dataclass
class Champion:
    version: int
    bundle: Bundle
    tags: dict[str, str]


def tracking_uri(ws: Workspace, config: RegistryConfig) -> str:
    """MLFLOW_TRACKING_URI, else the config, else SQLite in the workspace's ``.lepton/``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri or f"sqlite:///{ws.mlflow_db}"


def connect(ws: Workspace, config: RegistryConfig):
    """An MLflow client on the workspace's tracking server, and the experiment id of its runs."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(ws, config)
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


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def champion_version(client: Any, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    # Read from the registered model: asking for a missing alias directly is an
    # INVALID_PARAMETER_VALUE error, indistinguishable from a real one.
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if _not_found(err):
            return None
        raise
    version = aliases.get(ALIAS)
    return int(version) if version is not None else None


@task(name="find-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def version_for_increment(ws: Workspace, config: RegistryConfig, increment_id: str) -> int | None:
    """The model version trained on an increment, if one was registered."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    try:
        versions = client.search_model_versions(f"name='{config.model_name}' and tags.`{TAG}increment_id` = '{increment_id}'")
    except MlflowException as err:
        if _not_found(err):
            return None
        raise
    return min((int(v.version) for v in versions), default=None)


def download_bundle(name: str, version: int, destination: Path) -> Bundle:
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination))
    return Bundle.load(Path(local) / "artifacts" / "bundle")


@task(name="load-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_champion(ws: Workspace, config: RegistryConfig) -> Champion | None:
    """The current champion from the registry (by version, so a concurrent alias move cannot mix two)."""
    client, _ = connect(ws, config)
    version = champion_version(client, config.model_name)
    if version is None:
        return None
    tags = client.get_model_version(config.model_name, str(version)).tags
    with tempfile.TemporaryDirectory(prefix="lepton-champion-") as tmp:
        bundle = download_bundle(config.model_name, version, Path(tmp))
    return Champion(version=version, bundle=bundle, tags=dict(tags))


def _requirements() -> list[str]:
    import mlflow
    import numpy
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={numpy.__version__}",
    ]


@task(name="register", cache_policy=NO_CACHE)
def register(
    ws: Workspace,
    config: RegistryConfig,
    candidate: Bundle,
    example: pd.DataFrame,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
) -> tuple[int, str]:
    """Log the candidate as a pyfunc in a tracking run and register it as a new model version.

    Returns (version, run id). The version carries the lineage tags whether or not it is promoted.
    """
    import mlflow
    from mlflow.models import infer_signature

    from lepton.serving import LeptonClassifier

    _, experiment_id = connect(ws, config)
    # The signature keeps the raw columns' own types: consumers send data as it arrives.
    features = example[candidate.preprocessor.features].head(5).reset_index(drop=True)
    signature = infer_signature(features, candidate.predict(features), params={"probabilities": False})
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.set_tags(tags)
        with tempfile.TemporaryDirectory(prefix="lepton-candidate-") as tmp:
            bundle_dir = candidate.save(Path(tmp) / "bundle")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=LeptonClassifier(),
                artifacts={"bundle": str(bundle_dir)},
                # The model's own code travels with it: loading needs mlflow, torch and pandas, not Lepton.
                code_paths=[str(Path(models.__file__).parent), str(Path(lepton.__file__).parent)],
                signature=signature,
                input_example=features,
                pip_requirements=_requirements(),
            )
    version = mlflow.register_model(info.model_uri, config.model_name, tags=tags)
    return int(version.version), run.info.run_id


@task(name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote(ws: Workspace, config: RegistryConfig, version: int, reason: str | None = None) -> AliasMove | None:
    """Move the ``champion`` alias to ``version`` and record the move in the model's history (a retry records nothing twice).

    The reason defaults to the gate's reasons tagged on the version.
    """
    client, _ = connect(ws, config)
    if reason is None:
        tags = client.get_model_version(config.model_name, str(version)).tags
        reasons = json.loads(tags.get(TAG + "gate_reasons", "[]"))
        reason = "gate passed: " + "; ".join(reasons) if reasons else "promoted"
    return move_champion(client, config.model_name, version, kind="promote", reason=reason)


@dataclass(frozen=True)
class RollbackPlan:
    """Where a rollback would move the champion, or why it cannot."""

    current: int | None
    target: int | None
    problem: str | None = None


def _current_run() -> tuple[str | None, str | None]:
    """The Prefect flow run making a move (None outside one)."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return (str(run_id), flow_run.name) if run_id else (None, None)


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return None


def champion_history(client: Any, name: str) -> list[AliasMove]:
    """Every recorded move of the champion alias, oldest first (empty for an unknown model)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as err:
        if _not_found(err):
            return []
        raise
    return parse_history(tags, ALIAS)


def move_champion(client: Any, name: str, version: int, *, kind: Kind, reason: str) -> AliasMove | None:
    """Point ``champion`` at ``version``, recording the move first; None when it already points there.

    The record is written before the alias: if the alias call fails, a retry finds the
    record as the last one and only moves the alias, so history never misses a move.
    """
    current = champion_version(client, name)
    if current == version:
        return None
    moves = champion_history(client, name)
    if recorded(moves, current, version):
        move = moves[-1]
    else:
        run_id, run_name = _current_run()
        move = new_move(
            moves, alias=ALIAS, kind=kind, from_version=current, to_version=version, reason=reason,
            flow_run_id=run_id, flow_run_name=run_name, user=_user(),
        )
        client.set_registered_model_tag(name, *move.tag())
    client.set_registered_model_alias(name, ALIAS, str(version))
    return move


def history(ws: Workspace, config: RegistryConfig) -> list[AliasMove]:
    """The champion's recorded moves for the workspace's model, oldest first."""
    client, _ = connect(ws, config)
    return champion_history(client, config.model_name)


@task(name="plan-rollback", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def plan_rollback(ws: Workspace, config: RegistryConfig, to: int | None) -> RollbackPlan:
    """The version to roll back to: ``to``, else the previous champion in the history (reads only)."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    name = config.model_name
    current = champion_version(client, name)
    target = to if to is not None else previous_champion(champion_history(client, name), current)
    if target is None:
        where = f"champion is version {current}" if current else "no champion yet"
        return RollbackPlan(current, None, f"model {name!r} has no earlier champion in its history ({where}); name a version with --to VERSION")
    try:
        client.get_model_version(name, str(target))
    except MlflowException as err:
        if _not_found(err):
            return RollbackPlan(current, None, f"model {name!r} has no version {target}")
        raise
    return RollbackPlan(current, target)


# Retrying is harmless: the target is fixed by the plan, so a second attempt moves nothing twice.
@task(name="rollback", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def rollback(ws: Workspace, config: RegistryConfig, version: int, reason: str) -> AliasMove | None:
    """Move the champion back to ``version`` and record why; None when it already is the champion."""
    client, _ = connect(ws, config)
    return move_champion(client, config.model_name, version, kind="rollback", reason=reason)


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
        if not _not_found(err):
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
            "metrics": json.loads(tags.get(TAG + "metrics", "{}")),
        }
    return info


def lineage_tags(
    *,
    increment_id: str,
    increment_file: str,
    data_hash: str,
    git_commit: str,
    parent_version: int | None,
    config: Any,
    decision: Any,
    summary: dict[str, float | None],
) -> dict[str, str]:
    """The tags that let a model version be traced to, and rebuilt from, its data and code."""
    return {
        TAG + "increment_id": increment_id,
        TAG + "increment_file": increment_file,
        TAG + "data_hash": data_hash,
        TAG + "git_commit": git_commit,
        TAG + "parent_version": str(parent_version) if parent_version is not None else "none",
        TAG + "strategy": config.strategy.name,
        TAG + "config": config.model_dump_json(),
        TAG + "gate_passed": str(decision.passed).lower(),
        TAG + "gate_reasons": json.dumps(list(decision.reasons)),
        TAG + "metrics": json.dumps({k: round(v, 6) for k, v in summary.items() if v is not None}),
    }


def config_params(config: Any) -> dict[str, Any]:
    """The config flattened to ``section.key`` params for the tracking run."""
    return {f"{section}.{k}": v for section, values in config.model_dump().items() for k, v in values.items()}


def version_tags(ws: Workspace, config: RegistryConfig, version: int) -> dict[str, str]:
    client, _ = connect(ws, config)
    return dict(client.get_model_version(config.model_name, str(version)).tags)
