"""Config files backed up on change: a git commit (or a clean checkout's HEAD) and an
encrypted archive in both buckets; unchanged content makes no backup."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agentaskit_dr.appstate import jobs
from agentaskit_dr.appstate.components import collector, file_check, watch_configs
from tests.integration.appstate_harness import load, write_config
from tests.integration.aws import (  # noqa: F401 - fixtures
    aws_credentials_fixture,
    moto_process_fixture,
    moto_server_fixture,
)
from tests.integration.s3_buckets import PRIMARY, REPLICA, create_buckets, keys_in

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, env=GIT_ENV).stdout.strip()


def configs(paths: list[Path], git_dir: Path) -> dict[str, object]:
    return {"configs": {"method": "git+s3", "schedule": "on-change", "retention": "365d",
                        "paths": [str(p) for p in paths], "git_dir": str(git_dir)}}


async def test_a_change_is_committed_and_archived_and_no_change_makes_no_backup(
        moto_server: str, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    etc = tmp_path / "etc"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "watchdog.yaml").write_text("regions: {}\n")
    (etc / "conf.d" / "extra.yaml").write_text("a: 1\n")
    repo = etc / "configs-git"  # inside the watched directory: never backed up itself
    _, config = load(tmp_path, moto_server, configs([etc], repo))

    first = await jobs.run_backup(config, "configs", collector(config, "configs"),
                                  evidence_dir=tmp_path)
    same = await jobs.run_backup(config, "configs", collector(config, "configs"),
                                 evidence_dir=tmp_path)
    (etc / "conf.d" / "extra.yaml").write_text("a: 2\n")
    changed = await jobs.run_backup(config, "configs", collector(config, "configs"),
                                    evidence_dir=tmp_path)

    assert (first.outcome, same.outcome, changed.outcome) == ("ok", "unchanged", "ok")
    assert same.detail == f"no change since backup {first.backup_id}"
    commits = git(repo, "log", "--format=%H").splitlines()
    assert len(commits) == 2
    assert changed.extra["source"]["git"]["commit"] == commits[0]
    mirrored = repo / "files" / str(etc / "conf.d" / "extra.yaml").lstrip("/")
    assert mirrored.read_text() == "a: 2\n"
    for bucket in (PRIMARY, REPLICA):
        ids = {key.split("/")[2] for key in await keys_in(moto_server, bucket, "appstate/")}
        assert ids == {first.backup_id, changed.backup_id}
    verified = await jobs.verify(config, "configs", file_check("configs"),
                                 evidence_dir=tmp_path)
    assert verified.extra["checks"] == {"configs.tar.gz": "OK, 2 files"}
    assert verified.extra["verified"] == [changed.backup_id]
    every = await jobs.verify(config, "configs", file_check("configs"),
                              evidence_dir=tmp_path, every=True)
    assert every.extra["verified"] == [first.backup_id, changed.backup_id]


async def test_a_clean_checkout_is_recorded_by_its_head_and_a_dirty_one_is_committed(
        moto_server: str, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    checkout = tmp_path / "deploy"
    checkout.mkdir()
    git(checkout, "init", "-q")
    (checkout / "watchdog.yaml").write_text("regions: {}\n")
    git(checkout, "add", "watchdog.yaml")
    git(checkout, "commit", "-qm", "config")
    head = git(checkout, "rev-parse", "HEAD")
    repo = tmp_path / "configs-git"
    _, config = load(tmp_path, moto_server, configs([checkout / "watchdog.yaml"], repo))

    clean = await jobs.run_backup(config, "configs", collector(config, "configs"),
                                  evidence_dir=tmp_path)
    assert clean.extra["source"]["git"] == {
        "checkouts": {str(checkout / "watchdog.yaml"): head}}
    assert not repo.exists()

    (checkout / "watchdog.yaml").write_text("regions: {west: {}}\n")  # not committed
    dirty = await jobs.run_backup(config, "configs", collector(config, "configs"),
                                  evidence_dir=tmp_path)
    assert dirty.extra["source"]["git"]["checkouts"] == {}
    assert dirty.extra["source"]["git"]["commit"] == git(repo, "rev-parse", "HEAD")


async def test_cli_defaults_to_the_yaml_files_beside_the_config_and_a_missing_path_is_named(
        moto_server: str, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    (tmp_path / "watchdog.yaml").write_text("regions: {}\n")
    path = write_config(tmp_path, moto_server, {"configs": {
        "method": "git+s3", "schedule": "on-change", "retention": "365d",
        "git_dir": "git"}})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentaskit_dr", "appstate", *args, "--config", str(path),
             "--evidence-dir", str(tmp_path / "ev")],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)})

    done = cli("backup", "configs", "--json")
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["source"]["files"]
    assert sorted(Path(name).name for name in files) == ["backup.yaml", "watchdog.yaml"]
    listed = cli("list", "configs", "--json")
    assert [item["objects"] for item in json.loads(listed.stdout)] == [1]
    verified = cli("verify", "configs")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(
        "configs: 1 backups, both buckets, every object verified (newest ")
    assert verified.stdout.endswith(": configs.tar.gz: OK, 2 files)\n")
    pruned = cli("prune", "configs", "--dry-run")
    assert pruned.stdout == "would delete 0 backups and 0 leftovers (none); keep 1\n"
    fetched = cli("fetch", "configs", "--object", "configs.tar.gz", "--to", str(tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    with tarfile.open(tmp_path / "configs.tar.gz") as tar:
        member = tar.extractfile(str(tmp_path / "watchdog.yaml").lstrip("/"))
        assert member is not None
        assert member.read() == b"regions: {}\n"

    write_config(tmp_path, moto_server, {"configs": {
        "method": "git+s3", "schedule": "on-change", "retention": "365d",
        "paths": ["missing.yaml"]}})
    failed = cli("backup", "configs")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "agentaskit-dr appstate backup configs: application_state.configs.paths: "
        f"{tmp_path / 'missing.yaml'} does not exist")


async def test_the_watcher_backs_up_each_change_and_leaves_no_evidence_for_quiet_looks(
        moto_server: str, tmp_path: Path) -> None:
    await create_buckets(moto_server)
    watched = tmp_path / "watchdog.yaml"
    watched.write_text("regions: {}\n")
    _, config = load(tmp_path, moto_server, configs([watched], tmp_path / "git"))
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_configs(
        config, config_file=None, evidence_dir=tmp_path / "ev", interval=0.05, stop=stop))

    async def backups(count: int) -> list[str]:
        for _ in range(400):
            records = await jobs.list_backups(config, "configs")
            if len(records) >= count:
                return [record.backup_id for record in records]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {count} configs backups within 20 s")

    try:
        first = await backups(1)
        await asyncio.sleep(0.3)  # several quiet looks
        watched.write_text("regions: {west: {}}\n")
        both = await backups(2)
    finally:
        stop.set()
        await watcher

    assert both[0] == first[0]
    evidence = sorted(p.name for p in (tmp_path / "ev" / "backups").glob("*.json"))
    assert evidence == sorted(f"appstate-configs-{backup_id}.json" for backup_id in both)
