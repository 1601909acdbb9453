#!/usr/bin/env bash
# A multi-host test bed on one machine: N simulated hosts, each a network namespace with its
# own address, its own mount namespace and its own Podman API service. See docs/multihost.md.
#
#   bed.sh up PREFIX N          create (or repair) hosts h1..hN of bed PREFIX; idempotent
#   bed.sh down PREFIX          remove everything of bed PREFIX; idempotent, harmless twice
#   bed.sh status PREFIX        human-readable state; exit 1 if something is not healthy
#   bed.sh json PREFIX          the bed as JSON (for the pytest fixture)
#   bed.sh cut PREFIX HOST      partition HOST from the control plane address (PREFIX's .1)
#   bed.sh heal PREFIX HOST     undo cut
#   bed.sh reboot PREFIX HOST [--graceful]
#                               power-loss reboot of HOST (--graceful: podman stop -a first)
#   bed.sh podman PREFIX HOST ARGS...   podman with HOST's flags, in HOST's namespaces
#   bed.sh exec PREFIX HOST CMD...      a command in HOST's network and mount namespaces
#   bed.sh list                 beds on this machine: PREFIX N NET OWNER (one per line)
#
# PREFIX: 1-10 characters [a-z0-9], starting with a letter (interface names are limited to
# 15 characters: PREFIX-br, PREFIX-h12). Environment:
#   MUSTER_BED_NET      first three octets of the bed's /24 (default: 10.213.X, X derived from
#                       PREFIX, the first one free of routes and addresses on this machine)
#   MUSTER_BED_IMAGES   images copied from the machine's Podman into every host
#                       (default: localhost/muster-busybox:latest localhost/muster-python:latest)
#   MUSTER_BED_OWNER    free text kept in the bed's bed.env and shown by `list`
# Run as root. Never touches the machine's own Podman except to `podman save` the images.
set -Eeuo pipefail

NET_BASE=10.213
read -r -a IMAGES <<<"${MUSTER_BED_IMAGES:-localhost/muster-busybox:latest localhost/muster-python:latest}"
SERVICE_TIMEOUT=30 # s for a host's Podman API to answer

PROG=bed.sh
die() {
  echo "$PROG: ERROR: $*" >&2
  exit 1
}
trap 'rc=$?; echo "$PROG: ERROR: unexpected failure (exit $rc) at line $LINENO: ${BASH_COMMAND%%$'"'"'\n'"'"'*}" >&2; exit $rc' ERR
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

PREFIX=""
log() { echo "[bed $PREFIX] $*"; }
warn() { echo "[bed $PREFIX] WARNING: $*" >&2; }

# ------------------------------------------------------------------ names and paths
set_prefix() {
  [[ "$1" =~ ^[a-z][a-z0-9]{0,9}$ ]] ||
    die "bad PREFIX '$1': 1-10 characters [a-z0-9], starting with a letter"
  PREFIX=$1
  BED_RUN=/run/$PREFIX-bed         # bed.env, cut markers, ns/ (the hosts' mount namespaces)
  BED_LIB=/var/lib/$PREFIX-bed     # images.tar
  BED_ENV=$BED_RUN/bed.env
  BRIDGE=$PREFIX-br
  NET="" NHOSTS=0
  if [ -f "$BED_ENV" ]; then
    NET=$(sed -n 's/^NET=//p' "$BED_ENV")
    NHOSTS=$(sed -n 's/^N=//p' "$BED_ENV")
  fi
}

# host_vars H: the names and paths of host H (h1, h2, ...) of the current bed.
host_vars() {
  [[ "$1" =~ ^h([1-9][0-9]?)$ ]] || die "bad HOST '$1': h1, h2, ..."
  H=$1
  HI=${BASH_REMATCH[1]}
  NS=$PREFIX-$H                    # network namespace, /run/netns/$NS
  VETH=$PREFIX-$H                  # root-namespace end of the veth pair (eth0 inside)
  ADDR=""
  [ -n "$NET" ] && ADDR=$NET.$((10 + HI))
  HLIB=/var/lib/$PREFIX-$H         # storage/, networks/, etc-containers/, events.log, ...
  HRUN=/run/$PREFIX-$H             # podman.sock, storage/ (run root), tmp/, service.pid
  MNTNS=$BED_RUN/ns/$H             # the host's mount namespace (bind-mounted nsfs file)
  SOCK=$HRUN/podman.sock
  PFLAGS=(--root "$HLIB/storage" --runroot "$HRUN/storage" --tmpdir "$HRUN/tmp"
    --network-config-dir "$HLIB/networks")
}

