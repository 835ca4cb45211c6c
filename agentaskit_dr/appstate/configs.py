"""Configs: the configured files, on change, as a git commit and an encrypted archive.

The content hash (SHA-256 over each file's path and SHA-256) is compared with the newest
backup's record: unchanged means no backup. A change is recorded in git: a path inside a
clean git checkout is recorded by that checkout's ``HEAD``; any other path is copied into
``configs.git_dir`` (a local repository, created if missing) and committed there. Then a
``tar.gz`` of the files goes to both buckets, encrypted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.appstate.jobs import Collected, Unchanged
from agentaskit_dr.appstate.objects import AppStateDamaged, one_piece, read_catalog, upload
from agentaskit_dr.appstate.record import AppStateRecord, object_key

if TYPE_CHECKING:
    from agentaskit_dr.backup.crypto import KeyRing
    from agentaskit_dr.backup.store import BackupStore
    from agentaskit_dr.config._backup import ConfigsStateBackup

ARCHIVE_NAME = "configs.tar.gz"
_MIRROR = "files"
_GIT_ENV = {"GIT_AUTHOR_NAME": "agentaskit-dr", "GIT_AUTHOR_EMAIL": "agentaskit-dr@localhost",
            "GIT_COMMITTER_NAME": "agentaskit-dr",
            "GIT_COMMITTER_EMAIL": "agentaskit-dr@localhost"}


class ConfigsError(ValueError):
    """A configured path cannot be read, or git refused; the message names it."""


def config_paths(settings: ConfigsStateBackup, config_file: Path | None) -> list[Path]:
    """``configs.paths``, or the YAML files beside the backup config."""
    if settings.paths:
        return [path.absolute() for path in settings.paths]
    if config_file is None:
        raise ConfigsError("application_state.configs.paths: empty, and no config file to "
                           "take the default from")
    folder = config_file.absolute().parent
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def gather(paths: list[Path], skip: Path | None = None) -> dict[Path, str]:
    """Every file under ``paths`` and its SHA-256; ``.git`` directories and ``skip`` (our
    own repository, when it sits inside a watched directory) are left out."""
    files: dict[Path, str] = {}
    for path in paths:
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts
                     and (skip is None or skip not in p.parents)]
        elif path.is_file():
            found = [path]
        else:
            raise ConfigsError(f"application_state.configs.paths: {path} does not exist")
        for item in found:
            try:
                files[item] = hashlib.sha256(item.read_bytes()).hexdigest()
            except OSError as exc:
                raise ConfigsError(f"cannot read {item}: {exc.strerror or exc}") from None
    return dict(sorted(files.items()))


def content_hash(files: dict[Path, str]) -> str:
    digest = hashlib.sha256()
    for path, sha in sorted(files.items()):
        digest.update(f"{path}\0{sha}\n".encode())
    return digest.hexdigest()


def _git(*args: str, cwd: Path) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, **_GIT_ENV}, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigsError(f"git {args[0]} in {cwd}: {exc}") from None
    if done.returncode != 0:
        raise ConfigsError(f"git {args[0]} in {cwd}: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def clean_checkout_head(path: Path) -> str | None:
    """``HEAD`` of the git checkout holding ``path`` if the path is tracked and clean there;
    None when it is not in a checkout, untracked, or modified."""
    folder = path if path.is_dir() else path.parent
    try:
        top = _git("rev-parse", "--show-toplevel", cwd=folder)
        if _git("status", "--porcelain", "--untracked-files=all", "--", str(path), cwd=folder):
            return None
        if not _git("ls-files", "--", str(path), cwd=folder):
            return None
        return _git("rev-parse", "HEAD", cwd=Path(top))
    except ConfigsError:
        return None


def commit_to_repository(git_dir: Path, files: dict[Path, str], message: str) -> str:
    """Mirror ``files`` under ``<git_dir>/files/<absolute path>`` and commit; the commit."""
    if not (git_dir / ".git").is_dir():
        git_dir.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", cwd=git_dir)
    mirror = git_dir / _MIRROR
    shutil.rmtree(mirror, ignore_errors=True)
    for path in files:
        target = mirror / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    _git("add", "-A", cwd=git_dir)
    if _git("status", "--porcelain", cwd=git_dir):
        _git("commit", "-q", "-m", message, cwd=git_dir)
    return _git("rev-parse", "HEAD", cwd=git_dir)


def record_in_git(paths: list[Path], files: dict[Path, str], git_dir: Path,
                  message: str) -> dict[str, Any]:
    """Checkout HEADs for clean checkouts; a commit in ``git_dir`` for the rest."""
    checkouts: dict[str, str] = {}
    loose: dict[Path, str] = {}
    for path in paths:
        head = clean_checkout_head(path)
        under = {f: s for f, s in files.items() if f == path or path in f.parents}
        if head is not None:
            checkouts[str(path)] = head
        else:
            loose.update(under)
    git: dict[str, Any] = {"checkouts": checkouts}
    if loose:
        git["git_dir"] = str(git_dir)
        git["commit"] = commit_to_repository(git_dir, loose, message)
    return git


def archive(files: dict[Path, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path).lstrip("/"), recursive=False)
    return buffer.getvalue()


async def collect_configs(store: BackupStore, keyring: KeyRing, backup_id: str, workdir: Path,
                          *, settings: ConfigsStateBackup, config_file: Path | None) -> Collected:
    """Back up the config files if their content changed since the newest backup."""
    paths = config_paths(settings, config_file)
    files = await asyncio.to_thread(gather, paths, settings.git_dir.absolute())
    digest = content_hash(files)
    records = (await read_catalog(store, keyring, "configs")).records
    if records and records[-1].source.get("content_sha256") == digest:
        raise Unchanged(f"no change since backup {records[-1].backup_id}")
    message = f"agentaskit-dr configs backup {backup_id}: {len(files)} files"
    git = await asyncio.to_thread(record_in_git, paths, files, settings.git_dir, message)
    data = await asyncio.to_thread(archive, files)
    item = await upload(store, keyring, object_key("configs", backup_id, ARCHIVE_NAME),
                        ARCHIVE_NAME, one_piece(data))
    return Collected(
        objects=[item], checks={ARCHIVE_NAME: f"OK, {len(files)} files"},
        source={"paths": [str(p) for p in paths], "content_sha256": digest, "git": git,
                "files": {str(path): sha for path, sha in files.items()}})


def _check_archive(path: Path, expected: dict[str, str]) -> str:
    found: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    found["/" + member.name] = hashlib.sha256(handle.read()).hexdigest()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AppStateDamaged(f"{ARCHIVE_NAME}: not a gzip tar: {exc}") from None
    for name, sha in expected.items():
        if found.get(name) != sha:
            raise AppStateDamaged(f"{ARCHIVE_NAME}: {name} missing or differs from the record")
    return f"OK, {len(expected)} files"


async def check_configs_files(record: AppStateRecord, files: dict[str, Path],
                              workdir: Path) -> dict[str, str]:
    expected = dict(record.source.get("files", {}))
    return {ARCHIVE_NAME: await asyncio.to_thread(_check_archive, files[ARCHIVE_NAME], expected)}
