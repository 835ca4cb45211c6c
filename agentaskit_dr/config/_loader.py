"""Reading configuration files: YAML in, a validated model or a :class:`ConfigError` out.

Whatever goes wrong (missing file, YAML syntax, a bad value), the caller gets one
exception type with one line per problem, ready for an operator: no traceback, no
pydantic documentation URLs, no secret values.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agentaskit_dr.config._backup import BackupConfig
from agentaskit_dr.config._base import Problem
from agentaskit_dr.config._models import WatchdogConfig
from agentaskit_dr.redaction import redact_url

ModelT = TypeVar("ModelT", bound=BaseModel)

_MAX_SHOWN = 80


class ConfigError(Exception):
    """A configuration file cannot be used.

    ``problems`` holds one line per bad field, e.g.
    ``"thresholds.db_unreachable: must be a duration like '2m' or '120s' (got 'soon')"``.
    """

    problems: list[str]

    def __init__(self, source: str | Path, problems: Sequence[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        super().__init__(self.source, self.problems)

    def __str__(self) -> str:
        lines = "".join(f"\n  {problem}" for problem in self.problems)
        return f"{self.source}: invalid configuration{lines}"


def load_config(path: str | Path) -> WatchdogConfig:
    """Read and validate a watchdog config (``configs/watchdog.yaml``); raises ConfigError."""
    return _load(Path(path), WatchdogConfig)


def load_backup_config(path: str | Path) -> BackupConfig:
    """Read and validate a backup config (``configs/backup.yaml``); raises ConfigError."""
    return _load(Path(path), BackupConfig)


def looks_like_backup(path: str | Path) -> bool:
    """Whether ``path`` looks like a backup config rather than a watchdog config.

    True when its top level has a backup section (``storage``, ``encryption``, ...) and
    no ``regions``. Never raises: an unreadable file is "not backup", and loading it as a
    watchdog config then reports what is wrong with it.
    """
    try:
        data = _read_yaml(Path(path))
    except ConfigError:
        return False
    keys = set(data)
    return bool(keys & _BACKUP_SECTIONS) and "regions" not in keys


_BACKUP_SECTIONS = frozenset(BackupConfig.model_fields)


def _load(path: Path, model: type[ModelT]) -> ModelT:
    data = _read_yaml(path)
    try:
        return model.model_validate(data, context={"config_dir": path.absolute().parent})
    except ValidationError as exc:
        # "from None": pydantic's own message echoes inputs, which may hold a DSN password.
        raise ConfigError(path, describe_validation_error(exc, model)) from None


# ---------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" may be overridden by explicit keys; that is its point
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(path, [f"cannot read file: {reason}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["file is not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(path, [_describe_yaml_error(exc)]) from None
    except (yaml.YAMLError, ValueError) as exc:
        # ValueError: SafeLoader building e.g. a timestamp like 2024-13-01.
        raise ConfigError(path, [f"YAML error: {type(exc).__name__}"]) from None
    if data is None:
        raise ConfigError(path, ["file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(path, [f"top level must be a mapping of keys (got {_kind(data)})"])
    return data


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts, not str(exc): that quotes the offending line, secrets and all.
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = exc.problem or exc.context or "cannot parse"
    return f"{where}YAML syntax error: {what}"


# ---------------------------------------------------------------- validation errors


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One ``"dotted.path: message (got value)"`` line per problem in ``exc``."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        location = tuple(error["loc"])
        if error["type"] == "config_fields":
            problems: tuple[Problem, ...] = error.get("ctx", {})["problems"]
            lines.extend(
                _line(location + problem.field, problem.message, problem.got)
                for problem in problems
            )
        else:
            lines.append(_describe_error(error, location, model))
    return lines


def _describe_error(
    error: ErrorDetails, location: tuple[int | str, ...], model: type[BaseModel]
) -> str:
    kind = error["type"]
    if kind == "missing":
        return _line(location, "required key is missing")
    if kind == "extra_forbidden":
        return _line(location, _unknown_key_message(location, model))
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return _line(location, "must be a mapping of keys", _kind(error["input"]))
    message = error["msg"].removeprefix("Value error, ")
    return _line(location, message, _shown(error["input"]))


def _line(location: Sequence[int | str], message: str, got: str | None = None) -> str:
    path = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in location
    ).removeprefix(".")
    suffix = f" (got {got})" if got is not None else ""
    return f"{path or '(top level)'}: {message}{suffix}"


def _shown(value: object) -> str:
    """A short, secret-free rendering of a bad input for the "(got ...)" suffix."""
    if isinstance(value, str):
        text = repr(redact_url(value))
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + "...'"
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return repr(value)
    return _kind(value)


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _unknown_key_message(location: tuple[int | str, ...], model: type[BaseModel]) -> str:
    allowed = _keys_at(model, location[:-1])
    if not allowed:
        return "unknown key"
    close = difflib.get_close_matches(str(location[-1]), allowed, n=1)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; expected one of: {', '.join(allowed)}"


def _keys_at(model: type[BaseModel], location: Sequence[int | str]) -> list[str]:
    """The keys the schema allows at ``location`` (walking models, dicts and lists)."""
    annotation: Any = model
    for part in location:
        annotation = _strip_optional(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        else:
            return []
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _strip_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation
