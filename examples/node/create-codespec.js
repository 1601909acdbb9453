// Usage: node create-codespec.js [SERVER] NAME IMAGE
// Creates a job codespec through CodespecService.CreateCodespec and prints its
// version, like `muster codespec create NAME --image IMAGE`.
"use strict";
const { clients, call } = require("./client");

async function main() {
  const args = process.argv.slice(2);
  const server = args.length > 2 ? args.shift() : process.env.MUSTER_SERVER || "127.0.0.1:50051";
  const [name, image] = args;
  if (!name || !image) {
    console.error("usage: node create-codespec.js [SERVER] NAME IMAGE");
    process.exit(2);
  }
  const { codespecs } = clients(server);
  try {
    const reply = await call(codespecs, "createCodespec", {
      codespec: { name, image, kind: "CODESPEC_KIND_JOB", env: { FROM: "node" } },
    });
    console.log(reply.codespec.version);
  } catch (err) {
    console.error(`error: ${err.details || err.message} (${grpcCode(err.code)})`);
    process.exit(1);
  } finally {
    codespecs.close();
  }
}

function grpcCode(code) {
  const { status } = require("@grpc/grpc-js");
  return Object.keys(status).find((k) => status[k] === code) || String(code);
}

main();
