#!/usr/bin/env bash
# The plan's runbook command `verify-failover`, as written in OPS-DR (see _run.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" verify-failover "$@"
