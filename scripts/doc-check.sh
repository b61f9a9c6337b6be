#!/usr/bin/env bash
# Runs the runnable shell blocks of docs/deployment.md against the built binaries.
#
# Usage: scripts/doc-check.sh [--dry-run] [--keep] [DOC]
#   DOC        the Markdown file (default docs/deployment.md)
#   --dry-run  only extract the runnable blocks and check that they parse (bash -n); no binaries
#   --keep     keep the temporary folder (its path is printed) for a look afterwards
# Environment: DWBASE_BIN_DIR (default target/debug) holds dwbase, dwbase-node, dwbase-supervisor.
#
# Runnable = a ```bash fenced block, unless the line before it (blank lines aside) starts with
# "<!-- no-run". Blocks in ```sh, ```text, … never run. The runnable blocks run in document order
# as ONE bash script (set -euo pipefail, so variables carry over and the first failure stops it)
# in a fresh temporary folder holding a copy of deploy/, with DWBASE_DATA_DIR set to a temporary
# state root and the binaries first on PATH. Whatever happens, `dwbase deploy stop` runs at the end
# and the temporary folder is removed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${DWBASE_BIN_DIR:-$ROOT/target/debug}"
DRY=0
KEEP=0
DOC="$ROOT/docs/deployment.md"
while (($#)); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) DOC="$1" ;;
  esac
  shift
done
[[ -f "$DOC" ]] || { echo "doc-check: $DOC not found" >&2; exit 2; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-doc-check.XXXXXX")"
STARTED=0
cleanup() {
  local rc=$?
  set +e
  if ((STARTED)); then
    echo "doc-check: cleanup: dwbase deploy stop"
    (cd "$TMP/work" && timeout 60 dwbase deploy stop >/dev/null 2>&1) || echo "doc-check: warning: 'dwbase deploy stop' failed"
  fi
  if ((KEEP)); then echo "doc-check: kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# extract → $TMP/blocks/NNN.sh, one per runnable block, and $TMP/blocks/index (NNN<TAB>line).
mkdir -p "$TMP/blocks"
awk -v out="$TMP/blocks" '
  /^```[A-Za-z0-9_-]*[[:space:]]*$/ {
    if (!inside) {
      inside = 1
      lang = substr($0, 4)
      gsub(/[[:space:]]+$/, "", lang)
      run = (lang == "bash" && !norun)
      if (run) {
        n++
        file = sprintf("%s/%03d.sh", out, n)
        printf "%03d\t%d\n", n, NR + 1 >> (out "/index")
      }
      norun = 0
      next
    } else if ($0 ~ /^```[[:space:]]*$/) {
      inside = 0
      if (run) close(file)
      run = 0
      next
    }
  }
  {
    if (inside) {
      if (run) print > file
      next
    }
    if ($0 ~ /^<!-- *no-run/) { norun = 1; next }
    if ($0 !~ /^[[:space:]]*$/) norun = 0
  }
  END { if (inside) { print "unterminated code block" > "/dev/stderr"; exit 1 } }
' "$DOC"

if [[ ! -s "$TMP/blocks/index" ]]; then
  echo "doc-check: no runnable \`\`\`bash blocks in $DOC" >&2
  exit 1
fi

rel="${DOC#"$ROOT/"}"
count=0
bad=0
while IFS=$'\t' read -r n line; do
  count=$((count + 1))
  if ! bash -n "$TMP/blocks/$n.sh" 2>"$TMP/blocks/$n.err"; then
    echo "doc-check: block $n ($rel:$line) does not parse:"
    sed 's/^/    /' "$TMP/blocks/$n.err"
    bad=1
  fi
done <"$TMP/blocks/index"
if ((bad)); then exit 1; fi

if ((DRY)); then
  if command -v shellcheck >/dev/null 2>&1; then
    # All blocks as one script, as they would run; warnings and errors only.
    cat "$TMP"/blocks/[0-9]*.sh >"$TMP/all.sh"
    shellcheck --shell=bash --severity=warning "$TMP/all.sh"
  fi
  echo "doc-check: $count runnable blocks in $rel parse (dry run: nothing executed)"
  exit 0
fi

for b in dwbase dwbase-node dwbase-supervisor; do
  if [[ ! -x "$BIN/$b" ]]; then
    echo "doc-check: $BIN/$b is missing: build first (cargo build -p dwbase-ctl --bins) or set DWBASE_BIN_DIR" >&2
    exit 1
  fi
done

# The script: every runnable block in order, each announced with its place in the doc.
script="$TMP/doc.sh"
{
  echo 'set -euo pipefail'
  while IFS=$'\t' read -r n line; do
    printf 'echo "--- doc-check: block %s (%s:%s)"\n' "$n" "$rel" "$line"
    printf 'set -x\n'
    cat "$TMP/blocks/$n.sh"
    printf '{ set +x; } 2>/dev/null\n'
  done <"$TMP/blocks/index"
} >"$script"

mkdir -p "$TMP/work" "$TMP/state"
cp -R "$ROOT/deploy" "$TMP/work/deploy"
export DWBASE_DATA_DIR="$TMP/state"
export PATH="$BIN:$PATH"
STARTED=1
echo "doc-check: running $count blocks from $rel in $TMP/work (DWBASE_DATA_DIR=$DWBASE_DATA_DIR)"
rc=0
(cd "$TMP/work" && timeout 900 bash "$script") || rc=$?
if ((rc != 0)); then
  echo "doc-check: FAILED (exit $rc) in the last block announced above"
  exit "$rc"
fi
echo "doc-check: all $count runnable blocks of $rel passed"
