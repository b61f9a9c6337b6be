#!/usr/bin/env bash
# Bench: what `dwbase deploy top` costs while it watches a 50-node devnet. Prints the view's
# CPU (% of one core, from /proc/PID/stat utime+stime over the window), its RSS, and the
# supervisor's wake-ups (voluntary context switches per second) without and with the view.
# Target (issue 13): the view under 5 % of one core. Exits 1 when it is missed.
#
# Usage: scripts/bench-top.sh
# Env:   NODES (default 50), WINDOW seconds measured (default 30), INTERVAL (the view's
#        --interval, default 2s), BUILD=release to measure a release build (default debug)
set -euo pipefail
cd "$(dirname "$0")/.."

nodes="${NODES:-50}"
window="${WINDOW:-30}"
interval="${INTERVAL:-2s}"
profile="${BUILD:-debug}"
command -v tmux >/dev/null || { echo "bench-top: needs tmux (apt-get install -y tmux)" >&2; exit 1; }

if [ "$profile" = release ]; then
  cargo build --locked --release -p dwbase-ctl --bins
else
  cargo build --locked -p dwbase-ctl --bins
fi
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
dwbase="${target_dir:-target}/$profile/dwbase"

work="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-bench-top.XXXXXX")"
export DWBASE_DATA_DIR="$work/root"
sock="$work/tmux.sock"
cleanup() {
  tmux -S "$sock" kill-server 2>/dev/null || true
  "$dwbase" deploy stop --timeout 5s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A free run of $nodes ports: nothing answers a connect on any of them.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=""
for _ in $(seq 1 50); do
  cand=$(( 20000 + (RANDOM % 400) * 100 ))
  ok=1
  for p in $(seq "$cand" $((cand + nodes - 1))); do port_free "$p" || { ok=0; break; }; done
  if [ "$ok" = 1 ]; then base="$cand"; break; fi
done
[ -n "$base" ] || { echo "bench-top: no free port range" >&2; exit 1; }

echo "deploying $nodes nodes from port $base ($profile build)..."
"$dwbase" deploy devnet --nodes "$nodes" --base-port "$base" --no-swarm --timeout 300s >/dev/null
sup=$("$dwbase" supervisor status --json | sed -n 's/^ *"pid": \([0-9]*\),*/\1/p' | head -1)
[ -n "$sup" ] || { echo "bench-top: no supervisor pid" >&2; exit 1; }

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Every thread's (the runtime's workers are threads of their own).
wakeups() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches:/ {n += $2} END {print n}'; }
now() { date +%s.%N; }

# The supervisor alone, idle.
w0=$(wakeups "$sup"); t0=$(now)
sleep "$window"
w1=$(wakeups "$sup"); t1=$(now)
idle_rate=$(awk -v a="$w0" -v b="$w1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.1f", (b - a) / (e - s)}')

# The view, in a 200x70 terminal, after a warm-up of two sampling rounds.
cat >"$work/top.sh" <<EOF
#!/bin/sh
exec "$dwbase" deploy top --interval "$interval"
EOF
chmod +x "$work/top.sh"
tmux -S "$sock" -f /dev/null new-session -d -s top -x 200 -y 70 "$work/top.sh"
top_pid=$(tmux -S "$sock" display-message -p -t top '#{pane_pid}')
sleep 6
tmux -S "$sock" capture-pane -p -t top | grep -q "node-a" \
  || { echo "bench-top: the view shows no nodes:" >&2; tmux -S "$sock" capture-pane -p -t top >&2; exit 1; }

c0=$(cpu_ticks "$top_pid"); w0=$(wakeups "$sup"); t0=$(now)
sleep "$window"
c1=$(cpu_ticks "$top_pid"); w1=$(wakeups "$sup"); t1=$(now)
rss_kib=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$top_pid/status")
cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.2f", 100 * (b - a) / hz / (e - s)}')
top_rate=$(awk -v a="$w0" -v b="$w1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.1f", (b - a) / (e - s)}')

echo "---- dwbase deploy top, $nodes nodes, --interval $interval, ${window}s window, $profile build ----"
echo "view cpu:                 $cpu % of one core (target < 5)"
echo "view rss:                 $((rss_kib / 1024)) MiB"
echo "supervisor wake-ups/s:    $idle_rate idle, $top_rate with the view open"
awk -v c="$cpu" 'BEGIN {exit !(c < 5)}' || { echo "bench-top: FAILED the < 5 % target" >&2; exit 1; }
echo "bench-top: ok"
