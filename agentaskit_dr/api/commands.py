"""The on-call commands that talk to a running watchdog: ``status``, ``pause``, ``resume``, ``ack``.

Where the watchdog is: ``--url``, else ``$AGENTASKIT_DR_API_URL``, else ``api.listen`` of
``--config`` (https:// when it has ``api.tls``), else http://127.0.0.1:8787. The control
token: ``--token-file``, else ``$AGENTASKIT_DR_API_TOKEN_FILE``, else ``api.token_file`` of
``--config``. Only the control commands send the token; ``status`` is open.

For https:// the server's certificate is verified with ``--ca-file``, else
``$AGENTASKIT_DR_API_CA_FILE``, else ``peer_tls.ca_file`` or ``api.tls.client_ca_file`` of
``--config``, else the system's CAs; ``--cert-file``/``--key-file`` present a client
certificate.

Pause, resume and ack belong to the cluster: the watchdog that answers stores them in the
lock store and every watchdog applies them. When no watchdog answers and ``--config``
names the lock store, they (and ``status``) go to the lock store directly.

``status`` prints tables on a terminal (``status_table``), aligned key/value lines
otherwise, and the API's JSON with ``--json``.

Exit codes: 0 done, 1 the watchdog could not be reached or refused (one line on stderr),
2 bad input (unreadable config or token file, malformed URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentaskit_dr.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    import ssl

    from agentaskit_dr.api.client import ApiError
    from agentaskit_dr.config import TlsFile

DEFAULT_URL = "http://127.0.0.1:8787"
URL_ENV = "AGENTASKIT_DR_API_URL"
TOKEN_FILE_ENV = "AGENTASKIT_DR_API_TOKEN_FILE"  # noqa: S105 (a variable name, not a secret)
CA_FILE_ENV = "AGENTASKIT_DR_API_CA_FILE"

# action -> (HTTP path, whether it changes state and so needs the token)
_ACTIONS: dict[str, tuple[str, bool]] = {
    "status": ("/v1/status", False),
    "pause": ("/v1/pause", True),
    "resume": ("/v1/resume", True),
    "ack": ("/v1/ack", True),
    "request-failover": ("/v1/failover", True),
}


class _UsageError(Exception):
    """Bad input from the operator: exit 2 with this message."""


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be longer than zero, got {text!r}")
    return seconds


def add_api_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``pause``, ``resume`` and ``ack``; ``run_api_command`` runs them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"watchdog API base URL (default: ${URL_ENV}, else "
                        f"api.listen of --config, else {DEFAULT_URL})")
    common.add_argument("--token-file", type=Path, help=f"file holding the control token "
                        f"(default: ${TOKEN_FILE_ENV}, else api.token_file of --config)")
    common.add_argument("--config", type=Path, help="watchdog YAML to take api.listen and "
                        "api.token_file from")
    common.add_argument("--ca-file", type=Path, help=f"CA that signed the watchdog's "
                        f"certificate (default: ${CA_FILE_ENV}, else peer_tls.ca_file or "
                        "api.tls.client_ca_file of --config, else the system's CAs)")
    common.add_argument("--cert-file", type=Path, help="client certificate to present (PEM)")
    common.add_argument("--key-file", type=Path, help="key of --cert-file (PEM)")
    common.add_argument("--timeout", type=_timeout, default=5.0,
                        help="seconds to wait for the answer (default 5)")

    helps = {
        "status": "show a watchdog's status",
        "pause": "pause the cluster: every watchdog stops acting and leaves the lock to "
                 "operators",
        "resume": "resume the cluster: the watchdogs campaign and act again",
        "ack": "acknowledge a failover on every watchdog, so they may fail over again",
        "request-failover": "ask the watchdog holding the lock to run the failover runbook now",
    }
    parsers = {
        action: sub.add_parser(action, parents=[common], help=helps[action])
        for action in _ACTIONS
    }
    parsers["status"].add_argument("--json", action="store_true", help="print the raw JSON")
    parsers["pause"].add_argument("--reason", help="why, for the watchdog's log")
    parsers["request-failover"].add_argument("--reason", help="why, for the log and the run")
    parsers["request-failover"].add_argument(
        "--dry-run", action="store_true", help="show the plan and what blocks it; change nothing")
    for action, parser in parsers.items():
        parser.set_defaults(api_action=action)


def run_api_command(args: argparse.Namespace) -> int:
    """Run the command ``add_api_commands`` parsed into ``args``; the exit status."""
    import asyncio

    from agentaskit_dr.api.client import ApiClient, ApiError, render_status

    action: str = args.api_action
    path, needs_token = _ACTIONS[action]
    from agentaskit_dr.api.tls import TlsSetupError

    try:
        target = _target(args, needs_token=needs_token)
        client = ApiClient(target.url, token=target.token, timeout=args.timeout,
                           ssl_context=_ssl_context(args, target.url))
    except TlsSetupError as exc:
        print(f"agentaskit-dr {action}: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_USAGE
    except (_UsageError, ValueError) as exc:
        print(f"agentaskit-dr {action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if needs_token:
            result = asyncio.run(client.post(path, _body(action, args)))
        else:
            result = asyncio.run(client.get(path))
    except ApiError as exc:
        fallback = _from_lock_store(action, args, exc)
        if fallback is None:
            print(f"agentaskit-dr {action}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        result = fallback
    if action == "status" and args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif action == "status":
        from agentaskit_dr.api.status_table import print_status

        print_status(result, sys.stdout)
    else:
        print(render_status(result))
    return EXIT_OK


_STORE_ACTIONS = ("status", "pause", "resume", "ack")


def _from_lock_store(action: str, args: argparse.Namespace,
                     exc: ApiError) -> dict[str, Any] | None:
    """When no watchdog answered: the cluster controls read or written in the lock store
    named by ``--config``; None when that does not apply or fails too (said on stderr)."""
    import asyncio

    if action not in _STORE_ACTIONS or args.config is None or exc.status is not None:
        return None
    from agentaskit_dr.cluster_cli import store_control, store_status
    from agentaskit_dr.config import load_config
    from agentaskit_dr.config_cli import load_or_explain
    from agentaskit_dr.ports import LockUnavailable

    print(f"agentaskit-dr {action}: {exc}; using the lock store of {args.config}",
          file=sys.stderr)
    config = load_or_explain(args.config, load_config)
    if config is None:
        return None
    try:
        if action == "status":
            return asyncio.run(store_status(config))
        return asyncio.run(store_control(config, action, getattr(args, "reason", None)))
    except LockUnavailable as problem:
        print(f"agentaskit-dr {action}: {problem}", file=sys.stderr)
    return None


def _body(action: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if action in {"pause", "resume", "ack"}:
        from agentaskit_dr.cluster_cli import operator

        body["by"] = operator()
    if action in {"pause", "request-failover"} and args.reason is not None:
        body["reason"] = args.reason
    if action == "request-failover":
        body["dry_run"] = args.dry_run
    return body


def _ssl_context(args: argparse.Namespace, url: str) -> ssl.SSLContext | None:
    """The context for an https:// ``url`` from the flags, the environment or --config."""
    from agentaskit_dr.api.tls import cli_context
    from agentaskit_dr.config import TlsFile

    if not url.startswith("https://"):
        return None
    if (args.cert_file is None) != (args.key_file is None):
        raise _UsageError("--cert-file and --key-file go together")
    ca = None
    if args.ca_file is not None:
        ca = TlsFile("--ca-file", args.ca_file)
    elif os.environ.get(CA_FILE_ENV):
        ca = TlsFile(CA_FILE_ENV, Path(os.environ[CA_FILE_ENV]))
    elif args.config is not None:
        ca = _config_ca(args.config)
    cert = None if args.cert_file is None else TlsFile("--cert-file", args.cert_file)
    key = None if args.key_file is None else TlsFile("--key-file", args.key_file)
    return cli_context(ca, cert, key)


