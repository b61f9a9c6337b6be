#!/usr/bin/env bash
# Supervisor benchmark (devnet up for N = 1, 10, 50; `deploy status` round trip; kill -9 →
# new pid → ready; supervisor RSS at 0/10/50 nodes; idle CPU with 50 nodes), dwbase only.
# Kept as a short name for scripts/bench.sh, which holds the one code path for each of these
# measurements (and runs supervisord and pm2 beside it without --no-peers).
# Usage: scripts/bench-supervisor.sh [--no-build] [--quick] [other scripts/bench.sh flags]
set -euo pipefail
exec "$(dirname "$0")/bench.sh" --only supervision --no-peers "$@"
