#!/usr/bin/env bash
# The whole test suite, with the static checks first. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
.venv/bin/ruff check agentaskit_dr tests bench
.venv/bin/mypy
.venv/bin/lint-imports
status=0
.venv/bin/pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
