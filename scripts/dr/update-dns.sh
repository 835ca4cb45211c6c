#!/usr/bin/env bash
# The plan's runbook command `update-dns`, as written in OPS-DR (see _run.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" update-dns "$@"
