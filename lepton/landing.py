"""The landing folder: increments wait there, in arrival order, for the nightly run.

Plain file handling with no heavy imports, so ``lepton land`` is instant.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path

from lepton.config import LandingConfig
from lepton.workspace import Workspace

FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}
SUFFIXES = tuple(FORMATS)
LOCK = ".lock"


class LandingBusy(RuntimeError):
    """Another run is already working through the landing folder."""


def folder(ws: Workspace, config: LandingConfig) -> Path:
    """The landing folder: ``landing.folder`` (relative to the workspace) or ``.lepton/inbox``."""
    if config.folder:
        path = Path(config.folder).expanduser()
        return path if path.is_absolute() else ws.root / path
    return ws.state / "inbox"


def landed_name(source: str, when: datetime) -> str:
    """``<UTC arrival time>-<sanitised name>``: unique, safe in a shell, and sorts in arrival order."""
    name = Path(source).name
    stem, suffix = os.path.splitext(name)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "increment"
    return f"{when.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}-{clean[:80]}{suffix.lower()}"


_LANDED = re.compile(r"^\d{8}T\d{12}Z-(?P<name>.+)$")


def original_name(landed: str) -> str:
    """The name a file had before ``lepton land`` put its arrival time in front (unchanged for any other name)."""
    match = _LANDED.match(Path(landed).name)
    return match["name"] if match else Path(landed).name


def safe_name(name: str) -> str:
    """A file name with nothing that could reach outside the folder or confuse a shell."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "increment"
    return cleaned[:80]


def source_name(source: Path) -> str:
    """The name an increment arrived under, as the workspace records it."""
    return safe_name(original_name(source.name))


def file_problem(source: Path, *, check_format: bool = True) -> str | None:
    """Why ``source`` cannot be taken as an increment (missing, not a file, unknown format), or None.

    The flow takes a file of any format in (``check_format=False``), to reject it with the
    others and keep it in quarantine; only the landing folder refuses one at the door.
    """
    if not source.exists():
        return f"{source} does not exist"
    if not source.is_file():
        return f"{source} is not a file"
    if check_format and source.suffix.lower() not in FORMATS:
        return f"{source.name}: unsupported format {source.suffix.lower() or '(none)'}; use .csv or .parquet{unpack(source.suffix)}"
    return None


# Compressed files, and how to unpack one: they are not read compressed.
PACKED = {".gz": "gunzip", ".zip": "unzip", ".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd"}


def unpack(suffix: str) -> str:
    """For a compressed file, what to do first ('' for any other)."""
    tool = PACKED.get(suffix.lower())
    return f" (a compressed file: unpack it first, e.g. `{tool} FILE`)" if tool else ""


def land(source: Path, target_folder: Path) -> Path:
    """Copy ``source`` into the landing folder; the copy appears whole or not at all."""
    source = Path(source).expanduser()
    problem = file_problem(source)
    if problem is not None:
        raise (FileNotFoundError if not source.is_file() else ValueError)(problem)
    target_folder.mkdir(parents=True, exist_ok=True)
    target = target_folder / landed_name(source.name, datetime.now(timezone.utc))
    # Written under a hidden name and renamed: a nightly run listing the folder meanwhile
    # never sees half a file (pending() skips dot-files).
    partial = target_folder / f".{target.name}.partial"
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


_trusted: ContextVar[tuple[Path, ...]] = ContextVar("lepton_trusted_roots", default=())


@contextmanager
def trusting(*folders: Path) -> Iterator[None]:
    """Allow ``folders`` too, for flows run inside the block: a path typed at the command line is the operator's own choice."""
    token = _trusted.set((*_trusted.get(), *(Path(f).expanduser().resolve() for f in folders)))
    try:
        yield
    finally:
        _trusted.reset(token)


def roots(ws: Workspace, config: LandingConfig) -> list[Path]:
    """Where paths that arrive as deployment parameters may point: the workspace, the landing folder, ``allowed_roots``."""
    extra = [Path(r).expanduser() for r in config.allowed_roots]
    configured = [ws.root.resolve(), folder(ws, config).resolve(), *((r if r.is_absolute() else ws.root / r).resolve() for r in extra)]
    return configured + [t for t in _trusted.get() if t not in configured]


