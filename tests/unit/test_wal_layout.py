"""WAL names, bucket keys, the spool, and the light wal-push/wal-fetch commands' refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentaskit_dr.backup.wal_client import main as wal_main
from agentaskit_dr.backup.wal_client import scan_spool_dir, spool_from_config
from agentaskit_dr.backup.wal_layout import (
    DEFAULT_SPOOL,
    is_wal_name,
    next_segments,
    wal_key,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("000000010000000A000000FF", "wal/00000001/000000010000000A000000FF"),
        ("00000002.history", "wal/00000002/00000002.history"),
        ("000000020000000000000003.partial", "wal/00000002/000000020000000000000003.partial"),
        ("000000010000000000000002.00000028.backup",
         "wal/00000001/000000010000000000000002.00000028.backup"),
    ],
)
def test_every_file_postgres_archives_has_a_key_under_its_timeline(name: str, key: str) -> None:
    assert is_wal_name(name)
    assert wal_key(name) == key


@pytest.mark.parametrize("name", ["RECOVERYXLOG", "00000001", "../etc/passwd",
                                  "000000010000000000000001.ready", "0000000100000000000000g1"])
def test_other_names_are_refused(name: str) -> None:
    assert not is_wal_name(name)
    with pytest.raises(ValueError, match="not a WAL file name"):
        wal_key(name)


def test_next_segments_cross_a_log_file_boundary() -> None:
    assert next_segments("0000000100000001000000FE", 3) == [
        "0000000100000001000000FF", "000000010000000200000000", "000000010000000200000001"]
    assert next_segments("00000002.history", 3) == []


def test_the_spool_comes_from_the_config_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "backup.yaml"
    config.write_text("postgresql:\n  wal:\n    spool_dir: spool\n")
    assert spool_from_config(config) == tmp_path / "spool"
    config.write_text("storage: {}\n")
    assert spool_from_config(config) == DEFAULT_SPOOL


def test_wal_push_of_a_file_that_is_not_wal_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "backup.yaml"
    config.write_text(f"postgresql: {{wal: {{spool_dir: {tmp_path / 'spool'}}}}}\n")
    (tmp_path / "notes.txt").write_text("x")

    status = wal_main(["wal-push", "--config", str(config), str(tmp_path / "notes.txt")])

    assert status == 1
    assert capsys.readouterr().err == (
        "agentaskit-dr wal-push: 'notes.txt' is not a WAL file name PostgreSQL archives\n")


def test_wal_push_of_a_missing_file_or_config_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = tmp_path / "000000010000000000000001"

    missing_file = wal_main(["wal-push", "--config", str(tmp_path / "b.yaml"), str(segment)])
    segment.write_bytes(b"x")
    missing_config = wal_main(["wal-push", "--config", str(tmp_path / "b.yaml"), str(segment)])

    err = capsys.readouterr().err.splitlines()
    assert [missing_file, missing_config] == [1, 1]
    assert err[0].startswith("agentaskit-dr wal-push: cannot read ")
    assert "No such file" in err[0]
    assert err[1] == f"agentaskit-dr wal-push: cannot read {tmp_path / 'b.yaml'}: " \
        "No such file or directory"


def test_the_wal_commands_load_neither_the_aws_sdk_nor_the_cli() -> None:
    probe = (
        "import sys\n"
        "from agentaskit_dr._entry import main\n"
        "main(['wal-push', '--config', '/nonexistent.yaml', '000000010000000000000001'])\n"
        "heavy = [m for m in ('aiobotocore', 'botocore', 'pydantic', 'structlog', "
        "'agentaskit_dr.cli', 'agentaskit_dr.config') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, check=False)
    assert done.stdout.strip() == "[]", done.stderr


def test_the_full_cli_lists_the_wal_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "agentaskit_dr", "--help"],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert "wal-push" in done.stdout
    assert "wal-fetch" in done.stdout


@pytest.mark.parametrize(
    "text",
    [
        "postgresql:\n  wal:\n    spool_dir: /var/spool/x   # local disk\n",
        "# spool_dir: /nope\npostgresql:\n  full:\n    schedule: '0 2 * * *'\n"
        "  wal:\n    retention: 24h\n    spool_dir: \"spool dir\"\n",
        "storage:\n  spool_dir: /not-here\npostgresql:\n  wal:\n    spool_dir: 'here'\n",
        "postgresql: {wal: {spool_dir: /flow}}\n",
        "postgresql:\n  wal: {spool_dir: /flow}\n",
        "postgresql:\n  wal:\n    spool_dir: &s /anchored\n",
        "encryption:\n  previous_keys:\n    - {id: k1, key_env: K}\npostgresql:\n"
        "  wal:\n    spool_dir: /after-a-list\n",
        "storage: {}\n",
        "postgresql:\n  wal:\n    spool_dir: null\n",
    ],
)
def test_the_hand_scan_of_spool_dir_agrees_with_yaml_or_defers(text: str) -> None:
    import yaml

    expected = ((yaml.safe_load(text).get("postgresql") or {}).get("wal") or {}).get(
        "spool_dir")
    sure, found = scan_spool_dir(text)

    if sure:
        assert found == expected
    assert spool_from_text(text) == expected


def spool_from_text(text: str) -> str | None:
    """What the command ends up with (hand scan, else PyYAML)."""
    from agentaskit_dr.backup.wal_client import _yaml_spool_dir

    sure, found = scan_spool_dir(text)
    return found if sure else _yaml_spool_dir(Path("backup.yaml"), text)


@pytest.mark.parametrize(
    "argv",
    [["wal-push"], ["wal-push", "--config", "b.yaml"], ["wal-fetch", "--config", "b.yaml", "X"],
     ["wal-push", "--config", "b.yaml", "--timeout", "0", "p"],
     ["wal-push", "--config", "b.yaml", "--bogus", "p"]],
)
def test_bad_arguments_print_the_usage(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert wal_main(argv) == 2
    assert capsys.readouterr().err.startswith(f"usage: agentaskit-dr {argv[0]} --config FILE")
