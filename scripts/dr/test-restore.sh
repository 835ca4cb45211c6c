#!/usr/bin/env bash
# The plan's monthly `test-restore --target=staging` (see _run.sh). Config:
# $AGENTASKIT_DR_BACKUP_CONFIG (default /etc/agentaskit-dr/backup.yaml).
AGENTASKIT_DR_CONFIG="${AGENTASKIT_DR_BACKUP_CONFIG:-/etc/agentaskit-dr/backup.yaml}" \
  exec "$(dirname "${BASH_SOURCE[0]}")/_run.sh" test-restore "$@"
