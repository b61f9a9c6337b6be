#!/usr/bin/env bash
# Log pipe benchmark, on the release build:
#   - `dwbase-supervisor logpipe` fed through an OS pipe with BENCH_LOGS_MB (default 1024) MB
#     of numbered 100-byte lines, rotating at the default 10 MiB with --keep large enough to
#     hold everything: input MB/s, CPU % of the log pipe (user+sys over wall time), max RSS;
#   - then every line is checked: count, numbers consecutive from 1 (so none lost, duplicated
#     or reordered, across all rotated files), every line prefixed with a timestamp;
#   - the floor: the same generator writing straight to a file, and through one pipe into
#     `cat` (what any pipe-reading process costs);
#   - the same log pipe run writing to tmpfs (/dev/shm), when there is room: no disk
#     writeback, so it shows the log pipe's own ceiling.
# Goal: >= 400 MB/s with 0 lines lost. Each run starts after a `sync`, so the dirty pages of
# one run do not slow the next; on a VM disk the file-writing floor can itself be < 400 MB/s.
#
# The input is generated once into a temporary file (kept in the page cache) and replayed by
# `cat`, so the generator is never the bottleneck. Everything lives in a temporary folder that
# is removed on exit. Usage: scripts/bench-logs.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --locked -p dwbase-ctl --bin dwbase-supervisor >&2
fi
BIN="$PWD/target/release/dwbase-supervisor"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }
SIZE_MB="${BENCH_LOGS_MB:-1024}"
LINE_BYTES=100
LINES=$((SIZE_MB * 1000 * 1000 / LINE_BYTES))
MAX_BYTES=$((10 * 1024 * 1024))
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dwbench-logs.XXXXXX")"
SHM=""
trap 'rm -rf "$WORK" ${SHM:+"$SHM"}' EXIT
trap 'exit 130' INT TERM

INPUT="$WORK/input.txt"
echo "generating $LINES lines of $LINE_BYTES bytes ($SIZE_MB MB)…" >&2
# "%012d " + 86 bytes of payload + "\n" = 100 bytes.
perl -e '$p = "x" x 86; for my $i (1 .. $ARGV[0]) { printf "%012d %s\n", $i, $p }' "$LINES" >"$INPUT"
INPUT_BYTES="$(stat -c %s "$INPUT")"
cat "$INPUT" >/dev/null # warm the page cache

# Runs "$@" with its stdin from $INPUT through a pipe (as the node's output reaches the log
# pipe); prints "wall user sys maxrss_kib" of the command.
timed_from_pipe() {
  local out="$WORK/time.out"
  sync
  # shellcheck disable=SC2002 # the pipe is the point: a file on stdin would be a different test
  cat "$INPUT" | /usr/bin/time -f '%e %U %S %M' -o "$out" "$@"
  cat "$out"
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? b / s / 1e6 : 0) }'; }
cpu() { awk -v u="$1" -v y="$2" -v s="$3" 'BEGIN { printf "%.0f", (s > 0 ? (u + y) / s * 100 : 0) }'; }

# Floors.
sync
/usr/bin/time -f '%e %U %S %M' -o "$WORK/time.out" cat "$INPUT" >"$WORK/floor.txt"
read -r f_wall _ <"$WORK/time.out"
rm -f "$WORK/floor.txt"
# shellcheck disable=SC2016 # $1 is expanded by the inner sh
read -r p_wall _ < <(timed_from_pipe sh -c 'cat >"$1"' sh "$WORK/floor.txt")
rm -f "$WORK/floor.txt"

# The log pipe.
LOG="$WORK/logs/node.log"
read -r l_wall l_user l_sys l_rss < <(timed_from_pipe "$BIN" logpipe --file "$LOG" \
  --max-bytes "$MAX_BYTES" --keep 100000)

# Checks every line of the log at $1 (oldest file first: node.log.N … node.log.1, node.log);
# prints "files count last bad_seq bad_ts".
verify() {
  local log="$1" dir files=()
  dir="$(dirname "$log")"
  while read -r n; do
    files+=("$log.$n")
  done < <(find "$dir" -name 'node.log.*' -printf '%f\n' | sed 's/^node\.log\.//' | sort -rn)
  files+=("$log")
  cat "${files[@]}" | mawk -v files="${#files[@]}" '
    { n = $2 + 0
      if (n != prev + 1) bad_seq++
      if (length($1) != 24 || substr($1, 24, 1) != "Z" || substr($1, 11, 1) != "T") bad_ts++
      prev = n }
    END { print files, NR, prev, bad_seq + 0, bad_ts + 0 }'
}
read -r files count last bad_seq bad_ts < <(verify "$LOG")
lost=$((LINES - count))
rm -rf "$WORK/logs"

# The same on tmpfs, if it has room for the output (~1.3× the input) and then some.
s_wall=""
if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((SIZE_MB * 1000 * 3 / 2)) ]; then
  SHM="$(mktemp -d /dev/shm/dwbench-logs.XXXXXX)"
  read -r s_wall s_user s_sys _ < <(timed_from_pipe "$BIN" logpipe --file "$SHM/node.log" \
    --max-bytes "$MAX_BYTES" --keep 100000)
  read -r _ s_count s_last s_bad_seq s_bad_ts < <(verify "$SHM/node.log")
  rm -rf "$SHM"
  if [ "$s_count" -ne "$LINES" ] || [ "$s_last" -ne "$LINES" ] || [ "$s_bad_seq" -ne 0 ] || [ "$s_bad_ts" -ne 0 ]; then
    echo "FAIL (tmpfs run): read back $s_count of $LINES lines, last $s_last, out of order $s_bad_seq, without timestamp $s_bad_ts" >&2
    exit 1
  fi
fi

printf '%-38s %8s %8s %8s\n' "" "MB/s" "CPU %" "wall s"
printf '%-38s %8s %8s %8s\n' "floor: cat file > file" "$(mbps "$INPUT_BYTES" "$f_wall")" "-" "$f_wall"
printf '%-38s %8s %8s %8s\n' "floor: cat file | cat > file" "$(mbps "$INPUT_BYTES" "$p_wall")" "-" "$p_wall"
printf '%-38s %8s %8s %8s\n' "cat file | logpipe (disk)" \
  "$(mbps "$INPUT_BYTES" "$l_wall")" "$(cpu "$l_user" "$l_sys" "$l_wall")" "$l_wall"
if [ -n "$s_wall" ]; then
  printf '%-38s %8s %8s %8s\n' "cat file | logpipe (tmpfs)" \
    "$(mbps "$INPUT_BYTES" "$s_wall")" "$(cpu "$s_user" "$s_sys" "$s_wall")" "$s_wall"
fi
echo "log pipe (disk): user ${l_user} s, sys ${l_sys} s, max RSS ${l_rss} KiB, $files files (rotation at $MAX_BYTES bytes)"
echo "lines: written $LINES, read back $count, last number $last, lost $lost, out of order $bad_seq, without timestamp $bad_ts"
if [ "$lost" -ne 0 ] || [ "$bad_seq" -ne 0 ] || [ "$bad_ts" -ne 0 ] || [ "$last" -ne "$LINES" ]; then
  echo "FAIL: the log pipe lost, reordered or mangled lines" >&2
  exit 1
fi
