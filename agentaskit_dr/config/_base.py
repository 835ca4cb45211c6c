"""Building blocks shared by the watchdog and backup schemas.

- :class:`ConfigModel`: frozen, unknown keys forbidden, and a ``repr`` that masks any
  password written inside a URL or DSN.
- Field types that accept operator notation (:data:`Duration`, :data:`Bytes`) and
  report errors in plain words.
- :class:`Problem` / :func:`problems_error`: how cross-field validators report one line
  per bad field (the loader expands them), instead of one vague line for the model.
- :func:`resolve_secret`: reads ``*_env`` / ``*_file`` at load time without ever putting
  the secret into a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agentaskit_dr.durations import parse_duration, parse_size

# ``redact`` is re-exported for config/_backup.py, which imports it from here.
from agentaskit_dr.redaction import redact as redact  # noqa: PLC0414 (explicit re-export)
from agentaskit_dr.redaction import redact_url

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a password itself (in its userinfo or as a parameter)."""
    return redact_url(url) != url


class ConfigModel(BaseModel):
    """Base of every configuration section: immutable, strict about keys, safe to print."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, data: Any) -> Any:
        # "probe:" with every line below it commented out parses as null: use the defaults.
        if not isinstance(data, dict):
            return data
        return {
            key: value
            for key, value in data.items()
            if not (value is None and _is_section_with_defaults(cls, key))
        }

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # str() and repr() go through here; resolved secrets live in private attributes
        # (never shown), but an operator may still write a password inside a URL.
        for name, value in super().__repr_args__():
            if isinstance(value, str):
                yield name, redact_url(value)
            elif isinstance(value, tuple) and all(isinstance(item, str) for item in value):
                yield name, tuple(redact_url(item) for item in value)
            else:
                yield name, value


def _is_section_with_defaults(model: type[BaseModel], key: object) -> bool:
    field = model.model_fields.get(key) if isinstance(key, str) else None
    return (
        field is not None
        and not field.is_required()
        and isinstance(field.annotation, type)
        and issubclass(field.annotation, ConfigModel)
    )


# ---------------------------------------------------------------- problems


class Problem(NamedTuple):
    """One bad field found by a cross-field rule, relative to the model that found it."""

    field: tuple[str, ...]
    message: str
    got: str | None = None


def problems_error(problems: Sequence[Problem]) -> PydanticCustomError:
    """One pydantic error carrying several problems; the loader turns each into a line."""
    summary = "; ".join(f"{'.'.join(p.field)}: {p.message}" for p in problems)
    return PydanticCustomError("config_fields", summary, {"problems": tuple(problems)})


def problem_error(
    field: str | tuple[str, ...], message: str, got: str | None = None
) -> PydanticCustomError:
    """:func:`problems_error` for a single problem; ``field`` is a key or a key path."""
    path = (field,) if isinstance(field, str) else field
    return problems_error([Problem(path, message, got)])


# ---------------------------------------------------------------- field types


def _to_seconds(value: Any) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise PydanticCustomError("duration", str(exc)) from None


def _to_bytes(value: Any) -> int:
    try:
        return parse_size(value)
    except (ValueError, TypeError) as exc:
        raise PydanticCustomError("size", str(exc)) from None


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise PydanticCustomError(
            "env_name", "must be an environment variable name like 'PGPASSWORD'"
        )
    return value


def _anchor_to_config_dir(path: Path, info: ValidationInfo) -> Path:
    # systemd starts us in /, so a relative path means "next to the config file".
    config_dir = (info.context or {}).get("config_dir")
    if isinstance(config_dir, Path) and not path.is_absolute():
        return config_dir / path
    return path


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        raise PydanticCustomError("url", "must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url", "must be an http:// or https:// URL")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


#: Seconds; accepts "250ms", "30s", "5m", "1h30m", "2d" or a number of seconds.
Duration = Annotated[float, BeforeValidator(_to_seconds)]
#: A duration longer than zero.
PositiveDuration = Annotated[Duration, Field(gt=0)]
#: Bytes; accepts "16MiB", "512kB" or a number of bytes.
Bytes = Annotated[int, BeforeValidator(_to_bytes)]
#: The name of an environment variable that holds a secret.
EnvName = Annotated[str, AfterValidator(_env_name)]
#: A file path; relative paths are taken relative to the config file's directory.
ConfigPath = Annotated[Path, AfterValidator(_anchor_to_config_dir)]
#: An http:// or https:// URL, kept exactly as written.
HttpUrl = Annotated[str, AfterValidator(_http_url)]
#: A string that must contain something besides whitespace.
NonBlank = Annotated[str, AfterValidator(_non_blank)]


# ---------------------------------------------------------------- secrets


def secret_source_problems(
    env_name: str | None, file_path: Path | None, *, env_field: str, file_field: str
) -> list[Problem]:
    """Problems with how a secret is given: at most one of its env var and file."""
    if env_name is not None and file_path is not None:
        return [Problem((file_field,), f"give at most one of {env_field} and {file_field}")]
    return []


def resolve_secret(
    env_name: str | None, file_path: Path | None, *, env_field: str, file_field: str
) -> SecretStr | None:
    """Read a secret from the environment or a file (stripped); None if neither is given.

    Raises a pydantic error naming the field. Messages name the variable or the path
    and why it failed, never the content.
    """
    if env_name is not None:
        value = os.environ.get(env_name)
        if value is None:
            raise problem_error(env_field, f"environment variable {env_name} is not set")
        if not value.strip():
            raise problem_error(env_field, f"environment variable {env_name} is empty")
        return SecretStr(value.strip())
    if file_path is not None:
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise problem_error(file_field, f"cannot read {file_path}: {reason}") from None
        except UnicodeDecodeError:
            raise problem_error(file_field, f"{file_path} is not UTF-8 text") from None
        if not text.strip():
            raise problem_error(file_field, f"{file_path} is empty")
        return SecretStr(text.strip())
    return None
