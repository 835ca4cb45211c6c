"""The relay between pg_basebackup and zstd: every byte passed on, the manifest kept."""

from __future__ import annotations

import io
import os
import tarfile
import threading

import pytest

from agentaskit_dr.backup._tar_relay import TarRelay, parse_header


def ustar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar the way pg_basebackup writes it: ustar headers, two zero blocks at the end."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def relay(stream: bytes) -> tuple[TarRelay, bytes]:
    """Run the relay between two real pipes; what it found and what came out."""
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()

    def feed() -> None:
        with os.fdopen(source_write, "wb") as pipe:
            pipe.write(stream)

    received: list[bytes] = []

    def drain() -> None:
        with os.fdopen(sink_read, "rb") as pipe:
            received.append(pipe.read())

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for thread in threads:
        thread.start()
    found = TarRelay()
    found.run(source_read, sink_write)
    for thread in threads:
        thread.join(timeout=10)
    return found, received[0]


MANIFEST = b'{"PostgreSQL-Backup-Manifest-Version": 1, "Files": []}\n' * 40


def test_every_byte_passes_and_the_manifest_is_kept() -> None:
    stream = ustar([("PG_VERSION", b"15\n"), ("base/1/1259", os.urandom(3 << 20 | 77)),
                    ("global/pg_control", os.urandom(8192)), ("pg_wal/000000010000000000000002",
                                                              os.urandom(1 << 20)),
                    ("backup_manifest", MANIFEST)])

    found, out = relay(stream)

    assert out == stream
    assert found.manifest == MANIFEST
    assert found.relayed == len(stream)
    assert (found.members, found.problem, found.finished) == (5, "", True)


def test_a_stream_without_a_manifest_says_so() -> None:
    stream = ustar([("PG_VERSION", b"15\n")])

    found, out = relay(stream)

    assert out == stream
    assert found.manifest is None


def test_a_header_that_does_not_add_up_stops_the_walk_but_not_the_bytes() -> None:
    stream = bytearray(ustar([("PG_VERSION", b"15\n"), ("base/1/1", os.urandom(5000)),
                              ("backup_manifest", MANIFEST)]))
    stream[512 * 2 + 10] ^= 0xFF  # the name of the second member's header

    found, out = relay(bytes(stream))

    assert out == bytes(stream)
    assert found.manifest is None
    assert "tar header 2: checksum" in found.problem


def test_a_stream_cut_inside_a_member_is_named() -> None:
    stream = ustar([("base/1/1", os.urandom(100_000)), ("backup_manifest", MANIFEST)])

    found, out = relay(stream[:50_000])

    assert out == stream[:50_000]
    assert found.manifest is None
    assert found.problem == "the stream ended inside a tar member"


def test_sizes_of_8_gib_and_more_are_read_in_base_256() -> None:
    info = tarfile.TarInfo("base/1/huge")
    info.size = 9 << 30
    header = info.tobuf(format=tarfile.GNU_FORMAT)[:512]

    assert parse_header(header) == ("base/1/huge", 9 << 30)


def test_a_block_that_is_not_a_header_is_refused() -> None:
    with pytest.raises(ValueError, match="checksum"):
        parse_header(os.urandom(512))


def test_a_compressor_that_stops_reading_leaves_the_relay_unfinished() -> None:
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    os.close(sink_read)
    os.write(source_write, ustar([("PG_VERSION", b"15\n")]))
    os.close(source_write)

    found = TarRelay()
    found.run(source_read, sink_write)

    assert not found.finished
    assert found.problem == "the compressor stopped reading"
