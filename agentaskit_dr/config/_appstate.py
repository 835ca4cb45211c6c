"""Where the application state lives: the Redis server, the config files, Vault.

These are mixed into the ``application_state`` items of the backup config (method,
schedule, retention come from :class:`~agentaskit_dr.config._backup.StateBackup`). Secrets
(the Redis password, the Vault token) are only named here and read when a job runs
(:func:`read_secret`), so a missing token never stops the WAL archiver from loading the
same file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import model_validator

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    EnvName,
    HttpUrl,
    PositiveDuration,
    Problem,
    problems_error,
    secret_source_problems,
    url_has_password,
)

DEFAULT_CONFIGS_GIT_DIR = Path("/var/lib/agentaskit-dr/configs-git")


class SecretUnavailable(ValueError):
    """A configured secret could not be read; the message names the field, never the value."""


def read_secret(env_name: str | None, file_path: Path | None, *, where: str,
                env_field: str, file_field: str) -> str | None:
    """The secret from ``env_name`` or ``file_path`` (stripped), None if neither is set."""
    if env_name is not None:
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise SecretUnavailable(
                f"{where}.{env_field}: environment variable {env_name} is not set or empty")
        return value
    if file_path is not None:
        try:
            value = file_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SecretUnavailable(
                f"{where}.{file_field}: cannot read {file_path}: {reason}") from None
        if not value:
            raise SecretUnavailable(f"{where}.{file_field}: {file_path} is empty")
        return value
    return None


class RedisStateSource(ConfigModel):
    """The Redis server whose data ``appstate backup redis`` copies."""

    url: str | None = None
    """``redis://[user@]host:port[/db]``; None: no Redis backup is configured."""
    password_env: EnvName | None = None
    """Environment variable holding the password (AUTH) of ``url``."""
    password_file: ConfigPath | None = None
    """File holding that password."""
    data_dir: ConfigPath | None = None
    """Redis's ``dir`` when the watchdog runs beside it: its AOF files (``appendonlydir``
    in Redis 7, ``appendonly.aof`` before) are copied too. None: the RDB only."""
    timeout: PositiveDuration = 300.0
    """The longest a transfer of the RDB may take."""

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        problems = secret_source_problems(
            self.password_env, self.password_file,
            env_field="password_env", file_field="password_file")
        if self.url is not None:
            try:
                parts = urlsplit(self.url)
                port = parts.port
            except ValueError:
                parts, port = None, None
            if parts is None or parts.scheme != "redis" or not parts.hostname or port is None:
                problems.append(Problem(("url",), "must be a URL like redis://host:6379/0",
                                        got=repr(self.url)))
            elif url_has_password(self.url):
                problems.append(Problem(
                    ("url",), "must not hold a password: use password_env or password_file"))
        if problems:
            raise problems_error(problems)
        return self

    def password(self) -> str | None:
        """The password, read now; :class:`SecretUnavailable` names the field."""
        return read_secret(self.password_env, self.password_file,
                           where="application_state.redis", env_field="password_env",
                           file_field="password_file")


class ConfigsStateSource(ConfigModel):
    """The configuration files ``appstate backup configs`` keeps."""

    paths: tuple[ConfigPath, ...] = ()
    """Files or directories; empty: the YAML files next to the backup config (the
    watchdog's own config files)."""
    git_dir: ConfigPath = DEFAULT_CONFIGS_GIT_DIR
    """The local git repository each change is committed to (created if missing), for
    paths that are not inside a clean git checkout of their own."""


class SecretsStateSource(ConfigModel):
    """The Vault cluster whose raft snapshot ``appstate backup vault`` takes."""

    vault_addr: HttpUrl | None = None
    """Like ``https://vault.internal:8200``; None: no Vault backup is configured."""
    token_env: EnvName | None = None
    """Environment variable holding a token allowed to read
    ``sys/storage/raft/snapshot``."""
    token_file: ConfigPath | None = None
    """File holding that token."""
    ca_file: ConfigPath | None = None
    """CA bundle that signed Vault's certificate (https only); None: the system's."""
    timeout: PositiveDuration = 600.0
    """The longest the snapshot download may take."""

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        problems = secret_source_problems(
            self.token_env, self.token_file, env_field="token_env", file_field="token_file")
        if self.vault_addr is not None and self.token_env is None and self.token_file is None:
            problems.append(Problem(("token_env",), "give token_env or token_file with vault_addr"))
        if self.ca_file is not None and not self.ca_file.is_file():
            problems.append(Problem(("ca_file",), f"{self.ca_file} is not a file"))
        if problems:
            raise problems_error(problems)
        return self

    def token(self) -> str | None:
        """The token, read now; :class:`SecretUnavailable` names the field."""
        return read_secret(self.token_env, self.token_file, where="application_state.secrets",
                           env_field="token_env", file_field="token_file")
