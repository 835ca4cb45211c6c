"""The watchdog's connections and their secrets: the PostgreSQL and Redis (lock) settings.

Passwords given through ``*_env`` / ``*_file`` are read while the model is validated and kept
in private attributes as :class:`~pydantic.SecretStr`, so ``repr``, ``str`` and
``model_dump`` never carry them.
"""

from __future__ import annotations

from typing import Self
from urllib.parse import quote

from pydantic import (
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    Duration,
    EnvName,
    NonBlank,
    PositiveDuration,
    Problem,
    problems_error,
    resolve_secret,
    secret_source_problems,
    url_has_password,
)
from agentaskit_dr.config._control import DatabaseControlConfig
from agentaskit_dr.durations import format_duration

_DSN_SCHEMES = ("postgresql://", "postgres://")
_LOCK_SCHEMES = ("redis://", "rediss://")


def _authority_end(rest: str) -> int:
    """Index in ``rest`` (a URL after ``scheme://``) where the user/host part ends."""
    ends = [i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0]
    return min(ends, default=len(rest))


def _has_host(url: str) -> bool:
    rest = url.partition("://")[2]
    authority = rest[: _authority_end(rest)]
    return bool(authority.rpartition("@")[2].strip())


class _PasswordSource(ConfigModel):
    """A section whose password comes from ``password_env`` or ``password_file``."""

    password_env: EnvName | None = None
    """Environment variable holding the password."""
    password_file: ConfigPath | None = None
    """File holding the password (surrounding whitespace stripped)."""

    _password: SecretStr | None = PrivateAttr(default=None)

    def _password_problems(self, url_field: str, url: str) -> list[Problem]:
        problems = secret_source_problems(
            self.password_env,
            self.password_file,
            env_field="password_env",
            file_field="password_file",
        )
        if (self.password_env or self.password_file) and url_has_password(url):
            # Clients silently prefer one of the two (redis-py the URL's): make the
            # operator choose.
            text = "holds a password and password_env/password_file gives another"
            problems.append(Problem((url_field,), text))
        return problems

    def _read_password(self) -> None:
        self._password = resolve_secret(
            self.password_env,
            self.password_file,
            env_field="password_env",
            file_field="password_file",
        )


class DatabaseConfig(_PasswordSource):
    """How to reach one region's PostgreSQL server."""

    dsn: str
    """``postgresql://user@host:port/dbname``; an inline password is allowed, not advised."""
    control: DatabaseControlConfig | None = None
    """Set only where this watchdog runs on the server's host and may stop it (hard fence)."""
    replication_dsn: NonBlank | None = None
    """libpq conninfo (``key=value`` words or a URL) a standby of this server streams with
    (its ``primary_conninfo``) and ``sync-primary`` re-clones from (``pg_basebackup``);
    None: host, port and user of ``dsn``, no password (the standby's OS user's
    ``~/.pgpass``)."""

    @field_validator("dsn")
    @classmethod
    def _postgres_dsn(cls, dsn: str) -> str:
        if not dsn.startswith(_DSN_SCHEMES) or not _has_host(dsn):
            raise PydanticCustomError(
                "dsn", "must be a URL like postgresql://user@host:5432/dbname"
            )
        return dsn

    @model_validator(mode="after")
    def _check_password(self) -> Self:
        problems = self._password_problems("dsn", self.dsn)
        if problems:
            raise problems_error(problems)
        self._read_password()
        return self

    @property
    def password(self) -> SecretStr | None:
        """The password read from ``password_env`` / ``password_file``, if either was given."""
        return self._password

    def connect_dsn(self) -> str:
        """The DSN to hand to asyncpg, with the resolved password inserted (URL-quoted)."""
        if self._password is None:
            return self.dsn
        scheme, _, rest = self.dsn.partition("://")
        end = _authority_end(rest)
        # asyncpg splits user info from hosts at the first "@", so do the same.
        userinfo, at, hosts = rest[:end].partition("@")
        if not at:
            userinfo, hosts = "", rest[:end]
        user = userinfo.partition(":")[0]
        password = quote(self._password.get_secret_value(), safe="")
        return f"{scheme}://{user}:{password}@{hosts}{rest[end:]}"


