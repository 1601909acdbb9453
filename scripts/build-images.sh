#!/usr/bin/env bash
# Builds the images of the muster services from this checkout, without a registry:
#
#   localhost/muster-controlplane:latest   deploy/Containerfile --target controlplane
#   localhost/muster-agent:latest          deploy/Containerfile --target agent
#
# Usage: scripts/build-images.sh [--base IMAGE] [--force]
#   --base IMAGE  the Python base image (env MUSTER_BASE_IMAGE). Default:
#                 localhost/muster-python:latest, made here by scripts/images.sh python
#                 (Debian bookworm + python3 via mmdebstrap). Where a registry is reachable,
#                 a public image works the same, e.g. docker.io/library/python:3.12-slim.
#   --force       rebuild even if the images are current.
#
# How: the muster wheel is built from the working tree; its dependencies are downloaded
# from PyPI on the host as binary wheels for the *base image's* Python version, glibc and
# architecture (so the host's Python does not matter); pip's own wheel is added; this
# wheelhouse is the whole build context and `podman build` installs from it offline.
#
# Idempotent: the images carry the label muster.source-hash (sources, pyproject.toml,
# deploy/, this script, base image id); when both images carry the current hash,
# nothing is done (about a second). Dependency wheelhouses are cached in .data/deploy/.
# Run as root (rootful Podman, like the agents that use its socket).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
STATE="$REPO/.data/deploy"
CONTAINERFILE="$REPO/deploy/Containerfile"
CP_IMAGE=localhost/muster-controlplane:latest
AGENT_IMAGE=localhost/muster-agent:latest
DEFAULT_BASE=localhost/muster-python:latest
SOURCES=(muster controlplane agent muster_cli)

