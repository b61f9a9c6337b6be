#!/usr/bin/env bash
# Resource-exhaustion figures of a release node (node/examples/bench_limits.rs):
#   disk  16 writers fill a 256 MiB ext4 (loop-mounted) at full speed: bytes free at the first
#         507, the reserve applied, ENOSPC seen by the store (goal: none), time from freeing
#         space to the first accepted write;
#   idle  good-client p50/p99/max for remember, ask and healthz during 20 000 idle connections.
# Needs root, mkfs.ext4 (e2fsprogs) and losetup (util-linux). The mount and its loop device
# are removed on every exit, failure and Ctrl+C included.
#
# Usage: scripts/bench-disk.sh [--no-build] [--size-mib 256] [-- bench_limits flags…]
#   e.g. scripts/bench-disk.sh -- --writers 16 --idle 20000 --rounds 300
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
size=256
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --size-mib) size="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "bench-disk.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" != 0 ]; then
  echo "bench-disk.sh: needs root (it loop-mounts an ext4)" >&2
  exit 1
fi
for tool in mkfs.ext4 losetup mount umount; do
  command -v "$tool" >/dev/null || { echo "bench-disk.sh: $tool not found (install e2fsprogs / util-linux)" >&2; exit 1; }
done

if [ "$build" = 1 ]; then
  cargo build --release -p dwbase-node --example bench_limits
fi
bin=target/release/examples/bench_limits
[ -x "$bin" ] || { echo "bench-disk.sh: $bin missing (run without --no-build)" >&2; exit 1; }

work=$(mktemp -d)
dev=""
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then
    umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt"
  fi
  if [ -n "$dev" ]; then losetup -d "$dev" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

truncate -s "${size}M" "$work/fs.img"
mkfs.ext4 -q -F "$work/fs.img"
dev=$(losetup --find --show "$work/fs.img")
mkdir "$work/mnt"
mount "$dev" "$work/mnt"
"$bin" --mount "$work/mnt" "${extra[@]}"