class LockConfig(_PasswordSource):
    """The leader lock store (Redis) and the lease timing."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://`` or ``rediss://`` (TLS) URL of the lock store."""
    ttl: PositiveDuration = 15.0
    """Lease length; at least three socket timeouts so a renewal fits in it."""
    margin: Duration | None = None
    """Stop acting this long before the lease ends; None leaves the default to the lock."""
    key_prefix: NonBlank = "agentaskit-dr"
    """Prefix of every key the lock and journal write."""
    socket_timeout: PositiveDuration = 1.0
    """Bound on each lock store call; redis-py's own retries must fit inside it."""
    sentinels: tuple[NonBlank, ...] = ()
    """``host:port`` of Redis Sentinels; with them the lock store is the master they name
    (``service_name``), found anew after a Sentinel failover. ``url`` then gives only the
    scheme, database and password."""
    service_name: NonBlank | None = None
    """The Sentinel master name (``sentinel monitor <name> ...``); required with sentinels."""

    @field_validator("sentinels")
    @classmethod
    def _host_ports(cls, sentinels: tuple[str, ...]) -> tuple[str, ...]:
        for entry in sentinels:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise PydanticCustomError(
                    "sentinels", "each entry must be host:port, got {entry!r}", {"entry": entry})
        return sentinels

    @property
    def store_url(self) -> str:
        """The URL the lock, journal and cluster clients open: ``url``, or with sentinels
        ``redis+sentinel://h1:p1,h2:p2/<service_name>/<db>`` (``rediss+sentinel`` for TLS)."""
        if not self.sentinels:
            return self.url
        scheme = "rediss+sentinel" if self.url.startswith("rediss://") else "redis+sentinel"
        userinfo = self.url.partition("://")[2].partition("/")[0].rpartition("@")
        credentials = f"{userinfo[0]}@" if userinfo[1] else ""
        database = self.url.partition("://")[2].partition("/")[2] or "0"
        return f"{scheme}://{credentials}{','.join(self.sentinels)}/{self.service_name}/{database}"

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if not url.startswith(_LOCK_SCHEMES) or not _has_host(url):
            raise PydanticCustomError("url", "must be a URL like redis://host:6379/0 or rediss://")
        return url

    @field_validator("key_prefix")
    @classmethod
    def _no_spaces(cls, prefix: str) -> str:
        if any(character.isspace() for character in prefix):
            raise PydanticCustomError("key_prefix", "must not contain spaces")
        return prefix

    @model_validator(mode="after")
    def _check_timing_and_read_password(self) -> Self:
        problems = self._password_problems("url", self.url)
        if bool(self.sentinels) != (self.service_name is not None):
            missing = "service_name" if self.sentinels else "sentinels"
            problems.append(Problem((missing,), "lock.sentinels and lock.service_name go "
                                    "together: set both or neither"))
        if self.ttl < 3 * self.socket_timeout:
            problems.append(
                Problem(
                    ("ttl",),
                    "must be at least 3 x lock.socket_timeout "
                    f"({format_duration(3 * self.socket_timeout)})",
                    got=format_duration(self.ttl),
                )
            )
        if self.margin is not None and self.margin >= self.ttl:
            problems.append(
                Problem(
                    ("margin",),
                    f"must be shorter than lock.ttl ({format_duration(self.ttl)})",
                    got=format_duration(self.margin),
                )
            )
        if problems:
            raise problems_error(problems)
        self._read_password()
        return self

    def password_value(self) -> str | None:
        """The password from ``password_env`` / ``password_file``; None if neither is set.

        A password written in ``url`` itself is left to redis-py's URL parsing.
        """
        return None if self._password is None else self._password.get_secret_value()

