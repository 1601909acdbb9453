#!/usr/bin/env bash
# Builds the local test images without any container registry:
#
#   localhost/muster-busybox:latest  busybox-static from the Debian archive (sh, sleep, echo, ...)
#   localhost/muster-python:latest   minimal Debian bookworm rootfs with python3 (mmdebstrap)
#   localhost/muster-postgres:latest Debian bookworm rootfs with postgresql (mmdebstrap) and
#                                    images/postgres/muster-postgres as entrypoint (compose.ha.yaml;
#                                    only when named: it is not a test image of every run)
#
# Usage: scripts/images.sh [--no-verify] [--force] [busybox] [python] [postgres]
#   (no image names = busybox and python). Idempotent: an image is skipped when it exists with
#   the current recipe revision (label muster.image-rev). Rootfs tarballs are
#   cached under $REPO/.data/images/ (gitignored) so re-imports are quick.
# Run as root. Needs busybox-static's .deb (apt-get download), mmdebstrap, podman.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$REPO/.data/images"
IMAGES_DIR="$REPO/images"
# Debian mirror for the python rootfs (Debian apt is reachable; registries are not).
MIRROR=${MUSTER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${MUSTER_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm

# Bump a revision when its recipe changes: the image (and cached rootfs) is rebuilt.
BUSYBOX_REV=1
PYTHON_REV=1
POSTGRES_REV=1  # the image's label adds a hash of images/postgres/muster-postgres

BUSYBOX_IMAGE=localhost/muster-busybox:latest
PYTHON_IMAGE=localhost/muster-python:latest
POSTGRES_IMAGE=localhost/muster-postgres:latest

log() { echo "[images] $*"; }
die() { echo "[images] ERROR: $*" >&2; exit 1; }

verify=1
force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --no-verify) verify=0 ;;
    --force) force=1 ;;
    busybox|python|postgres) want+=("$arg") ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done
