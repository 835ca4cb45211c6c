"""The backup config's pieces for base backups and restore tests: the server to back up
(``postgresql.dsn`` and its password) and the scratch places a restore test may use."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from agentaskit_dr.config._base import (
    ConfigModel,
    ConfigPath,
    EnvName,
    Problem,
    problems_error,
    resolve_secret,
    secret_source_problems,
    url_has_password,
)

_DSN_SCHEMES = ("postgresql://", "postgres://")


def _has_host(url: str) -> bool:
    rest = url.partition("://")[2]
    authority = rest.partition("/")[0].partition("?")[0]
    return bool(authority.rpartition("@")[2].strip())


class PostgresSource(ConfigModel):
    """The server ``backup run`` copies, and the binaries it copies with."""

    dsn: str | None = None
    """``postgresql://user@host:port/dbname``: a role with REPLICATION (``pg_basebackup``)
    that may also call ``pg_control_checkpoint()``; None: ``backup run`` refuses to run
    (WAL archiving needs no connection)."""
    password_env: EnvName | None = None
    """Environment variable holding the password of ``dsn``'s role."""
    password_file: ConfigPath | None = None
    """File holding that password (surrounding whitespace stripped)."""
    bin_dir: ConfigPath | None = None
    """PostgreSQL binaries (``pg_basebackup``, ``pg_combinebackup``, ``postgres``...) of
    the server's major version; None: ``pg_config --bindir``."""

    _password: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_dsn(self) -> Self:
        problems = secret_source_problems(
            self.password_env, self.password_file,
            env_field="password_env", file_field="password_file",
        )
        if self.dsn is not None:
            if not self.dsn.startswith(_DSN_SCHEMES) or not _has_host(self.dsn):
                problems.append(
                    Problem(("dsn",), "must be a URL like postgresql://user@host:5432/dbname")
                )
            elif url_has_password(self.dsn) and (self.password_env or self.password_file):
                problems.append(Problem(
                    ("dsn",), "holds a password and password_env/password_file gives another"
                ))
        if problems:
            raise problems_error(problems)
        self._password = resolve_secret(
            self.password_env, self.password_file,
            env_field="password_env", file_field="password_file",
        )
        return self

    @property
    def password(self) -> SecretStr | None:
        """The password from ``password_env`` / ``password_file``, if either was given."""
        return self._password


class RestoreTarget(ConfigModel):
    """Where ``test-restore`` puts a restored copy: a scratch directory and a port."""

    workdir: ConfigPath
    """Created if missing; the restored data directory goes under it and is removed
    after the test unless ``--keep``."""
    port: Annotated[int, Field(ge=1024, le=65535)]
    """The restored server listens on 127.0.0.1 at this port."""


def production_target_problems(names: list[str]) -> list[Problem]:
    """A problem for each restore target whose name says production."""
    return [
        Problem(("restore_targets", name), "must not be a production environment")
        for name in names
        if "prod" in name.lower()
    ]
