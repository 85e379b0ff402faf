"""The MLflow side: tracking runs, the model registry and the ``champion`` alias."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton import runtime
from lepton.config import RegistryConfig
from lepton.faults import checkpoint
from lepton.history import AliasMove, Kind, new_move, previous_champion, recorded, unapplied, was_champion
from lepton.history import parse as parse_history
from lepton.lineage import TAG, Lineage
from lepton.models.bundle import Bundle
from lepton.secrets import redacted
from lepton.workspace import Workspace

ALIAS = "champion"


@dataclass
class Champion:
    version: int
    bundle: Bundle
    tags: dict[str, str]


def tracking_uri(ws: Workspace, config: RegistryConfig) -> str:
    """MLFLOW_TRACKING_URI, else the config, else SQLite in the workspace's ``.lepton/``."""
    return ws.tracking_uri(config.tracking_uri)


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


# Retry delays (seconds) for registry steps where a second attempt is harmless (reads, and moves
# that find themselves already made): they back off for a tracking server that is restarting.
BACKOFF = [2, 10]


def _live_version(client: Any, name: str, increment_id: str) -> Any | None:
    """The model version registered for an increment and not superseded (a re-run registers no second one)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and tags.`{TAG}increment_id` = '{increment_id}'")
    except MlflowException as err:
        if _not_found(err):
            return None
        raise
    live = [v for v in versions if TAG + "superseded_by" not in v.tags]
    return max(live, key=lambda v: int(v.version), default=None)


@task(name="find-version", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def version_for_increment(ws: Workspace, config: RegistryConfig, increment_id: str) -> int | None:
    """The model version trained on an increment, if one was registered."""
    client, _ = connect(ws, config)
    found = _live_version(client, config.model_name, increment_id)
    return int(found.version) if found is not None else None


def download_bundle(name: str, version: int, destination: Path) -> Bundle:
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(destination))
    return Bundle.load(Path(local) / "artifacts" / "bundle")


@task(name="load-champion", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
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


class StaleChampion(RuntimeError):
    """The champion is no longer the version a candidate was trained from and gated against."""

    def __init__(self, expected: int | None, current: int | None):
        self.expected, self.current = expected, current
        super().__init__(
            f"the champion is version {current}, not version {expected} that the candidate was trained from: "
            "it moved while this run was training"
        )


@dataclass(frozen=True)
class Registration:
    """What ``register`` did: registered a version (and promoted it), found one another run registered, or nothing (stale)."""

    version: int | None  # None: nothing registered, the champion moved (``champion`` says to what)
    run_id: str | None
    created: bool  # False: another run had already registered this increment as ``version``
    champion: int | None  # the champion once register returned
    move: AliasMove | None = None

    @property
    def stale(self) -> bool:
        return self.version is None


def _log() -> Any:
    """The run's logger inside a flow, a plain one outside."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _end_abandoned_runs(client: Any, experiment_id: str, increment_id: str) -> None:
    """Mark KILLED the tracking runs of this increment still RUNNING: their process died mid-registration.

    Called under the champion lock, which every registration holds from its run's start to its end,
    so no live registration of this workspace can be among them.
    """
    runs = client.search_runs([experiment_id], f"tags.`{TAG}increment_id` = '{increment_id}' and attributes.status = 'RUNNING'")
    if runs:
        _log().warning("marking %d tracking run(s) of increment %s KILLED: their process died while registering", len(runs), increment_id)
    for run in runs:
        client.set_terminated(run.info.run_id, status="KILLED")


