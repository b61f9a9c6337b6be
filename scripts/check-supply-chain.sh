#!/usr/bin/env bash
# Supply chain, offline: `cargo deny check` (advisories from the RustSec snapshot in
# ../shared/advisory-db, bans with the reviewed duplicate list, licenses, sources; deny.toml) and
# `cargo machete` (no declared dependency goes unused).
#
#   scripts/check-supply-chain.sh [--advisory-db DIR] [--skip-machete]
#
# Installs cargo-deny and cargo-machete with `cargo install --locked` (pinned versions) when they
# are missing. The advisory database is never fetched: the snapshot is copied into a temp folder
# laid out as cargo-deny expects (a git checkout named after the database URL), dated by its
# SNAPSHOT file so that cargo-deny's staleness check sees its real age. The temp folder is
# removed on exit, failure included.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

DENY_VERSION=0.20.2
MACHETE_VERSION=0.9.2
# cargo-deny $DENY_VERSION opens the default database (RustSec's advisory-db) at
# <db-path>/advisory-db-<xxhash64 of its URL>; this is that name (`cargo deny -L debug check
# advisories` prints "Opening advisory database at …").
DB_DIRNAME=advisory-db-3157b0e258782691

DB_SRC="$ROOT/../shared/advisory-db"
MACHETE=1
while (($#)); do
  case "$1" in
    --advisory-db) DB_SRC="${2:?--advisory-db needs a folder}"; shift ;;
    --skip-machete) MACHETE=0 ;;
    -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '%s\n' "$*"; }
fail() { say "check-supply-chain: $*" >&2; exit 1; }

# "cargo-deny 0.20.2" / "0.9.2" (cargo-machete prints the bare version)
installed_version() { "$1" --version 2>/dev/null | awk '{print $NF}'; }

ensure_tool() {
  local crate="$1" version="$2" bin="$3"
  if [[ "$(installed_version "$bin" || true)" != "$version" ]]; then
    say "installing (cargo install --locked): $crate $version"
    cargo install --locked --quiet "$crate@$version"
  fi
  say "  $crate $(installed_version "$bin")"
}

NO_DB=0
if [[ ! -f "$DB_SRC/SNAPSHOT" ]]; then
  say "WARNING: no advisory database snapshot at $DB_SRC: advisories are NOT checked this run (bans, licenses and sources are)"
  NO_DB=1
else
# "… a copy of commit <sha> <RFC 3339 date>."
SNAP_LINE="$(head -1 "$DB_SRC/SNAPSHOT")"
SNAP_DATE="$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}[+-][0-9]{2}:[0-9]{2}' <<<"$SNAP_LINE" | head -1)"
[[ -n "$SNAP_DATE" ]] || fail "$DB_SRC/SNAPSHOT names no date: $SNAP_LINE"
fi

ensure_tool cargo-deny "$DENY_VERSION" cargo-deny
if ((MACHETE)); then ensure_tool cargo-machete "$MACHETE_VERSION" cargo-machete; fi
command -v git >/dev/null || fail "git is needed to lay out the advisory database"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-supply-chain.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

checks=(advisories bans licenses sources)
cfg="$ROOT/deny.toml"
if ((NO_DB)); then
  checks=(bans licenses sources)
else
db="$TMP/advisory-dbs/$DB_DIRNAME"
mkdir -p "$db"
cp -R "$DB_SRC/." "$db/"
chmod -R u+w "$db"
(
  cd "$db"
  export GIT_AUTHOR_DATE="$SNAP_DATE" GIT_COMMITTER_DATE="$SNAP_DATE"
  git init -q -b main .
  git -c user.name=snapshot -c user.email=snapshot@localhost add -A
  git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m "$SNAP_LINE"
  # cargo-deny dates the database by FETCH_HEAD, else by HEAD's commit and file time.
  touch -d "$SNAP_DATE" .git/HEAD
)
age_days=$(( ($(date +%s) - $(date -d "$SNAP_DATE" +%s)) / 86400 ))
say "advisory database: snapshot of $SNAP_DATE ($age_days days old), from $DB_SRC"

cfg="$TMP/deny.toml"
# deny.toml with db-path pointed at the laid-out snapshot (the committed file keeps the default).
sed "s|^db-path = .*|db-path = \"$TMP/advisory-dbs\"|" "$ROOT/deny.toml" >"$cfg"
grep -q "^db-path = \"$TMP/advisory-dbs\"" "$cfg" || fail "deny.toml has no db-path line to point at the snapshot"

fi

# cargo-deny's --offline turns off every fetch, cargo metadata's too, which then fails on crates
# of other targets that no build here downloaded: the metadata is taken first, by cargo itself.
cargo metadata --locked --format-version 1 >"$TMP/metadata.json"

say "cargo deny check (advisories, bans, licenses, sources)"
cargo deny --offline --locked --config "$cfg" --metadata-path "$TMP/metadata.json" \
  check --show-stats "${checks[@]}"

# Vendored crates (node/vendor/, used through [patch.crates-io]) are path crates, which
# cargo-deny does not match against advisories: the snapshot is searched for them by name, and any
# advisory for one fails the run until it is reviewed against the vendored copy.
if ((!NO_DB)); then
  for manifest in "$ROOT"/node/vendor/*/Cargo.toml; do
    [[ -f "$manifest" ]] || continue
    name="$(awk -F'"' '/^name = / { print $2; exit }' "$manifest")"
    version="$(awk -F'"' '/^version = / { print $2; exit }' "$manifest")"
    [[ -n "$name" ]] || fail "$manifest names no package"
    if [[ -d "$DB_SRC/crates/$name" ]]; then
      found="$(cd "$DB_SRC/crates/$name" && ls)"
      fail "the advisory snapshot has advisories for $name, vendored as $version in ${manifest%/Cargo.toml}: $found (review them; node/vendor/README.md)"
    fi
    say "  vendored $name $version: no advisory in the snapshot"
  done
fi

if ((MACHETE)); then
  say "cargo machete (unused dependencies)"
  cargo machete "$ROOT"
else
  say "cargo machete: skipped (--skip-machete)"
fi

say "check-supply-chain: ok"
