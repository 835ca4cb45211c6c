"""Configuration: the shipped files load, a bad file is refused with one clear line per
problem, and secrets never show up in anything printable."""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentaskit_dr.config import (
    BackupConfig,
    ConfigError,
    format_duration,
    load_backup_config,
    load_config,
    looks_like_backup,
    parse_duration,
    parse_size,
)
from agentaskit_dr.core import Thresholds

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SECRET = "s3cr3t-Pa55:w@rd/x"  # URL-special characters on purpose
BACKUP_KEY_HEX = "0f" * 32
SHIPPED_ENV = {
    "AGENTASKIT_DR_WEST_DB_PASSWORD": SECRET,
    "AGENTASKIT_DR_EAST_DB_PASSWORD": SECRET,
    "AGENTASKIT_DR_LOCK_PASSWORD": SECRET,
    "AGENTASKIT_DR_BACKUP_KEY": BACKUP_KEY_HEX,
}
Edit = Callable[[dict[str, Any]], object]


@pytest.fixture(autouse=True)
def shipped_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SHIPPED_ENV.items():
        monkeypatch.setenv(name, value)


def shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIGS / name).read_text())
    return data


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "watchdog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(tmp_path: Path, edit: Edit, name: str = "watchdog.yaml") -> ConfigError:
    """The ConfigError from loading the shipped ``name`` after ``edit``."""
    data = shipped(name)
    edit(data)
    load = load_config if name == "watchdog.yaml" else load_backup_config
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, data, name))
    return caught.value


def problems_of(tmp_path: Path, edit: Edit) -> list[str]:
    return config_error(tmp_path, edit).problems


def fields_of(problems: list[str]) -> list[str]:
    return [problem.split(":")[0] for problem in problems]


def west_db(data: dict[str, Any]) -> dict[str, Any]:
    database: dict[str, Any] = data["regions"]["us-west-2"]["database"]
    return database


# ---------------------------------------------------------------- shipped files


def test_shipped_watchdog_config_loads_with_the_plans_production_defaults() -> None:
    config = load_config(CONFIGS / "watchdog.yaml")

    assert (config.primary_region, config.secondary_region) == ("us-west-2", "us-east-1")
    # With peers and a witness, self-fencing defaults to 0.75 x the budget: 120 s minus
    # staleness 12 s, two jittered intervals 11 s and one timeout 2 s.
    assert config.core_thresholds() == Thresholds(
        region_unhealthy=300.0, db_unreachable=120.0, recovery=30.0, retry_backoff=10.0,
        fence_after=71.25,
    )
    assert (config.probe.interval, config.probe.timeout, config.lock.ttl) == (5.0, 2.0, 15.0)
    assert config.promotion.max_lag_bytes == 16 * 2**20
    for region in config.regions.values():
        assert all(".example/" in url for url in region.health_urls)
        assert region.database.password is not None


def test_shipped_backup_config_matches_the_operations_plan() -> None:
    config = load_backup_config(CONFIGS / "backup.yaml")

    day = 86400.0
    postgresql, state = config.postgresql, config.application_state
    assert (postgresql.full.schedule, postgresql.full.retention) == ("0 2 * * *", 30 * day)
    assert (postgresql.incremental.schedule, postgresql.incremental.retention) == (
        "0 * * * *", 7 * day,
    )
    assert (postgresql.wal.mode, postgresql.wal.retention) == ("continuous", day)
    assert config.storage.primary.bucket == "agentaskit-backups-primary"
    assert config.storage.replica.bucket == "agentaskit-backups-replica"
    assert config.encryption.algorithm == "AES-256-GCM"
    assert config.encryption.key_bytes() == bytes.fromhex(BACKUP_KEY_HEX)
    assert [state.redis.retention, state.s3_objects.retention] == [7 * day, 90 * day]
    assert [state.configs.retention, state.secrets.retention] == [365 * day, 30 * day]
    assert config.verification.test_restore.target == "staging"
    # The schema's defaults are the plan too: the file only spells them out (besides
    # the deployment's own: the server to back up and the restore targets).
    data = shipped("backup.yaml")
    assert config == BackupConfig.model_validate(
        {key: data[key] for key in ("storage", "encryption", "restore_targets")}
        | {"postgresql": {"dsn": data["postgresql"]["dsn"]}}
    )
    assert set(config.restore_targets) == {config.verification.test_restore.target}


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0), ("120s", 120.0), ("1h30m", 5400.0), ("1h 30m", 5400.0), ("250ms", 0.25),
        ("2d", 172800.0), ("1.5h", 5400.0), (" 2m ", 120.0), ("0s", 0.0), ("90", 90.0),
        ("2.5", 2.5), (120, 120.0), (0.5, 0.5),
    ],
)
def test_parse_duration_reads_operator_notation(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "garbage",
    [
        "", "   ", "soon", "-5m", "5 minutes", "m", "5x", "1e3", ".5s", "5m-", -1, -0.5,
        float("nan"), float("inf"), True, None, [5],
    ],
)
def test_parse_duration_rejects_garbage_negatives_and_non_numbers(garbage: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_duration(garbage)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (300, "5m"), (5400, "1h30m"), (90061.5, "1d1h1m1s500ms")],
)
def test_format_duration_writes_the_shortest_unit_string(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


UNITS: dict[str, Fraction] = {
    "d": Fraction(86400), "h": Fraction(3600), "m": Fraction(60), "s": Fraction(1),
    "ms": Fraction(1, 1000),
}


@given(
    parts=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(list(UNITS))), min_size=1, max_size=5
    ),
    separator=st.sampled_from(["", " "]),
)
def test_parse_duration_of_a_written_duration_round_trips(
    parts: list[tuple[int, str]], separator: str
) -> None:
    text = separator.join(f"{count}{unit}" for count, unit in parts)

    assert parse_duration(text) == pytest.approx(sum(count * UNITS[unit] for count, unit in parts))


