#!/usr/bin/env bash
# The plan's failback command `shift-traffic`, as written in OPS-DR (see _run.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" shift-traffic "$@"
