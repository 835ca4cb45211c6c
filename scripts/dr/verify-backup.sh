#!/usr/bin/env bash
# The plan's weekly `verify-backup` (see _run.sh). Config: $AGENTASKIT_DR_BACKUP_CONFIG
# (default /etc/agentaskit-dr/backup.yaml). Exit 1 names the first bad object or WAL gap.
AGENTASKIT_DR_CONFIG="${AGENTASKIT_DR_BACKUP_CONFIG:-/etc/agentaskit-dr/backup.yaml}" \
  exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" verify-backup "$@"