def consumer_signature(features: pd.DataFrame, predictions: Any) -> Any:
    """The raw columns' own types, as consumers send data as it arrives; integer columns take any value.

    MLflow refuses NaN in a column declared long, and refuses int64 in one declared double
    (it cannot "safely" convert): a column of integers that may come with gaps is neither,
    and the model's own preprocessing reads it either way.
    """
    from mlflow.models import infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    signature = infer_signature(features, predictions, params={"probabilities": False})
    integers = {c for c in features.columns if pd.api.types.is_integer_dtype(features[c]) and not pd.api.types.is_bool_dtype(features[c])}
    signature.inputs = Schema([ColSpec(AnyType(), spec.name) if spec.name in integers else spec for spec in signature.inputs.inputs])
    return signature


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
    lineage: Lineage,
    meta: dict[str, Any] | None = None,
    promote: bool = False,
) -> Registration:
    """Log the candidate as a pyfunc in a tracking run, register it, and make it champion when ``promote``.

    ``meta``: what the version's bundle records beside the candidate's own (its accuracy matrix,
    where the concept last changed); the candidate itself is not modified.

    One critical section under the workspace's champion lock, guarded by a compare-and-set: it
    registers only if no version exists yet for the increment (find-or-create, so a re-run or a
    concurrent run of the same increment registers nothing twice) and only if the champion is
    still the candidate's parent (``lepton.parent_version``); otherwise it returns a stale
    registration and writes nothing. The version carries the lineage tags whether or not it is promoted.
    """
    import mlflow

    client, experiment_id = connect(ws, config)
    name, increment_id, parent, tags = config.model_name, lineage.increment_id, lineage.parent_version, lineage.tags()
    candidate = dataclasses.replace(candidate, meta={**candidate.meta, **(meta or {})})
    features = example[candidate.preprocessor.features].head(5).reset_index(drop=True)
    signature = consumer_signature(features, candidate.predict(features))
    with ws.lock("champion"):
        existing = _live_version(client, name, increment_id)
        current = champion_version(client, name)
        if existing is not None:
            return Registration(int(existing.version), existing.run_id, created=False, champion=current)
        if current != parent:
            return Registration(None, None, created=False, champion=current)
        _end_abandoned_runs(client, experiment_id, increment_id)
        # The increment id is on the run from its first moment, for _end_abandoned_runs to find.
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
            with tempfile.TemporaryDirectory(prefix="lepton-candidate-") as tmp:
                bundle_dir = candidate.save(Path(tmp) / "bundle")
                # The model's own runtime travels with it: loading needs mlflow, torch and pandas, not Lepton.
                package = runtime.stage(Path(tmp) / "code")
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=runtime.python_model(package),
                    artifacts={"bundle": str(bundle_dir)},
                    code_paths=[str(package)],
                    signature=signature,
                    input_example=features,
                    pip_requirements=_requirements(),
                )
            # The version and its tags are one insert in the registry: it is never found without its increment id.
            version = int(mlflow.register_model(info.model_uri, name, tags=tags).version)
            checkpoint("register")
        move = None
        if promote:
            move = move_champion(client, name, version, kind="promote", reason=lineage.promotion_reason, expected=parent)
    return Registration(version, run.info.run_id, created=True, champion=version if promote else current, move=move)


