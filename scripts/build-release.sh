#!/usr/bin/env bash
# The release programs as they are installed: dwbase, dwbase-node, dwbase-supervisor and
# dwbase-logpipe (the bins of the dwbase-ctl package), optimised. On Linux with glibc they are
# linked statically (`-C target-feature=+crt-static`):
#   - they run on any Linux of the same architecture, whatever its glibc (a build on a new
#     distribution no longer needs an older one to run in a container or on an edge box);
#   - nothing is loaded at start (no ld.so, libc, libm, libgcc_s): `dwbase deploy status` as a
#     whole process takes ~1.7 ms instead of ~2.9 ms here (docs/benchmarks.md, issue 14).
# The daemons (dwbase-node, dwbase-supervisor, dwbase-logpipe) are position-independent
# (static-pie): they relocate themselves where the kernel put them, so address-space
# randomisation covers their code too. The CLI `dwbase` is a plain static executable (ELF type
# EXEC, `-C relocation-model=static` for its own crate only): a static-pie of its size applies
# ~23,800 relocations at every start and copies the ~90 pages they touch, about a fifth of a
# short command's time (`deploy status` 1.65 → 1.33 ms; `/bin/true` 0.89 ms). Its heap, stack
# and mappings are still randomised; only its code and data sit at fixed addresses, as a Go
# program's do. A single-binary install (only `dwbase`, running `dwbase supervisor run`) gets
# that layout for its supervisor as well; the packaged installs run the static-pie daemons.
# glibc linked statically still resolves names through /etc/hosts and DNS (its built-in files
# and dns sources); NSS plug-ins (mdns, LDAP, systemd's myhostname) are not loaded. Other targets
# (musl, macOS) are built as cargo builds them.
#
# cargo applies RUSTFLAGS to proc-macros too unless a --target is named, and a proc-macro cannot
# link glibc statically: so the host triple is named, and the programs land in
# target/<triple>/release/ (plain `cargo build --release` still fills target/release/).
#
# Usage: scripts/build-release.sh [--smoke | --print-dir] [extra cargo build flags]
#   Prints the folder holding the four programs as its last line on stdout.
#   --print-dir  only prints that folder (builds nothing).
#   --smoke  then checks them: each is static (Linux/glibc; the daemons static-pie, the CLI
#            without run-time relocations), each answers --version, and a
#            two-node devnet under the supervisor takes a remembered atom and answers it, is
#            restarted after kill -9, and stops; everything it started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
print_dir=0
case "${1:-}" in
  --smoke) smoke=1; shift ;;
  --print-dir) print_dir=1; shift ;;
esac
programs=(dwbase dwbase-node dwbase-supervisor dwbase-logpipe)
host="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-$PWD/target}"

case "$host" in
  *-linux-gnu*) static=1; out="$target_dir/$host/release" ;;
  *) static=0; out="$target_dir/release" ;;
esac
if [ "$print_dir" = 1 ]; then
  echo "$out"
  exit 0
fi
if [ "$static" = 1 ]; then
  export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
  cargo build --release --locked --target "$host" -p dwbase-ctl \
    --bin dwbase-node --bin dwbase-supervisor --bin dwbase-logpipe "$@" >&2
  # The same dependencies (same RUSTFLAGS, nothing rebuilt); only the bin crate of `dwbase` is
  # compiled with the static relocation model, which makes rustc link it `-static` (not PIE).
  cargo rustc --release --locked --target "$host" -p dwbase-ctl --bin dwbase "$@" \
    -- -C relocation-model=static >&2
else
  cargo build --release --locked -p dwbase-ctl --bins "$@" >&2
fi

fail() {
  echo "build-release: $*" >&2
  exit 1
}

for p in "${programs[@]}"; do
  [ -x "$out/$p" ] || fail "$out/$p was not built"
done

if [ "$smoke" = 1 ]; then
  for p in "${programs[@]}"; do
    if [ "$static" = 1 ]; then
      # Static: no program interpreter (PT_INTERP). The daemons are static-pie (ELF type
      # DYN); the CLI is a plain static executable (EXEC) with no run-time relocations.
      if LC_ALL=C readelf -lW "$out/$p" | grep -q 'Requesting program interpreter'; then
        fail "$out/$p is dynamically linked (it names a program interpreter)"
      fi
      if [ "$p" = dwbase ]; then
        LC_ALL=C readelf -hW "$out/$p" | grep -q 'Type:.*EXEC' \
          || fail "$out/$p is not a plain static executable (ELF type is not EXEC)"
        relocs="$(LC_ALL=C readelf -rW "$out/$p" | grep -c '^[0-9a-f]' || true)"
        [ "$relocs" -lt 100 ] || fail "$out/$p applies $relocs relocations at start (expected none)"
      else
        LC_ALL=C readelf -hW "$out/$p" | grep -q 'Type:.*DYN' \
          || fail "$out/$p is not position-independent (ELF type is not DYN): no ASLR"
      fi
    fi
    "$out/$p" --version >/dev/null || fail "$out/$p --version failed"
  done

  work="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-release-smoke.XXXXXX")"
  export DWBASE_DATA_DIR="$work/root"
  # `deploy stop` stops every node, then the supervisor.
  cleanup() {
    "$out/dwbase" deploy stop --no-start >/dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  port="${SMOKE_BASE_PORT:-63400}"
  "$out/dwbase" deploy devnet --nodes 2 --base-port "$port" --no-swarm --timeout 60s >&2 \
    || fail "deploy devnet with the release programs failed"
  id="$("$out/dwbase" --api "http://127.0.0.1:$port" remember smoke "release smoke $$")" \
    || fail "remember on node-a failed"
  "$out/dwbase" --api "http://127.0.0.1:$port" ask smoke -q "release smoke" --json \
    | grep -q "$id" || fail "ask on node-a did not return the remembered atom $id"
  # node-a's pid once it is ready, else nothing (`deploy status` exits 3 while it is not).
  ready_pid() {
    { "$out/dwbase" deploy status --json || true; } | python3 -c 'import json, sys
n = [n for n in json.load(sys.stdin)["nodes"] if n["name"] == "node-a"][0]
print(n["pid"] if n["ready"] else "")'
  }
  pid="$(ready_pid)"
  [ -n "$pid" ] || fail "node-a is not ready after deploy devnet"
  kill -9 "$pid"
  now=""
  for _ in $(seq 300); do
    now="$(ready_pid)"
    [ -n "$now" ] && [ "$now" != "$pid" ] && break
    sleep 0.1
  done
  if [ -z "$now" ] || [ "$now" = "$pid" ]; then
    fail "node-a was not back (ready, new pid) within 30 s of kill -9"
  fi
  "$out/dwbase" --api "http://127.0.0.1:$port" ask smoke -q "release smoke" --json \
    | grep -q "$id" || fail "the restarted node-a lost the acknowledged atom $id"
  "$out/dwbase" deploy stop >&2 || fail "deploy stop failed"
  echo "build-release: smoke passed (static: $static): devnet of 2, remember/ask, kill -9 → restart, stop" >&2
fi

echo "$out"
