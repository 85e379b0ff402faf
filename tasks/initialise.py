"""Making a directory a workspace: lepton.yaml, git, DVC with its local remote, and data/ tracked by data.dvc."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lepton.workspace import Workspace


@dataclass(frozen=True)
class Initialised:
    created: bool  # False when it already was a workspace: nothing was overwritten
    note: str | None = None  # what the operator should know (no git identity, so nothing was committed)


def initialise(ws: Workspace, label: str, name: str, settings: dict[str, Any] | None = None) -> Initialised:
    """Make ``ws`` a workspace whose label column is ``label`` and registered model ``name``; ``settings`` go into lepton.yaml."""
    import yaml

    from lepton.config import CONFIG_FILE, default_yaml, load, parse
    from lepton.tasks import versioning

    ws.root.mkdir(parents=True, exist_ok=True)
    config_path = ws.root / CONFIG_FILE
    created = not config_path.exists()
    if created:
        text = default_yaml(label, name)
        if settings:
            raw = yaml.safe_load(text)
            for section, values in settings.items():
                raw[section].update(values)
            parse(raw)  # the settings must make a valid config
            text = text.splitlines()[0] + "\n" + yaml.safe_dump(raw, sort_keys=False)
        config_path.write_text(text)
    versioning.init(ws)
    if not ws.manifest_path.exists():
        ws.write_manifest(ws.read_manifest())
    versioning.version(ws, load(ws.root).dvc)
    # Committed, so model versions name a real git commit; without a git identity init still succeeds, and says how.
    return Initialised(created, versioning.commit_created(ws.root))