@given(milliseconds=st.integers(0, 10**12))
def test_format_then_parse_duration_round_trips(milliseconds: int) -> None:
    assert parse_duration(format_duration(milliseconds / 1000)) == milliseconds / 1000


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 * 2**20), ("512kB", 512_000), ("512KiB", 512 * 1024), ("16 mib", 16 * 2**20),
        ("1.5GiB", 3 * 2**29), ("2GB", 2 * 10**9), ("1TiB", 2**40), ("100B", 100), ("4096", 4096),
        (16777216, 16777216), ("0", 0),
    ],
)
def test_parse_size_reads_si_and_iec_units(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("garbage", ["", "MiB", "-1", "12 parsecs", "1.5B", "0.1kB1", True, 1.5])
def test_parse_size_rejects_garbage_fractions_of_bytes_and_negatives(garbage: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_size(garbage)


# ---------------------------------------------------------------- one line per bad field


def regions_named(*names: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        region = data["regions"]["us-west-2"]
        data["regions"] = dict.fromkeys(names, region)

    return edit


@pytest.mark.parametrize(
    ("edit", "problems"),
    [
        pytest.param(
            lambda d: d["thresholds"].update(db_unreachable="soon"),
            ["thresholds.db_unreachable: must be a duration like '2m' or '120s' (got 'soon')"],
            id="bad-duration",
        ),
        pytest.param(
            lambda d: d.update(region="eu-west-1"),
            ["region: must be one of the regions: us-east-1, us-west-2 (got 'eu-west-1')"],
            id="region-not-in-regions",
        ),
        pytest.param(
            lambda d: d.update(primary_region="us-west-1"),
            ["primary_region: must be one of the regions: us-east-1, us-west-2 (got 'us-west-1')"],
            id="primary-region-not-in-regions",
        ),
        pytest.param(
            regions_named("us-west-2"),
            [
                "regions: must name exactly two regions, the primary and the secondary "
                "(got 1: us-west-2)"
            ],
            id="one-region",
        ),
        pytest.param(
            regions_named("us-west-2", "us-east-1", "eu-west-1"),
            [
                "regions: must name exactly two regions, the primary and the secondary "
                "(got 3: eu-west-1, us-east-1, us-west-2)"
            ],
            id="three-regions",
        ),
        pytest.param(
            lambda d: d["probe"].update(timeout="5s"),
            ["probe.timeout: must be shorter than probe.interval (5s) (got 5s)"],
            id="probe-timeout-not-below-interval",
        ),
        pytest.param(
            lambda d: d["lock"].update(ttl="2s", socket_timeout="1s", margin="2s"),
            [
                "lock.ttl: must be at least 3 x lock.socket_timeout (3s) (got 2s)",
                "lock.margin: must be shorter than lock.ttl (2s) (got 2s)",
            ],
            id="lock-ttl-and-margin",
        ),
        pytest.param(
            lambda d: west_db(d).update(dsn="mysql://db.example/app"),
            [
                "regions.us-west-2.database.dsn: must be a URL like "
                "postgresql://user@host:5432/dbname (got 'mysql://db.example/app')"
            ],
            id="dsn-not-postgresql",
        ),
        pytest.param(
            lambda d: d["thresholds"].update(db_unreachabel="2m"),
            ["thresholds.db_unreachabel: unknown key; did you mean 'db_unreachable'?"],
            id="unknown-key-with-suggestion",
        ),
        pytest.param(
            lambda d: d["logging"].update(colour=True),
            ["logging.colour: unknown key; expected one of: level"],
            id="unknown-key-without-suggestion",
        ),
    ],
)
def test_a_bad_config_is_refused_with_one_line_per_bad_field(
    tmp_path: Path, edit: Edit, problems: list[str]
) -> None:
    assert problems_of(tmp_path, edit) == problems


@pytest.mark.parametrize(
    "threshold", ["region_unhealthy", "db_unreachable", "recovery", "retry_backoff"]
)
def test_each_threshold_must_be_longer_than_the_probe_interval(
    tmp_path: Path, threshold: str
) -> None:
    problems = problems_of(tmp_path, lambda d: d["thresholds"].update({threshold: "5s"}))

    assert problems == [f"thresholds.{threshold}: must be longer than probe.interval (5s) (got 5s)"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["probe"].update(jitter=0.6), "probe.jitter"),
        (lambda d: d["probe"].update(healthy_fraction=0), "probe.healthy_fraction"),
        (lambda d: d["probe"].update(session_max_age="-1s"), "probe.session_max_age"),
        (lambda d: d["probe"].update(session_max_age="soon"), "probe.session_max_age"),
        (lambda d: d["lock"].update(url="http://lock.example:6379"), "lock.url"),
        (lambda d: d["lock"].update(key_prefix="agentaskit dr"), "lock.key_prefix"),
        (lambda d: d["regions"]["us-east-1"].update(health_urls=[]),
         "regions.us-east-1.health_urls"),
        (lambda d: d["regions"]["us-east-1"].update(health_urls=["ftp://x"]),
         "regions.us-east-1.health_urls[0]"),
        (lambda d: d["promotion"].update(max_lag_bytes="12 parsecs"), "promotion.max_lag_bytes"),
        (lambda d: d.update(probe=[]), "probe"),
        (lambda d: d.pop("regions"), "regions"),
    ],
)
def test_each_field_rule(tmp_path: Path, edit: Edit, field: str) -> None:
    assert fields_of(problems_of(tmp_path, edit)) == [field]


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    def break_three(data: dict[str, Any]) -> None:
        data["logging"]["level"] = "loud"
        data["promotion"]["max_lag_bytes"] = "12 parsecs"
        data["regions"]["us-east-1"]["health_urls"] = []

    assert sorted(fields_of(problems_of(tmp_path, break_three))) == [
        "logging.level", "promotion.max_lag_bytes", "regions.us-east-1.health_urls",
    ]


# ---------------------------------------------------------------- file-level errors


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("region: a\nprobe:\n  interval: 5s\n   timeout: 2s\n",
         "line 4, column 11: YAML syntax error: mapping values are not allowed here"),
        ("region: a\nprobe: {}\nregion: b\n",
         "line 3, column 1: YAML syntax error: found duplicate key 'region'"),
        (None, "file not found"),
        ("", "file is empty"),
        ("- a\n- b\n", "top level must be a mapping of keys (got a list)"),
        ("when: 2024-13-01\n", "YAML error: ValueError"),
    ],
)
def test_an_unusable_file_raises_config_error_naming_it(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "watchdog.yaml"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.problems == [problem]
    assert str(caught.value) == f"{path}: invalid configuration\n  {problem}"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_backup_config(tmp_path)

    assert caught.value.problems == ["cannot read file: Is a directory"]


def test_an_empty_section_means_its_defaults(tmp_path: Path) -> None:
    text = (CONFIGS / "watchdog.yaml").read_text().replace("logging:\n", "logging:\n#")

    assert load_config(write(tmp_path, text)).logging.level == "info"


# ---------------------------------------------------------------- secrets


def test_password_from_env_goes_into_the_connect_dsn_quoted() -> None:
    config = load_config(CONFIGS / "watchdog.yaml")

    dsn = config.regions["us-west-2"].database.connect_dsn()

    assert dsn == (
        "postgresql://agentaskit_dr:s3cr3t-Pa55%3Aw%40rd%2Fx"
        "@pg-primary.us-west-2.agentaskit.example:5432/postgres?sslmode=require"
    )
    assert config.lock.password_value() == SECRET


def test_password_file_is_read_stripped_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "lock.pass").write_text(f"  {SECRET}\n")
    data = shipped("watchdog.yaml")
    data["lock"].update(password_env=None, password_file="lock.pass")

    config = load_config(write(tmp_path, data))

    assert config.lock.password_value() == SECRET
    assert config.lock.password_file == tmp_path / "lock.pass"


