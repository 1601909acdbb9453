// Loads the muster.v1 API from ../../proto at run time (no generated code).
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

function loadApi() {
  const definition = protoLoader.loadSync(
    ["muster/v1/codespec.proto", "muster/v1/run.proto", "muster/v1/node.proto"],
    { includeDirs: [PROTO_ROOT], keepCase: false, longs: String, enums: String, defaults: false },
  );
  return grpc.loadPackageDefinition(definition).muster.v1;
}

function clients(address) {
  const api = loadApi();
  const creds = grpc.credentials.createInsecure();
  return {
    codespecs: new api.CodespecService(address, creds),
    runs: new api.RunService(address, creds),
    nodes: new api.NodeService(address, creds),
  };
}

function call(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, (err, reply) => (err ? reject(err) : resolve(reply))),
  );
}

module.exports = { clients, call };
