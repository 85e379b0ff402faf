"""Where a workspace keeps things: the versioned ``data/`` and the git-ignored ``.lepton/`` state."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

State = Literal["accepted", "rejected", "duplicate"]
Verdict = Literal["accepted", "rejected"]

LOCK_TIMEOUT_VARIABLE = "LEPTON_LOCK_TIMEOUT_SECONDS"
LOCK_TIMEOUT = 600.0  # seconds a run waits for another run's lock before giving up


def content_id(path: Path) -> str:
    """An increment's id: a hash of the file's bytes, so the same content is recognised however it is named."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def registry_key(tracking_uri: str, model_name: str) -> str:
    """Which registry and model a finished increment speaks of, without the URI (it may hold a password)."""
    return hashlib.sha256(f"{tracking_uri}\n{model_name}".encode()).hexdigest()[:16]


class WorkspaceBusy(RuntimeError):
    """Another run held a workspace lock for longer than the timeout."""


class Attempt(BaseModel):
    """One validation of an increment: its verdict, and why it was rejected.

    No timestamp: the manifest is versioned with the data, and the same data must give the
    same version (the run's time is in its Prefect flow run and the log).
    """

    verdict: Verdict
    reasons: list[str] = []


class IncrementRecord(BaseModel):
    """One landed increment, as the manifest in ``data/`` remembers it."""

    id: str
    file: str  # relative to the workspace root
    source: str  # file name it arrived under
    state: State
    reasons: list[str] = []  # of the latest attempt
    duplicate_of: str | None = None
    attempts: list[Attempt] = []  # oldest first; empty in manifests written before attempts were kept

    def attempted(self, attempt: Attempt, file: str) -> IncrementRecord:
        """This record after another validation, filed at ``file``; the earlier attempts are kept."""
        earlier = self.attempts
        if not earlier and self.state != "duplicate":  # a manifest from before attempts: its one verdict, time unknown
            earlier = [Attempt(verdict=self.state, reasons=self.reasons)]
        update = {"state": attempt.verdict, "reasons": attempt.reasons, "file": file, "attempts": [*earlier, attempt]}
        return self.model_copy(update=update)


