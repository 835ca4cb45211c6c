"""Client-side encryption of backup objects: AES-256-GCM in a STREAM framing.

Nothing here invents a primitive: ``cryptography``'s AESGCM seals each chunk and HKDF-SHA256
derives a fresh key per object. The framing (docs/backups.md, "Encryption") is::

    object  = header ‖ chunk*
    header  = "ADRB" ‖ version (1 byte, 1) ‖ key id length (1 byte) ‖ key id (ASCII)
              ‖ salt (32 random bytes) ‖ nonce prefix (7 random bytes)
              ‖ chunk size (4 bytes, big-endian: the most plaintext one chunk holds)
    chunk   = frame (4 bytes, big-endian: last flag << 31 | sealed length) ‖ sealed
    sealed  = AESGCM(object key).encrypt(nonce, plaintext, aad)   (plaintext + 16-byte tag)
    object key = HKDF-SHA256(master key of key id, salt, info="agentaskit-dr backup v1\\0" ‖ key id)
    nonce   = nonce prefix ‖ chunk counter (4 bytes, big-endian, from 0) ‖ last flag (1 byte)
    aad     = header ‖ object name (UTF-8)

The counter and the last flag sit in the nonce, so a reordered, duplicated, dropped or
truncated chunk fails its tag, and so does a frame whose last bit was flipped; the header and
the name sit in the associated data, so an object copied under another name fails too. The
decryptor releases a chunk's plaintext only after its tag checked, and :meth:`finish` fails
an object whose last chunk never came.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from agentaskit_dr.config import EncryptionConfig

MAGIC = b"ADRB"
VERSION = 1
#: Plaintext bytes per chunk unless told otherwise.
CHUNK_SIZE = 1 << 20
#: The largest chunk a decryptor accepts: it buffers one chunk, so this bounds its memory.
MAX_CHUNK_SIZE = 64 << 20
TAG_SIZE = 16
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
_LAST = 1 << 31
_FRAME = struct.Struct(">I")
_MAX_CHUNKS = 1 << 32
_INFO = b"agentaskit-dr backup v1\x00"
# magic, version, key id length
_FIXED_HEAD = struct.Struct(">4sBB")
_FIXED_TAIL = SALT_SIZE + NONCE_PREFIX_SIZE + 4


class BackupKeyError(LookupError):
    """A key is missing, malformed or not configured; the message names the field or id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "backup key error"


class ObjectTampered(Exception):
    """An encrypted object failed authentication: changed, truncated, reordered or renamed."""

    def __init__(self, object_name: str, detail: str) -> None:
        super().__init__(object_name, detail)
        self.object_name = object_name
        self.detail = detail

    def __str__(self) -> str:
        return f"object {self.object_name!r} failed authentication: {self.detail}"


class KeyRing:
    """The master keys by id: ``current_id`` encrypts, every configured id decrypts."""

    def __init__(self, current_id: str, keys: Mapping[str, bytes]) -> None:
        if current_id not in keys:
            raise BackupKeyError(f"encryption.key_id: no key configured for {current_id!r}")
        for key_id, key in keys.items():
            if not 1 <= len(key_id.encode("ascii")) <= 64:
                raise BackupKeyError(f"encryption.key_id: {key_id!r} must be 1-64 ASCII chars")
            if len(key) != 32:
                raise BackupKeyError(f"encryption key {key_id!r} must be 32 bytes (256 bits)")
        self.current_id = current_id
        self._keys = dict(keys)

    @classmethod
    def from_config(cls, config: EncryptionConfig) -> KeyRing:
        """The ring of ``encryption:``: ``key_id`` with its key, plus ``previous_keys``."""
        keys = {old.id: old.key_bytes() for old in config.previous_keys}
        keys[config.key_id] = config.key_bytes()
        return cls(config.key_id, keys)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every configured key id."""
        return tuple(self._keys)

    def key(self, key_id: str) -> bytes:
        """The master key of ``key_id``; :class:`BackupKeyError` if it is not configured."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise BackupKeyError(
                f"key id {key_id!r} is not configured: add it to encryption.previous_keys "
                f"(configured: {', '.join(sorted(self._keys))})"
            ) from None

    def __repr__(self) -> str:
        return f"KeyRing(current_id={self.current_id!r}, ids={sorted(self._keys)!r})"


