#!/usr/bin/env bash
# Shared by the plan's runbook scripts: runs `agentaskit-dr <command> --config <file> ARGS`.
# Config: $AGENTASKIT_DR_CONFIG (default /etc/agentaskit-dr/watchdog.yaml).
set -euo pipefail
command=$1
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if command -v agentaskit-dr >/dev/null 2>&1; then
  run=(agentaskit-dr)
elif [ -x "$here/.venv/bin/python" ]; then
  run=("$here/.venv/bin/python" -m agentaskit_dr)
else
  echo "$command.sh: agentaskit-dr is not installed (pip install agentaskit-dr, or ./scripts/test.sh once)" >&2
  exit 2
fi
exec "${run[@]}" "$command" --config "${AGENTASKIT_DR_CONFIG:-/etc/agentaskit-dr/watchdog.yaml}" "$@"
