#!/usr/bin/env bash
# The randomized fault campaign (issue 13): N seeded schedules against the partition lab,
# each checked for split brain, lost writes, false failovers and convergence.
#   scripts/chaos.sh --runs N --seed S --duration D [--quiet Q] [--no-control] [--unbound]
#                    [--workdir DIR] [--faults default|all|KIND,...] [--sentinel]
# One line per run (seed, faults, verdict), then a summary table; exit 1 if any run failed.
# A run's schedule is a pure function of its seed and D: rerun a failing seed with
#   scripts/chaos.sh --runs 1 --seed <seed> --duration <D>
# Needs root and nftables (installed here as scripts/test.sh does).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
if ! command -v nft >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing nftables for the link cuts" >&2
  apt-get install -y -qq nftables >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null 2>&1; } \
    || echo "could not install nftables: the campaign cannot cut links" >&2
fi
exec .venv/bin/python -m tests.chaos.campaign "$@"