def _object_cipher(master: bytes, key_id: str, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                info=_INFO + key_id.encode("ascii"))
    return AESGCM(hkdf.derive(master))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class StreamEncryptor:
    """Seals one object: :meth:`header` first, then :meth:`chunk` for each piece in order."""

    def __init__(self, keyring: KeyRing, object_name: str, *, chunk_size: int = CHUNK_SIZE
                 ) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        self.chunk_size = chunk_size
        self.object_name = object_name
        key_id = keyring.current_id
        salt = os.urandom(SALT_SIZE)
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        id_bytes = key_id.encode("ascii")
        self._header = (
            _FIXED_HEAD.pack(MAGIC, VERSION, len(id_bytes)) + id_bytes + salt + self._prefix
            + chunk_size.to_bytes(4, "big")
        )
        self._aad = self._header + object_name.encode("utf-8")
        self._cipher = _object_cipher(keyring.key(key_id), key_id, salt)
        self._counter = 0
        self._closed = False

    def header(self) -> bytes:
        """The object's header: write it before the first chunk."""
        return self._header

    def chunk(self, data: bytes, *, last: bool) -> bytes:
        """``data`` (at most ``chunk_size`` bytes) sealed as the next chunk, with its frame."""
        frame, sealed = self.seal(data, last=last)
        return frame + sealed

    def seal(self, data: bytes | memoryview, *, last: bool) -> tuple[bytes, bytes]:
        """:meth:`chunk` as ``(frame, sealed)``, sparing a copy of the chunk."""
        if self._closed:
            raise ValueError("the last chunk was already sealed")
        if len(data) > self.chunk_size:
            raise ValueError(f"a chunk holds at most {self.chunk_size} bytes, got {len(data)}")
        if self._counter >= _MAX_CHUNKS:
            raise ValueError("object too large for its chunk size")
        sealed = self._cipher.encrypt(_nonce(self._prefix, self._counter, last), data, self._aad)
        self._counter += 1
        self._closed = last
        return _FRAME.pack(len(sealed) | (_LAST if last else 0)), sealed