def test_no_password_at_all_leaves_the_dsn_alone(tmp_path: Path) -> None:
    data = shipped("watchdog.yaml")
    west_db(data)["password_env"] = None
    data["lock"]["password_env"] = None

    config = load_config(write(tmp_path, data))

    assert config.regions["us-west-2"].database.connect_dsn() == west_db(data)["dsn"]
    assert config.lock.password_value() is None


def test_a_missing_password_env_var_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTASKIT_DR_EAST_DB_PASSWORD")

    assert problems_of(tmp_path, lambda d: None) == [
        "regions.us-east-1.database.password_env: "
        "environment variable AGENTASKIT_DR_EAST_DB_PASSWORD is not set"
    ]


def test_an_unreadable_password_file_names_the_field(tmp_path: Path) -> None:
    def use_missing_file(data: dict[str, Any]) -> None:
        data["lock"].update(password_env=None, password_file="nope")

    assert problems_of(tmp_path, use_missing_file) == [
        f"lock.password_file: cannot read {tmp_path / 'nope'}: No such file or directory"
    ]


def test_a_password_given_twice_is_refused(tmp_path: Path) -> None:
    def both(data: dict[str, Any]) -> None:
        west_db(data).update(password_file="pw", dsn=f"postgresql://u:{SECRET}@db.example/app")

    error = config_error(tmp_path, both)

    assert fields_of(error.problems) == [
        "regions.us-west-2.database.password_file", "regions.us-west-2.database.dsn",
    ]
    assert SECRET not in str(error)


