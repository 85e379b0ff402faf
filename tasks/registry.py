"""The model registry: each candidate logged and registered with its lineage, the champion loaded, rejections recorded."""

from __future__ import annotations

import contextlib
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
from lepton.history import AliasMove, was_champion
from lepton.lineage import TAG, Lineage
from lepton.models.bundle import Bundle
from lepton.models.network import NetworkError
from lepton.secrets import credentials_out_of_uri, redact, redacted
from lepton.tasks.promotion import StaleChampion, move_champion
from lepton.tasks.tracking import BACKOFF, answer_ahead, champion_history, champion_version, connect, not_found, tracking_uri
from lepton.workspace import Workspace


def _live_version(client: Any, name: str, increment_id: str) -> Any | None:
    """The model version registered for an increment and not superseded (a re-run registers no second one)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and tags.`{TAG}increment_id` = '{increment_id}'")
    except MlflowException as err:
        if not_found(err):
            return None
        raise
    live = [v for v in versions if TAG + "superseded_by" not in v.tags]
    return max(live, key=lambda v: int(v.version), default=None)


def _log() -> Any:
    """The run's logger inside a flow, a plain one outside."""
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@dataclass
class Champion:
    version: int
    bundle: Bundle
    tags: dict[str, str]


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


@dataclass
class Source:
    """Another registered model whose feature layers start a first network (``train.transfer_from``)."""

    uri: str  # models:/NAME/VERSION, the alias resolved
    bundle: Bundle


def _retry_unless_told(task: Any, run: Any, state: Any) -> bool:
    """Retry what a registry that is away may cause, not a source that is not there (a NetworkError says why)."""
    return not isinstance(state.result(raise_on_failure=False), NetworkError)


@task(name="load-source", cache_policy=NO_CACHE, retries=len(BACKOFF), retry_delay_seconds=BACKOFF, retry_condition_fn=_retry_unless_told)
def load_source(ws: Workspace, train: Any, config: RegistryConfig) -> Source:
    """``train.transfer_from`` from its registry (``train.transfer_registry``, else the workspace's), by version."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = credentials_out_of_uri(train.transfer_registry or tracking_uri(ws, config), os.environ)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # MLflow would make an empty registry there, and then not find the model in it.
        raise NetworkError(f"train.transfer_registry={redact(uri)!r}: no registry there (no such file); point it at the other workspace's .lepton/mlflow.db")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, _, rest = train.transfer_from.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    try:
        version = client.get_model_version_by_alias(name, alias).version if alias else rest
        location = client.get_model_version_download_uri(name, str(version))
    except MlflowException as err:
        raise NetworkError(f"train.transfer_from={train.transfer_from!r}: not found in {redact(uri)} ({str(err).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory(prefix="lepton-source-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=uri)
        bundle = Bundle.load(Path(local) / "artifacts" / "bundle")
    return Source(f"models:/{name}/{version}", bundle)


def transfer_summary(transfer: dict) -> str:
    """What a first network's start was, in one line: the source, the way, and what auto measured to choose it."""
    scores = transfer.get("scores") or {}
    if not scores:
        return f"{transfer['source']}: {transfer['kept']} (train.transfer={transfer['kept']})"
    tried = ", ".join(f"{way} {value:.3f}" for way, value in scores.items())
    return f"{transfer['source']}: kept {transfer['kept']} (train.transfer=auto, scored on {transfer['rows']} rows each way did not train on: {tried})"


def check_requirements_ahead() -> None:
    """What MLflow does once a process at its first registration, done where the process would wait otherwise (the
    warm worker before it serves runs; a run while its rival trains): it checks a version's pinned requirements
    against the installed packages by mapping every installed file to its package (0.3 s here, more on a busy core)."""
    from mlflow.utils import requirements_utils

    # MLflow's own helper, kept for its next call: without it the first registration pays as it did.
    with contextlib.suppress(Exception):
        requirements_utils._init_packages_to_modules_map()


def _requirements(bundle: Bundle) -> list[str]:
    """What the version's runtime imports where it loads: Pillow too when it decodes images."""
    import mlflow
    import numpy
    import torch

    needs = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={numpy.__version__}",
    ]
    if "image" in bundle.preprocessor.kinds.values():
        import PIL

        needs.append(f"pillow=={PIL.__version__}")
    return needs


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


