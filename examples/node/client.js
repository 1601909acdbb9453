// Loads the muster.v1 API from ../../proto at run time (no generated code) and makes its
// clients with the credentials of credentials.js: TLS and the bearer token, like the CLI.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { CredentialError, fail, resolve } = require("./credentials");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

function loadApi() {
  const definition = protoLoader.loadSync(
    ["muster/v1/codespec.proto", "muster/v1/run.proto", "muster/v1/node.proto"],
    { includeDirs: [PROTO_ROOT], keepCase: false, longs: String, enums: String, defaults: false },
  );
  return grpc.loadPackageDefinition(definition).muster.v1;
}

// Clients of `address` with channel credentials `creds` (see credentials.resolve).
function clients(address, creds) {
  const api = loadApi();
  return {
    codespecs: new api.CodespecService(address, creds),
    runs: new api.RunService(address, creds),
    nodes: new api.NodeService(address, creds),
  };
}

// Finds the credentials (a missing or broken file is one error line and exit 1) and makes
// the clients: { address, configFile, codespecs, runs, nodes }.
function connect({ server, config } = {}) {
  let target;
  try {
    target = resolve({ server, config });
  } catch (err) {
    if (err instanceof CredentialError) fail(err.message);
    throw err;
  }
  const { address, configFile, credentials } = target;
  return { address, configFile, ...clients(address, credentials) };
}

function call(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, (err, reply) => (err ? reject(err) : resolve(reply))),
  );
}

module.exports = { clients, connect, call };
