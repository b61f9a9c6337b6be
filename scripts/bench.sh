#!/usr/bin/env bash
# The one benchmark entry point, on the release build. Prints a markdown table on stdout and
# writes the figures as JSON (default target/bench/bench.json, plus the table beside it as
# bench.md). Sections (all by default; pick with --only a,b):
#   supervision  devnet up (N = 1, 10, 50 stand-in children, scripts/bench/standin.c, beside
#                the floor, scripts/bench/floor.c; and 50 real dwbase-node): launch → every node
#                forked → every node ready; `deploy status` round trip as a whole process;
#                kill -9 of a node → new pid → ready; daemon RSS at 0 and N nodes (and PSS
#                with the per-node log pipes); daemon CPU and wake-ups over 60 s with 50 idle
#                nodes. The same for supervisord (PyPI), pm2 (npm) and pueue (crates.io)
#                side by side, with ratios, unless --no-peers (pueue restarts nothing: its
#                kill -9 is watched for 3 s and reported as "never restarts").
#   logs         one chatty child writing 1 GB of 100-byte lines through each tool into its
#                files: MB/s, lines lost, CPU of the daemon, the log helper and the writer;
#                floors: the child writing its own file, and through a pipe into cat.
#   node         node/examples/bench.rs: remember/ask throughput and p50/p99 at 1 and 16
#                clients over HTTP on loopback (100 000 atoms, 5 000 asks).
# The measuring is in scripts/bench/*.py (stdlib Python 3.9+). Peers are installed into the
# run's temporary dir (pip install --target, npm install --prefix, cargo install --root; pueue's
# compiled crates are kept in target/bench/pueue-build, so only the first run compiles it) and
# are skipped, with a note, when that fails. Everything runs under one temporary dir on loopback ports from
# --base-port (default 62000: N consecutive free ports above the usual ephemeral range
# 32768-60999, so that no outgoing connection takes a node's port); every process started is
# stopped on exit, even on failure or Ctrl+C: each tool through its own stop command, then by
# pid any process still naming the temporary dir.
#
# Usage: scripts/bench.sh [--quick] [--only supervision,logs,node] [--no-peers] [--no-build]
#                         [--json-out PATH] [--base-port P] [-- harness flags…]
#   --quick   N = 1 and 3, 3 s idle window, 50 MB of logs, 2 000 atoms: a smoke run (~1 min).
#   Flags after `--` go to scripts/bench/harness.py (e.g. --nodes 1,10 --idle-secs 10).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
only=""
peers=1
build=1
json_out="target/bench/bench.json"
base_port="${BENCH_BASE_PORT:-62000}"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick) ;;
    --only) only="$2"; shift ;;
    --only=*) only="${1#--only=}" ;;
    --no-peers) peers=0 ;;
    --no-build) build=0 ;;
    --json-out) json_out="$2"; shift ;;
    --json-out=*) json_out="${1#--json-out=}" ;;
    --base-port) base_port="$2"; shift ;;
    --base-port=*) base_port="${1#--base-port=}" ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
wants() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

# The programs are measured as they are installed: built by scripts/build-release.sh (static
# on Linux/glibc, in target/<host triple>/release). With --no-build, that folder when it holds
# them, else target/release. The node bench is an example, built as cargo builds it.
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-$PWD/target}"
example="$target_dir/release/examples/bench"
if [ "$build" = 1 ]; then
  bin_dir="$(scripts/build-release.sh)"
  if wants node; then
    cargo build --release --locked -p dwbase-node --example bench >&2
  fi
else
  bin_dir="$(scripts/build-release.sh --print-dir)"
  [ -x "$bin_dir/dwbase" ] || bin_dir="$target_dir/release"
fi
echo "bench: programs from $bin_dir" >&2
for b in dwbase dwbase-supervisor dwbase-node; do
  [ -x "$bin_dir/$b" ] || { echo "bench.sh: $bin_dir/$b missing (build first)" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/dwbench.XXXXXX")"
harness=(env PYTHONDONTWRITEBYTECODE=1 python3 scripts/bench/harness.py --work "$work" --bin-dir "$bin_dir" --repo "$PWD"
  --base-port "$base_port")
cleanup() {
  "${harness[@]}" cleanup >&2 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

peer_flags=()
if [ "$peers" = 1 ] && { wants supervision || wants logs; }; then
  if python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$work/peers/py" supervisor >&2; then
    echo "bench: supervisord installed in $work/peers/py" >&2
  else
    echo "bench: could not install supervisor from PyPI; supervisord skipped" >&2
  fi
  if command -v npm >/dev/null && command -v node >/dev/null \
    && npm install --silent --no-audit --no-fund --prefix "$work/peers/npm" pm2 >&2; then
    echo "bench: pm2 installed in $work/peers/npm" >&2
  else
    echo "bench: could not install pm2 from npm (or no node.js); pm2 skipped" >&2
  fi
  if command -v cargo >/dev/null \
    && nice cargo install --quiet --locked pueue --version '^4' --root "$work/peers/cargo" \
      --target-dir "$PWD/target/bench/pueue-build" >&2; then
    echo "bench: pueue installed in $work/peers/cargo" >&2
  else
    echo "bench: could not install pueue from crates.io (or no cargo); pueue skipped" >&2
  fi
else
  peer_flags=(--no-peers)
fi

# The supervision figures run a stand-in child (scripts/bench/standin.c: answers /readyz,
# costs nothing to start) beside a floor supervisor (scripts/bench/floor.c), as issue 14's
# figures were taken; real nodes are measured too. Without a C compiler: real nodes, no floor.
c_flags=()
if wants supervision; then
  if command -v cc >/dev/null \
    && cc -O2 -D_GNU_SOURCE -o "$work/standin" scripts/bench/standin.c >&2 \
    && cc -O2 -D_GNU_SOURCE -o "$work/floor" scripts/bench/floor.c >&2; then
    c_flags=(--standin "$work/standin" --floor "$work/floor")
  else
    echo "bench: no C compiler (cc): supervision runs real nodes only, without the floor" >&2
  fi
fi

echo "bench: work dir $work, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"${harness[@]}" run "${quick[@]}" ${only:+--only "$only"} "${peer_flags[@]}" "${c_flags[@]}" \
  --example "$example" --json-out "$json_out" \
  --md-out "${json_out%.json}.md" "${extra[@]}"
