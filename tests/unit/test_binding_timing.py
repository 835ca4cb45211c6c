"""The binding's timing rule (issue 13): a hung or dead watchdog's PostgreSQL must be
stopped by its service manager before the other region may promote.

Worst case = 5 probe intervals (engine stall) + the liveness timeout (WatchdogSec=, or
the livenessProbe) + the server's stop timeout; it must be below the shortest threshold
(refused otherwise) and should stay within 3/4 of it (warned otherwise). ``check-config``
says so from the ``binding`` section; the daemon says so at start from ``$WATCHDOG_USEC``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from agentaskit_dr.cli import main
from agentaskit_dr.config import ConfigError, load_config
from agentaskit_dr.runtime.supervisor import check_binding_timing

WEST, EAST = "us-west-2", "us-east-1"


def config(**extra: Any) -> dict[str, Any]:
    """Production thresholds (db_unreachable 120s, region_unhealthy 300s, 5s probes)."""
    return {
        "region": WEST, "primary_region": WEST, "node_name": "watchdog-west",
        "regions": {name: {"health_urls": [f"http://127.0.0.1:9/{name}/healthz"],
                           "database": {"dsn": f"postgresql://postgres@127.0.0.1:9/{name}"}}
                    for name in (WEST, EAST)},
        **extra,
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "watchdog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_shipped_units_fit_the_default_thresholds(tmp_path: Path) -> None:
    # 5 x 5s stall + WatchdogSec=30s + TimeoutAbortSec=5s + TimeoutStopSec=15s = 75s,
    # below 3/4 of 120s.
    loaded = load_config(write(tmp_path, config(binding={})))

    budget = loaded.binding_budget()
    assert budget.worst == 75.0
    assert budget.threshold_name == "db_unreachable"
    assert budget.problem() is None
    assert not [w for w in loaded.warnings() if w.startswith("binding")]


def test_a_watchdog_timeout_the_threshold_cannot_hold_is_refused_naming_binding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # 25s stall + 90s + 15s = 130s: the other region may promote at 120s, first.
    path = write(tmp_path, config(binding={"liveness_timeout": "90s"}))

    assert main(["check-config", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "binding: a hung watchdog's server stops up to 2m10s" in err
    assert "thresholds.db_unreachable 2m" in err
    assert "shorten WatchdogSec" in err


def test_a_short_region_threshold_is_the_one_that_counts(tmp_path: Path) -> None:
    data = config(binding={"liveness_timeout": "30s"},
                  thresholds={"db_unreachable": "120s", "region_unhealthy": "60s"})

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))

    assert any(p.startswith("binding: ") and "thresholds.region_unhealthy 1m" in p
               for p in caught.value.problems)


def test_a_binding_that_fits_with_little_room_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # 25s + 60s + 15s = 100s: below 120s, above 90s.
    path = write(tmp_path, config(binding={"liveness_timeout": "60s"}))

    assert main(["check-config", "--config", str(path)]) == 0

    err = capsys.readouterr().err
    assert f"{path}: warning: binding: a hung watchdog's server stops up to 1m40s" in err
    assert "more than 75% of thresholds.db_unreachable" in err


def test_a_witness_has_no_server_to_bind(tmp_path: Path) -> None:
    data = config(role="witness", binding={})

    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))

    assert "binding: a witness has no server to bind" in caught.value.problems


def test_the_daemon_under_systemd_says_when_watchdogsec_cannot_fit(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, config()))  # no binding section: stop counts 0

    with capture_logs() as logs:
        assert check_binding_timing(loaded, 30.0) is None
        assert check_binding_timing(loaded, 70.0) == "binding_tight"  # 25 + 70 > 90
        assert check_binding_timing(loaded, 95.0) == "binding_too_slow"  # 25 + 95 = 120
        assert check_binding_timing(loaded, None) is None  # not under systemd's watchdog

    events = [e["event"] for e in logs]
    assert events == ["binding_tight", "binding_too_slow"]
    assert "thresholds.db_unreachable 2m" in logs[1]["reason"]


def test_the_daemon_names_a_declared_liveness_that_is_not_its_watchdogsec(
    tmp_path: Path,
) -> None:
    loaded = load_config(write(tmp_path, config(binding={"liveness_timeout": "20s"})))

    with capture_logs() as logs:
        assert check_binding_timing(loaded, 30.0) is None

    assert [e["event"] for e in logs] == ["binding_liveness_differs"]
    assert logs[0]["watchdog_sec"] == 30.0
