// Usage: node create-codespec.js [--config FILE] [SERVER] NAME IMAGE
// Creates a job codespec through CodespecService.CreateCodespec and prints its
// version, like `muster codespec create NAME --image IMAGE`. Credentials (TLS CA and
// bearer token) come from the client credential file, found like the CLI does (see
// credentials.js); SERVER, else MUSTER_SERVER, overrides the file's server.
"use strict";
const { connect, call } = require("./client");
const { describeError, fail } = require("./credentials");

function parseArgs(argv) {
  const args = [];
  let config;
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = argv[i].split(/=(.*)/s, 2);
    if (flag === "--config") {
      config = value !== undefined ? value : argv[++i];
      if (!config) usage("--config needs a value");
    } else {
      args.push(argv[i]);
    }
  }
  if (args.length < 2 || args.length > 3) usage();
  const server = args.length > 2 ? args.shift() : undefined;
  const [name, image] = args;
  if (!name || !image) usage();
  return { config, server, name, image };
}

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error("usage: node create-codespec.js [--config FILE] [SERVER] NAME IMAGE");
  process.exit(2);
}

async function main() {
  const { config, server, name, image } = parseArgs(process.argv.slice(2));
  const { address, configFile, codespecs } = connect({ server, config });
  try {
    const reply = await call(codespecs, "createCodespec", {
      codespec: { name, image, kind: "CODESPEC_KIND_JOB", env: { FROM: "node" } },
    });
    console.log(reply.codespec.version);
  } catch (err) {
    codespecs.close();
    fail(describeError(err, address, configFile));
  }
  codespecs.close();
}

main();
