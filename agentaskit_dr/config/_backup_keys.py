"""The backup encryption keys: the current one and the retired ones still read.

The key is written as 64 hex digits or as base64 of 32 bytes, read at load time from an
environment variable or a file, kept as a :class:`~pydantic.SecretBytes`, never printed.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, PrivateAttr, SecretBytes, model_validator
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    EnvName,
    Problem,
    problem_error,
    problems_error,
    resolve_secret,
    secret_source_problems,
)

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _key_id(value: str) -> str:
    if not _KEY_ID.fullmatch(value):
        raise PydanticCustomError(
            "key_id", "must be 1-64 letters, digits, '.', '_' or '-' (like 'k2027-01')"
        )
    return value


#: The name of a key inside encrypted objects' headers.
KeyId = Annotated[str, AfterValidator(_key_id)]


def _read_key(key_env: str | None, key_file: Path | None) -> SecretBytes:
    """The 32-byte key from exactly one of ``key_env``/``key_file``; errors name the field."""
    problems = secret_source_problems(
        key_env, key_file, env_field="key_env", file_field="key_file"
    )
    if key_env is None and key_file is None:
        problems.append(Problem(("key_env",), "give key_env or key_file: backups are encrypted"))
    if problems:
        raise problems_error(problems)
    text = resolve_secret(key_env, key_file, env_field="key_env", file_field="key_file")
    key = None if text is None else _decode_key(text.get_secret_value())
    if key is None:
        field = "key_env" if key_env is not None else "key_file"
        raise problem_error(field, "must hold a 256-bit key: 64 hex digits or base64 of 32 bytes")
    return SecretBytes(key)


class PreviousKey(ConfigModel):
    """A retired key: no longer encrypts, still decrypts the objects written with it."""

    id: KeyId
    key_env: EnvName | None = None
    key_file: ConfigPath | None = None

    _key: SecretBytes = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> Self:
        self._key = _read_key(self.key_env, self.key_file)
        return self

    def key_bytes(self) -> bytes:
        """The 32-byte AES key."""
        return self._key.get_secret_value()


class EncryptionConfig(ConfigModel):
    """Backups are encrypted with AES-256-GCM; the 256-bit key comes from an env var or file.

    The key is written as 64 hex digits or as base64 of 32 bytes. ``key_id`` names it in
    every object's header; rotating means giving a new key a new id and moving the old
    one to ``previous_keys`` so the objects it wrote stay readable.
    """

    algorithm: Literal["AES-256-GCM"] = "AES-256-GCM"
    key_env: EnvName | None = None
    key_file: ConfigPath | None = None
    key_id: KeyId = "k1"
    previous_keys: tuple[PreviousKey, ...] = ()

    _key: SecretBytes = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> Self:
        ids = [self.key_id, *(old.id for old in self.previous_keys)]
        for index, old in enumerate(self.previous_keys):
            if ids.count(old.id) > 1:
                raise problem_error(
                    (f"previous_keys[{index}]", "id"),
                    "must differ from key_id and from the other previous keys",
                    got=repr(old.id),
                )
        self._key = _read_key(self.key_env, self.key_file)
        return self

    def key_bytes(self) -> bytes:
        """The 32-byte AES key."""
        return self._key.get_secret_value()


def _decode_key(text: str) -> bytes | None:
    """The key from 64 hex digits or (URL-safe or standard) base64; None unless 32 bytes."""
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        key = base64.b64decode(text.translate(_URLSAFE_TO_STANDARD), validate=True)
    except ValueError:  # binascii.Error included
        return None
    return key if len(key) == 32 else None


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
