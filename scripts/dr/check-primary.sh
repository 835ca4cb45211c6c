#!/usr/bin/env bash
# The plan's runbook command `check-primary`, as written in OPS-DR (see _run.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" check-primary "$@"
