// Usage: node distributed-run.js [--server HOST:PORT] [--config FILE] [--workers N]
//                                [--worker-pool POOL] [--job-pool POOL] [--image IMAGE]
//                                [--timeout SECONDS]
//
// A distributed run from Node.js, through the gRPC API loaded from ../../proto at run time:
//   1. CodespecService.CreateCodespec: a worker codespec (answers its hostname on endpoint
//      `echo`, port 7000) and a job codespec (checks the TYGER_* discovery variables and asks
//      every worker who it is). Creating identical content again returns the same version.
//   2. RunService.CreateRun: the job plus N workers, each part in its node pool.
//   3. RunService.WatchRun: print every status change until the run ends.
// Exits 0 only if the run Succeeded; 1 otherwise (the run is canceled if the deadline passes);
// 2 on a usage error.
//
// Credentials are found like the `muster` CLI finds them (see credentials.js): the client
// credential file given by --config, else $MUSTER_CONFIG, else ~/.config/muster/config.json
// (`muster login`), else the admin.json of a control plane on this machine
// ($MUSTER_STATE_DIR, default ~/.local/share/muster); it gives the server, the CA that
// signed the server's TLS certificate and the bearer token. --server, else MUSTER_SERVER,
// overrides the file's server; MUSTER_TOKEN overrides its token. With no file at all the
// client talks plaintext (a control plane started with --insecure) to 127.0.0.1:50051.
"use strict";
const { status: grpcStatus } = require("@grpc/grpc-js");
const { connect, call } = require("./client");
const { describeError } = require("./credentials");

const WORKER_SCRIPT = `
import os, socket, socketserver
name, index = socket.gethostname(), os.environ["TYGER_WORKER_INDEX"]
class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"{name} (worker {index})\\n".encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
print(f"worker {index} serving on {name}:7000", flush=True)
socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Answer).serve_forever()
`;

const JOB_SCRIPT = `
import json, os, socket, sys
run_id = os.environ["TYGER_RUN_ID"]
nodes = json.loads(os.environ["TYGER_WORKER_NODES"])
addresses = json.loads(os.environ["TYGER_ECHO_WORKER_ENDPOINT_ADDRESSES"])
if nodes != [f"run-{run_id}-worker-{i}" for i in range(len(nodes))] or len(addresses) != len(nodes):
    sys.exit(f"unexpected discovery variables: {nodes} {addresses}")
for i, address in enumerate(addresses):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        answer = conn.makefile().readline().strip()
    print(f"{address} answered: {answer}", flush=True)
    if answer != f"{nodes[i]} (worker {i})":
        sys.exit(f"worker {i} answered {answer!r}")
print(f"all {len(nodes)} workers answered")
`;

const TERMINAL = new Set(["RUN_STATUS_SUCCEEDED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELED"]);

