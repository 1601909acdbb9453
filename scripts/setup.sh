#!/usr/bin/env bash
# Prepares a (possibly brand new) Debian 12 machine to develop and test muster:
#   1. apt packages: podman, runc, catatonit, netavark/aardvark-dns, busybox-static, mmdebstrap,
#      iproute2 + nftables (tests/multihost: network namespaces and partitions),
#      docker-registry + apache2-utils (tests: a private registry with htpasswd auth),
#      postgresql (tests start their own server with initdb/pg_ctl; the package's service is
#      never started), ...
#   2. Podman host quirks (runc instead of crun, lower default ulimits), written to
#      /etc/containers/containers.conf.d/50-muster.conf only when a probe shows they are needed
#   3. the Podman API service on unix:///run/podman/podman.sock (no systemd here)
#   4. local test images (scripts/images.sh)
#   5. buf (npm @bufbuild/buf) into $REPO/.tools
#   6. $REPO/.venv with `pip install -e '.[dev]'`
# Idempotent: a second run only checks and takes a few seconds. Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

BUF_VERSION=1.75.0
PODMAN_SOCK=/run/podman/podman.sock
SERVICE_LOG=/var/log/muster-podman-service.log
SERVICE_PID=/run/muster-podman-service.pid
DROPIN=/etc/containers/containers.conf.d/50-muster.conf
BUSYBOX_IMAGE=localhost/muster-busybox:latest

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "run as root"
T_START=$(now)

# Several engineers/test runs may call this at once: one setup at a time.
LOCK=/run/muster-setup.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  log "another setup.sh is running; waiting for it"
  flock 9
fi

