"""The backup encryption framing: round trips, tampering of every kind, key rotation."""

from __future__ import annotations

import itertools
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agentaskit_dr.backup.crypto import (
    MAGIC,
    BackupKeyError,
    KeyRing,
    ObjectTampered,
    StreamDecryptor,
    StreamEncryptor,
    decrypt_bytes,
    decrypt_stream,
    encrypt_bytes,
    encrypt_stream,
)
from agentaskit_dr.config import ConfigError, load_backup_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))
RING = KeyRing("k1", {"k1": OLD_KEY})
SMALL = 16  # chunk size that makes small examples span many chunks
FRAME = 4
TAG = 16


def header_size(key_id: str = "k1") -> int:
    return 4 + 1 + 1 + len(key_id) + 32 + 7 + 4


def chunks_of(blob: bytes, key_id: str = "k1") -> tuple[bytes, list[bytes]]:
    """The header and the framed chunks of ``blob``."""
    at = header_size(key_id)
    header, chunks = blob[:at], []
    while at < len(blob):
        (frame,) = struct.unpack_from(">I", blob, at)
        end = at + FRAME + (frame & 0x7FFFFFFF)
        chunks.append(blob[at:end])
        at = end
    return header, chunks


@given(data=st.binary(max_size=200), chunk_size=st.integers(1, 40))
def test_any_plaintext_round_trips(data: bytes, chunk_size: int) -> None:
    blob = encrypt_bytes(RING, "wal/000000010000000000000001", data, chunk_size=chunk_size)

    assert blob.startswith(MAGIC)
    assert decrypt_bytes(RING, "wal/000000010000000000000001", blob) == data


@given(data=st.binary(max_size=120), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_plaintext_fed_in_any_pieces_comes_out_whole(data: bytes, cuts: list[int]) -> None:
    blob = encrypt_bytes(RING, "obj", data, chunk_size=SMALL)
    bounds = [0, *sorted(min(cut, len(blob)) for cut in cuts), len(blob)]
    decryptor = StreamDecryptor(RING, "obj")

    plain = b"".join(decryptor.feed(blob[a:b]) for a, b in itertools.pairwise(bounds))
    decryptor.finish()

    assert plain == data


@settings(max_examples=200)
@given(data=st.binary(min_size=1, max_size=100), where=st.integers(0), bit=st.integers(0, 7))
def test_any_flipped_bit_fails(data: bytes, where: int, bit: int) -> None:
    blob = bytearray(encrypt_bytes(RING, "obj", data, chunk_size=SMALL))
    blob[where % len(blob)] ^= 1 << bit

    with pytest.raises((ObjectTampered, BackupKeyError)):
        decrypt_bytes(RING, "obj", bytes(blob))


@given(data=st.binary(max_size=100), keep=st.integers(0))
def test_any_truncation_fails(data: bytes, keep: int) -> None:
    blob = encrypt_bytes(RING, "obj", data, chunk_size=SMALL)

    with pytest.raises(ObjectTampered, match="obj"):
        decrypt_bytes(RING, "obj", blob[: keep % len(blob)])


@given(data=st.binary(min_size=9, max_size=100), i=st.integers(0), j=st.integers(0))
def test_reordered_chunks_fail(data: bytes, i: int, j: int) -> None:
    header, chunks = chunks_of(encrypt_bytes(RING, "obj", data, chunk_size=4))
    i, j = i % len(chunks), j % len(chunks)
    if i == j:
        j = (i + 1) % len(chunks)
    chunks[i], chunks[j] = chunks[j], chunks[i]

    with pytest.raises(ObjectTampered):
        decrypt_bytes(RING, "obj", header + b"".join(chunks))


@given(data=st.binary(min_size=5, max_size=100), which=st.integers(0))
def test_a_duplicated_or_dropped_chunk_fails(data: bytes, which: int) -> None:
    header, chunks = chunks_of(encrypt_bytes(RING, "obj", data, chunk_size=4))
    index = which % len(chunks)
    duplicated = chunks[: index + 1] + chunks[index:]
    dropped = chunks[:index] + chunks[index + 1 :]

    for tampered in (duplicated, dropped):
        with pytest.raises(ObjectTampered):
            decrypt_bytes(RING, "obj", header + b"".join(tampered))


@given(data=st.binary(max_size=60), name=st.text(min_size=1, max_size=20))
def test_an_object_read_under_another_name_fails(data: bytes, name: str) -> None:
    blob = encrypt_bytes(RING, "wal/000000010000000000000001", data)

    if name != "wal/000000010000000000000001":
        with pytest.raises(ObjectTampered, match="does not authenticate"):
            decrypt_bytes(RING, name, blob)


def test_swapped_objects_fail_even_with_the_same_key() -> None:
    one = encrypt_bytes(RING, "base/1/data.tar", b"one")
    two = encrypt_bytes(RING, "base/2/data.tar", b"two")

    with pytest.raises(ObjectTampered, match=r"base/2/data\.tar"):
        decrypt_bytes(RING, "base/2/data.tar", one)
    assert decrypt_bytes(RING, "base/2/data.tar", two) == b"two"


def test_no_plaintext_before_its_chunk_authenticates() -> None:
    blob = encrypt_bytes(RING, "obj", b"A" * 40, chunk_size=SMALL)
    header, chunks = chunks_of(blob)
    decryptor = StreamDecryptor(RING, "obj")

    assert decryptor.feed(header + chunks[0][:-1]) == b""  # the tag is not there yet
    assert decryptor.feed(chunks[0][-1:]) == b"A" * SMALL


def test_data_after_the_last_chunk_fails() -> None:
    blob = encrypt_bytes(RING, "obj", b"data")
    _, chunks = chunks_of(blob)

    with pytest.raises(ObjectTampered, match="after the last chunk"):
        decrypt_bytes(RING, "obj", blob + chunks[-1])


def test_an_empty_object_still_has_an_authenticated_last_chunk() -> None:
    blob = encrypt_bytes(RING, "obj", b"")

    assert len(blob) == header_size() + FRAME + TAG
    assert decrypt_bytes(RING, "obj", blob) == b""
    with pytest.raises(ObjectTampered, match="truncated"):
        decrypt_bytes(RING, "obj", blob[: header_size()])


def test_the_encryptor_refuses_oversized_and_late_chunks() -> None:
    encryptor = StreamEncryptor(RING, "obj", chunk_size=SMALL)
    with pytest.raises(ValueError, match="at most 16"):
        encryptor.chunk(b"x" * (SMALL + 1), last=False)
    encryptor.chunk(b"end", last=True)
    with pytest.raises(ValueError, match="already sealed"):
        encryptor.chunk(b"more", last=False)


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _collect(source: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in source])


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 1000])
async def test_streams_round_trip(size: int) -> None:
    data = bytes(range(256)) * 4
    data = data[:size]

    blob = await _collect(encrypt_stream(RING, "obj", _pieces(data, 7), chunk_size=100))
    plain = await _collect(decrypt_stream(RING, "obj", _pieces(blob, 13)))

    assert plain == data
    assert decrypt_bytes(RING, "obj", blob) == data


