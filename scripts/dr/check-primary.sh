#!/usr/bin/env bash
# The plan's runbook command `check-primary`, as written in OPS-DR: a thin wrapper over
# `agentaskit-dr check-primary`. Config: $AGENTASKIT_DR_CONFIG (default /etc/agentaskit-dr/watchdog.yaml).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if command -v agentaskit-dr >/dev/null 2>&1; then
  run=(agentaskit-dr)
elif [ -x "$here/.venv/bin/python" ]; then
  run=("$here/.venv/bin/python" -m agentaskit_dr)
else
  echo "check-primary.sh: agentaskit-dr is not installed (pip install agentaskit-dr, or ./scripts/test.sh once)" >&2
  exit 2
fi
exec "${run[@]}" check-primary --config "${AGENTASKIT_DR_CONFIG:-/etc/agentaskit-dr/watchdog.yaml}" "$@"
