#!/usr/bin/env bash
# CI soak: builds the dwbase binaries and runs a 30-second chaos soak against a real 3-node
# devnet (kill -9 a node, kill -9 the supervisor, fill a disk cap, restart a node), then prints
# the JSON report. Fails when an acknowledged write was lost or the devnet did not recover.
#
# Usage: scripts/soak-ci.sh [extra `dwbase test soak` flags, e.g. --duration 2m --seed 42]
# Env:   SOAK_DURATION (default 30s), SOAK_NODES (default 3), SOAK_REPORT (default: a temp file)
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${SOAK_DURATION:-30s}"
nodes="${SOAK_NODES:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-soak-ci.XXXXXX")"
report="${SOAK_REPORT:-$work/soak.json}"
trap 'rm -rf "$work"' EXIT

cargo build --locked -p dwbase-ctl --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
dwbase="${target_dir:-target}/debug/dwbase"

status=0
# The soak deploys under its own state root (--data-dir) and always stops what it started.
"$dwbase" test soak --duration "$duration" --chaos --nodes "$nodes" \
  --data-dir "$work/root" --report "$report" "$@" || status=$?

if [ -f "$report" ]; then
  echo "---- soak report ($report) ----"
  cat "$report"
else
  echo "soak-ci: no report was written" >&2
fi
if [ "$status" -ne 0 ]; then
  echo "soak-ci: the soak failed (exit $status); node logs:" >&2
  for log in "$work"/root/devnet/*/logs/node.log "$work"/root/local/logs/node.log; do
    [ -f "$log" ] || continue
    echo "---- $log (last 40 lines) ----" >&2
    tail -n 40 "$log" >&2
  done
fi
exit "$status"
