#!/usr/bin/env bash
# fmt, clippy with warnings denied, and rustdoc with warnings denied: what CI enforces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