def outside_roots(path: Path, allowed: list[Path]) -> str | None:
    """Why ``path`` may not be read (it resolves, symlinks and '..' included, outside every root), or None."""
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in allowed):
        return None
    return (
        f"{path} is outside the folders increments may come from ({', '.join(map(str, allowed))}); "
        "add its folder to landing.allowed_roots in lepton.yaml to allow it"
    )


def pending(target_folder: Path) -> list[Path]:
    """Every landed file, oldest first (modification time, then name); dot-files are not increments."""
    if not target_folder.is_dir():
        return []
    files = [p for p in target_folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` could match files outside its folder (absolute, or a '..' part), or None."""
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        return f"pattern {pattern!r} leaves its folder: use a glob of names inside it, like '2026-11-*.parquet'"
    return None


def outside_all(files: list[Path], allowed: list[Path]) -> list[str]:
    """Why each of ``files`` may not be read (one that resolves, through links, outside every root); empty when all may."""
    return [problem for path in files if (problem := outside_roots(path, allowed)) is not None]


def in_folder(target_folder: Path, pattern: str = "*") -> list[Path]:
    """The increments of a backfill folder (CSV and Parquet matching ``pattern``), by name."""
    if not target_folder.is_dir():
        raise FileNotFoundError(f"{target_folder} is not a folder")
    problem = pattern_problem(pattern)
    if problem is not None:
        raise ValueError(problem)
    files = [p for p in target_folder.glob(pattern) if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


@contextmanager
def exclusive(target_folder: Path) -> Iterator[None]:
    """Hold the landing folder's lock: two runs must not take the same increment twice."""
    target_folder.mkdir(parents=True, exist_ok=True)
    with (target_folder / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LandingBusy(f"another run is already processing {target_folder}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class FolderError(ValueError):
    """A folder given as an increment that is not one: no single table in it, or images it names that are not there."""


def pack_image_folder(folder: Path, into: Path) -> Path:
    """A folder increment (one CSV, with a column of image file names relative to the folder, and the images) as one
    Parquet file with the images' bytes in that column: what the flow versions, validates and trains on.

    The column is the one whose values name image files (by suffix); every file it names must be there. The
    Parquet is written to ``into`` under the folder's name, and the folder itself is left as it was.
    """
    import pandas as pd

    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) if tables else "none"
        raise FolderError(f"{folder} is a folder: an increment folder holds one CSV of file names and labels beside its images (CSV files found: {found})")
    frame = pd.read_csv(tables[0])
    named = [c for c in frame.columns if (pd.api.types.is_object_dtype(frame[c]) or pd.api.types.is_string_dtype(frame[c])) and len(frame[c].dropna())
             and frame[c].dropna().astype(str).str.lower().str.endswith(IMAGE_SUFFIXES).mean() >= 0.95]
    if not named:
        raise FolderError(f"{tables[0].name} has no column of image file names (ending {', '.join(IMAGE_SUFFIXES)})")
    root = folder.resolve()
    for column in named:
        paths = [None if pd.isna(v) else (folder / str(v)).resolve() for v in frame[column]]
        outside = [str(v) for v, p in zip(frame[column], paths, strict=True) if p is not None and not p.is_relative_to(root)]
        if outside:
            raise FolderError(f"{tables[0].name}: column {column!r} names files outside {folder}: {', '.join(outside[:3])}")
        absent = [str(v) for v, p in zip(frame[column], paths, strict=True) if p is not None and not p.is_file()]
        if absent:
            raise FolderError(f"{tables[0].name}: {len(absent)} image file(s) named in column {column!r} are not in {folder}: {', '.join(absent[:3])}")
        frame[column] = pd.Series([None if p is None else p.read_bytes() for p in paths], dtype=object)
    into.mkdir(parents=True, exist_ok=True)
    target = into / f"{safe_name(folder.name)}.parquet"
    frame.to_parquet(target, index=False)
    return target
