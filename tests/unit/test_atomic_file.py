"""The one atomic file writer: whole content, mode, owner, and nothing left on failure."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from agentaskit_dr.atomic_file import write_atomically


@pytest.mark.parametrize("durable", [True, False])
def test_text_and_bytes_replace_the_file_whole_with_the_mode_asked(tmp_path: Path,
                                                                   durable: bool) -> None:
    path = tmp_path / "deep" / "er" / "evidence.json"
    write_atomically(path, "first ✓\n", durable=durable)
    assert path.read_text(encoding="utf-8") == "first ✓\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    write_atomically(path, b"\x00second", mode=0o600, durable=durable)
    assert path.read_bytes() == b"\x00second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["evidence.json"]


def test_a_failed_replace_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "settings.conf"
    target.mkdir()  # a directory: the rename over it fails
    (target / "kept").write_text("x")
    with pytest.raises(IsADirectoryError):
        write_atomically(target, "new")
    assert (target / "kept").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.conf"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_as_root_the_file_gets_the_owner_of_the_path_named(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    data_directory = tmp_path / "data"
    data_directory.mkdir()
    os.chown(data_directory, nobody.pw_uid, nobody.pw_gid)
    signal_file = data_directory / "standby.signal"

    write_atomically(signal_file, "", mode=0o600, owner_of=data_directory)

    owned = signal_file.stat()
    assert (owned.st_uid, owned.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    write_atomically(tmp_path / "mine", "")
    assert (tmp_path / "mine").stat().st_uid == 0