async def test_a_truncated_stream_fails_at_its_end() -> None:
    blob = encrypt_bytes(RING, "obj", b"x" * 250, chunk_size=100)
    _, chunks = chunks_of(blob)

    with pytest.raises(ObjectTampered, match="truncated after 2 chunks"):
        await _collect(decrypt_stream(RING, "obj", _pieces(blob[: -len(chunks[-1])], 50)))


# ---------------------------------------------------------------- rotation


def test_a_rotated_ring_encrypts_with_the_new_id_and_reads_the_old_objects() -> None:
    old_blob = encrypt_bytes(RING, "wal/1", b"before rotation")
    rotated = KeyRing("k2", {"k1": OLD_KEY, "k2": NEW_KEY})

    new_blob = encrypt_bytes(rotated, "wal/2", b"after rotation")

    assert new_blob[6:8] == b"k2"
    assert decrypt_bytes(rotated, "wal/1", old_blob) == b"before rotation"
    assert decrypt_bytes(rotated, "wal/2", new_blob) == b"after rotation"


def test_an_object_whose_key_was_dropped_names_the_missing_id() -> None:
    blob = encrypt_bytes(RING, "wal/1", b"x")
    only_new = KeyRing("k2", {"k2": NEW_KEY})

    with pytest.raises(BackupKeyError, match=r"key id 'k1' is not configured.*previous_keys"):
        decrypt_bytes(only_new, "wal/1", blob)


def test_a_wrong_key_under_the_same_id_fails_authentication_with_a_hint() -> None:
    blob = encrypt_bytes(RING, "wal/1", b"x")

    with pytest.raises(ObjectTampered, match="'k1' is configured with another key"):
        decrypt_bytes(KeyRing("k1", {"k1": NEW_KEY}), "wal/1", blob)


def test_a_ring_needs_its_current_key_and_256_bit_keys() -> None:
    with pytest.raises(BackupKeyError, match=r"encryption\.key_id"):
        KeyRing("k3", {"k1": OLD_KEY})
    with pytest.raises(BackupKeyError, match="32 bytes"):
        KeyRing("k1", {"k1": b"short"})


def _backup_yaml(tmp_path: Path, encryption: dict[str, Any]) -> Path:
    data = yaml.safe_load((CONFIGS / "backup.yaml").read_text())
    data["encryption"] = encryption
    path = tmp_path / "backup.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_key_ring_from_config_with_a_previous_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEW_KEY", NEW_KEY.hex())
    (tmp_path / "old.key").write_text(OLD_KEY.hex() + "\n")
    config = load_backup_config(_backup_yaml(tmp_path, {
        "key_env": "NEW_KEY", "key_id": "k2",
        "previous_keys": [{"id": "k1", "key_file": "old.key"}],
    }))

    ring = KeyRing.from_config(config.encryption)

    assert ring.current_id == "k2"
    assert ring.key("k1") == OLD_KEY
    assert ring.key("k2") == NEW_KEY
    assert NEW_KEY.hex() not in repr(ring)


@pytest.mark.parametrize(
    ("encryption", "problem"),
    [
        ({"key_env": "NEW_KEY", "key_id": "k 2"}, "encryption.key_id: must be 1-64 letters"),
        ({"key_env": "NEW_KEY", "previous_keys": [{"id": "k1", "key_env": "NEW_KEY"}]},
         "encryption.previous_keys[0].id: must differ from key_id"),
        ({"key_env": "NEW_KEY", "previous_keys": [{"id": "k0"}]},
         "encryption.previous_keys[0].key_env: give key_env or key_file"),
        ({"key_env": "NEW_KEY", "previous_keys": [{"id": "k0", "key_env": "UNSET_KEY"}]},
         "encryption.previous_keys[0].key_env: environment variable UNSET_KEY is not set"),
    ],
)
def test_bad_key_settings_name_their_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encryption: dict[str, Any], problem: str
) -> None:
    monkeypatch.setenv("NEW_KEY", NEW_KEY.hex())
    monkeypatch.delenv("UNSET_KEY", raising=False)

    with pytest.raises(ConfigError) as caught:
        load_backup_config(_backup_yaml(tmp_path, encryption))

    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems
    assert NEW_KEY.hex() not in str(caught.value)
