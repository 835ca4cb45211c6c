#!/usr/bin/env bash
# The plan's failback command `verify-data-integrity`, as written in OPS-DR (see _run.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" verify-data-integrity "$@"
