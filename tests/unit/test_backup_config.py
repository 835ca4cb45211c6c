"""The backup config's keys for base backups and restore tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.backup.restore_target import (
    RestoreRefused,
    refuse_source_datadir,
    restore_target,
)
from agentaskit_dr.backup_command import parse_target
from agentaskit_dr.config import BackupConfig

KEY = "ab" * 32


def config(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> BackupConfig:
    monkeypatch.setenv("BACKUP_TEST_KEY", KEY)
    return BackupConfig.model_validate({
        "storage": {"primary": {"url": "s3://one-bucket"}, "replica": {"url": "s3://two-bucket"}},
        "encryption": {"key_env": "BACKUP_TEST_KEY"}, **extra})


def problems(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> str:
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - pydantic's ValidationError
        config(monkeypatch, **extra)
    return str(caught.value)


def test_a_restore_target_named_production_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    text = problems(monkeypatch, restore_targets={"prod-eu": {"workdir": "/x", "port": 6000}})
    assert "restore_targets.prod-eu" in text
    assert "must not be a production environment" in text


def test_a_dsn_must_be_a_postgres_url_with_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "must be a URL like postgresql://" in problems(
        monkeypatch, postgresql={"dsn": "mysql://db:3306/x"})
    assert "holds a password and password_env" in problems(
        monkeypatch, postgresql={"dsn": "postgresql://u:pw@db/x", "password_env": "HOME"})


def test_unknown_targets_and_the_source_port_are_refused(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = config(monkeypatch, postgresql={"dsn": "postgresql://backup@127.0.0.1:5432/db"},
                    restore_targets={"staging": {"workdir": "/srv/restore", "port": 5432},
                                     "scratch": {"workdir": "/srv/scratch", "port": 6543}})

    with pytest.raises(RestoreRefused, match="configured: scratch, staging"):
        restore_target(loaded, "qa")
    with pytest.raises(RestoreRefused, match="5432 is the source server's port"):
        restore_target(loaded, "staging")
    assert restore_target(loaded, "scratch").port == 6543


def test_a_workdir_overlapping_the_source_data_directory_is_refused() -> None:
    with pytest.raises(RestoreRefused, match="overlaps the source server's data directory"):
        refuse_source_datadir("staging", Path("/var/lib/postgresql/15/main/restore"),
                              "/var/lib/postgresql/15/main")
    with pytest.raises(RestoreRefused):
        refuse_source_datadir("staging", Path("/var/lib"), "/var/lib/postgresql/15/main")
    refuse_source_datadir("staging", Path("/srv/restore"), "/var/lib/postgresql/15/main")


def test_to_takes_an_iso_time_or_an_lsn() -> None:
    assert parse_target("0/3000028") == (None, "0/3000028")
    assert parse_target("2026-11-29T12:00:00Z") == (1795953600.0, None)
    assert parse_target("2026-11-29 12:00:00") == (1795953600.0, None)
    with pytest.raises(ValueError, match="not an ISO time"):
        parse_target("yesterday")