def _config_ca(config: Path) -> TlsFile | None:
    """``peer_tls.ca_file``, else ``api.tls.client_ca_file`` of --config (relative paths
    are next to the file, as the daemon reads them)."""
    from agentaskit_dr.config import TlsFile

    data = _yaml_mapping(config)
    api = data.get("api")
    sections = {"peer_tls": (data.get("peer_tls"), "ca_file"),
                "api.tls": (api.get("tls") if isinstance(api, dict) else None,
                            "client_ca_file")}
    for name, (section, key) in sections.items():
        if isinstance(section, dict) and isinstance(section.get(key), str):
            return TlsFile(f"{name}.{key} in {config}", config.parent / section[key])
    return None


@dataclass(frozen=True)
class _Target:
    url: str
    token: str | None


def _target(args: argparse.Namespace, *, needs_token: bool) -> _Target:
    """Where to send the request, and the token when the command needs one."""
    api = _api_section(args.config) if args.config is not None else {}
    url = args.url or os.environ.get(URL_ENV) or _listen_url(api) or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise _UsageError(f"--url: expected http://host:port, got {url!r}")
    if not needs_token:
        return _Target(url, None)
    if args.token_file is not None:
        source, token_file = "--token-file", args.token_file
    elif os.environ.get(TOKEN_FILE_ENV):
        source, token_file = TOKEN_FILE_ENV, Path(os.environ[TOKEN_FILE_ENV])
    elif api.get("token_file") is not None:
        source, token_file = f"api.token_file in {args.config}", Path(api["token_file"])
    else:
        raise _UsageError(f"needs the control token: pass --token-file, set {TOKEN_FILE_ENV}, "
                          "or pass --config with api.token_file")
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"token file {token_file} (from {source}): cannot read: {exc}") from None
    if not token:
        raise _UsageError(f"token file {token_file} (from {source}) is empty")
    return _Target(url, token)


def _yaml_mapping(config: Path) -> dict[str, Any]:
    """The top-level mapping of a watchdog YAML ({} when it is not a mapping)."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"--config {config}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise _UsageError(f"--config {config}: not valid YAML{_yaml_where(exc)}") from None
    return data if isinstance(data, dict) else {}


def _api_section(config: Path) -> dict[str, Any]:
    """The ``api`` mapping of a watchdog YAML, checked only as far as this command needs."""
    api = _yaml_mapping(config).get("api")
    if api is None:
        return {}
    if not isinstance(api, dict):
        raise _UsageError(f"--config {config}: api: expected a mapping")
    for key in ("listen", "token_file"):
        if api.get(key) is not None and not isinstance(api[key], str):
            raise _UsageError(f"--config {config}: api.{key}: expected a string")
    return api


def _yaml_where(exc: Exception) -> str:
    """Where and what the YAML error is, on one line (PyYAML's own text spans several)."""
    import yaml

    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return ""
    mark = exc.problem_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"


def _listen_url(api: dict[str, Any]) -> str | None:
    """The URL to reach a watchdog listening on ``api.listen``, None when not set."""
    listen = api.get("listen")
    if listen is None:
        return None
    from agentaskit_dr.api.server import parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    # A wildcard bind is reachable on loopback from the same machine.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if api.get("tls") else "http"
    return f"{scheme}://{host}:{port}"