def test_secrets_never_appear_in_str_repr_or_redacted(tmp_path: Path) -> None:
    data = shipped("watchdog.yaml")
    west_db(data).update(password_env=None, dsn=f"postgresql://u:{SECRET}@db.example/app")
    data["lock"].update(password_env=None, url=f"redis://:{SECRET}@lock.example:6379/0")
    config = load_config(write(tmp_path, data))
    backup = load_backup_config(CONFIGS / "backup.yaml")

    printed = [str(config), repr(config), json.dumps(config.redacted())]
    printed += [str(backup), repr(backup), json.dumps(backup.redacted())]
    for text in printed:
        assert SECRET not in text
        assert BACKUP_KEY_HEX not in text
    redacted = config.redacted()
    assert redacted["regions"]["us-west-2"]["database"]["dsn"] == "postgresql://u:***@db.example/app"
    assert redacted["lock"]["url"] == "redis://:***@lock.example:6379/0"
    assert redacted["holder"] == config.holder


def test_secrets_never_appear_in_error_messages(tmp_path: Path) -> None:
    def break_with_secrets(data: dict[str, Any]) -> None:
        west_db(data)["dsn"] = f"mysql://u:{SECRET}@db.example/app"
        data["lock"]["url"] = f"http://u:{SECRET}@lock.example/?password={SECRET}"
        data["regions"]["us-east-1"]["database"]["dsn"] = f"host=db password={SECRET}"

    error = config_error(tmp_path, break_with_secrets)

    assert len(error.problems) == 3
    assert SECRET not in str(error)
    # pydantic's own error echoes inputs: it must not be chained into a traceback.
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_a_bad_backup_key_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTASKIT_DR_BACKUP_KEY", SECRET)

    with pytest.raises(ConfigError) as caught:
        load_backup_config(CONFIGS / "backup.yaml")

    assert caught.value.problems == [
        "encryption.key_env: must hold a 256-bit key: 64 hex digits or base64 of 32 bytes"
    ]
    assert SECRET not in str(caught.value)


def test_backup_key_from_a_base64_file(tmp_path: Path) -> None:
    (tmp_path / "backup.key").write_text("D" * 43 + "=\n")  # base64 of 32 bytes
    data = shipped("backup.yaml")
    data["encryption"].update(key_env=None, key_file="backup.key")

    config = load_backup_config(write(tmp_path, data, "backup.yaml"))

    assert len(config.encryption.key_bytes()) == 32


# ---------------------------------------------------------------- helpers for the runtime


