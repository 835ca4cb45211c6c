#!/usr/bin/env bash
# The plan's failback step `restore-standby`, as written in OPS-DR (see _run.sh): the
# database switches back to the primary region with zero data loss, the secondary becomes
# its standby again, its deployments scale back, automatic failover is re-armed.
exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" restore-standby "$@"
