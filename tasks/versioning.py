"""Data versions with DVC: the workspace's ``data/`` folder, tracked by ``data.dvc``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from lepton.config import DvcConfig
from lepton.workspace import Workspace

REMOTE = "lepton"
# The whole of a .dvc/config.local that Lepton wrote for dvc.remote_url (see _ensure_remote), and nothing of the operator's.
_OVERRIDE = re.compile(rf"\['remote \"{REMOTE}\"'\]\n    url = [^\n]*\n")


def _repo(ws: Workspace):
    from dvc.repo import Repo

    repo = Repo(str(ws.root))
    # Lepton decides what to commit to git; DVC's "git add data.dvc" hints would only confuse.
    repo.scm_context.quiet = True
    return repo


def _ensure_remote(ws: Workspace, config: DvcConfig) -> None:
    """Point the workspace's remote where this run's configuration says: ``dvc.remote_url``, or the default.

    The committed ``.dvc/config`` keeps the default (a folder under ``.lepton/``);
    an override goes to ``.dvc/config.local``, which DVC reads last and git ignores. With
    none, the override Lepton wrote goes: a `--set dvc.remote_url=...` for one run stayed,
    and every later run pushed there (a file of the operator's own is left alone).
    """
    local = ws.root / ".dvc" / "config.local"
    current = local.read_text() if local.exists() else None
    if not config.remote_url:
        if current is not None and _OVERRIDE.fullmatch(current):
            local.unlink()
        return
    wanted = f"['remote \"{REMOTE}\"']\n    url = {config.remote_url}\n"
    if current != wanted:
        local.write_text(wanted)


def clear_broken_lock(ws: Workspace) -> bool:
    """Remove DVC's ``.dvc/tmp/rwlock`` when a killed DVC left it unreadable; True when it did.

    What a killed DVC leaves: its repo lock (``.dvc/tmp/lock``) is an fcntl lock the kernel frees
    with the process, and rwlock entries of dead PIDs DVC removes itself, with a warning. Only an
    rwlock file cut off mid-write stops every later command ("rwlock is corrupted"). Called
    under the workspace's data lock, so no other Lepton DVC command is running.
    """
    path = ws.root / ".dvc" / "tmp" / "rwlock"
    try:
        text = path.read_text()
        if text.strip():
            json.loads(text)
        return False
    except FileNotFoundError:
        return False
    except (json.JSONDecodeError, UnicodeDecodeError):
        path.unlink(missing_ok=True)
        return True


def version(ws: Workspace, config: DvcConfig) -> str:
    """``dvc add data`` (and push): returns the ``.dir`` hash that identifies this data version.

    Under the workspace's data lock: DVC fails outright when another DVC command holds the repo.
    Both steps are idempotent: the same data/ gives the same hash, and a push sends only what is missing.
    """
    with ws.lock("data"):
        _ensure_remote(ws, config)
        clear_broken_lock(ws)
        with _repo(ws) as repo:
            stages = repo.add(str(ws.data))
            digest = stages[0].outs[0].hash_info.value
            if config.push:
                try:
                    repo.push(targets=[str(ws.root / "data.dvc")], remote=REMOTE)
                except Exception as err:
                    where = config.remote_url or "the default, .lepton/dvc-remote"
                    raise RuntimeError(f"could not push data/ to the DVC remote (dvc.remote_url: {where}): {err}") from err
    return digest


# Retried with backoff: a remote that is briefly unreachable, or a DVC command run by hand meanwhile.
@task(name="version-data", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30])
def version_data(ws: Workspace, config: DvcConfig) -> str:
    """Record the current ``data/`` as a DVC version and push it; safe to repeat."""
    return version(ws, config)


def current_hash(ws: Workspace) -> str | None:
    """The data version ``data.dvc`` points at."""
    path = ws.root / "data.dvc"
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


class DataUnavailable(RuntimeError):
    """A data version that neither the cache nor the remote holds in full: nothing was changed."""


def missing_objects(repo, digest: str) -> list[str]:
    """The objects of data version ``digest`` (its ``.dir`` listing and every file) that neither the cache nor the remote has.

    Reads only: a restore checks this before it touches ``data.dvc`` or ``data/``.
    """
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    cache = repo.cache.local
    try:
        remote = repo.cloud.get_remote_odb(REMOTE, hash_name="md5")
    except Exception:  # no remote configured, or one that cannot be reached: only the cache counts
        remote = None

    def found(oids: list[str]) -> set[str]:
        here = {oid for oid in oids if cache.exists(oid)}
        rest = [oid for oid in oids if oid not in here]
        if rest and remote is not None:
            try:
                here |= set(remote.oids_exist(rest))
            except Exception:
                pass
        return here

    if digest not in found([digest]):
        return [digest]
    listing = cache if cache.exists(digest) else remote
    try:
        tree = Tree.load(listing, HashInfo("md5", digest))
    except Exception:
        return [digest]
    oids = sorted({info.value for _, (_, info) in tree.iteritems() if info is not None and info.value})
    have = found(oids)
    return [oid for oid in oids if oid not in have]


def restore(ws: Workspace, digest: str, config: DvcConfig) -> None:
    """Make ``data/`` exactly the version ``digest``, from the cache or else the remote.

    Checked first: when any of its objects is in neither, ``DataUnavailable`` is raised and
    ``data.dvc`` and ``data/`` are left exactly as they were (a half restore once deleted data/).
    """
    with ws.lock("data"):
        _ensure_remote(ws, config)
        clear_broken_lock(ws)
        pointer = ws.root / "data.dvc"
        with _repo(ws) as repo:
            lost = missing_objects(repo, digest)
            if lost:
                raise DataUnavailable(
                    f"data version {digest} is not available: {len(lost)} object(s) are in neither the DVC cache nor "
                    f"the remote {REMOTE!r} (first: {lost[0]}); data/ and data.dvc are unchanged"
                )
        before = pointer.read_bytes() if pointer.exists() else None
        ws.write_atomically(pointer, yaml.safe_dump({"outs": [{"md5": digest, "hash": "md5", "path": "data"}]}, sort_keys=False))
        try:
            with _repo(ws) as repo:
                repo.pull(targets=[str(pointer)], remote=REMOTE, force=True)
                # Re-adding rewrites data.dvc with size and file count, as `dvc add` leaves it.
                repo.add(str(ws.data))
        except BaseException:
            # The pointer goes back to what data/ still is: a failed restore must not leave it naming other data.
            if before is not None:
                ws.write_atomically(pointer, before.decode())
            raise


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def git_commit(root: Path) -> str:
    """HEAD of the workspace's git repo, with ``-dirty`` when tracked files changed; ``none`` before a first commit.

    ``data.dvc`` does not count: runs move it on purpose, and each model version names its data by ``data_hash``.
    """
    head = _git(root, "rev-parse", "HEAD")
    if head.returncode != 0:
        return "none"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)data.dvc").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


# What ``init`` creates for git to keep; .lepton/ (state) and data/ (DVC's) are ignored.
CREATED = ("lepton.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore", "data.dvc")


def commit_created(root: Path) -> str | None:
    """Commit the files ``init`` created that no commit holds yet; None when done (or nothing new), else why not.

    Uses the environment's git identity only (no guessed ``user@host``); only these paths are
    committed, whatever else the user has staged.
    """
    new = [p for p in CREATED if (root / p).exists() and _git(root, "rev-parse", "--verify", "-q", f"HEAD:{p}").returncode != 0]
    if not new:
        return None
    added = _git(root, "add", "--", *new)
    done = added if added.returncode != 0 else _git(
        root, "-c", "user.useConfigOnly=true", "commit", "-q", "-m", "Lepton workspace: config, DVC and its remote, data/ tracked by data.dvc", "--", *new
    )
    if done.returncode == 0:
        return None
    if "identity unknown" in done.stderr or "tell me who you are" in done.stderr or "no email was given" in done.stderr:
        return (
            "no git identity, so the workspace's files are not committed (versions are tagged git_commit none until they are): "
            'set one with `git config --global user.name "Your Name"` and `git config --global user.email you@example.com` '
            f"(or GIT_AUTHOR_NAME/EMAIL and GIT_COMMITTER_NAME/EMAIL), then `git -C {root} commit -m \"Lepton workspace\"`"
        )
    return f"the workspace's files are not committed: git said {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"


def init(ws: Workspace) -> None:
    """git and DVC in the workspace, a default local remote, and ``data/`` tracked by ``data.dvc``."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if not (ws.root / ".git").exists():
        subprocess.run(["git", "init", "-q", str(ws.root)], check=True, env=env)
    if not (ws.root / ".dvc").exists():
        from dvc.repo import Repo

        Repo.init(str(ws.root))
    config = ws.root / ".dvc" / "config"
    if f'remote "{REMOTE}"' not in config.read_text():
        # Relative to .dvc/: the remote lives with the workspace's other state in .lepton/.
        config.write_text(
            config.read_text() + f"[core]\n    remote = {REMOTE}\n    analytics = false\n"
            f"['remote \"{REMOTE}\"']\n    url = ../.lepton/dvc-remote\n"
        )
    ws.dvc_remote.mkdir(parents=True, exist_ok=True)
    ignore = ws.root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    if ".lepton/" not in lines:
        ignore.write_text("\n".join([*lines, ".lepton/"]) + "\n")
