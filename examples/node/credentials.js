// The client credential file, found and read exactly as the `muster` CLI does
// (muster_cli/client.py; the format is in muster/common/clientconfig.py):
//
//   {"server": "10.0.0.1:50051", "caCert": "-----BEGIN CERTIFICATE-----...", "token": "mst_..."}
//   {"server": "127.0.0.1:50051", "insecure": true}   (a control plane started with --insecure)
//
// The file is the first that applies of: --config, $MUSTER_CONFIG,
// $XDG_CONFIG_HOME/muster/config.json (default ~/.config/muster/config.json, written by
// `muster login`), and $MUSTER_STATE_DIR/admin.json (default
// $XDG_DATA_HOME/muster/admin.json, i.e. ~/.local/share/muster/admin.json, written by a
// control plane on this machine for its administrator). The address argument, else
// $MUSTER_SERVER, overrides the file's server; $MUSTER_TOKEN overrides its token. With no
// file at all the client talks plaintext, which only an --insecure control plane answers,
// and a token is never sent in plaintext to an address other than loopback.
"use strict";
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");
const grpc = require("@grpc/grpc-js");

const DEFAULT_SERVER = "127.0.0.1:50051";
const ADMIN_FILE = "admin.json";
const FIELDS = new Set(["server", "caCert", "token", "insecure"]);

class CredentialError extends Error {}

// grpc-js gives Node the address's host as the TLS server name even when it is an IP
// address, and Node then warns (DEP0123) on stderr; the connection is fine (the server's
// certificate is checked against its IP addresses). Keep stderr to the one line that matters.
// https://github.com/grpc/grpc-node/issues/1919
function quietIpServerNameWarning() {
  if (process.emitWarning.musterQuiet) return;
  const emitWarning = process.emitWarning;
  const quiet = function (warning, ...rest) {
    const code = rest[0] && typeof rest[0] === "object" ? rest[0].code : rest[1];
    if (code === "DEP0123") return;
    return emitWarning.call(process, warning, ...rest);
  };
  quiet.musterQuiet = true;
  process.emitWarning = quiet;
}

const dataHome = () => process.env.XDG_DATA_HOME || path.join(os.homedir(), ".local", "share");
const configHome = () => process.env.XDG_CONFIG_HOME || path.join(os.homedir(), ".config");

function readable(file) {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

// The credential file this invocation uses, or null. An explicit one (the flag or
// MUSTER_CONFIG) is used even if it does not exist, so that its absence is reported.
function configPath(flag) {
  const explicit = flag || process.env.MUSTER_CONFIG;
  if (explicit) return explicit;
  const candidates = [
    path.join(configHome(), "muster", "config.json"),
    path.join(process.env.MUSTER_STATE_DIR || path.join(dataHome(), "muster"), ADMIN_FILE),
  ];
  return candidates.find(readable) || null;
}

// Reads and checks a credential file; every problem is a CredentialError naming the file.
function loadConfig(file) {
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if (err.code === "ENOENT") throw new CredentialError(`credential file ${file} does not exist`);
    throw new CredentialError(`cannot read credential file ${file}: ${err.message}`);
  }
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new CredentialError(`credential file ${file} is not valid JSON: ${err.message}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new CredentialError(`credential file ${file} must hold a JSON object`);
  }
  const unknown = Object.keys(doc).filter((k) => !FIELDS.has(k)).sort();
  if (unknown.length) throw new CredentialError(`credential file ${file}: unknown field '${unknown[0]}'`);
  for (const key of ["server", "caCert", "token"]) {
    if (key in doc && typeof doc[key] !== "string") {
      throw new CredentialError(`credential file ${file}: '${key}' must be a string`);
    }
  }
  const insecure = doc.insecure === undefined ? false : doc.insecure;
  if (typeof insecure !== "boolean") {
    throw new CredentialError(`credential file ${file}: 'insecure' must be true or false`);
  }
  if (!doc.server) throw new CredentialError(`credential file ${file} has no 'server'`);
  if (!insecure && !doc.caCert) {
    throw new CredentialError(`credential file ${file} has no 'caCert' (or 'insecure': true)`);
  }
  return { server: doc.server, caCert: doc.caCert || "", token: doc.token || "", insecure };
}

function isLoopback(address) {
  const cut = address.lastIndexOf(":");
  let host = cut < 0 ? address : address.slice(0, cut);
  host = host.replace(/^\[+|\]+$/g, "");
  if (host === "localhost") return true;
  const family = net.isIP(host);
  if (!family) return false;
  const loopback = new net.BlockList();
  loopback.addSubnet("127.0.0.0", 8, "ipv4");
  loopback.addAddress("::1", "ipv6");
  return loopback.check(host, family === 4 ? "ipv4" : "ipv6");
}

// Where to connect and with which channel credentials:
//   server: the address argument (overrides MUSTER_SERVER and the file's server);
//   config: the --config flag, if the script has one.
// Returns { address, credentials, configFile }; throws CredentialError.
function resolve({ server, config } = {}) {
  const configFile = configPath(config);
  const file = configFile ? loadConfig(configFile) : null;
  const address = server || process.env.MUSTER_SERVER || (file ? file.server : DEFAULT_SERVER);
  const token = process.env.MUSTER_TOKEN || (file ? file.token : "");
  let credentials;
  if (file === null || file.insecure) {
    if (token && !isLoopback(address)) {
      throw new CredentialError(`refusing to send a token in plaintext to ${address}; give a caCert`);
    }
    // Plaintext, like the CLI: no token goes along (an --insecure control plane needs none).
    credentials = grpc.credentials.createInsecure();
  } else {
    quietIpServerNameWarning();
    credentials = grpc.credentials.createSsl(Buffer.from(file.caCert));
    if (token) {
      const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
        const metadata = new grpc.Metadata();
        metadata.set("authorization", `Bearer ${token}`);
        callback(null, metadata);
      });
      credentials = grpc.credentials.combineChannelCredentials(credentials, bearer);
    }
  }
  return { address, credentials, configFile };
}

const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);

// One line for an RPC error (or any other error) of a call to `address`.
function describeError(err, address, configFile) {
  // grpc-js ends connection errors with an empty "Resolution note: ".
  const details = String(err.details || err.message)
    .replace(/\.? *Resolution note: *$/, "")
    .replace(/\s*\n\s*/g, " ");
  if (err.code === undefined) return details;
  if (err.code === grpc.status.UNAVAILABLE) {
    let hint = "is it running? Give its address or set MUSTER_SERVER";
    if (!configFile) hint += "; no credentials were found: run `muster login` or set MUSTER_CONFIG";
    return `cannot reach the muster control plane at ${address} (${details}) (UNAVAILABLE); ${hint}`;
  }
  return `${details} (${codeName(err.code)})`;
}

// Prints one error line on stderr and exits non-zero.
function fail(message, code = 1) {
  console.error(`error: ${message}`);
  process.exit(code);
}

module.exports = {
  DEFAULT_SERVER,
  CredentialError,
  configPath,
  loadConfig,
  isLoopback,
  resolve,
  describeError,
  codeName,
  fail,
};