def consumer_signature(predictions: Any) -> Any:
    """What the model returns and the parameter it takes (``probabilities``), and no input types: consumers send raw
    columns as they arrive, and the model reads and checks them itself (``lepton.serving.input_problems``).

    MLflow holds an input to the types it was logged with, strictly: it refuses int64 in a column declared double
    (a CSV of whole numbers, as most consumer batches read), NaN in one declared long, a float NaN in one declared
    string (an empty text cell in a one-row batch), and its scoring server cannot read a CSV request for a column
    declared any type. The model's input example still names the columns.
    """
    from mlflow.models import infer_signature

    return infer_signature(None, predictions, params={"probabilities": False})


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
    # A column declared ignore may be gone from the latest rows: it is read as missing, as the model never reads it.
    features = example.head(5).reindex(columns=candidate.preprocessor.features).reset_index(drop=True)
    signature = consumer_signature(candidate.predict(features))
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
                    code_paths=[str(package), *map(str, runtime.network_code(candidate.network, ws.root))],
                    signature=signature,
                    input_example=features,
                    pip_requirements=_requirements(candidate),
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
        version, lineage = int(found.version), Lineage.from_tags(dict(found.tags))
        if not lineage.gate_passed or was_champion(champion_history(client, name), current, version):
            return Registration(version, found.run_id, created=False, champion=current)
        try:
            move = move_champion(client, name, version, kind="promote", reason=lineage.promotion_reason, expected=lineage.parent_version)
        except StaleChampion:
            client.set_model_version_tag(name, str(version), TAG + "superseded_by", f"champion {current}")
            return None
    return Registration(version, found.run_id, created=False, champion=version, move=move)


def learnt_since(ws: Workspace, config: RegistryConfig, order: list[str], increment_id: str) -> tuple[int, str] | None:
    """(champion version, the increment it was trained on) when the champion learnt ``increment_id`` without a run of its
    own: its run stopped before registering (or its version was superseded), and a later increment's candidate learnt it
    with its own, as it learns whatever the champion has not. ``order``: the accepted increments in arrival order."""
    client, _ = connect(ws, config)
    current = champion_version(client, config.model_name)
    if current is None:
        return None
    trained_on = (client.get_model_version(config.model_name, str(current)).tags or {}).get(TAG + "increment_id")
    if trained_on in order and increment_id in order and order.index(trained_on) > order.index(increment_id):
        return current, trained_on
    return None


@task(name="keep-answers", cache_policy=NO_CACHE)
def keep_answers(ws: Workspace, config: RegistryConfig) -> None:
    """``lepton status`` and ``history``'s answers for the registry as this run leaves it (a failure costs only their speed)."""
    try:
        answer_ahead(ws, config)
    except Exception as err:  # noqa: BLE001 - the run's outcome stands; status asks the registry itself
        _log().warning("could not keep the answers of lepton status and history: %s", err)


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
    transfer: dict | None = None,
    training: str | None = None,
    left_out: list[str] | tuple[str, ...] = (),
    new_network: bool = False,
) -> Lineage:
    """The lineage of a candidate: its data and code, its parent, the configuration (credentials masked) and the gate's verdict."""
    return Lineage(
        increment_id=increment_id, increment_file=increment_file, data_hash=data_hash, git_commit=git_commit,
        parent_version=parent_version, strategy=config.strategy.name, config=redacted(config.model_dump(mode="json")),
        gate_passed=decision.passed, gate_reasons=tuple(decision.reasons), gate_notes=tuple(decision.notes),
        metrics={k: round(v, 6) for k, v in summary.items() if v is not None},
        transferred_from=f"{transfer['source']} ({transfer['kept']})" if transfer and transfer["kept"] != "scratch" else "",
        transfer=transfer_summary(transfer) if transfer else "",
        training=training or "",
        left_out=tuple(left_out),
        new_network=new_network and parent_version is not None,
    )


def config_params(config: Any) -> dict[str, Any]:
    """The config flattened to ``section.key`` params for the tracking run, credentials masked."""
    return {f"{section}.{k}": v for section, values in redacted(config.model_dump()).items() for k, v in values.items()}
