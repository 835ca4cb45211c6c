"""``sync-primary``: bad input gets one line and exit 2; what it hands pg_rewind, pg_basebackup
and the standby from the config (``replication_dsn``, passwords never in argv)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agentaskit_dr.actuators.resync_plan import ResyncResult
from agentaskit_dr.cli import main
from agentaskit_dr.config import ConfigError, load_config
from agentaskit_dr.resync_command import (
    describe,
    libpq_source,
    resync_plan,
    standby_conninfo,
)
from tests.unit.test_config import SECRET, shipped, shipped_env, write  # noqa: F401


def with_databases(tmp_path: Path, *, west: dict[str, Any] | None = None,
                   east: dict[str, Any] | None = None) -> Path:
    data = shipped("watchdog.yaml")
    data["regions"]["us-west-2"]["database"].update(west or {})
    data["regions"]["us-east-1"]["database"].update(east or {})
    return write(tmp_path, data)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "soon"], "--timeout: "),
        (["--timeout", "0s"], "--timeout: must be longer than zero"),
        (["--region", "eu-central-1"], "--region: must be one of the regions"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["sync-primary", "--config", str(with_databases(tmp_path)), *args])

    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_without_control_the_missing_key_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sync-primary", "--config", str(with_databases(tmp_path)),
                 "--region", "us-east-1"])

    assert code == 2
    assert "regions.us-east-1.database.control is not set" in capsys.readouterr().err


def test_the_plan_follows_the_other_region_without_passwords_in_conninfo(
    tmp_path: Path,
) -> None:
    config = load_config(with_databases(
        tmp_path, west={"control": {"data_directory": "/var/lib/postgresql/15/main"}},
    ))

    plan = resync_plan(config, "us-west-2", 60.0)

    assert plan.primary_region == "us-east-1"
    assert plan.control.data_directory == Path("/var/lib/postgresql/15/main")
    assert plan.primary_conninfo == (
        "host=pg-replica.us-east-1.agentaskit.example port=5432 user=agentaskit_dr "
        "application_name=agentaskit-dr-us-west-2"
    )
    assert plan.rewind_source.conninfo == (
        "postgresql://agentaskit_dr@pg-replica.us-east-1.agentaskit.example:5432/postgres"
        "?sslmode=require&options=-c%20statement_timeout%3D0"
    )
    assert plan.rewind_source.password == SECRET
    assert plan.clone_source.conninfo.endswith("?sslmode=require")
    assert SECRET not in plan.primary_conninfo + plan.clone_source.conninfo
    assert plan.timeout == 60.0


def test_a_replication_dsn_is_what_the_standby_streams_and_clones_with(tmp_path: Path) -> None:
    replication = "host=pg-replica.us-east-1 user=replicator application_name=west"
    config = load_config(with_databases(
        tmp_path, west={"control": {"data_directory": "/pg"}},
        east={"replication_dsn": replication},
    ))

    plan = resync_plan(config, "us-west-2", 60.0)

    assert plan.primary_conninfo == replication
    assert plan.clone_source.conninfo == replication
    assert plan.clone_source.password is None
    assert "statement_timeout" in plan.rewind_source.conninfo  # pg_rewind still uses dsn


def test_a_blank_replication_dsn_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(with_databases(tmp_path, east={"replication_dsn": " "}))

    assert "regions.us-east-1.database.replication_dsn" in str(caught.value)


def test_a_password_in_the_replication_dsn_is_redacted(tmp_path: Path) -> None:
    config = load_config(with_databases(
        tmp_path, east={"replication_dsn": "host=h user=r password=hunter2"},
    ))

    assert "hunter2" not in json.dumps(config.redacted())


def test_an_inline_password_goes_to_pgpassword_not_argv() -> None:
    source = libpq_source("postgresql://u:p%40ss@db:5433/app", None, options="-c a=1")

    assert source.conninfo == "postgresql://u@db:5433/app?options=-c%20a%3D1"
    assert source.password == "p@ss"
    configured = libpq_source("postgresql://u@db/app", SecretStr("s3"))
    assert (configured.conninfo, configured.password) == ("postgresql://u@db/app", "s3")


def test_standby_conninfo_quotes_what_needs_it() -> None:
    assert standby_conninfo("postgresql://o%27neil@db/app", "us west") == (
        "host=db user='o\\'neil' application_name='agentaskit-dr-us west'"
    )


def test_the_summary_says_which_path_was_taken_and_why() -> None:
    result = ResyncResult(
        "us-west-2", "us-east-1", method="reclone",
        reclone_reason="pg_rewind: error: could not find previous WAL record at 0/3022510",
        phases={"check": 0.01, "rewind": 0.02, "reclone": 0.1}, primary_lsn="0/5000060",
        replay_lsn="0/5000060", lag_bytes=0, timeline=2,
        kept_aside="/var/lib/postgresql/15/main.before-sync-20261129T100000Z",
    )

    assert describe(result).splitlines() == [
        "us-west-2: re-cloned (pg_basebackup); streaming from us-east-1, replay lag 0 bytes "
        "at 0/5000060 (timeline 2)",
        "re-cloned because pg_rewind: error: could not find previous WAL record at 0/3022510",
        "old data directory kept at /var/lib/postgresql/15/main.before-sync-20261129T100000Z "
        "(the diverged transactions' only copy): remove it when no longer needed",
        "failover loss: not measured",
        "phases: check 0.01s, rewind 0.02s, reclone 0.10s",
    ]
    assert json.loads(json.dumps(result.to_json()))["phases"]["reclone"] == 0.1


def test_the_plan_never_prints_a_password(tmp_path: Path) -> None:
    config = load_config(with_databases(tmp_path, west={"control": {"data_directory": "/pg"}}))

    assert SECRET not in repr(resync_plan(config, "us-west-2", 60.0))


def test_the_summary_gives_the_failover_loss_read_before_the_resync() -> None:
    result = ResyncResult("us-west-2", "us-east-1", timeline=2, fork_loss={
        "lost_wal_bytes": 520, "lost_commits": 5, "fork_lsn": "0/30180B0", "old_timeline": 1,
        "last_lost_commit_at": "2026-11-29 14:38:43.396773 UTC"})

    assert describe(result).splitlines()[1] == (
        "failover loss: 520 bytes of WAL and 5 committed transaction(s) beyond the fork at "
        "0/30180B0 (timeline 1), last lost commit at 2026-11-29 14:38:43.396773 UTC")