is_nsfs() { [ "$(stat -f -c %T "$1" 2>/dev/null)" = nsfs ]; }
netns_ok() { is_nsfs "/run/netns/$NS"; }
mntns_ok() { is_nsfs "$MNTNS"; }

# in_host CMD...: CMD in the host's mount namespace and (if it exists) network namespace.
in_host() {
  local net=()
  netns_ok && net=(--net="/run/netns/$NS")
  nsenter --mount="$MNTNS" "${net[@]}" -- "$@"
}
# ns_args: the same as nsenter arguments in NSARGS (for `timeout nsenter "${NSARGS[@]}" ...`).
ns_args() {
  NSARGS=(--mount="$MNTNS")
  netns_ok && NSARGS+=(--net="/run/netns/$NS")
  return 0
}
# hpodman ARGS...: this host's podman. Always with all of its own flags, always inside its
# mount namespace (its own /run, /dev/shm and /etc/containers: see mntns_create).
hpodman() { in_host podman "${PFLAGS[@]}" "$@"; }

sock_ok() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

# safe_rm DIR: rm -rf, only for the directories this script creates.
safe_rm() {
  [[ "$1" =~ ^/(run|var/lib)/[a-z][a-z0-9]{0,9}-(bed|h[1-9][0-9]?)$ ]] ||
    die "refusing to remove '$1'"
  rm -rf --one-file-system "$1"
}

require_tools() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  local t
  for t in ip nsenter unshare nft podman curl findmnt flock; do
    command -v "$t" >/dev/null 2>&1 ||
      die "'$t' not found (scripts/setup.sh installs iproute2, util-linux, nftables, podman, curl)"
  done
  ip netns list >/dev/null 2>&1 || die "'ip netns' does not work here"
}

# ------------------------------------------------------------------ address plan
ip2int() {
  local IFS=. a b c d
  read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}
