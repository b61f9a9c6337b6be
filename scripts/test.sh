#!/usr/bin/env bash
# Runs every test of the workspace: unit, in-process API, protocol golden bytes, and the
# end-to-end tests that drive the real dwbase, dwbase-supervisor and dwbase-node binaries.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p dwbase-node`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked --no-fail-fast "$@"
