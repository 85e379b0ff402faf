"""Where a workspace keeps things: the versioned ``data/`` and the git-ignored ``.lepton/`` state."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

State = Literal["accepted", "rejected", "duplicate"]


class IncrementRecord(BaseModel):
    """One landed increment, as the manifest in ``data/`` remembers it."""

    id: str
    file: str  # relative to the workspace root
    source: str  # file name it arrived under
    state: State
    reasons: list[str] = []
    duplicate_of: str | None = None


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

    @property
    def mlflow_db(self) -> Path:
        return self.state / "mlflow.db"

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
    def is_initialised(self) -> bool:
        return (self.root / "lepton.yaml").exists() and (self.root / ".dvc").is_dir()

    def read_manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest()
        return Manifest.model_validate_json(self.manifest_path.read_text())

    def write_manifest(self, manifest: Manifest) -> None:
        # Deterministic bytes: the same increments give the same DVC hash.
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(manifest.model_dump_json(indent=2) + "\n")

    def read_schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema_path.read_text()) if self.schema_path.exists() else None

    def write_schema(self, schema: dict[str, Any]) -> None:
        self.schema_path.parent.mkdir(parents=True, exist_ok=True)
        self.schema_path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