# A retry is harmless: it finds the move recorded, or the alias already there.
@task(name="finish-increment", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def finish_increment(ws: Workspace, config: RegistryConfig, increment_id: str) -> Registration | None:
    """What an earlier run of an accepted increment left: None when it registered nothing (train it again).

    When it registered a version that passed the gate but died before the champion moved, the move
    is finished here (same compare-and-set as ``register``). If the champion has moved on since,
    that version is marked superseded and None is returned: the increment is trained again on the
    new champion.
    """
    client, experiment_id = connect(ws, config)
    name = config.model_name
    with ws.lock("champion"):
        _end_abandoned_runs(client, experiment_id, increment_id)
        found = _live_version(client, name, increment_id)
        current = champion_version(client, name)
        if found is None:
            return None
        version, tags = int(found.version), dict(found.tags)
        if tags.get(TAG + "gate_passed") != "true" or was_champion(champion_history(client, name), current, version):
            return Registration(version, found.run_id, created=False, champion=current)
        try:
            move = move_champion(client, name, version, kind="promote", reason=Lineage.from_tags(tags).promotion_reason, expected=Lineage.from_tags(tags).parent_version)
        except StaleChampion:
            client.set_model_version_tag(name, str(version), TAG + "superseded_by", f"champion {current}")
            return None
    return Registration(version, found.run_id, created=False, champion=version, move=move)


def _not_stale(task: Any, task_run: Any, state: Any) -> bool:
    """Retry anything but a champion that moved: trying again cannot bring it back."""
    try:
        state.result()
    except StaleChampion:
        return False
    except Exception:
        return True
    return True


@task(name="promote", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF, retry_condition_fn=_not_stale)
def promote(ws: Workspace, config: RegistryConfig, version: int, reason: str | None = None) -> AliasMove | None:
    """Move the ``champion`` alias to ``version`` if the champion is still its parent; record the move (a retry records nothing twice).

    The reason defaults to the gate's reasons tagged on the version. Raises StaleChampion when the
    champion is no longer the version's parent.
    """
    client, _ = connect(ws, config)
    tags = client.get_model_version(config.model_name, str(version)).tags
    with ws.lock("champion"):
        lineage = Lineage.from_tags(tags)
        return move_champion(
            client, config.model_name, version, kind="promote", reason=reason or lineage.promotion_reason, expected=lineage.parent_version
        )


@dataclass(frozen=True)
class RollbackPlan:
    """Where a rollback would move the champion, or why it cannot."""

    current: int | None
    target: int | None
    problem: str | None = None
    forced: str | None = None  # a promotion by hand past the gate: why the gate kept the version out


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


ANY: Any = object()  # move_champion's ``expected`` when any current champion will do (a rollback)


def move_champion(
    client: Any, name: str, version: int, *, kind: Kind, reason: str, expected: int | None = ANY, manual: bool = False,
) -> AliasMove | None:
    """Point ``champion`` at ``version``, recording the move first; None when it already points there.

    Compare-and-set: with ``expected``, raises StaleChampion unless the champion is that version.
    The record is written before the alias: if the alias call fails or the process dies, a
    retry finds the record as the last one and only moves the alias, so history never misses a
    move. Callers hold the workspace's champion lock.
    """
    current = champion_version(client, name)
    if current == version:
        return None
    if expected is not ANY and current != expected:
        raise StaleChampion(expected, current)
    moves = champion_history(client, name)
    if recorded(moves, current, version):
        move = moves[-1]
    else:
        stray = unapplied(moves, current)
        if stray is not None:
            # Recorded from the current champion, but its run died before the alias moved and nobody
            # finished it: that move never happened. Dropped, so the history stays a chain.
            client.delete_registered_model_tag(name, stray.tag()[0])
            moves = moves[:-1]
        run_id, run_name = _current_run()
        move = new_move(
            moves, alias=ALIAS, kind=kind, from_version=current, to_version=version, reason=reason,
            flow_run_id=run_id, flow_run_name=run_name, user=_user(), manual=manual,
        )
        client.set_registered_model_tag(name, *move.tag())
        checkpoint("promote")
    client.set_registered_model_alias(name, ALIAS, str(version))
    return move


def history(ws: Workspace, config: RegistryConfig) -> list[AliasMove]:
    """The champion's recorded moves for the workspace's model, oldest first."""
    client, _ = connect(ws, config)
    return champion_history(client, config.model_name)


@task(name="plan-rollback", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def plan_rollback(ws: Workspace, config: RegistryConfig, to: int | None) -> RollbackPlan:
    """The version to roll back to: ``to``, else the previous champion in the history (reads only)."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    name = config.model_name
    current = champion_version(client, name)
    moves = champion_history(client, name)
    target = to if to is not None else previous_champion(moves, current)
    if target is None:
        where = f"champion is version {current}" if current else "no champion yet"
        return RollbackPlan(current, None, f"model {name!r} has no earlier champion in its history ({where}); name a former champion with --to VERSION")
    try:
        client.get_model_version(name, str(target))
    except MlflowException as err:
        if _not_found(err):
            return RollbackPlan(current, None, f"model {name!r} has no version {target}")
        raise
    if not was_champion(moves, current, target):
        # Going back is to a model that served before; anything else is a promotion, said as one.
        return RollbackPlan(
            current, None,
            f"version {target} of {name!r} was never champion: a rollback goes back to a former champion only; "
            f"to make it champion, `lepton promote {target} --reason TEXT`",
        )
    return RollbackPlan(current, target)


@task(name="plan-promotion", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def plan_promotion(ws: Workspace, config: RegistryConfig, version: int, force: bool = False) -> RollbackPlan:
    """Whether ``version`` may be promoted by hand: it exists, and passed the gate unless ``force`` (reads only)."""
    from mlflow.exceptions import MlflowException

    client, _ = connect(ws, config)
    name = config.model_name
    current = champion_version(client, name)
    try:
        tags = client.get_model_version(name, str(version)).tags
    except MlflowException as err:
        if _not_found(err):
            return RollbackPlan(current, None, f"model {name!r} has no version {version}")
        raise
    if tags.get(TAG + "gate_passed") == "true":
        return RollbackPlan(current, version)
    reasons = "; ".join(json.loads(tags.get(TAG + "gate_reasons", "[]"))) or "no gate verdict recorded"
    if not force:
        return RollbackPlan(current, None, f"version {version} of {name!r} was kept out by the gate ({reasons}); add --force to promote it anyway")
    return RollbackPlan(current, version, forced=reasons)


# Retrying is harmless: the target is fixed by the plan, so a second attempt moves nothing twice.
@task(name="promote-by-hand", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote_by_hand(ws: Workspace, config: RegistryConfig, version: int, reason: str) -> AliasMove | None:
    """Make ``version`` champion by an operator's decision, recorded as a manual promotion; None when it already is."""
    client, _ = connect(ws, config)
    with ws.lock("champion"):
        return move_champion(client, config.model_name, version, kind="promote", reason=reason, manual=True)


@task(name="record-rejection", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF)
def record_rejection(ws: Workspace, config: RegistryConfig, increment_id: str, file: str, reasons: list[str]) -> int | None:
    """A finished tracking run (no model) with a rejected increment's verdict and reasons; returns the champion version.

    Users of the model look in MLflow: the run, tagged with the increment id, tells them why
    an increment never reached a model. One run per attempt: a retried rejection adds another.
    """
    client, experiment_id = connect(ws, config)
    text = json.dumps(reasons)
    if len(text) > 5000:  # a tag value's limit: the first reasons, shortened (the quarantine keeps them all)
        text = json.dumps([r[:300] + ("..." if len(r) > 300 else "") for r in reasons[:10]])
    tags = {
        TAG + "increment_id": increment_id, TAG + "increment_file": file, TAG + "verdict": "rejected",
        TAG + "reasons": text, "mlflow.runName": f"increment-{increment_id}-rejected",
    }
    run = client.create_run(experiment_id, tags=tags)
    client.set_terminated(run.info.run_id, status="FINISHED")
    return champion_version(client, config.model_name)


# Retrying is harmless: the target is fixed by the plan, so a second attempt moves nothing twice.
@task(name="rollback", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def rollback(ws: Workspace, config: RegistryConfig, version: int, reason: str) -> AliasMove | None:
    """Move the champion back to ``version`` and record why; None when it already is the champion."""
    client, _ = connect(ws, config)
    with ws.lock("champion"):
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


def lineage_of(
    *,
    increment_id: str,
    increment_file: str,
    data_hash: str,
    git_commit: str,
    parent_version: int | None,
    config: Any,
    decision: Any,
    summary: dict[str, float | None],
) -> Lineage:
    """The lineage of a candidate: its data and code, its parent, the configuration (credentials masked) and the gate's verdict."""
    return Lineage(
        increment_id=increment_id, increment_file=increment_file, data_hash=data_hash, git_commit=git_commit,
        parent_version=parent_version, strategy=config.strategy.name, config=redacted(config.model_dump(mode="json")),
        gate_passed=decision.passed, gate_reasons=tuple(decision.reasons),
        metrics={k: round(v, 6) for k, v in summary.items() if v is not None},
    )


def config_params(config: Any) -> dict[str, Any]:
    """The config flattened to ``section.key`` params for the tracking run, credentials masked."""
    return {f"{section}.{k}": v for section, values in redacted(config.model_dump()).items() for k, v in values.items()}


def version_tags(ws: Workspace, config: RegistryConfig, version: int) -> dict[str, str]:
    client, _ = connect(ws, config)
    return dict(client.get_model_version(config.model_name, str(version)).tags)