log() { echo "[build-images] $*"; }
die() { echo "[build-images] ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

base=${MUSTER_BASE_IMAGE:-$DEFAULT_BASE}
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --base) [ $# -ge 2 ] || die "--base needs an image"; base=$2; shift ;;
    --base=*) base=${1#--base=} ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[ "$(id -u)" -eq 0 ] || die "run as root"
command -v podman >/dev/null || die "podman is not installed (run scripts/setup.sh)"
if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=${PYTHON:-python3}; fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (run scripts/setup.sh)"

mkdir -p "$STATE"
exec 7>"$STATE/.lock"
if ! flock -n 7; then
  log "another build-images.sh is running; waiting for it"
  flock 7
fi
work=
cleanup() { if [ -n "$work" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
T_START=$(now)

# ------------------------------------------------------------------ base image
if [ "$base" = "$DEFAULT_BASE" ]; then
  bash "$REPO/scripts/images.sh" --no-verify python | sed 's/^/  /'
fi
if ! podman image exists "$base"; then
  log "pulling base image $base"
  podman pull -q "$base" >/dev/null || die "base image $base is not available (build it, or pass --base)"
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

# ------------------------------------------------------------- current or not
source_hash() {
  {
    echo "base=$base_id"
    (
      find "${SOURCES[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum
      find deploy -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
      sha256sum pyproject.toml scripts/build-images.sh
    )
  } | sha256sum | cut -c1-16
}
hash=$(source_hash)
label_of() { podman image inspect --format '{{ index .Labels "muster.source-hash" }}' "$1" 2>/dev/null || true; }
if [ "$force" = 0 ] && [ "$(label_of "$CP_IMAGE")" = "$hash" ] && [ "$(label_of "$AGENT_IMAGE")" = "$hash" ]; then
  log "$CP_IMAGE and $AGENT_IMAGE are current (source hash $hash): skip ($(elapsed "$T_START") s)"
  exit 0
fi
log "building images for source hash $hash on base $base"

# ------------------------------------------- what the base image's Python needs
# X.Y, glibc version and machine of the base, e.g. "3.11 2.36 x86_64".
read -r py_version glibc machine < <(
  podman run --rm --network none --entrypoint python3 "$base" -c \
    'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.libc_ver()[1] or "none", platform.machine())'
) || die "cannot run python3 in $base"
[ "$glibc" != none ] || die "$base is not glibc based (musl bases are not supported)"
case "$py_version" in 3.1[1-9]|3.[2-9]*) ;; *) die "$base has Python $py_version; muster needs >= 3.11" ;; esac
# pip does not expand a manylinux_2_N platform to the older ones it implies: list them all.
glibc_major=${glibc%%.*}
glibc_minor=${glibc#*.}
glibc_minor=${glibc_minor%%.*}
if [ "$glibc_major" != 2 ] || [ "$glibc_minor" -lt 17 ]; then
  die "$base has glibc $glibc; manylinux wheels need >= 2.17"
fi
platforms=()
for ((minor = glibc_minor; minor >= 17; minor--)); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
platforms+=(--platform "manylinux2014_${machine}")
log "base image: Python $py_version, glibc $glibc, $machine -> wheels for cp${py_version/./}, manylinux_2_17..${glibc_minor}"

work=$(mktemp -d /tmp/muster-build-images.XXXXXX)
context="$work/context"
mkdir -p "$context/wheelhouse"

# --------------------------------------------------------------- muster wheel
# Built from a copy of the sources, so stale files in a local build/ never leak in.
t0=$(now)
mkdir -p "$work/src"
cp -r pyproject.toml README.md "${SOURCES[@]}" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check --wheel-dir "$work/dist" "$work/src" \
  >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; die "building the muster wheel failed"; }
wheel=$(ls "$work"/dist/muster-*.whl)
cp "$wheel" "$context/wheelhouse/"
log "built $(basename "$wheel") in $(elapsed "$t0") s"

# ------------------------------------------------- dependency wheels (cached)
deps_key=$( { sha256sum pyproject.toml; echo "$py_version $glibc $machine"; } | sha256sum | cut -c1-16)
deps="$STATE/wheelhouse-$deps_key"
if [ -f "$deps/.complete" ]; then
  log "dependency wheels cached in ${deps#"$REPO"/}"
else
  t0=$(now)
  rm -rf "$deps" "$deps.tmp"
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$py_version" --implementation cp "${platforms[@]}" \
    --dest "$deps.tmp" "$wheel" pip >"$work/download.log" 2>&1 ||
    { cat "$work/download.log" >&2; die "downloading dependency wheels failed"; }
  rm -f "$deps.tmp"/muster-*.whl
  touch "$deps.tmp/.complete"
  mv "$deps.tmp" "$deps"
  log "downloaded $(find "$deps" -name '*.whl' | wc -l) dependency wheels in $(elapsed "$t0") s"
  # Keep only the newest few wheelhouses.
  find "$STATE" -maxdepth 1 -name 'wheelhouse-*' -type d ! -name "wheelhouse-$deps_key" -printf '%T@ %p\n' |
    sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf
fi
cp "$deps"/*.whl "$context/wheelhouse/"
cp -r deploy "$context/deploy" # scripts the Containerfile installs

# --------------------------------------------------------------------- build
# Every stage has the label muster.build=deploy: the prune below removes only our dangling layers.
old_ids=$(podman image inspect --format '{{.Id}}' "$CP_IMAGE" "$AGENT_IMAGE" 2>/dev/null || true)
for target in controlplane agent; do
  image=$CP_IMAGE
  [ "$target" = agent ] && image=$AGENT_IMAGE
  t0=$(now)
  podman build -q --layers --pull=never -f "$CONTAINERFILE" --target "$target" \
    --build-arg "BASE_IMAGE=$base" --build-arg "MUSTER_SOURCE_HASH=$hash" \
    -t "$image" "$context" >"$work/build-$target.log" 2>&1 ||
    { cat "$work/build-$target.log" >&2; die "podman build --target $target failed"; }
  log "built $image in $(elapsed "$t0") s"
done
new_ids=$(podman image inspect --format '{{.Id}}' "$CP_IMAGE" "$AGENT_IMAGE")
for id in $old_ids; do
  # Images the build untagged (kept if containers still use them); never the new ones.
  grep -qx "$id" <<<"$new_ids" || podman image rm "$id" >/dev/null 2>&1 || true
done
podman image prune -f --filter label=muster.build=deploy >/dev/null 2>&1 || true

# -------------------------------------------------------------------- verify
podman run --rm --network none "$CP_IMAGE" --help >/dev/null || die "$CP_IMAGE does not start"
podman run --rm --network none "$AGENT_IMAGE" --version >/dev/null || die "$AGENT_IMAGE does not start"
log "done in $(elapsed "$T_START") s: $CP_IMAGE, $AGENT_IMAGE ($(podman image inspect --format '{{.Size}}' "$AGENT_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
