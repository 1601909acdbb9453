#!/usr/bin/env bash
# Removes what muster runs and tests leave behind in Podman, and nothing else:
#   - every container with the label muster.run-id (any state; podman rm -f)
#   - every network whose name starts with muster-test (the tests' own networks)
# Usage: scripts/cleanup.sh [--dry-run]
set -euo pipefail

log() { echo "[cleanup] $*"; }

dry=0
case "${1:-}" in
  --dry-run|-n) dry=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

command -v podman >/dev/null || { log "podman is not installed: nothing to do"; exit 0; }

removed=0
while read -r id name run_id; do
  [ -n "$id" ] || continue
  if [ "$dry" = 1 ]; then
    log "would remove container $name ($id, muster.run-id=$run_id)"
  else
    podman rm -f -t 2 "$id" >/dev/null 2>&1 || podman rm -f "$id" >/dev/null
    log "removed container $name ($id, muster.run-id=$run_id)"
  fi
  removed=$((removed + 1))
done < <(podman ps -a --filter label=muster.run-id \
  --format '{{.ID}} {{.Names}} {{index .Labels "muster.run-id"}}')

while read -r net; do
  [ -n "$net" ] || continue
  case "$net" in muster-test*) ;; *) continue ;; esac
  if [ "$dry" = 1 ]; then
    log "would remove network $net"
  else
    # Without -f: a container still attached (one without the muster.run-id
    # label) is not ours to remove, so the network stays and we say so.
    if out=$(podman network rm "$net" 2>&1); then
      log "removed network $net"
    else
      log "WARNING: could not remove network $net: $out"
      continue
    fi
  fi
  removed=$((removed + 1))
done < <(podman network ls --format '{{.Name}}')

log "done: $removed object(s) $([ "$dry" = 1 ] && echo 'would be ' || true)removed"
