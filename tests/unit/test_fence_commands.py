"""``start-gate`` and ``unfence`` refuse bad input with one line and exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentaskit_dr.cli import main
from tests.unit.test_config import shipped, shipped_env, write  # noqa: F401


@pytest.mark.parametrize("command", [["start-gate"], ["unfence", "--yes"]])
def test_an_unknown_region_is_refused_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = write(tmp_path, shipped("watchdog.yaml"))

    code = main([*command, "--config", str(config), "--region", "eu-central-1"])

    assert code == 2
    err = capsys.readouterr().err
    assert "--region: must be one of the regions: us-east-1, us-west-2" in err
    assert "Traceback" not in err


def test_an_invalid_config_is_refused_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = shipped("watchdog.yaml")
    data["regions"]["us-west-2"]["database"]["control"] = {"data_directory": "relative"}

    code = main(["start-gate", "--config", str(write(tmp_path, data))])

    assert code == 2
    assert "regions.us-west-2.database.control.data_directory: must be an absolute path" in (
        capsys.readouterr().err
    )

