"""The MLflow connection and what reads the registry: the tracking URI, a client and its experiment, the champion,
its recorded history, retry timing. No Prefect here, so the read-only commands answer without importing it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lepton.config import RegistryConfig
from lepton.history import AliasMove
from lepton.history import parse as parse_history
from lepton.lineage import TAG, Lineage
from lepton.secrets import credentials_out_of_uri
from lepton.workspace import Workspace, registry_key

ALIAS = "champion"


def tracking_uri(ws: Workspace, config: RegistryConfig) -> str:
    """MLFLOW_TRACKING_URI, else the config, else SQLite in the workspace's ``.lepton/``."""
    return ws.tracking_uri(config.tracking_uri)


def registry_key_of(ws: Workspace, config: RegistryConfig) -> str:
    """The registry and model this workspace registers in, as ``Workspace.mark_finished`` records them."""
    return registry_key(tracking_uri(ws, config), config.model_name)


def connect(ws: Workspace, config: RegistryConfig):
    """An MLflow client on the workspace's tracking server, and the experiment id of its runs."""
    import mlflow
    from mlflow import MlflowClient

    # A password in lepton.yaml's URI travels as basic auth, as one in the environment does: never in a URL an error can print.
    uri = credentials_out_of_uri(tracking_uri(ws, config), os.environ)
    if uri.startswith("sqlite:"):
        ws.state.mkdir(parents=True, exist_ok=True)
    if uri == f"sqlite:///{ws.mlflow_db}" and ws.root not in _located:
        moved = relocate(ws)
        _located.add(ws.root)
        if moved is not None:
            logging.getLogger("lepton").warning(
                "this workspace was moved or copied from %s: its MLflow records now point at its own .lepton/mlartifacts", moved)
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


# Workspaces whose store this process has pointed at their own folder: a run connects several times, and asks once.
_located: set[Path] = set()

# Where MLflow's SQLite store keeps an absolute artifact location: each is rewritten when the workspace moves.
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "storage_location"),
              ("model_versions", "source"), ("logged_models", "artifact_location"))


def relocate(ws: Workspace) -> Path | None:
    """Point the workspace's own MLflow store at its own ``.lepton/mlartifacts`` when its records name another's (the
    workspace was moved or copied); returns the workspace it came from, or None when nothing was rewritten.

    The store records artifact locations as absolute paths: a moved workspace failed every run with "No such file or
    directory" under the old path, and a copy registered its models into the original's folder.
    """
    if not ws.mlflow_db.is_file():
        return None
    here = ws.mlflow_artifacts.as_uri()
    with contextlib.closing(sqlite3.connect(ws.mlflow_db, timeout=30, isolation_level=None)) as db:
        try:
            locations = [row[0] for row in db.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.Error:
            return None
        suffix = "/.lepton/mlartifacts"
        old = next((loc for loc in locations if isinstance(loc, str) and loc.startswith("file://") and loc.endswith(suffix) and loc != here), None)
        if old is None:
            return None
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        pairs = ((old, here), (unquote(urlparse(old).path), str(ws.mlflow_artifacts)))
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, column in _LOCATIONS:
                if table not in tables or column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    continue
                for before, after in pairs:
                    db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (after, len(before) + 1, len(before), before),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return Path(unquote(urlparse(old).path)).parent.parent


def registry_lost(registered: int, model: str) -> str:
    """What to say of a registry that holds no version of the model, where runs registered some."""
    return (f"the registry holds no version of {model!r}, though runs registered {registered} accepted increment(s) there: "
            "was its database deleted or replaced? A run then trains a new network on every accepted increment; restore "
            "the database (.lepton/mlflow.db, or the tracking server's) to keep the versions and their history")


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


def _registry_stamp(ws: Workspace, config: RegistryConfig) -> list[int] | None:
    """When the embedded SQLite registry was last written (mtime in ns, size); None for any other registry."""
    if tracking_uri(ws, config) != f"sqlite:///{ws.mlflow_db}":
        return None
    try:
        stat = ws.mlflow_db.stat()
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


CACHE_FORMAT = 2  # 2: describe holds each increment's version and verdict


def _cache_key(ws: Workspace, stamp: Any, config: RegistryConfig) -> dict[str, Any]:
    """What a kept answer must match: the database as it was read (a stamp is only taken of the workspace's own), the
    model, and the format of what an answer holds."""
    return {"stamp": stamp, "model": config.model_name, "format": CACHE_FORMAT, "root": str(ws.root)}  # a moved workspace asks again


def read_through(ws: Workspace, config: RegistryConfig, what: str, compute: Callable[[], Any], *, fresh: bool = False) -> Any:
    """``compute()``'s JSON result, kept in ``.lepton/cache/`` for as long as the embedded registry is not written.

    Importing MLflow and opening its store cost the read-only commands 1.5 s. A read leaves the
    database file as it was; every write (a run, a promotion by hand) changes its mtime, so a
    cached answer is only used while the registry is exactly as it was read. A value is kept
    only when nothing wrote during the read; a remote registry is always asked. ``fresh``:
    compute and keep it even when a kept answer is current.
    """
    stamp = _registry_stamp(ws, config)
    path = ws.state / "cache" / f"{what}.json"
    key = _cache_key(ws, stamp, config)
    if stamp is not None and not fresh:
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, dict) and kept.get("key") == key:
            return kept["value"]
    value = compute()
    if stamp is not None and _registry_stamp(ws, config) == stamp:
        try:
            ws.write_atomically(path, json.dumps({"key": key, "value": value}))
        except OSError:  # a read-only or full disk: the answer stands, uncached
            pass
    return value


