#!/usr/bin/env bash
# Supervisor benchmark, on the release build:
#   - deploy devnet of N = 1, 10, 50 nodes: time until every node is spawned and until every
#     node is ready (as measured by `dwbase deploy devnet --json`, from the deploy request),
#     and the whole command's wall time;
#   - `dwbase deploy status` round trip, whole process, median of 20;
#   - supervisor RSS (VmRSS) with 0, 10 and 50 nodes.
# Goals: status < 2 ms, supervisor < 10 MiB at 50 nodes, 50 nodes spawned < 50 ms, all ready < 5 s.
#
# Uses a temporary state root and ports from BENCH_BASE_PORT (default 42000); stops everything
# on exit, even on failure or Ctrl+C. Usage: scripts/bench-supervisor.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --locked -p dwbase-ctl >&2
fi
BIN="$PWD/target/release/dwbase"
BASE_PORT="${BENCH_BASE_PORT:-42000}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dwbench.XXXXXX")"
export DWBASE_DATA_DIR="$WORK/root"
unset DWBASE_MAX_RAM_MB DWBASE_MAX_DISK_MB

cleanup() {
  "$BIN" deploy stop --timeout 5s >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }

# The value of the first "key": number in JSON text on stdin.
json_num() { grep -o "\"$1\": [0-9]*" | head -n 1 | grep -o '[0-9]*$'; }

supervisor_pid() { "$BIN" deploy status --json | json_num pid; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Median wall time in microseconds of 20 runs of a command (output discarded).
median_us() {
  local samples=() t0 t1 i
  for i in $(seq 1 20); do
    t0=$(now_ns)
    "$@" >/dev/null
    t1=$(now_ns)
    samples+=($(((t1 - t0) / 1000)))
    : "$i"
  done
  printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}

median_status_us() { median_us "$BIN" deploy status; }

printf '%-28s %s\n' "state root" "$DWBASE_DATA_DIR" >&2

# What starting any process costs here, to read the status figures against.
printf '%-28s %6s us\n' "baseline: /bin/true" "$(median_us /bin/true)"
printf '%-28s %6s us\n' "baseline: dwbase --version" "$(median_us "$BIN" --version)"

# A supervisor with no nodes.
"$BIN" supervisor restart >/dev/null
pid=$(supervisor_pid)
printf '%-28s %6s KiB\n' "supervisor RSS, 0 nodes" "$(rss_kib "$pid")"
printf '%-28s %6s us\n' "status round trip, 0 nodes" "$(median_status_us)"

for n in 1 10 50; do
  "$BIN" supervisor status >/dev/null 2>&1 || "$BIN" supervisor restart >/dev/null
  t0=$(now_ns)
  out=$("$BIN" deploy devnet --nodes "$n" --base-port "$BASE_PORT" --timeout 60s --json)
  t1=$(now_ns)
  spawned=$(printf '%s' "$out" | json_num spawned_ms)
  ready=$(printf '%s' "$out" | json_num ready_ms)
  printf '%-28s spawned %5s ms, all ready %6s ms, command %6s ms\n' \
    "deploy devnet N=$n" "$spawned" "$ready" "$(((t1 - t0) / 1000000))"
  printf '%-28s %6s us\n' "status round trip, $n nodes" "$(median_status_us)"
  if [ "$n" -ne 1 ]; then
    pid=$(supervisor_pid)
    printf '%-28s %6s KiB\n' "supervisor RSS, $n nodes" "$(rss_kib "$pid")"
  fi
  "$BIN" deploy stop >/dev/null
done
