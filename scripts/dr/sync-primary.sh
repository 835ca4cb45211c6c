#!/usr/bin/env bash
# The plan's failback step `sync-primary`, as written in OPS-DR (see _run.sh): run it on
# the old primary's database host; it rejoins that server as a standby of the new primary.
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" sync-primary "$@"