class Manifest(BaseModel):
    """Every increment in arrival order; versioned with the data so a restore brings it back too."""

    increments: list[IncrementRecord] = []

    def find(self, increment_id: str) -> IncrementRecord | None:
        return next((r for r in self.increments if r.id == increment_id and r.state != "duplicate"), None)

    def accepted(self) -> list[IncrementRecord]:
        return [r for r in self.increments if r.state == "accepted"]


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Workspace:
        return cls(Path(path).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def increments(self) -> Path:
        return self.data / "increments"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def manifest_path(self) -> Path:
        return self.data / "manifest.json"

    @property
    def schema_path(self) -> Path:
        return self.data / "schema.json"

    @property
    def state(self) -> Path:
        """Embedded servers' state: git-ignored, never versioned."""
        return self.root / ".lepton"

    def tracking_uri(self, configured: str | None) -> str:
        """MLFLOW_TRACKING_URI, else the configured URI, else SQLite in ``.lepton/`` (no Prefect or MLflow import)."""
        return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_db(self) -> Path:
        return self.state / "mlflow.db"

    @property
    def run_log(self) -> Path:
        """Where the commands that run flows write Prefect's and the flow's log lines, kept from the terminal."""
        return self.state / "logs" / "lepton.log"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def dvc_remote(self) -> Path:
        return self.state / "dvc-remote"

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    @property
    def scratch(self) -> Path:
        """Where files are written before being renamed into place: outside ``data/``, so DVC never sees half of one."""
        return self.state / "tmp"

    @property
    def is_initialised(self) -> bool:
        return (self.root / "lepton.yaml").exists() and (self.root / ".dvc").is_dir()

    def unusable(self) -> str | None:
        """Why a run here could not version its data (checked before anything is copied in), or None."""
        if not (self.root / ".git").exists():
            return f"{self.root} is not a git repository, which DVC needs to version data/: run `lepton init {self.root} --label LABEL` again to repair it (lepton.yaml is kept)"
        return None

    @property
    def duplicates_path(self) -> Path:
        """The ledger of repeated landings (unversioned: the data itself is in data/ once)."""
        return self.state / "duplicates.jsonl"

    def note_duplicate(self, increment_id: str, source: str) -> None:
        """Append a repeated landing to the ledger; the data itself is untouched."""
        self.state.mkdir(parents=True, exist_ok=True)
        entry = {"id": increment_id, "source": source, "duplicate_of": increment_id, "at": datetime.now(timezone.utc).isoformat()}
        with self.duplicates_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def read_duplicates(self) -> list[dict[str, Any]]:
        """Every repeated landing recorded, oldest first: id, source, duplicate_of, at."""
        path = self.duplicates_path
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    @property
    def finished_dir(self) -> Path:
        """One file per increment whose run ended with the registry up to date (unversioned: it speaks of the registry)."""
        return self.state / "finished"

    def mark_finished(self, increment_id: str, registry: str) -> None:
        """Record that ``increment_id`` needs nothing more from ``registry`` (a ``registry_key``): a run of its content again is a duplicate."""
        self.write_atomically(self.finished_dir / f"{increment_id}.json", json.dumps({"registry": registry}) + "\n")

    def is_finished(self, increment_id: str, registry: str) -> bool:
        """Whether a run of ``increment_id`` ended with ``registry`` up to date (False when unknown: the flow finds out)."""
        try:
            return json.loads((self.finished_dir / f"{increment_id}.json").read_text()).get("registry") == registry
        except (OSError, ValueError, AttributeError):
            return False

    def registered_before(self, registry: str) -> int:
        """How many accepted increments a run registered in ``registry`` (a ``registry_key``), as the finished records say."""
        return sum(self.is_finished(r.id, registry) for r in self.read_manifest().accepted())

    def read_manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest()
        return Manifest.model_validate_json(self.manifest_path.read_text())

    def write_manifest(self, manifest: Manifest) -> None:
        # Deterministic bytes: the same increments give the same DVC hash.
        self.write_atomically(self.manifest_path, manifest.model_dump_json(indent=2) + "\n")

    def read_schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema_path.read_text()) if self.schema_path.exists() else None

    def declared_otherwise(self, columns: dict[str, str], task: str) -> list[str]:
        """What lepton.yaml declares (``data.columns``, ``data.task``) otherwise than the schema holds; none without one."""
        from lepton.models.declarations import declared_changes  # pure Python: no pandas on `lepton run`'s path for a duplicate

        state = self.read_schema()
        return declared_changes(state, columns, task) if state is not None else []

    def write_schema(self, schema: dict[str, Any]) -> None:
        self.write_atomically(self.schema_path, json.dumps(schema, indent=2, sort_keys=True) + "\n")

    def write_atomically(self, path: Path, text: str) -> None:
        """Replace ``path`` with ``text`` whole: a crash leaves the old file or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        partial = self.scratch / f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        # os.open with 0o666 leaves the permissions to the umask, as a plain write_text would.
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)

    @contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the workspace's lock ``name`` (``data``: data/ and DVC; ``champion``: registration and the alias).

        A file lock under ``.lepton/locks/``: the kernel releases it when its holder dies, so a
        killed run never leaves it taken. It serialises runs on one machine; across machines the
        registry's compare-and-set on the champion is what keeps two promotions apart.
        """
        from filelock import FileLock, Timeout

        wait = timeout if timeout is not None else float(os.environ.get(LOCK_TIMEOUT_VARIABLE, LOCK_TIMEOUT))
        self.locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.locks / f"{name}.lock", timeout=wait)
        try:
            lock.acquire()
        except Timeout:
            raise WorkspaceBusy(
                f"another run has held the {name!r} lock of {self.root} for more than {wait:.0f}s "
                f"({self.locks / (name + '.lock')}); try again when it has finished, or raise {LOCK_TIMEOUT_VARIABLE}"
            ) from None
        try:
            yield
        finally:
            lock.release()

