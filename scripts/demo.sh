#!/usr/bin/env bash
# The main job: sets the machine up (scripts/setup.sh), starts a control plane
# (embedded SQLite under .data/demo) and two node agents on local Podman
# (node demo-cpu in pool cpu, node demo-gpu in pool gpu), then runs
# examples/distributed/run.yaml: 3 workers in pool gpu, the job in pool cpu.
# The job checks the TYGER_* discovery variables and asks every worker who it is.
# Secure by default: the control plane makes its CA, TLS certificate and admin
# credentials (.data/demo/admin.json) on first start; each agent joins once with
# a single-use join token and then connects with its node certificate (mTLS).
# Everything this script starts is stopped when it exits.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

log() { echo "[demo] $*"; }
bash scripts/setup.sh

DATA="$REPO/.data/demo"
mkdir -p "$DATA"
PORT=${MUSTER_DEMO_PORT:-50051}
AGENT_PORT=${MUSTER_DEMO_AGENT_PORT:-50052}
export MUSTER_SERVER="127.0.0.1:$PORT"
export MUSTER_CONFIG="$DATA/admin.json"   # the admin credentials the control plane writes
MUSTER=.venv/bin/muster
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

for p in "$PORT:MUSTER_DEMO_PORT" "$AGENT_PORT:MUSTER_DEMO_AGENT_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/${p%%:*}") 2>/dev/null; then
    echo "[demo] error: port ${p%%:*} is in use; set ${p#*:} to a free port" >&2
    exit 1
  fi
done

log "starting the control plane on $MUSTER_SERVER, TLS (state, db and CA in $DATA, log $DATA/controlplane.log)"
.venv/bin/muster-controlplane --listen "$MUSTER_SERVER" --agent-listen "127.0.0.1:$AGENT_PORT" \
  --state-dir "$DATA" >"$DATA/controlplane.out" 2>"$DATA/controlplane.log" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until [ -s "$MUSTER_CONFIG" ] && $MUSTER whoami >/dev/null 2>&1; do
  if [ $SECONDS -gt $deadline ]; then
    echo "[demo] error: the control plane did not start; see $DATA/controlplane.log" >&2
    exit 1
  fi
  sleep 0.2
done
log "signed in as $($MUSTER whoami) with $MUSTER_CONFIG"

for node in cpu gpu; do
  state="$DATA/agents/demo-$node"
  join=()
  if [ ! -s "$state/node.crt" ]; then
    log "muster node join-token create --pool $node   (single use, for agent demo-$node)"
    join=(--join-token "$($MUSTER node join-token create --pool "$node")")
  fi
  log "starting agent demo-$node (pool $node, identity in $state, log $DATA/agent-$node.log)"
  .venv/bin/muster-agent --server "$MUSTER_SERVER" --ca-cert "$DATA/pki/ca.crt" \
    --state-dir "$state" "${join[@]}" --node-name "demo-$node" --pool "$node" \
    >"$DATA/agent-$node.log" 2>&1 &
  PIDS+=($!)
done

log "waiting for both nodes to be Ready"
deadline=$((SECONDS + 60))
until [ "$($MUSTER node list -o json 2>/dev/null | grep -c '"status": "Ready"')" -ge 2 ]; do
  if [ $SECONDS -gt $deadline ]; then
    echo "[demo] error: the agents did not become Ready; see $DATA/*.log" >&2
    exit 1
  fi
  sleep 0.5
done
$MUSTER node list

log "muster codespec create hello-worker -f examples/distributed/worker.yaml"
$MUSTER codespec create hello-worker -f examples/distributed/worker.yaml
log "muster codespec create hello-job -f examples/distributed/job.yaml"
$MUSTER codespec create hello-job -f examples/distributed/job.yaml

log "muster run exec -f examples/distributed/run.yaml --logs"
status=0
$MUSTER run exec -f examples/distributed/run.yaml --logs || status=$?
RUN_ID=$($MUSTER run list --limit 1 -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
log "muster run show $RUN_ID (replicas, endpoint addresses, events)"
$MUSTER run show "$RUN_ID"
if [ "$status" -eq 0 ]; then
  log "the distributed run succeeded"
else
  log "the distributed run did not succeed (exit $status)"
fi
exit "$status"
