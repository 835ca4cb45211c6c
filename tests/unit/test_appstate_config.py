"""The application_state keys of the backup config: each bad value is named by its field;
secrets are only named at load time and read when a job runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentaskit_dr.appstate.jobs import plan_prune
from agentaskit_dr.appstate.record import AppStateRecord, StoredObject, backup_id_time
from agentaskit_dr.config import load_backup_config
from agentaskit_dr.config._appstate import SecretUnavailable
from tests.unit.test_config import (
    Edit,
    config_error,
    fields_of,
    shipped,
    shipped_env,  # noqa: F401 - autouse fixture
    write,
)


def state(data: dict[str, Any], item: str) -> dict[str, Any]:
    section: dict[str, Any] = data["application_state"][item]
    return section


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: state(d, "redis").update(url="http://cache:6379"),
         "application_state.redis.url"),
        (lambda d: state(d, "redis").update(url="redis://cache"), "application_state.redis.url"),
        (lambda d: state(d, "redis").update(url="redis://:pw@cache:6379/0"),
         "application_state.redis.url"),
        (lambda d: state(d, "redis").update(password_env="A", password_file="f"),
         "application_state.redis.password_file"),
        (lambda d: state(d, "redis").update(password_env="not a name"),
         "application_state.redis.password_env"),
        (lambda d: state(d, "secrets").update(vault_addr="https://vault:8200"),
         "application_state.secrets.token_env"),
        (lambda d: state(d, "secrets").update(vault_addr="vault:8200", token_env="T"),
         "application_state.secrets.vault_addr"),
        (lambda d: state(d, "secrets").update(vault_addr="https://v:8200", token_env="T",
                                              ca_file="/nonexistent/ca.pem"),
         "application_state.secrets.ca_file"),
        (lambda d: state(d, "configs").update(paths="not-a-list"),
         "application_state.configs.paths"),
    ],
)
def test_each_application_state_rule(tmp_path: Path, edit: Edit, field: str) -> None:
    assert fields_of(config_error(tmp_path, edit, "backup.yaml").problems) == [field]


def test_a_token_env_that_is_not_set_loads_and_fails_only_when_the_job_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN_FOR_TEST", raising=False)
    data = shipped("backup.yaml")
    state(data, "secrets").update(vault_addr="https://vault:8200",
                                  token_env="VAULT_TOKEN_FOR_TEST")
    config = load_backup_config(write(tmp_path, data, "backup.yaml"))

    with pytest.raises(SecretUnavailable, match=r"application_state\.secrets\.token_env: "
                       "environment variable VAULT_TOKEN_FOR_TEST is not set"):
        config.application_state.secrets.token()
    monkeypatch.setenv("VAULT_TOKEN_FOR_TEST", "hvs.x")
    assert config.application_state.secrets.token() == "hvs.x"
    assert "hvs.x" not in repr(config.redacted())


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    data = shipped("backup.yaml")
    state(data, "configs").update(paths=["watchdog.yaml"], git_dir="configs-git")
    state(data, "redis").update(url="redis://cache:6379/0", data_dir="redis-data")

    config = load_backup_config(write(tmp_path, data, "backup.yaml")).application_state

    assert config.configs.paths == (tmp_path / "watchdog.yaml",)
    assert config.configs.git_dir == tmp_path / "configs-git"
    assert config.redis.data_dir == tmp_path / "redis-data"


def record(backup_id: str, finished_at: float) -> AppStateRecord:
    return AppStateRecord("redis", backup_id, finished_at - 5, finished_at, "k1",
                          (StoredObject("dump.rdb", 10, "a" * 64, 5, "b" * 64),))


def test_prune_plan_keeps_the_newest_even_when_every_backup_expired() -> None:
    day = 86400.0
    records = [record("20261101T000000Z-aaaa", 0.0), record("20261102T000000Z-bbbb", day)]

    plan = plan_prune(records, [], retention=7 * day, now=30 * day)

    assert (plan.delete, plan.keep) == (["20261101T000000Z-aaaa"], ["20261102T000000Z-bbbb"])


def test_leftovers_of_a_dead_job_go_after_a_day() -> None:
    now = backup_id_time("20261129T120000Z-0000")
    assert now is not None
    plan = plan_prune([], ["20261128T110000Z-dead", "20261129T110000Z-busy"],
                      retention=3600.0, now=now)

    assert plan.leftovers == ["20261128T110000Z-dead"]


def test_records_round_trip_through_json() -> None:
    original = record("20261129T120000Z-abcd", 1000.0)
    assert AppStateRecord.from_json(original.to_json()) == original
