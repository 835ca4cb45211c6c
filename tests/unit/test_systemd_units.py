"""The systemd units as systemd's own tools see them: the hardening score, ``verify``, and
the sysusers.d/tmpfiles.d pair applied to a scratch root.

Each test skips, naming the missing tool, where systemd's tools are not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ["agentaskit-dr.service", "agentaskit-dr@.service"]
INSTALLED_BINARY = "/opt/agentaskit-dr/bin/agentaskit-dr"
#: The highest exposure systemd still calls "OK".
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return found


def installed_copy(tmp_path: Path, unit: str, *, drop_ins: dict[str, str] | None = None) -> Path:
    """``unit`` copied to ``tmp_path`` with ExecStart= and ExecStartPre= pointing at an
    executable that exists (``verify`` checks that they do), with ``drop_ins``."""
    stub = tmp_path / "agentaskit-dr"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    path = tmp_path / unit
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED_BINARY in text
    path.write_text(text.replace(INSTALLED_BINARY, str(stub)))
    if drop_ins:
        directory = tmp_path / f"{unit}.d"
        directory.mkdir()
        for name, source in drop_ins.items():
            (directory / name).write_text((SYSTEMD / source).read_text())
    return path


def exposure(unit: Path) -> tuple[float, str]:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, f"no overall exposure in:\n{result.stdout}\n{result.stderr}"
    return float(found[1]), found[2]


def service_section(unit: str) -> dict[str, list[str]]:
    """The [Service] settings of ``unit``, each key with its lines in order (a key may
    repeat: SystemCallFilter=, ReadWritePaths=)."""
    section, settings = "", dict[str, list[str]]()
    for raw in (SYSTEMD / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNITS)
def test_hardening_scores_ok_at_most_2_0(unit: str, tmp_path: Path) -> None:
    score, verdict = exposure(installed_copy(tmp_path, unit))
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} {verdict}"
    assert verdict == "OK"


def test_with_the_control_drop_in_the_score_stays_ok(tmp_path: Path) -> None:
    unit = installed_copy(tmp_path, "agentaskit-dr.service",
                          drop_ins={"control.conf": "agentaskit-dr-control.conf"})
    score, verdict = exposure(unit)
    assert score <= MAX_EXPOSURE, f"with control.conf: exposure {score} {verdict}"


def test_the_unit_of_today_would_fail_the_bar(tmp_path: Path) -> None:
    """The bar can fail: the unit without its hardening block scores far above it."""
    text = (SYSTEMD / "agentaskit-dr.service").read_text()
    weak = text[:text.index("NoNewPrivileges=")] + "\n[Install]\nWantedBy=multi-user.target\n"
    path = tmp_path / "weak.service"
    path.write_text(weak)
    score, verdict = exposure(path)
    assert score > MAX_EXPOSURE
    assert verdict != "OK"


@pytest.mark.parametrize(("unit", "as_instance"), [
    ("agentaskit-dr.service", "agentaskit-dr.service"),
    ("agentaskit-dr@.service", "agentaskit-dr@witness.service"),
])
def test_systemd_analyze_verify_passes_without_a_warning(
    unit: str, as_instance: str, tmp_path: Path,
) -> None:
    # The control drop-in is verified with the unit it goes with.
    drop_ins = {"control.conf": "agentaskit-dr-control.conf"} if unit == UNITS[0] else None
    installed = installed_copy(tmp_path, unit, drop_ins=drop_ins)
    if as_instance != unit:
        installed = installed.rename(tmp_path / as_instance)
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(installed)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    # verify exits 0 on a key it ignores: every line it prints is a problem.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_a_unit_with_a_typo_is_caught(tmp_path: Path) -> None:
    installed = installed_copy(tmp_path, "agentaskit-dr.service")
    installed.write_text(installed.read_text().replace("Type=notify", "Type=notfy"))
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(installed)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "notfy" in result.stderr


def test_both_units_run_the_same_service_but_for_the_config() -> None:
    plain, template = (service_section(unit) for unit in UNITS)
    rewritten = {key: [line.replace("%i.yaml", "watchdog.yaml") for line in lines]
                 for key, lines in template.items()}
    assert rewritten == plain


def test_the_service_is_what_the_daemon_speaks_and_needs() -> None:
    service = service_section("agentaskit-dr.service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    families = service["RestrictAddressFamilies"][0].split()
    # The notify socket (AF_UNIX) and the network (peers, databases, lock store, APIs).
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["StateDirectory"] == ["agentaskit-dr"]
    assert service["User"] == ["agentaskit-dr"]
    assert "PrivateNetwork" not in service


def test_sysusers_and_tmpfiles_make_the_user_and_its_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run([tool("systemd-sysusers"), f"--root={root}",
                    str(SYSTEMD / "sysusers.d" / "agentaskit-dr.conf")],
                   check=True, capture_output=True, timeout=60)
    users = {line.split(":")[0]: line.split(":") for line in
             (root / "etc" / "passwd").read_text().splitlines()}
    user = users["agentaskit-dr"]
    assert user[5] == "/var/lib/agentaskit-dr"
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000  # a system user

    (root / "etc" / "agentaskit-dr").mkdir()
    secret = root / "etc" / "agentaskit-dr" / "peer-token"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    environment = root / "etc" / "agentaskit-dr" / "environment"
    environment.write_text("AGENTASKIT_DR_LOCK_PASSWORD=x\n")
    environment.chmod(0o644)
    subprocess.run([tool("systemd-tmpfiles"), f"--root={root}", "--create",
                    str(SYSTEMD / "tmpfiles.d" / "agentaskit-dr.conf")],
                   check=True, capture_output=True, timeout=60)

    def owner_mode(path: Path) -> tuple[int, int, int]:
        stat = path.stat()
        return stat.st_uid, stat.st_gid, stat.st_mode & 0o7777

    assert owner_mode(root / "etc" / "agentaskit-dr") == (0, gid, 0o750)
    assert owner_mode(secret) == (0, gid, 0o640)
    assert owner_mode(environment) == (0, 0, 0o600)
    assert owner_mode(root / "var" / "lib" / "agentaskit-dr") == (uid, gid, 0o750)
    assert owner_mode(root / "var" / "lib" / "agentaskit-dr" / "evidence") == (uid, gid, 0o750)


def unit_settings(text: str, section: str) -> dict[str, list[str]]:
    """The settings of ``section`` (``[Unit]``, ``[Service]``) in a unit or drop-in text."""
    current, settings = "", dict[str, list[str]]()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line
        elif current == section:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_postgresql_drop_ins_verify_with_a_cluster_unit_and_the_daemon(
    tmp_path: Path,
) -> None:
    # A stand-in for Debian's postgresql@.service (forking, pg_ctlcluster start/stop), with
    # the start gate and the binding, and the daemon's unit with its Wants= drop-in.
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    cluster = "postgresql@15-main.service"
    (tmp_path / cluster).write_text(
        "[Unit]\nDescription=PostgreSQL Cluster %i\n[Service]\nType=forking\n"
        f"ExecStart=-{stub} %i start\nExecStop={stub} %i stop\n")
    drop_ins = tmp_path / f"{cluster}.d"
    drop_ins.mkdir()
    for name in ("postgresql-start-gate.conf", "postgresql-bound-to-watchdog.conf"):
        (drop_ins / name).write_text((SYSTEMD / name).read_text().replace(
            INSTALLED_BINARY, str(stub)))
    daemon = installed_copy(tmp_path, "agentaskit-dr.service",
                            drop_ins={"wants.conf": "agentaskit-dr-wants-postgresql.conf"})
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", cluster, daemon.name],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    # verify reads the drop-ins: a bad value there is a line on stderr (checked by hand
    # with TimeoutStopFailureMode=klil), and the exit code stays 0.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_binding_is_ordered_and_its_timing_is_the_config_default() -> None:
    from agentaskit_dr.config import BindingConfig, parse_duration

    bound = (SYSTEMD / "postgresql-bound-to-watchdog.conf").read_text()
    unit = unit_settings(bound, "[Unit]")
    # BindsTo= without After= only propagates stops; with it the server may be active
    # only while the daemon is.
    assert unit["BindsTo"] == ["agentaskit-dr.service"]
    assert unit["After"] == ["agentaskit-dr.service"]
    wants = unit_settings((SYSTEMD / "agentaskit-dr-wants-postgresql.conf").read_text(),
                          "[Unit]")
    assert list(wants) == ["Wants"]  # never Requires= back to a unit bound to this one
    daemon = service_section("agentaskit-dr.service")
    assert "RestartMode" not in daemon
    stop = unit_settings(bound, "[Service]")
    liveness = parse_duration(daemon["WatchdogSec"][0]) + parse_duration(
        daemon["TimeoutAbortSec"][0])
    defaults = BindingConfig()
    assert liveness == defaults.liveness_timeout
    assert parse_duration(stop["TimeoutStopSec"][0]) == defaults.postgres_stop_timeout
    assert stop["TimeoutStopFailureMode"] == ["kill"]