# ---------------------------------------------------------------- 1. packages
# --no-install-recommends with an explicit list: podman's recommends would pull
# buildah and dbus-user-session; what we need from them (and mmdebstrap's) is here.
APT_PACKAGES=(
  podman runc conmon catatonit netavark aardvark-dns iptables uidmap
  busybox-static
  mmdebstrap gpg debian-archive-keyring libdpkg-perl libdistro-info-perl arch-test
  curl ca-certificates git
  iproute2 nftables
  docker-registry apache2-utils
  python3 python3-venv
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
  [ "${status:0:2}" = ii ] || missing+=("$pkg")
done
# npm may come from Debian (nodejs + npm) or from elsewhere (e.g. nodesource bundles npm).
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  t0=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  log "apt packages installed in $(elapsed "$t0") s"
else
  log "apt packages present"
fi
# Tests start their own registries (tests/registry_support.py); the package's
# service (an open registry on :5000) is not wanted where systemd would run it.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet docker-registry 2>/dev/null; then
  log "disabling the docker-registry service (tests start their own registries)"
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# -------------------------------------------------- 2. podman host quirks
# Some hosts need two podman settings (see the README, "Machine notes"):
#  - runc instead of crun: crun refuses cgroups in hybrid mode (v1 + a v2 mount).
#  - default ulimits <= 4096: without CAP_SYS_RESOURCE, podman's default (high)
#    nofile/nproc limits fail with "setrlimit ... operation not permitted".
# We probe with a real container and write a drop-in (podman 4.3 reads
# /etc/containers/containers.conf.d/*.conf after containers.conf) only when needed;
# an existing containers.conf is never modified.
cgroup_hybrid() {
  [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] &&
    [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]
}

# Probe image (import only, no container run needed to build it).
bash "$REPO/scripts/images.sh" --no-verify busybox | sed 's/^/  /'

config_changed=0
need_runc=0
need_ulimits=0
if [ -f "$DROPIN" ]; then
  # Keep what an earlier run found (the probe below cannot see a problem the drop-in already fixes).
  grep -q '^runtime *= *"runc"' "$DROPIN" && need_runc=1
  grep -q '^default_ulimits' "$DROPIN" && need_ulimits=1
fi
if [ "$need_runc" = 0 ] && cgroup_hybrid &&
  [ "$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null)" != runc ]; then
  need_runc=1
  log "podman config: cgroups are in hybrid mode (v1 + cgroup2 on /sys/fs/cgroup/unified), which crun refuses -> runtime = runc"
fi
for _ in 1 2 3; do
  probe_flags=()
  [ "$need_runc" = 1 ] && probe_flags+=(--runtime runc)
  [ "$need_ulimits" = 1 ] && probe_flags+=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if out=$(podman run --rm "${probe_flags[@]}" "$BUSYBOX_IMAGE" true 2>&1); then
    break
  fi
  if [ "$need_runc" = 0 ] && grep -qiE 'hybrid|crun' <<<"$out"; then
    need_runc=1
    log "podman config: crun failed ($(head -c 200 <<<"$out")) -> runtime = runc"
  elif [ "$need_ulimits" = 0 ] && grep -qiE 'rlimit' <<<"$out"; then
    need_ulimits=1
    log "podman config: podman's default ulimits fail without CAP_SYS_RESOURCE" \
      "($(grep -oiE 'error setting rlimit[^:]*: operation not permitted' <<<"$out" | head -1)) -> default_ulimits nofile/nproc = 4096"
  else
    die "podman cannot run a container: $out"
  fi
done
if [ "$need_runc" = 1 ] || [ "$need_ulimits" = 1 ]; then
  new=$(mktemp)
  {
    echo "# Written by muster scripts/setup.sh: host quirks found by a probe container."
    echo "# Safe to delete: setup.sh writes it again only if needed."
    if [ "$need_ulimits" = 1 ]; then
      echo "[containers]"
      echo "# No CAP_SYS_RESOURCE: podman's default nofile/nproc limits fail with EPERM."
      echo 'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]'
    fi
    if [ "$need_runc" = 1 ]; then
      echo "[engine]"
      echo "# cgroups in hybrid mode (v1 + v2): crun refuses them, runc works."
      echo 'runtime = "runc"'
    fi
  } >"$new"
  if cmp -s "$new" "$DROPIN"; then
    log "podman config: $DROPIN up to date"
  else
    mkdir -p "$(dirname "$DROPIN")"
    install -m 0644 "$new" "$DROPIN"
    config_changed=1
    log "podman config: wrote $DROPIN"
  fi
  rm -f "$new"
  out=$(podman run --rm "$BUSYBOX_IMAGE" true 2>&1) ||
    die "podman still cannot run a container with $DROPIN: $out"
else
  log "podman config: defaults work on this host, no drop-in needed"
fi
log "podman: $(podman version --format '{{.Client.Version}}'), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}'), cgroups $(podman info --format '{{.Host.CgroupsVersion}}')"

# ------------------------------------------------------ 3. podman API service
sock_ok() { curl -sf --max-time 2 --unix-socket "$PODMAN_SOCK" http://d/_ping >/dev/null 2>&1; }
our_service_pid() {
  local pid
  pid=$(cat "$SERVICE_PID" 2>/dev/null || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'podman system service' &&
    echo "$pid"
}
stop_our_service() {
  local pid
  pid=$(our_service_pid) || return 0
  log "stopping podman API service (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -f "$SERVICE_PID"
}

if [ "$config_changed" = 1 ] && sock_ok; then
  if our_service_pid >/dev/null; then
    log "podman config changed: restarting our API service to load it"
    stop_our_service
  else
    log "WARNING: podman config changed but the API service on $PODMAN_SOCK was not started by" \
      "this script; restart it yourself so it loads $DROPIN"
  fi
fi

if sock_ok; then
  log "podman API service answers on $PODMAN_SOCK (pid $(our_service_pid || echo 'not ours'))"
else
  if pid=$(our_service_pid); then
    log "podman API service pid $pid exists but does not answer: waiting briefly"
    for _ in $(seq 50); do sock_ok && break; sleep 0.1; done
    sock_ok || stop_our_service
  fi
  if ! sock_ok; then
    log "starting podman API service on $PODMAN_SOCK (log $SERVICE_LOG)"
    mkdir -p "$(dirname "$PODMAN_SOCK")"
    rm -f "$PODMAN_SOCK"  # stale socket from a dead service
    # New session (survives this script and its process group) and no inherited
    # fds besides stdio: not the setup lock (fd 9), not a CI runner's pipes.
    (
      for fd in "/proc/$BASHPID/fd/"*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
      done
      exec setsid nohup podman system service --time=0 "unix://$PODMAN_SOCK"
    ) </dev/null >>"$SERVICE_LOG" 2>&1 &
    echo $! >"$SERVICE_PID"
    deadline=$(( $(date +%s) + 30 ))
    until sock_ok; do
      [ -d "/proc/$(cat "$SERVICE_PID")" ] ||
        die "podman API service exited; see $SERVICE_LOG: $(tail -5 "$SERVICE_LOG")"
      [ "$(date +%s)" -lt "$deadline" ] ||
        die "podman API service did not answer within 30 s; see $SERVICE_LOG"
      sleep 0.2
    done
    log "podman API service up (pid $(cat "$SERVICE_PID"))"
  fi
fi

# --------------------------------------------------------- 3b. PostgreSQL
# The PostgreSQL store's tests (tests/pg_support.py) start a server of their own in a
# temporary directory; only the binaries are needed. Debian's postinst would start the
# package's default cluster where an init system runs: a policy-rc.d that refuses
# service starts (exit 101, the Debian convention) keeps it stopped during the install.
if dpkg-query -W -f='${db:Status-Abbrev}' postgresql 2>/dev/null | grep -q '^ii'; then
  log "postgresql present ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' '))"
else
  log "installing postgresql (binaries only; its service is not started)"
  t0=$(now)
  policy_made=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  status=0
  apt-get install -y -q --no-install-recommends postgresql >/dev/null || status=$?
  [ "$policy_made" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$status" = 0 ] || die "apt-get install postgresql failed ($status)"
  log "postgresql installed in $(elapsed "$t0") s"
fi

# ------------------------------------------------------------- 4. images
bash "$REPO/scripts/images.sh" | sed 's/^/  /'

# ------------------------------------------------------------- 5. buf
BUF="$REPO/.tools/node_modules/.bin/buf"
if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null)" = "$BUF_VERSION" ]; then
  log "buf $BUF_VERSION present"
else
  log "installing buf $BUF_VERSION (npm @bufbuild/buf) into .tools"
  t0=$(now)
  mkdir -p "$REPO/.tools"
  npm install --prefix "$REPO/.tools" --save-exact --no-audit --no-fund --loglevel=error \
    "@bufbuild/buf@$BUF_VERSION" >/dev/null
  [ "$("$BUF" --version)" = "$BUF_VERSION" ] || die "buf install failed"
  log "buf installed in $(elapsed "$t0") s"
fi

# ------------------------------------------------- 5b. Node.js example client
NODE_EX="$REPO/examples/node"
NODE_STAMP="$NODE_EX/node_modules/.muster-lock-hash"
NODE_HASH=$(sha256sum "$NODE_EX/package-lock.json" | cut -d' ' -f1)
if [ -f "$NODE_STAMP" ] && [ "$(cat "$NODE_STAMP")" = "$NODE_HASH" ]; then
  log "examples/node dependencies present"
else
  log "npm ci in examples/node (@grpc/grpc-js, @grpc/proto-loader)"
  t0=$(now)
  (cd "$NODE_EX" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$NODE_HASH" >"$NODE_STAMP"
  log "examples/node ready in $(elapsed "$t0") s"
fi

# ------------------------------------------------------------- 6. venv
VENV="$REPO/.venv"
STAMP="$VENV/.muster-pyproject.sha256"
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  :
else
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is older than 3.11 (set PYTHON=/path/to/python3.11)"
  log "creating .venv with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
want_hash=$(sha256sum <pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want_hash" ]; then
  log ".venv up to date with pyproject.toml"
else
  log "pip install -e '.[dev]' (pyproject.toml changed or first run)"
  t0=$(now)
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  echo "$want_hash" >"$STAMP"
  log "pip install done in $(elapsed "$t0") s"
fi

log "done in $(elapsed "$T_START") s"
