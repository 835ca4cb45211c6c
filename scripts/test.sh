#!/usr/bin/env bash
# The whole test suite, with the static checks first. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
# Debian packages some tests drive, installed when missing (as root, with apt-get):
# nftables (partition tests cut loopback links with drop rules: connections hang, not
# refuse), chromium (the status page in a real headless browser), zstd (backups compress
# with the zstd command; the PostgreSQL wheel is built without it).
need() {  # need COMMAND PACKAGE WHY
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $2 for $3" >&2
    apt-get install -y -qq "$2" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null 2>&1; } \
      || echo "could not install $2: $3 will fail" >&2
  else
    echo "$1 is missing: $3 will fail" >&2
  fi
}
need nft nftables "the partition tests"
need chromium chromium "the status page test"
need zstd zstd "the backup tests"
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