class StreamDecryptor:
    """Opens one object fed in pieces of any size; returns only authenticated plaintext."""

    def __init__(self, keyring: KeyRing, object_name: str) -> None:
        self.object_name = object_name
        self._keyring = keyring
        self._buffer = bytearray()
        self._cipher: AESGCM | None = None
        self._aad = b""
        self._prefix = b""
        self._chunk_size = 0
        self._key_id = ""
        self._counter = 0
        self._done = False

    def _tampered(self, detail: str) -> ObjectTampered:
        return ObjectTampered(self.object_name, detail)

    def _read_header(self) -> bool:
        buffer = self._buffer
        if len(buffer) < _FIXED_HEAD.size:
            return False
        magic, version, id_length = _FIXED_HEAD.unpack_from(buffer)
        if magic != MAGIC:
            raise self._tampered("not an agentaskit-dr encrypted object (bad magic)")
        if version != VERSION:
            raise self._tampered(f"unknown format version {version}")
        size = _FIXED_HEAD.size + id_length + _FIXED_TAIL
        if id_length == 0:
            raise self._tampered("empty key id in header")
        if len(buffer) < size:
            return False
        header = bytes(buffer[:size])
        at = _FIXED_HEAD.size
        try:
            key_id = header[at:at + id_length].decode("ascii")
        except UnicodeDecodeError:
            raise self._tampered("key id in header is not ASCII") from None
        at += id_length
        salt = header[at:at + SALT_SIZE]
        self._prefix = header[at + SALT_SIZE:at + SALT_SIZE + NONCE_PREFIX_SIZE]
        self._chunk_size = int.from_bytes(header[-4:], "big")
        if not 1 <= self._chunk_size <= MAX_CHUNK_SIZE:
            raise self._tampered(f"chunk size {self._chunk_size} out of range")
        self._key_id = key_id
        try:
            master = self._keyring.key(key_id)
        except BackupKeyError as exc:
            raise BackupKeyError(f"object {self.object_name!r}: {exc}") from None
        self._cipher = _object_cipher(master, key_id, salt)
        self._aad = header + self.object_name.encode("utf-8")
        del buffer[:size]
        return True

    def feed(self, data: bytes) -> bytes:
        """Take the next ``data``; return the plaintext of every chunk completed and checked."""
        if self._done:
            if data:
                raise self._tampered("data after the last chunk")
            return b""
        self._buffer += data
        if self._cipher is None and not self._read_header():
            return b""
        assert self._cipher is not None
        out: list[bytes] = []
        buffer = self._buffer
        at = 0  # consumed bytes, dropped from the buffer once at the end (no memmove per chunk)
        with memoryview(buffer) as view:
            while not self._done and len(buffer) - at >= _FRAME.size:
                (frame,) = _FRAME.unpack_from(buffer, at)
                last, length = bool(frame & _LAST), frame & ~_LAST
                if not TAG_SIZE <= length <= self._chunk_size + TAG_SIZE:
                    raise self._tampered(
                        f"chunk {self._counter} has an impossible length {length}")
                start = at + _FRAME.size
                if len(buffer) < start + length:
                    break
                if self._counter >= _MAX_CHUNKS:
                    raise self._tampered("too many chunks")
                out.append(self._open(view[start:start + length], last))
                at = start + length
                self._counter += 1
                self._done = last
        del buffer[:at]
        if self._done and buffer:
            raise self._tampered("data after the last chunk")
        return b"".join(out)

    def _open(self, sealed: memoryview, last: bool) -> bytes:
        assert self._cipher is not None
        nonce = _nonce(self._prefix, self._counter, last)
        try:
            return self._cipher.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            hint = (f" (or key id {self._key_id!r} is configured with another key)"
                    if self._counter == 0 else "")
            raise self._tampered(f"chunk {self._counter} does not authenticate{hint}"
                                 ) from None

    def finish(self) -> None:
        """Check the object ended with its last chunk; :class:`ObjectTampered` if not."""
        if not self._done:
            where = "in its header" if self._cipher is None else f"after {self._counter} chunks"
            raise self._tampered(f"truncated {where}: the last chunk never came")


def encrypt_bytes(keyring: KeyRing, name: str, data: bytes, *, chunk_size: int = CHUNK_SIZE
                  ) -> bytes:
    """``data`` encrypted as the object ``name``."""
    encryptor = StreamEncryptor(keyring, name, chunk_size=chunk_size)
    parts = [encryptor.header()]
    with memoryview(data) as view:
        start = 0
        while True:
            piece = view[start:start + chunk_size]
            start += chunk_size
            last = start >= len(data)
            parts.extend(encryptor.seal(piece, last=last))
            if last:
                return b"".join(parts)


def decrypt_bytes(keyring: KeyRing, name: str, blob: bytes) -> bytes:
    """The plaintext of the object ``name``; :class:`ObjectTampered` unless it authenticates."""
    decryptor = StreamDecryptor(keyring, name)
    plain = decryptor.feed(blob)
    decryptor.finish()
    return plain


async def encrypt_stream(
    keyring: KeyRing, name: str, source: AsyncIterator[bytes], *, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """``source`` encrypted as the object ``name``, one sealed chunk at a time."""
    encryptor = StreamEncryptor(keyring, name, chunk_size=chunk_size)
    yield encryptor.header()
    pending = bytearray()
    async for data in source:
        pending += data
        # Keep at least one byte back: the last chunk must be sealed as the last.
        while len(pending) > chunk_size:
            yield encryptor.chunk(bytes(pending[:chunk_size]), last=False)
            del pending[:chunk_size]
    yield encryptor.chunk(bytes(pending), last=True)


async def decrypt_stream(
    keyring: KeyRing, name: str, source: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    """The authenticated plaintext of the object ``name`` read from ``source``."""
    decryptor = StreamDecryptor(keyring, name)
    async for data in source:
        plain = decryptor.feed(data)
        if plain:
            yield plain
    decryptor.finish()
