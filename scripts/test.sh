#!/usr/bin/env bash
# The project's one test command (CI runs it via .ci/run):
#   setup (scripts/setup.sh) -> ruff check -> ruff format --check -> mypy -> buf lint
#   -> generated code is up to date (scripts/gen-proto.sh + git diff) -> pytest
# Extra arguments go to pytest, e.g. scripts/test.sh -k runs -x
# MUSTER_SKIP_SETUP=1 skips the setup step (when you know the machine is ready).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

log() { echo "[test] $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

T_START=$(now)
# step NAME COMMAND...: runs one step, stops everything with a clear message on failure.
step() {
  local name=$1 t0 rc=0
  shift
  log "=== $name"
  t0=$(now)
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "FAILED: step '$name' (exit $rc, after $(elapsed "$t0") s)" >&2
    exit "$rc"
  fi
  log "ok: $name ($(elapsed "$t0") s)"
}

gen_check() {
  bash scripts/gen-proto.sh || return
  if ! git -c safe.directory="$REPO" diff --exit-code --stat -- muster/; then
    echo "generated code in muster/ differs from scripts/gen-proto.sh output (diff above);" \
      "run scripts/gen-proto.sh and commit the result" >&2
    return 1
  fi
  local untracked
  untracked=$(git -c safe.directory="$REPO" status --porcelain --untracked-files=all -- muster/)
  if [ -n "$untracked" ]; then
    echo "files under muster/ are not committed:" >&2
    echo "$untracked" >&2
    return 1
  fi
}

if [ "${MUSTER_SKIP_SETUP:-0}" = 1 ]; then
  log "=== setup skipped (MUSTER_SKIP_SETUP=1)"
else
  step setup bash scripts/setup.sh
fi
step "ruff check" .venv/bin/ruff check .
step "ruff format --check" .venv/bin/ruff format --check .
step mypy .venv/bin/mypy  # what it checks and how: [tool.mypy] in pyproject.toml
step "buf lint" .tools/node_modules/.bin/buf lint
step "generated code up to date" gen_check
step pytest .venv/bin/pytest -q "$@"
log "all steps passed in $(elapsed "$T_START") s"
