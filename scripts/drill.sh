#!/usr/bin/env bash
# The local sandbox drill: real PostgreSQL primary + replica, Redis, two watchdogs;
# kills the primary and prints the failover timeline. Extra arguments go to `agentaskit-dr drill`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec .venv/bin/agentaskit-dr drill "$@"
