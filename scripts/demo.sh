#!/usr/bin/env bash
# The main job: sets the machine up (scripts/setup.sh), starts a control plane
# (embedded SQLite under .data/demo) and two node agents on local Podman
# (node demo-cpu in pool cpu, node demo-gpu in pool gpu), then runs
# examples/distributed/run.yaml: 3 workers in pool gpu, the job in pool cpu.
# The job checks the TYGER_* discovery variables and asks every worker who it is.
# Everything this script starts is stopped when it exits.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

log() { echo "[demo] $*"; }
bash scripts/setup.sh

DATA="$REPO/.data/demo"
mkdir -p "$DATA"
PORT=${MUSTER_DEMO_PORT:-50051}
export MUSTER_SERVER="127.0.0.1:$PORT"
MUSTER=.venv/bin/muster
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "[demo] error: port $PORT is in use; set MUSTER_DEMO_PORT to a free port" >&2
  exit 1
fi

log "starting the control plane on $MUSTER_SERVER (db $DATA/controlplane.db, log $DATA/controlplane.log)"
.venv/bin/muster-controlplane --listen "$MUSTER_SERVER" --db "$DATA/controlplane.db" \
  >"$DATA/controlplane.out" 2>"$DATA/controlplane.log" &
PIDS+=($!)
for node in cpu gpu; do
  log "starting agent demo-$node (pool $node, log $DATA/agent-$node.log)"
  .venv/bin/muster-agent --server "$MUSTER_SERVER" --node-name "demo-$node" --pool "$node" \
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
