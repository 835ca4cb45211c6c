"""The command line as an operator meets it: every bad input gets a one-line answer and
exit code 2, never a traceback; nothing starts before the input is known to be good."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentaskit_dr import __version__
from agentaskit_dr.cli import main

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_YAML = REPO / "configs" / "watchdog.yaml"
BACKUP_YAML = REPO / "configs" / "backup.yaml"

#: The secrets configs/watchdog.yaml and configs/backup.yaml name (docs/configuration.md).
SECRETS = {
    "AGENTASKIT_DR_WEST_DB_PASSWORD": "west-db-s3cret",
    "AGENTASKIT_DR_EAST_DB_PASSWORD": "east-db-s3cret",
    "AGENTASKIT_DR_LOCK_PASSWORD": "lock-s3cret",
    "AGENTASKIT_DR_BACKUP_KEY": "ab" * 32,
}


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m agentaskit_dr ARGS`` as a process, for what only a process shows."""
    return subprocess.run(
        [sys.executable, "-m", "agentaskit_dr", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


# ---------------------------------------------------------------- check-config


@pytest.mark.usefixtures("secrets_in_env")
@pytest.mark.parametrize(
    ("shipped", "kind"), [(WATCHDOG_YAML, "watchdog"), (BACKUP_YAML, "backup")]
)
def test_check_config_accepts_the_shipped_configs(
    shipped: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --syntax-only: the TLS and peer token files they name live on the production hosts.
    assert main(["check-config", "--config", str(shipped), "--syntax-only"]) == 0

    out, err = capsys.readouterr()
    assert out == f"{shipped}: valid {kind} configuration\n"
    assert err == ""
    assert not any(secret in out for secret in SECRETS.values())


def test_check_config_without_the_password_variables_names_each_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)

    assert main(["check-config", "--config", str(WATCHDOG_YAML)]) == 2

    err = capsys.readouterr().err
    for field, variable in [
        ("regions.us-west-2.database.password_env", "AGENTASKIT_DR_WEST_DB_PASSWORD"),
        ("regions.us-east-1.database.password_env", "AGENTASKIT_DR_EAST_DB_PASSWORD"),
        ("lock.password_env", "AGENTASKIT_DR_LOCK_PASSWORD"),
    ]:
        assert f"  - {field}: environment variable {variable} is not set" in err


def test_check_config_names_every_bad_field_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "watchdog.yaml"
    path.write_text(
        "region: us-west-2\n"
        "primary_region: us-west-2\n"
        "regions:\n"
        "  us-west-2: {health_urls: [http://a/healthz], database: {dsn: 'postgresql://h/db'}}\n"
        "  us-east-1: {health_urls: [http://b/healthz], database: {dsn: 'mysql://h/db'}}\n"
        "thresholds: {db_unreachable: soon}\n"
        "probe: {intervall: 5s}\n"
    )

    assert main(["check-config", "--config", str(path)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: invalid configuration\n")
    assert "thresholds.db_unreachable: must be a duration like '2m' or '120s' (got 'soon')" in err
    assert "probe.intervall: unknown key; did you mean 'interval'?" in err
    assert "regions.us-east-1.database.dsn: must be a URL like postgresql://" in err


def test_check_config_of_a_missing_file_exits_2_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"

    assert main(["check-config", "--config", str(missing)]) == 2

    assert capsys.readouterr().err == f"{missing}: invalid configuration\n  - file not found\n"


@pytest.mark.parametrize(
    ("where", "reason"),
    [("a_directory", "Is a directory"), ("through_a_file/watchdog.yaml", "Not a directory")],
)
def test_config_path_that_is_no_file_exits_2_with_the_reason(
    where: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "through_a_file").write_text("region: x\n")
    path = tmp_path / where

    assert main(["check-config", "--config", str(path)]) == 2
    assert main(["run", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    assert err.count(f"  - cannot read file: {reason}\n") == 2


def test_a_file_that_breaks_the_yaml_parser_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("region: " + "[" * 1000 + "]" * 1000 + "\n")

    assert main(["check-config", "--config", str(path)]) == 2
    assert main(["run", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    assert err.count(f"{path}: invalid configuration\n") == 2


def test_check_config_as_watchdog_of_a_backup_file_names_the_missing_keys(
    secrets_in_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(BACKUP_YAML), "--kind", "watchdog"]) == 2

    err = capsys.readouterr().err
    assert "  - region: required key is missing\n" in err
    assert "  - regions: required key is missing\n" in err


def test_run_with_a_missing_file_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"

    assert main(["run", "--config", str(missing)]) == 2

    out, err = capsys.readouterr()
    assert out == ""  # no daemon_started: nothing ran
    assert "file not found" in err


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
        ([], "the following arguments are required: COMMAND"),
        (["run"], "the following arguments are required: --config"),
        (["check-config", "--config", "x.yaml", "--kind", "other"],
         "argument --kind: invalid choice: 'other'"),
        (["run", "--config", "x.yaml", "--verbose"], "unrecognized arguments: --verbose"),
    ],
)
def test_bad_arguments_exit_2_with_usage(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: agentaskit-dr")
    assert complaint in err


def test_unknown_command_as_a_process_prints_usage_and_no_traceback() -> None:
    result = run_cli("bogus")

    assert result.returncode == 2
    assert result.stderr.startswith("usage: agentaskit-dr")
    assert "Traceback" not in result.stdout + result.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])

    assert exited.value.code == 0
    assert capsys.readouterr().out == f"agentaskit-dr {__version__}\n"


def test_python_m_agentaskit_dr_help_lists_the_commands() -> None:
    result = run_cli("--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: agentaskit-dr")
    for command in ("run", "check-config", "drill"):
        assert command in result.stdout


# ---------------------------------------------------------------- drill


@pytest.fixture
def drill_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the drill would start servers."""

    def refuse(**_kwargs: object) -> int:
        pytest.fail("the drill started despite bad arguments")

    monkeypatch.setattr("agentaskit_dr.sandbox.drill.run_drill", refuse)


@pytest.mark.usefixtures("drill_must_not_start")
@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--threshold", "0.1s", "--interval", "1s"],
         "--threshold (0.1s) must exceed --interval (1s)"),
        (["--threshold", "500ms"], "--threshold (500ms) must exceed --interval (0.5s)"),
        (["--threshold", "3s"], "--threshold (3s) must exceed 6 x --interval (0.5s) so the "
                                "primary side can self-fence before the other side may promote"),
        (["--threshold", "soon"],
         "argument --threshold: must be a duration like '2m' or '120s' (got 'soon')"),
        (["--interval", "0s"], "argument --interval: must be longer than zero (got '0s')"),
        (["--interval", "-1s"], "argument --interval: "),
    ],
)
def test_drill_with_bad_timing_exits_2_before_starting_anything(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["drill", *argv])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: agentaskit-dr")
    assert complaint in err


@pytest.mark.usefixtures("drill_must_not_start")
def test_drill_with_a_workdir_that_is_a_file_exits_2_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")

    with pytest.raises(SystemExit) as exited:
        main(["drill", "--workdir", str(a_file)])

    assert exited.value.code == 2
    assert f"--workdir ({a_file}): File exists" in capsys.readouterr().err


def test_drill_with_good_timing_hands_the_values_to_the_drill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, object]] = []

    def fake_drill(**kwargs: object) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr("agentaskit_dr.sandbox.drill.run_drill", fake_drill)

    argv = ["drill", "--threshold", "2s", "--interval", "250ms", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    assert main([*argv, "--failback"]) == 0
    assert calls == [
        {"threshold": "2s", "interval": "250ms", "workdir": tmp_path, "failback": False},
        {"threshold": "2s", "interval": "250ms", "workdir": tmp_path, "failback": True},
    ]