# net_in_use NET: does any route or address of the root namespace overlap NET.0/24?
net_in_use() {
  local cand len a l m dst
  cand=$(ip2int "$1.0")
  while read -r dst; do
    a=${dst%/*}
    l=32
    [[ "$dst" == */* ]] && l=${dst#*/}
    [[ "$a" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || continue
    len=$((l < 24 ? l : 24))
    m=$(((0xffffffff << (32 - len)) & 0xffffffff))
    [ $(($(ip2int "$a") & m)) -eq $((cand & m)) ] && return 0
  done < <(
    ip -4 route show table all | awk '$1 == "local" || $1 == "broadcast" || $1 == "unicast" { print $2; next } $1 != "default" { print $1 }'
    ip -4 -o addr show | awk '{ print $4 }'
  )
  return 1
}
choose_net() {
  if [ -n "${MUSTER_BED_NET:-}" ]; then
    [[ "$MUSTER_BED_NET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "MUSTER_BED_NET must look like 10.213.7"
    net_in_use "$MUSTER_BED_NET" && die "MUSTER_BED_NET $MUSTER_BED_NET.0/24 is already in use here"
    echo "$MUSTER_BED_NET"
    return
  fi
  local start x i
  start=$(($(cksum <<<"$PREFIX" | cut -d' ' -f1) % 200))
  for ((i = 0; i < 200; i++)); do
    x=$((20 + (start + i) % 200))
    net_in_use "$NET_BASE.$x" || {
      echo "$NET_BASE.$x"
      return
    }
  done
  die "no free /24 in $NET_BASE.20-219.0/24 (set MUSTER_BED_NET)"
}

# ------------------------------------------------------------------ processes of a host
# host_pids: every process in the host's mount or network namespace, and their descendants
# (containers live in their own namespaces, as children of conmon, which is in the host's).
host_pids() {
  local d p s
  local -A parent=() member=()
  local refs=() r svc
  mntns_ok && refs+=("mnt:$MNTNS")
  netns_ok && refs+=("net:/run/netns/$NS")
  # The service's own namespaces too (they differ if the files above were lost or remade).
  if svc=$(service_pid); then
    member[$svc]=1
    refs+=("mnt:/proc/$svc/ns/mnt" "net:/proc/$svc/ns/net")
  fi
  # Never the namespaces this script runs in (the machine's own), whatever the files say.
  local keep=()
  for r in "${refs[@]}"; do
    [ "/proc/$$/ns/${r%%:*}" -ef "${r#*:}" ] || keep+=("$r")
  done
  refs=("${keep[@]}")
  [ ${#refs[@]} -eq 0 ] && return 0
  # Builtins only (no fork per process): `-ef` compares the namespaces' inodes.
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    { read -r s <"$d/stat"; } 2>/dev/null || continue
    s=${s##*) }
    s=${s#* }
    parent[$p]=${s%% *}
    for r in "${refs[@]}"; do
      if [ "$d/ns/${r%%:*}" -ef "${r#*:}" ]; then
        member[$p]=1
        break
      fi
    done
  done
  local added=1
  while [ "$added" = 1 ]; do
    added=0
    for p in "${!parent[@]}"; do
      if [ -z "${member[$p]:-}" ] && [ -n "${member[${parent[$p]}]:-}" ]; then
        member[$p]=1
        added=1
      fi
    done
  done
  [ ${#member[@]} -gt 0 ] && echo "${!member[@]}"
  return 0
}

# kill_host_procs: SIGSTOP then SIGKILL everything of the host (no process gets to react,
# conmon runs no exit command: like a power loss). Waits until they are gone.
kill_host_procs() {
  local pids deadline=$((SECONDS + 10))
  while :; do
    pids=$(host_pids)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -STOP $pids 2>/dev/null || true
    pids=$(host_pids)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && { kill -KILL $pids 2>/dev/null || true; }
    if [ $SECONDS -ge $deadline ]; then
      warn "$H: processes still alive after SIGKILL: $pids"
      return 0
    fi
    sleep 0.1
  done
}

service_pid() {
  local pid
  pid=$(cat "$HRUN/service.pid" 2>/dev/null || true)
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "system service --time=0 unix://$SOCK" &&
    echo "$pid"
}

stop_service() {
  local pid
  pid=$(service_pid) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$HRUN/service.pid"
}

# container_ids: the containers in this host's storage (also when Podman cannot answer).
container_ids() {
  local d
  for d in "$HLIB"/storage/overlay-containers/*/; do
    [ -d "$d" ] && basename "$d"
  done
  return 0
}
# rm_cgroups IDS...: cgroups of killed containers (cgroupfs manager) that nobody removed.
rm_cgroups() {
  local id d
  for id in "$@"; do
    [[ "$id" =~ ^[0-9a-f]{64}$ ]] || continue
    for d in /sys/fs/cgroup/*/libpod_parent/libpod-"$id" /sys/fs/cgroup/libpod_parent/libpod-"$id"; do
      [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
  done
  return 0
}

# ------------------------------------------------------------------ network of a host
bridge_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  echo 1 >"/proc/sys/net/ipv6/conf/$BRIDGE/disable_ipv6" 2>/dev/null || true
  ip addr replace "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

netns_up() {
  if ! netns_ok; then
    ip netns del "$NS" 2>/dev/null || true
    ip netns add "$NS"
  fi
  local in_ns=(ip -n "$NS")
  if ! ip link show "$VETH" >/dev/null 2>&1 || ! "${in_ns[@]}" link show eth0 >/dev/null 2>&1; then
    ip link del "$VETH" 2>/dev/null || true
    "${in_ns[@]}" link del eth0 2>/dev/null || true
    ip link add "$VETH" type veth peer name eth0 netns "$NS"
  fi
  echo 1 >"/proc/sys/net/ipv6/conf/$VETH/disable_ipv6" 2>/dev/null || true
  ip link set "$VETH" master "$BRIDGE" up
  nsenter --net="/run/netns/$NS" sh -c 'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 >"$f"; done' 2>/dev/null || true
  "${in_ns[@]}" link set lo up
  "${in_ns[@]}" addr replace "$ADDR/24" dev eth0
  "${in_ns[@]}" link set eth0 up
  "${in_ns[@]}" route replace default via "$NET.1" dev eth0
  # Containment: nothing leaves the host's eth0 except to the bed's own /24 (no internet,
  # no machine DNS, no other address of this machine); rejected at once, not timed out.
  nsenter --net="/run/netns/$NS" nft -f - <<EOF
table inet muster_bed
delete table inet muster_bed
table inet muster_bed {
  chain host_out { type filter hook output priority 0; policy accept;
    oifname "eth0" ip daddr != $NET.0/24 reject with icmpx type admin-prohibited
    oifname "eth0" meta nfproto ipv6 drop
  }
  chain host_fwd { type filter hook forward priority 0; policy accept;
    oifname "eth0" ip daddr != $NET.0/24 reject with icmpx type admin-prohibited
    oifname "eth0" meta nfproto ipv6 drop
  }
}
EOF
  [ -f "$BED_RUN/cut-$H" ] && apply_cut
  return 0
}

apply_cut() {
  local cp=$NET.1
  nsenter --net="/run/netns/$NS" nft -f - <<EOF
table inet muster_cut
delete table inet muster_cut
table inet muster_cut {
  chain host_out { type filter hook output priority 0; policy accept; ip daddr $cp drop; }
  chain host_in { type filter hook input priority 0; policy accept; ip saddr $cp drop; }
  chain host_fwd { type filter hook forward priority 0; policy accept; ip daddr $cp drop; ip saddr $cp drop; }
}
EOF
}

is_cut() { nsenter --net="/run/netns/$NS" nft list table inet muster_cut >/dev/null 2>&1; }

# ------------------------------------------------------------------ mount namespace of a host
# The host's own view of the file system, shared by its Podman service, the conmons and
# cleanup processes it starts and every `bed.sh podman`/`exec`:
#   /run              a fresh tmpfs (cleared by reboot), holding only a bind of $HRUN.
#                     Rootful Podman 4.3 keeps netavark's IPAM database and aardvark-dns
#                     state at the fixed path /run/containers/networks, and runc its state in
#                     /run/runc: shared by all Podman instances unless /run is private.
#   /dev/shm          a fresh tmpfs: Podman's SHM lock segment (/dev/shm/libpod_lock) is per
#                     machine otherwise, and a "reboot" (refresh) frees *all* its locks.
#   /etc/containers   a copy of the machine's (its containers.conf.d drop-ins included, the
#                     machine's networks/ left out) plus 99-muster-bed.conf (events log).
#   /etc/resolv.conf  "nameserver <its own address>": the host and its containers resolve no
#                     names (but container names on its Podman networks, via aardvark-dns).
host_files() {
  mkdir -p "$HLIB/storage" "$HLIB/networks" "$HLIB/runfs" "$HRUN/storage" "$HRUN/tmp" "$BED_RUN/ns"
  local etc=$HLIB/etc-containers
  rm -rf "$etc.new"
  mkdir -p "$etc.new"
  cp -a /etc/containers/. "$etc.new/"
  rm -rf "$etc.new/networks"
  mkdir -p "$etc.new/containers.conf.d"
  cat >"$etc.new/containers.conf.d/99-muster-bed.conf" <<EOF
# Written by tests/multihost/bed.sh for host $H of bed $PREFIX (seen only by that host).
[engine]
events_logger = "file"
# Kept out of the run root, so a simulated reboot does not lose the events.
events_logfile_path = "$HLIB/events.log"
events_logfile_max_size = 0
EOF
  if [ -d "$etc" ] && diff -r "$etc" "$etc.new" >/dev/null 2>&1; then
    rm -rf "$etc.new"
  elif [ -d "$etc" ] && mntns_ok; then
    # In use by the mount namespace: update the files in place.
    cp -a "$etc.new/." "$etc/"
    rm -rf "$etc.new"
  else
    rm -rf "$etc"
    mv "$etc.new" "$etc"
  fi
  # Its own address: nothing listens on port 53 there, so every lookup fails at once (a
  # loopback nameserver would do for the host, but Podman drops those for containers and
  # falls back to 8.8.8.8, which the containment rejects only after resolver retries).
  printf '# bed %s host %s: resolves nothing\nnameserver %s\n' "$PREFIX" "$H" "${ADDR:-127.0.0.1}" >"$HLIB/resolv.conf"
}

mntns_create() {
  mntns_ok && return 0
  umount "$MNTNS" 2>/dev/null || true
  : >"$MNTNS"
  unshare --mount="$MNTNS" --propagation slave -- bash -euc '
    runfs=$1 hrun=$2 etc=$3 resolv=$4
    # Drop this copy of the machine'"'"'s mounts that are not ours to hold: other namespaces
    # bound under /run (they would stay alive), the machine'"'"'s container mounts, /dev/shm.
    findmnt -rn -o TARGET | grep -E "^(/run(/.*)?|/dev/shm|/var/lib/containers/.*)$" | sort -r |
      while read -r t; do umount -l "$(printf "%b" "$t")" 2>/dev/null || true; done
    mount -n -t tmpfs -o mode=0755 bed-run "$runfs"
    mkdir -p "$runfs/${hrun#/run/}"
    mount -n --bind "$hrun" "$runfs/${hrun#/run/}"
    mount -n --move "$runfs" /run
    mount -n -t tmpfs -o mode=1777,nosuid,nodev bed-shm /dev/shm
    mount -n --bind "$etc" /etc/containers
    mount -n --bind "$resolv" /etc/resolv.conf
  ' _ "$HLIB/runfs" "$HRUN" "$HLIB/etc-containers" "$HLIB/resolv.conf"
}

# ns_dir: $BED_RUN/ns, where the hosts' mount namespace files are bound, must be a private
# mount (else binding a mount namespace there fails: "Invalid argument"). Once per command,
# before the hosts are handled in parallel.
ns_dir() {
  mkdir -p "$BED_RUN/ns"
  if ! findmnt -rn --mountpoint "$BED_RUN/ns" >/dev/null 2>&1; then
    mount --bind "$BED_RUN/ns" "$BED_RUN/ns"
  fi
  mount --make-private "$BED_RUN/ns"
}

mntns_drop() {
  if [ -e "$MNTNS" ]; then
    umount "$MNTNS" 2>/dev/null || umount -l "$MNTNS" 2>/dev/null || true
    rm -f "$MNTNS"
  fi
}

# ------------------------------------------------------------------ Podman of a host
images_tar() {
  local tar=$BED_LIB/images.tar ids
  ids=$(podman image inspect --format '{{.Id}}' "${IMAGES[@]}" 2>&1) ||
    die "the test images are missing from the machine's Podman (run scripts/images.sh): $ids"
  if [ -f "$tar" ] && [ "$(cat "$BED_LIB/images.ids" 2>/dev/null)" = "$ids" ]; then
    return 0
  fi
  mkdir -p "$BED_LIB"
  local t0
  t0=$(now)
  rm -f "$tar.tmp"
  # -m: without it a docker-archive of several images silently holds only the first one.
  podman save -q -m -o "$tar.tmp" "${IMAGES[@]}" >/dev/null
  mv "$tar.tmp" "$tar"
  echo "$ids" >"$BED_LIB/images.ids"
  log "saved ${IMAGES[*]} from the machine's Podman ($(du -m "$tar" | cut -f1) MB, $(elapsed "$t0") s)"
}

host_images_ok() {
  local got
  got=$(hpodman image inspect --format '{{.Id}}' "${IMAGES[@]}" 2>/dev/null) || return 1
  [ "$got" = "$(cat "$BED_LIB/images.ids")" ]
}

host_load_images() {
  host_images_ok && return 0
  local t0 out
  t0=$(now)
  out=$(hpodman load -q -i "$BED_LIB/images.tar" 2>&1) || die "$H: podman load failed: $out"
  host_images_ok || die "$H: images not in its storage after podman load: $out"
  log "$H: images loaded ($(elapsed "$t0") s)"
}

start_service() {
  if sock_ok && service_pid >/dev/null; then
    return 0
  fi
  stop_service
  rm -f "$SOCK"
  local log=$HLIB/service.log
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid nohup nsenter --mount="$MNTNS" --net="/run/netns/$NS" -- \
      podman "${PFLAGS[@]}" system service --time=0 "unix://$SOCK"
  ) </dev/null >>"$log" 2>&1 &
  echo $! >"$HRUN/service.pid"
  local deadline=$((SECONDS + SERVICE_TIMEOUT))
  until sock_ok; do
    [ -d "/proc/$(cat "$HRUN/service.pid")" ] ||
      die "$H: Podman service exited: $(tail -3 "$log" | tr '\n' ' ')"
    [ $SECONDS -lt $deadline ] || die "$H: Podman service did not answer within ${SERVICE_TIMEOUT}s ($log)"
    sleep 0.1
  done
}

# ------------------------------------------------------------------ host lifecycle
host_up() {
  host_vars "$1"
  host_files
  local pid
  if pid=$(service_pid) && ! { netns_ok && mntns_ok && [ "/proc/$pid/ns/net" -ef "/run/netns/$NS" ] &&
    [ "/proc/$pid/ns/mnt" -ef "$MNTNS" ]; }; then
    warn "$H: its Podman service runs in namespaces that are no longer the host's: power cycle"
    host_power_off
  fi
  netns_up
  mntns_create
  host_load_images
  start_service
  log "$H: up: $ADDR, unix://$SOCK (pid $(service_pid))"
}

# host_power_off: every process of the host dies at once (SIGKILL, no cleanup), its mount
# namespace (private /run and /dev/shm) and network namespace go, its run root is wiped.
# Storage (/var/lib/PREFIX-H) stays, as a disk would.
host_power_off() {
  local ids
  mapfile -t ids < <(container_ids)
  kill_host_procs
  rm -f "$HRUN/service.pid"
  mntns_drop
  rm_cgroups "${ids[@]}"
  if netns_ok || [ -e "/run/netns/$NS" ]; then ip netns del "$NS" 2>/dev/null || true; fi
  ip link del "$VETH" 2>/dev/null || true
  if [ -d "$HRUN" ]; then
    find "$HRUN" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
  fi
}

host_down() {
  host_vars "$1"
  local ids
  mapfile -t ids < <(container_ids)
  stop_service # no API client starts anything new from here on
  if [ -d "$HLIB/storage" ] && [ -d "$HLIB/etc-containers" ]; then
    # Remove the containers and reset this host's storage (with its own flags only).
    mkdir -p "$HRUN/storage" "$HRUN/tmp" "$HLIB/runfs"
    [ -f "$HLIB/resolv.conf" ] || host_files
    if mntns_create; then
      ns_args
      if [ ${#ids[@]} -gt 0 ]; then
        timeout 60 nsenter "${NSARGS[@]}" -- podman "${PFLAGS[@]}" rm -af -t 0 >/dev/null 2>&1 ||
          warn "$H: podman rm -af failed"
      fi
      timeout 60 nsenter "${NSARGS[@]}" -- podman "${PFLAGS[@]}" system reset -f >/dev/null 2>&1 ||
        warn "$H: podman system reset failed"
    else
      warn "$H: no mount namespace for podman system reset; removing its storage directly"
    fi
  fi
  kill_host_procs
  mntns_drop
  rm_cgroups "${ids[@]}"
  if [ -e "/run/netns/$NS" ]; then ip netns del "$NS" 2>/dev/null || true; fi
  ip link del "$VETH" 2>/dev/null || true
  rm -f "$BED_RUN/cut-$H"
  safe_rm "$HLIB"
  safe_rm "$HRUN"
}

# run_hosts FUNC HOST...: FUNC for every host at once; fails if any failed.
run_hosts() {
  local fn=$1 h failed=()
  shift
  local -A pids=()
  for h in "$@"; do
    ("$fn" "$h") &
    pids[$h]=$!
  done
  for h in "$@"; do
    wait "${pids[$h]}" || failed+=("$h")
  done
  [ ${#failed[@]} -eq 0 ] || die "$fn failed for ${failed[*]} (see above)"
}

# hosts_present: every host name of the bed that left any trace (for down).
hosts_present() {
  local f n
  {
    for ((n = 1; n <= NHOSTS; n++)); do echo "h$n"; done
    for f in /run/netns/"$PREFIX"-h* /var/lib/"$PREFIX"-h* /run/"$PREFIX"-h* "$BED_RUN"/ns/h*; do
      [ -e "$f" ] && basename "$f" | sed "s/^$PREFIX-//"
    done
    ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed -n "s/^$PREFIX-\(h[0-9]*\)@.*/\1/p; s/^$PREFIX-\(h[0-9]*\)$/\1/p"
  } | { grep -E '^h[1-9][0-9]?$' || true; } | sort -uV
}

lock_bed() {
  exec 8>"/run/$PREFIX-bed.lock"
  flock 8
}

# ------------------------------------------------------------------ commands
# bed.env: the bed's /24, its size, and who asked for it (MUSTER_BED_OWNER, free text: the
# pytest fixture puts "PID STARTTIME" there to find beds of test runs that were killed).
write_env() {
  local owner=${MUSTER_BED_OWNER:-}
  [ -z "$owner" ] && [ -f "$BED_ENV" ] && owner=$(sed -n 's/^OWNER=//p' "$BED_ENV")
  printf 'PREFIX=%s\nNET=%s\nN=%s\nOWNER=%s\n' "$PREFIX" "$NET" "$1" "$owner" >"$BED_ENV.tmp"
  mv "$BED_ENV.tmp" "$BED_ENV"
}

cmd_up() {
  local n=$1
  [[ "$n" =~ ^[1-9][0-9]?$ ]] && [ "$n" -le 40 ] || die "N must be 1..40, not '$n'"
  require_tools
  lock_bed
  local t0
  t0=$(now)
  if [ -z "$NET" ]; then
    # One allocation at a time on this machine (two beds must not pick the same /24).
    mkdir -p /run/netns
    exec 7</run/netns
    flock 7
    NET=$(choose_net)
    mkdir -p "$BED_RUN"
    write_env "$n"
    bridge_up
    exec 7<&-
  else
    bridge_up
  fi
  # Hosts beyond N (from an earlier, bigger `up`) go.
  local h extra=()
  for h in $(hosts_present); do
    [ "${h#h}" -gt "$n" ] && extra+=("$h")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    ns_dir
    run_hosts host_down "${extra[@]}"
  fi
  NHOSTS=$n
  write_env "$n"
  images_tar
  ns_dir
  local hosts=()
  for ((i = 1; i <= n; i++)); do hosts+=("h$i"); done
  run_hosts host_up "${hosts[@]}"
  log "up: $n host(s) on $NET.0/24, control plane address $NET.1 (bridge $BRIDGE), $(elapsed "$t0") s"
}

cmd_down() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  lock_bed
  local t0 hosts
  t0=$(now)
  mapfile -t hosts < <(hosts_present)
  if [ ${#hosts[@]} -gt 0 ]; then
    ns_dir
    run_hosts host_down "${hosts[@]}"
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  local tries=0
  while findmnt -rn --mountpoint "$BED_RUN/ns" >/dev/null 2>&1 && [ $tries -lt 10 ]; do
    umount "$BED_RUN/ns" 2>/dev/null || umount -l "$BED_RUN/ns" 2>/dev/null || true
    tries=$((tries + 1))
  done
  safe_rm "$BED_RUN"
  safe_rm "$BED_LIB"
  rm -f "/run/$PREFIX-bed.lock"
  log "down: ${#hosts[@]} host(s) removed ($(elapsed "$t0") s)"
}

need_bed() { [ -f "$BED_ENV" ] || die "no bed '$PREFIX' here (bed.sh up $PREFIX N)"; }
need_host() {
  need_bed
  host_vars "$1"
  [ "$HI" -le "$NHOSTS" ] || die "bed '$PREFIX' has no host $1 (h1..h$NHOSTS)"
  netns_ok || die "host $1 of bed '$PREFIX' has no network namespace (bed.sh up $PREFIX $NHOSTS)"
}

cmd_cut() {
  need_host "$1"
  require_tools
  lock_bed
  apply_cut
  touch "$BED_RUN/cut-$H"
  log "$H: cut from the control plane address $NET.1 (to and from $ADDR, its containers included)"
}

cmd_heal() {
  need_host "$1"
  lock_bed
  nsenter --net="/run/netns/$NS" nft delete table inet muster_cut 2>/dev/null || true
  rm -f "$BED_RUN/cut-$H"
  log "$H: healed"
}

cmd_reboot() {
  need_host "$1"
  local graceful=${2:-}
  [ -z "$graceful" ] || [ "$graceful" = --graceful ] || die "unknown option '$graceful'"
  require_tools
  lock_bed
  local t0
  t0=$(now)
  if [ -n "$graceful" ] && mntns_ok; then
    hpodman stop -a -t 10 >/dev/null 2>&1 || warn "$H: podman stop -a failed"
  fi
  ns_dir
  host_power_off
  log "$H: powered off ($(elapsed "$t0") s)"
  host_up "$H"
  log "$H: rebooted ($(elapsed "$t0") s)"
}

cmd_status() {
  need_bed
  local bad=0 h pid st
  echo "bed $PREFIX: $NHOSTS host(s), network $NET.0/24, control plane address $NET.1 on bridge $BRIDGE"
  ip link show "$BRIDGE" >/dev/null 2>&1 || {
    echo "  bridge $BRIDGE: MISSING"
    bad=1
  }
  for ((i = 1; i <= NHOSTS; i++)); do
    host_vars "h$i"
    st=()
    if netns_ok; then st+=("netns ok"); else st+=("netns MISSING") && bad=1; fi
    if mntns_ok; then st+=("mountns ok"); else st+=("mountns MISSING") && bad=1; fi
    if pid=$(service_pid); then st+=("service pid $pid"); else st+=("service DOWN") && bad=1; fi
    if sock_ok; then st+=("api ok"); else st+=("api NOT ANSWERING") && bad=1; fi
    if mntns_ok && host_images_ok 2>/dev/null; then st+=("images ok"); else st+=("images MISSING") && bad=1; fi
    if mntns_ok; then
      st+=("containers $(hpodman ps -q 2>/dev/null | wc -l) running/$(hpodman ps -aq 2>/dev/null | wc -l)")
    fi
    if netns_ok && is_cut; then st+=("CUT from $NET.1"); fi
    echo "  $H $ADDR unix://$SOCK: $(
      IFS=,
      echo "${st[*]}" | sed 's/,/, /g'
    )"
  done
  if [ $bad -ne 0 ]; then
    echo "$PROG: bed $PREFIX is not healthy (bed.sh up $PREFIX $NHOSTS repairs it)" >&2
    trap - ERR
    exit 1
  fi
}

cmd_json() {
  need_bed
  local sep=""
  printf '{"prefix": "%s", "net": "%s.0/24", "cp_address": "%s.1", "bridge": "%s", "hosts": [' \
    "$PREFIX" "$NET" "$NET" "$BRIDGE"
  for ((i = 1; i <= NHOSTS; i++)); do
    host_vars "h$i"
    printf '%s\n  {"name": "%s", "address": "%s", "netns": "%s", "mountns": "%s", "socket": "%s", "url": "unix://%s", "root": "%s", "runroot": "%s", "tmpdir": "%s", "network_config_dir": "%s", "events_log": "%s"}' \
      "$sep" "$H" "$ADDR" "/run/netns/$NS" "$MNTNS" "$SOCK" "$SOCK" "$HLIB/storage" "$HRUN/storage" \
      "$HRUN/tmp" "$HLIB/networks" "$HLIB/events.log"
    sep=,
  done
  printf '\n]}\n'
}

cmd_list() {
  local f
  for f in /run/*-bed/bed.env; do
    [ -f "$f" ] || continue
    # PREFIX N NET OWNER...
    echo "$(sed -n 's/^PREFIX=//p' "$f") $(sed -n 's/^N=//p' "$f") $(sed -n 's/^NET=//p' "$f").0/24 $(sed -n 's/^OWNER=//p' "$f")"
  done
}

usage() {
  sed -n '2,/^set -E/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
}

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1
  shift
  case "$cmd" in
  up)
    [ $# -eq 2 ] || die "usage: bed.sh up PREFIX N"
    set_prefix "$1"
    cmd_up "$2"
    ;;
  down)
    [ $# -eq 1 ] || die "usage: bed.sh down PREFIX"
    set_prefix "$1"
    cmd_down
    ;;
  status | json)
    [ $# -eq 1 ] || die "usage: bed.sh $cmd PREFIX"
    set_prefix "$1"
    "cmd_$cmd"
    ;;
  cut | heal)
    [ $# -eq 2 ] || die "usage: bed.sh $cmd PREFIX HOST"
    set_prefix "$1"
    "cmd_$cmd" "$2"
    ;;
  reboot)
    [ $# -ge 2 ] && [ $# -le 3 ] || die "usage: bed.sh reboot PREFIX HOST [--graceful]"
    set_prefix "$1"
    cmd_reboot "$2" "${3:-}"
    ;;
  podman)
    [ $# -ge 2 ] || die "usage: bed.sh podman PREFIX HOST ARGS..."
    set_prefix "$1"
    need_host "$2"
    mntns_ok || die "host $2 of bed '$PREFIX' has no mount namespace (bed.sh up $PREFIX $NHOSTS)"
    shift 2
    trap - ERR
    exec nsenter --mount="$MNTNS" --net="/run/netns/$NS" -- podman "${PFLAGS[@]}" "$@"
    ;;
  exec)
    [ $# -ge 3 ] || die "usage: bed.sh exec PREFIX HOST CMD..."
    set_prefix "$1"
    need_host "$2"
    mntns_ok || die "host $2 of bed '$PREFIX' has no mount namespace (bed.sh up $PREFIX $NHOSTS)"
    shift 2
    trap - ERR
    exec nsenter --mount="$MNTNS" --net="/run/netns/$NS" -- "$@"
    ;;
  list) cmd_list ;;
  -h | --help | help) usage ;;
  *) die "unknown command '$cmd' (up, down, status, json, cut, heal, reboot, podman, exec, list)" ;;
  esac
}

main "$@"