def is_kept(ws: Workspace, config: RegistryConfig, what: str) -> bool:
    """Whether ``read_through`` would answer ``what`` from ``.lepton/cache/`` without asking the registry."""
    stamp = _registry_stamp(ws, config)
    if stamp is None:
        return False
    try:
        kept = json.loads((ws.state / "cache" / f"{what}.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(kept, dict) and kept.get("key") == _cache_key(ws, stamp, config)


def _moves(ws: Workspace, config: RegistryConfig) -> list[dict[str, Any]]:
    client, _ = connect(ws, config)
    return [move.model_dump(mode="json") for move in champion_history(client, config.model_name)]


def history(ws: Workspace, config: RegistryConfig) -> list[AliasMove]:
    """The champion's recorded moves for the workspace's model, oldest first."""
    return [AliasMove.model_validate(move) for move in read_through(ws, config, "history", lambda: _moves(ws, config))]


def answer_ahead(ws: Workspace, config: RegistryConfig) -> None:
    """Keep the answers of ``lepton status`` and ``history`` for the registry as a run leaves it.

    The run has MLflow loaded and its store open, so they cost it a few queries; the next
    status or history then reads them from ``.lepton/cache/`` instead of paying the import.
    """
    if _registry_stamp(ws, config) is None:
        return  # a remote registry is always asked
    read_through(ws, config, "history", lambda: _moves(ws, config), fresh=True)
    read_through(ws, config, "describe", lambda: _describe(ws, config), fresh=True)


def describe(ws: Workspace, config: RegistryConfig) -> dict[str, Any]:
    """The registered model, its champion and the champion's lineage, as plain data (cached while the registry is unchanged)."""
    return read_through(ws, config, "describe", lambda: _describe(ws, config))


def _describe(ws: Workspace, config: RegistryConfig) -> dict[str, Any]:
    client, _ = connect(ws, config)
    info: dict[str, Any] = {
        "model_name": config.model_name,
        "tracking_uri": tracking_uri(ws, config),
        "champion_version": None,
        "versions": 0,
        "champion": None,
        "verdicts": {},
    }
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{config.model_name}'")
    except MlflowException as err:
        if not not_found(err):
            raise
        versions = []
    info["versions"] = len(versions)
    # Each increment's version and the gate's verdict on it (the last registered, where a run trained it again).
    verdicts: dict[str, dict[str, Any]] = {}
    for v in sorted(versions, key=lambda v: int(v.version)):
        increment = (v.tags or {}).get(TAG + "increment_id")
        if increment:
            verdicts[increment] = {"version": int(v.version), "gate_passed": (v.tags or {}).get(TAG + "gate_passed") == "true"}
    info["verdicts"] = verdicts
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