function usage(message) {
  console.error(`error: ${message}`);
  console.error(
    "usage: node distributed-run.js [--server HOST:PORT] [--config FILE] [--workers N]" +
      " [--worker-pool POOL] [--job-pool POOL] [--image IMAGE] [--timeout SECONDS]",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    server: undefined, // --server, else MUSTER_SERVER, else the credential file's
    config: undefined, // --config, else MUSTER_CONFIG, else the CLI's default files
    workers: 3,
    workerPool: "gpu",
    jobPool: "cpu",
    image: "localhost/muster-python:latest",
    timeout: 300,
  };
  const names = {
    "--server": "server",
    "--config": "config",
    "--workers": "workers",
    "--worker-pool": "workerPool",
    "--job-pool": "jobPool",
    "--image": "image",
    "--timeout": "timeout",
  };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s, 2);
    if (!(flag in names)) usage(`unknown argument ${argv[i]}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) usage(`${flag} needs a value`);
      value = argv[++i];
    }
    opts[names[flag]] = value;
  }
  for (const key of ["workers", "timeout"]) {
    const n = Number(opts[key]);
    if (!Number.isInteger(n) || n < 1) usage(`--${key} must be a positive whole number`);
    opts[key] = n;
  }
  return opts;
}

const statusName = (s) => s.replace(/^RUN_STATUS_/, "").toLowerCase().replace(/^./, (c) => c.toUpperCase());

// Watches a run until it ends; resolves with the last Run seen.
function watch(runs, runId, deadline) {
  return new Promise((resolve, reject) => {
    let last = null;
    const stream = runs.watchRun({ runId }, { deadline });
    stream.on("data", ({ run }) => {
      if (!last || last.status !== run.status || last.runningCount !== run.runningCount) {
        const reason = run.statusReason ? ` (${run.statusReason})` : "";
        console.log(`run ${runId}: ${statusName(run.status)}, ${run.runningCount || 0} running${reason}`);
      }
      last = run;
      if (TERMINAL.has(run.status)) stream.cancel();
    });
    stream.on("error", (err) => {
      if (err.code === grpcStatus.CANCELLED && last && TERMINAL.has(last.status)) resolve(last);
      else reject(err);
    });
    stream.on("end", () => resolve(last));
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const { address, configFile, codespecs, runs } = connect({ server: opts.server, config: opts.config });
  const deadline = Date.now() + opts.timeout * 1000;
  let runId = null;
  try {
    const resources = { requests: { cpu: "100m", memory: "64Mi" } };
    const worker = await call(codespecs, "createCodespec", {
      codespec: {
        name: "node-echo-worker",
        kind: "CODESPEC_KIND_WORKER",
        image: opts.image,
        command: ["python3", "-u", "-c", WORKER_SCRIPT],
        endpoints: { echo: 7000 },
        resources,
      },
    });
    const job = await call(codespecs, "createCodespec", {
      codespec: {
        name: "node-echo-job",
        kind: "CODESPEC_KIND_JOB",
        image: opts.image,
        command: ["python3", "-u", "-c", JOB_SCRIPT],
        resources,
      },
    });
    const ref = ({ codespec: c }) => ({ named: `${c.name}/versions/${c.version}` });
    console.log(`codespecs: ${ref(worker).named}, ${ref(job).named}`);

    const created = await call(runs, "createRun", {
      run: {
        job: { codespec: ref(job), nodePool: opts.jobPool, replicas: 1 },
        worker: { codespec: ref(worker), nodePool: opts.workerPool, replicas: opts.workers },
        timeoutSeconds: opts.timeout,
        tags: { client: "node" },
      },
    });
    runId = created.run.id;
    console.log(`run ${runId} created: ${opts.workers} workers in pool ${opts.workerPool}, the job in pool ${opts.jobPool}`);

    const run = await watch(runs, runId, deadline);
    if (!run) throw new Error(`the watch of run ${runId} ended without a run`);
    for (const r of run.replicas || []) {
      const role = r.role === "REPLICA_ROLE_WORKER" ? "worker" : "job";
      const addresses = Object.values(r.endpointAddresses || {}).join(",");
      console.log(`  ${role}-${r.index || 0} on ${r.nodeName}${addresses ? ` at ${addresses}` : ""}`);
    }
    if (run.status !== "RUN_STATUS_SUCCEEDED") {
      console.error(`run ${runId} ended ${statusName(run.status)}: ${run.statusReason || "no reason given"}`);
      process.exitCode = 1;
      return;
    }
    console.log(`run ${runId} succeeded`);
  } catch (err) {
    console.error(`error: ${describeError(err, address, configFile)}`);
    process.exitCode = 1;
    if (runId !== null && err.code === grpcStatus.DEADLINE_EXCEEDED) {
      // Leave nothing running behind us.
      await call(runs, "cancelRun", { runId }).catch(() => {});
      console.error(`run ${runId} canceled after ${opts.timeout} s`);
    }
  } finally {
    codespecs.close();
    runs.close();
  }
}

main();