[ ${#want[@]} -gt 0 ] || want=(busybox python)

[ "$(id -u)" -eq 0 ] || die "run as root"
command -v podman >/dev/null || die "podman is not installed (run scripts/setup.sh)"

# One builder at a time (several engineers/test runs may call this concurrently).
mkdir -p "$CACHE"
exec 8>"$CACHE/.lock"
if ! flock -n 8; then
  log "another images.sh is running; waiting for it"
  flock 8
fi

work=
cleanup() { if [ -n "$work" ]; then rm -rf "$work"; fi; rm -rf "$CACHE"/*.tar.tmp; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# image_current IMAGE REV -> 0 when IMAGE exists and carries muster.image-rev=REV
image_current() {
  local image=$1 rev=$2 have
  podman image exists "$image" || return 1
  have=$(podman image inspect --format '{{ index .Labels "muster.image-rev" }}' "$image" 2>/dev/null || true)
  [ "$have" = "$rev" ]
}

# import_rootfs TAR IMAGE --change...: imports TAR as IMAGE. An older image with
# that tag is untagged by the import and then removed unless containers use it.
import_rootfs() {
  local tar=$1 image=$2 old
  shift 2
  old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  podman import -q "$@" "$tar" "$image" >/dev/null
  if [ -n "$old" ]; then podman image rm "$old" >/dev/null 2>&1 || true; fi
}

# Reproducible-ish tar of a directory tree (root-owned, fixed mtime, sorted).
tar_rootfs() {
  local dir=$1 out=$2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$dir" -cf "$out.tmp" .
  mv -f "$out.tmp" "$out"
}

build_busybox() {
  local t0 tar="$CACHE/busybox-rootfs-r$BUSYBOX_REV.tar"
  if [ "$force" = 0 ] && image_current "$BUSYBOX_IMAGE" "$BUSYBOX_REV"; then
    log "$BUSYBOX_IMAGE exists (rev $BUSYBOX_REV): skip"
    return 0
  fi
  t0=$(now)
  if [ "$force" = 1 ] || [ ! -s "$tar" ]; then
    work=$(mktemp -d /tmp/muster-busybox.XXXXXX)
    local root="$work/rootfs"
    mkdir -p "$root/bin"
    if dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
      && [ -x /bin/busybox ]; then
      # setup.sh installs busybox-static: its /bin/busybox is the static binary
      # (no apt lists needed, which a preinstalled machine may not have).
      log "building busybox rootfs from the installed busybox-static (/bin/busybox)"
      cp /bin/busybox "$root/bin/busybox"
    else
      log "building busybox rootfs from the busybox-static .deb"
      if ! (cd "$work" && apt-get download -q -o APT::Sandbox::User=root busybox-static >/dev/null 2>&1); then
        log "apt-get download busybox-static failed: running apt-get update and retrying"
        apt-get update -q >/dev/null || die "apt-get update failed"
        (cd "$work" && apt-get download -q -o APT::Sandbox::User=root busybox-static >/dev/null) \
          || die "apt-get download busybox-static failed"
      fi
      dpkg-deb -x "$work"/busybox-static_*.deb "$root"
      rm -rf "$root/usr/share/doc"
    fi
    [ -x "$root/bin/busybox" ] || die "busybox-static .deb has no /bin/busybox"
    mkdir -p "$root"/{sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,run,var/tmp,home}
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    # Every applet as a link to busybox in /bin (the default PATH contains /bin).
    local applet
    for applet in $("$root/bin/busybox" --list); do
      [ "$applet" = busybox ] && continue
      [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    cp "$IMAGES_DIR/busybox/etc/passwd" "$IMAGES_DIR/busybox/etc/group" "$root/etc/"
    for applet in sh sleep echo cat true false env; do
      [ -e "$root/bin/$applet" ] || die "busybox lacks applet $applet"
    done
    tar_rootfs "$root" "$tar"
    rm -rf "$work"
    work=
  else
    log "using cached rootfs $tar"
  fi
  import_rootfs "$tar" "$BUSYBOX_IMAGE" \
    --change 'CMD ["/bin/sh"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL muster.image-rev=$BUSYBOX_REV" \
    --change 'LABEL muster.image=busybox' \
    --message "muster test image: busybox-static rev $BUSYBOX_REV"
  log "built $BUSYBOX_IMAGE in $(elapsed "$t0") s"
}

build_python() {
  local t0 tar="$CACHE/python-rootfs-$SUITE-r$PYTHON_REV.tar"
  if [ "$force" = 0 ] && image_current "$PYTHON_IMAGE" "$PYTHON_REV"; then
    log "$PYTHON_IMAGE exists (rev $PYTHON_REV): skip"
    return 0
  fi
  t0=$(now)
  if [ "$force" = 1 ] || [ ! -s "$tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (run scripts/setup.sh)"
    log "building python rootfs with mmdebstrap ($SUITE, python3; ~15-60 s)"
    # Docs/man pages/locales are left out to keep the image small.
    mmdebstrap --quiet --format=tar --variant=apt --include=python3 \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      "$SUITE" "$tar.tmp" \
      "deb $MIRROR $SUITE main" \
      "deb $MIRROR $SUITE-updates main" \
      "deb $SECURITY_MIRROR $SUITE-security main" \
      || { rm -rf "$tar.tmp"; die "mmdebstrap failed"; }
    mv -f "$tar.tmp" "$tar"
  else
    log "using cached rootfs $tar"
  fi
  import_rootfs "$tar" "$PYTHON_IMAGE" \
    --change 'CMD ["python3"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change "LABEL muster.image-rev=$PYTHON_REV" \
    --change 'LABEL muster.image=python' \
    --message "muster test image: debian $SUITE + python3 rev $PYTHON_REV"
  log "built $PYTHON_IMAGE in $(elapsed "$t0") s"
}

# The rootfs (mmdebstrap, cached) and the entrypoint (appended at import, so that editing it
# rebuilds the image in seconds): the label is POSTGRES_REV plus the entrypoint's hash.
build_postgres() {
  local t0 tar="$CACHE/postgres-rootfs-$SUITE-r$POSTGRES_REV.tar" entry rev bindir
  entry="$IMAGES_DIR/postgres/muster-postgres"
  [ -x "$entry" ] || die "$entry is missing or not executable"
  rev="$POSTGRES_REV-$(sha256sum "$entry" | cut -c1-12)"
  if [ "$force" = 0 ] && image_current "$POSTGRES_IMAGE" "$rev"; then
    log "$POSTGRES_IMAGE exists (rev $rev): skip"
    return 0
  fi
  t0=$(now)
  if [ "$force" = 1 ] || [ ! -s "$tar" ]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (run scripts/setup.sh)"
    log "building postgres rootfs with mmdebstrap ($SUITE, postgresql; ~30-90 s)"
    # The package's postinst makes a cluster "main" (its service is not started in the
    # chroot); the entrypoint makes its own in the volume, so that one is removed.
    mmdebstrap --quiet --format=tar --variant=apt --include=postgresql \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/lib/postgresql/[0-9]* "$1"/etc/postgresql/[0-9]*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      "$SUITE" "$tar.tmp" \
      "deb $MIRROR $SUITE main" \
      "deb $MIRROR $SUITE-updates main" \
      "deb $SECURITY_MIRROR $SUITE-security main" \
      || { rm -rf "$tar.tmp"; die "mmdebstrap failed"; }
    mv -f "$tar.tmp" "$tar"
  else
    log "using cached rootfs $tar"
  fi
  bindir=$(tar -tf "$tar" | grep -m1 -E '^\./usr/lib/postgresql/[0-9]+/bin/postgres$' || true)
  [ -n "$bindir" ] || die "$tar has no usr/lib/postgresql/*/bin/postgres"
  bindir=${bindir#.}
  bindir=${bindir%/postgres}
  work=$(mktemp -d /tmp/muster-postgres.XXXXXX)
  mkdir -p "$work/root/usr/local/bin"
  install -m 0755 "$entry" "$work/root/usr/local/bin/muster-postgres"
  cp "$tar" "$work/rootfs.tar"
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/root" \
    -rf "$work/rootfs.tar" ./usr/local/bin/muster-postgres
  # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave).
  import_rootfs "$work/rootfs.tar" "$POSTGRES_IMAGE" \
    --change 'ENTRYPOINT ["/usr/local/bin/muster-postgres"]' \
    --change 'CMD []' \
    --change "ENV PATH=$bindir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'STOPSIGNAL SIGINT' \
    --change 'EXPOSE 5432' \
    --change "LABEL muster.image-rev=$rev" \
    --change 'LABEL muster.image=postgres' \
    --message "muster image: debian $SUITE + postgresql rev $rev"
  rm -rf "$work"
  work=
  log "built $POSTGRES_IMAGE in $(elapsed "$t0") s"
}

verify_image() {
  local image=$1 expect=$2 t0 out
  shift 2
  t0=$(now)
  out=$(podman run --rm --init "$image" "$@" 2>&1) \
    || die "verify failed: podman run --rm --init $image $*: $out"
  [ "$out" = "$expect" ] || die "verify failed: $image printed '$out', expected '$expect'"
  log "verified $image ($*) in $(elapsed "$t0") s"
}

# Starts the image for real (initdb, role, database), connects as muster by TCP with the
# generated password, and removes the container (a few seconds).
verify_postgres() {
  local t0 name="muster-images-verify-postgres-$$" out=""
  t0=$(now)
  podman run -d --rm --init --name "$name" "$POSTGRES_IMAGE" >/dev/null \
    || die "verify failed: cannot start $POSTGRES_IMAGE"
  local i
  for i in $(seq 1 60); do
    out=$(podman exec "$name" sh -c 'PGPASSFILE=/var/lib/muster-db-secret/pgpass \
      psql -h 127.0.0.1 -U muster -d muster -tAc "select current_user"' 2>&1) && break
    sleep 0.5
  done
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  [ "$out" = muster ] || die "verify failed: $POSTGRES_IMAGE answered '$out'"
  log "verified $POSTGRES_IMAGE (initdb, password login over TCP) in $(elapsed "$t0") s"
}

for name in "${want[@]}"; do
  case "$name" in
    busybox) build_busybox ;;
    python) build_python ;;
    postgres) build_postgres ;;
  esac
done

if [ "$verify" = 1 ]; then
  for name in "${want[@]}"; do
    case "$name" in
      busybox) verify_image "$BUSYBOX_IMAGE" ok sh -c 'echo ok; true && ! false && sleep 0 && echo ok | cat >/dev/null' ;;
      python) verify_image "$PYTHON_IMAGE" 1 python3 -c 'print(1)' ;;
      postgres) verify_postgres ;;
    esac
  done
fi