def test_with_primary_swaps_the_primary_and_keeps_the_secrets() -> None:
    config = load_config(CONFIGS / "watchdog.yaml")

    failed_over = config.with_primary("us-east-1")

    assert (failed_over.primary_region, failed_over.secondary_region) == ("us-east-1", "us-west-2")
    assert failed_over.lock.password_value() == SECRET
    assert config.primary_region == "us-west-2"
    with pytest.raises(ValueError, match="unknown region"):
        config.with_primary("eu-west-1")


def test_holder_defaults_to_hostname_and_region(tmp_path: Path) -> None:
    named = shipped("watchdog.yaml") | {"node_name": "watchdog-a"}

    assert load_config(CONFIGS / "watchdog.yaml").holder.endswith("/us-west-2")
    assert load_config(write(tmp_path, named)).holder == "watchdog-a"


def test_check_config_tells_backup_files_from_watchdog_files(tmp_path: Path) -> None:
    assert looks_like_backup(CONFIGS / "backup.yaml")
    assert not looks_like_backup(CONFIGS / "watchdog.yaml")
    assert not looks_like_backup(write(tmp_path, "storage: [\n"))
    assert not looks_like_backup(tmp_path / "missing.yaml")


def test_models_are_frozen() -> None:
    config = load_config(CONFIGS / "watchdog.yaml")

    with pytest.raises(ValueError, match="frozen"):
        config.primary_region = "us-east-1"  # type: ignore[misc]


# ---------------------------------------------------------------- backup rules


@pytest.mark.parametrize(
    "schedule", ["0 25 * * *", "* * *", "0 2 * * * *", "0 2 * 13 *", "x 2 * * *", "*/0 * * * *"]
)
def test_backup_schedules_must_be_five_field_cron(tmp_path: Path, schedule: str) -> None:
    error = config_error(
        tmp_path, lambda d: d["postgresql"]["full"].update(schedule=schedule), "backup.yaml"
    )

    assert fields_of(error.problems) == ["postgresql.full.schedule"]


def test_cron_accepts_ranges_lists_steps_and_names(tmp_path: Path) -> None:
    data = shipped("backup.yaml")
    data["postgresql"]["full"]["schedule"] = "0,30 1-3 */2 jan-jun mon-fri"

    assert load_backup_config(write(tmp_path, data, "backup.yaml")).postgresql.full.schedule


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["storage"]["primary"].update(url="s3://Agentaskit_Backups"),
         "storage.primary.url"),
        (lambda d: d["storage"]["primary"].update(url="s3://ab"), "storage.primary.url"),
        (lambda d: d["storage"]["primary"].update(url="s3://10.0.0.1"), "storage.primary.url"),
        (lambda d: d["storage"]["primary"].update(url="https://bucket"), "storage.primary.url"),
        (lambda d: d["storage"]["replica"].update(url="s3://agentaskit-backups-primary/copy"),
         "storage.replica.url"),
        (lambda d: d["encryption"].update(algorithm="AES-128-CBC"), "encryption.algorithm"),
        (lambda d: d["encryption"].update(key_env=None), "encryption.key_env"),
        (lambda d: d["postgresql"]["incremental"].update(retention="60d"),
         "postgresql.incremental.retention"),
        (lambda d: d["postgresql"]["wal"].update(retention="-1h"), "postgresql.wal.retention"),
        (lambda d: d["application_state"]["redis"].update(method="vault-snapshot"),
         "application_state.redis.method"),
        (lambda d: d["application_state"]["configs"].update(schedule="sometimes"),
         "application_state.configs.schedule"),
        (lambda d: d["verification"]["test_restore"].update(target="production"),
         "verification.test_restore.target"),
    ],
)
def test_each_backup_rule(tmp_path: Path, edit: Edit, field: str) -> None:
    assert fields_of(config_error(tmp_path, edit, "backup.yaml").problems) == [field]


# ---------------------------------------------------------------- robustness

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def key_paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in ``data``, to every mapping, list and leaf."""
    children: list[tuple[Any, Any]] = []
    if isinstance(data, dict):
        children = list(data.items())
    elif isinstance(data, list):
        children = list(enumerate(data))
    nested = [path for key, value in children for path in key_paths(value, (*prefix, key))]
    return [prefix, *nested] if prefix else nested


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(key_paths(shipped("watchdog.yaml"))), value=yaml_values)
def test_any_value_anywhere_loads_or_raises_config_error_only(
    tmp_path: Path, path: tuple[Any, ...], value: Any
) -> None:
    data = shipped("watchdog.yaml")
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value

    try:
        load_config(write(tmp_path, data))
    except ConfigError as error:
        problems = error.problems
    else:
        problems = []
    assert all(isinstance(problem, str) and ": " in problem for problem in problems)
