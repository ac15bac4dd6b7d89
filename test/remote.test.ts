// Remote workers (Worker.connect, `kotara worker --listen`, `kotara keygen`) over real
// TCP on loopback. Deadlines here only guard against a hang: nothing is timed. A refused
// key fails at once (ZAP says no) or at the start deadline (a wrong server key: the
// listener cannot read the handshake, so nothing ever comes back).
import assert from "node:assert/strict";
import { chmodSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { execa, type ResultPromise } from "execa";
import { curvePublic, KeyFile, readKeyFile } from "../src/keys.js";
import { PACKAGE_ROOT, Worker } from "../src/worker.js";
import { KOTARA, PYTHON, childPids, kotara, tempDir, waitFor, writeFile } from "./helpers.js";
import { openSession } from "../src/session.js";
import type { WorkerSpec } from "../src/pool.js";

const GUARD_MS = 180_000;
const Z85 = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;
let work: string;

before(() => {
  work = tempDir("kotara-remote-");
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  await new Promise((r) => server.close(r));
  return port;
}

async function keygen(name: string): Promise<string> {
  const file = join(work, name);
  const r = await kotara(["keygen", file]);
  assert.equal(r.exitCode, 0, r.stderr);
  return file;
}

test("keygen writes a 0600 file of Z85 CURVE keypairs and an HMAC key, and refuses to overwrite it", async () => {
  const file = join(work, "keys", "lab.key");
  const r = await kotara(["keygen", file]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^wrote ${file} \\(mode 600\\)`));
  assert.ok(r.stdout.includes(`kotara worker --listen tcp://0.0.0.0:5555 --key-file ${file}`), r.stdout);
  assert.ok(r.stdout.includes(`runtime: { workers: [{ connect: "tcp://gpu-box:5555", key_file: ${file} }] }`), r.stdout);
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const doc = JSON.parse(readFileSync(file, "utf8"));
  assert.deepEqual(Object.keys(doc), ["kotara_key", "server_public", "server_secret", "client_public", "client_secret", "hmac"]);
  for (const k of ["server_public", "server_secret", "client_public", "client_secret"]) assert.match(doc[k], Z85, k);
  assert.equal(curvePublic(doc.server_secret), doc.server_public);
  assert.equal(curvePublic(doc.client_secret), doc.client_public);
  assert.match(doc.hmac, /^[0-9a-f]{64}$/);
  assert.deepEqual(readKeyFile(file), { keys: doc, warning: null });

  const again = await kotara(["keygen", file]);
  assert.equal(again.exitCode, 2);
  assert.equal(again.stderr.trim(), `kotara: ${file}: already exists; pass --force to replace it (both machines then need the new file)`);
  assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), doc, "untouched");
  chmodSync(file, 0o644);
  const forced = await kotara(["keygen", file, "--force"]);
  assert.equal(forced.exitCode, 0, forced.stderr);
  assert.notEqual(JSON.parse(readFileSync(file, "utf8")).server_secret, doc.server_secret);
  assert.equal(statSync(file).mode & 0o777, 0o600, "a replaced file is 0600 too");
});

test("readKeyFile: `path: message` errors (exit 2), and a warning for a file others may read", async () => {
  const good = KeyFile.parse(JSON.parse(readFileSync(await keygen("read.key"), "utf8")));
  const error = (content: string | null): { message: string; exitCode: number } => {
    const file = join(work, "bad.key");
    if (content !== null) writeFileSync(file, content, { mode: 0o600 });
    try {
      readKeyFile(content === null ? join(work, "missing.key") : file);
    } catch (e) {
      return { message: (e as Error).message, exitCode: (e as { exitCode: number }).exitCode };
    }
    assert.fail("no error");
  };
  const missing = join(work, "missing.key");
  assert.deepEqual(error(null), { message: `${missing}: no such file (make one with \`kotara keygen ${missing}\` and copy it to both machines)`, exitCode: 2 });
  const bad = join(work, "bad.key");
  assert.match(error("{oops").message, new RegExp(`^${bad}: not a kotara key file \\(not JSON: `));
  assert.equal(error("[]").message, `${bad}: (file): Invalid input: expected object, received array`);
  assert.equal(error(JSON.stringify({ ...good, kotara_key: 2 })).message, `${bad}: kotara_key: must be 1 (this is not a key file from \`kotara keygen\`)`);
  assert.equal(error(JSON.stringify({ ...good, client_secret: "short" })).message, `${bad}: client_secret: must be a CURVE key in Z85 (40 characters)`);
  assert.equal(error(JSON.stringify({ ...good, hmac: "zz" })).message, `${bad}: hmac: must be 64 hexadecimal digits (32 bytes)`);
  assert.equal(error(JSON.stringify({ ...good, server_public: good.client_public })).message,
    `${bad}: server_public: does not belong to server_secret (was the file edited?)`);
  const readable = join(work, "read.key");
  chmodSync(readable, 0o640);
  assert.deepEqual(readKeyFile(readable), {
    keys: good, warning: `${readable}: others than its owner may read it (mode 640); it holds secret keys: chmod 600 ${readable}`,
  });
});

/** `kotara worker --listen` on a free loopback port, its output collected. */
async function startListener(keyFile: string, env: Record<string, string> = {}) {
  const endpoint = `tcp://127.0.0.1:${await freePort()}`;
  const child: ResultPromise = execa(process.execPath, [KOTARA, "worker", "--listen", endpoint, "--key-file", keyFile, "--python", PYTHON],
    { reject: false, all: true, cwd: PACKAGE_ROOT, env });
  let out = "";
  child.all!.on("data", (d: Buffer) => (out += d.toString()));
  await waitFor(() => out.includes("listening on") || child.exitCode !== null, GUARD_MS, "the listener");
  assert.ok(out.includes(`listening on ${endpoint}`), out);
  return { endpoint, child, output: () => out };
}

const demoModels = ["models/demo/twin-a", "models/demo/sibling"].map((m) => ({
  ref: join(PACKAGE_ROOT, m), revision: null, trust_remote_code: false, dtype: "auto" as const, device: "cpu",
}));
const loadRequest = { models: demoModels, tokenizer: null, max_length: 128, bos_per_window: false, space: "auto" as const, bytes: { beam: 8, prune: 0 } };
const evaluateRequest = () => ({
  request_id: "r1",
  dataset: { path: join(PACKAGE_ROOT, "data/demo/docs-heldout-2k.txt"), max_length: 128, stride: 64, bos_per_window: false },
  settings: [
    { id: "average", type: "average" as const, temperatures: [1, 1], betas: null, weights: null },
    { id: "entropy", type: "entropy" as const, temperatures: [1.2, 0.9], betas: null, weights: null },
  ],
  batch_size: 4, progress_every: 1000, resume: null,
});

async function evaluateWith(w: Worker) {
  await w.load(loadRequest);
  return (await w.evaluate(evaluateRequest())).sums;
}

let listener: Awaited<ReturnType<typeof startListener>> | null = null;
after(async () => {
  if (listener && listener.child.exitCode === null) listener.child.kill("SIGKILL");
});

test("Worker.connect to `kotara worker --listen`: the sums of a local worker; a wrong key is refused and the listener serves on", async () => {
  const keyFile = await keygen("lab.key");
  const good = JSON.parse(readFileSync(keyFile, "utf8"));
  const other = JSON.parse(readFileSync(await keygen("other.key"), "utf8"));
  listener = await startListener(keyFile);
  const { endpoint } = listener;

  // another keygen's client pair: the listener's ZAP says no, at once
  const wrongClient = writeFile(work, "wrong-client.key", JSON.stringify({ ...good, client_public: other.client_public, client_secret: other.client_secret }));
  chmodSync(wrongClient, 0o600);
  await assert.rejects(Worker.connect({ endpoint, keyFile: wrongClient, startTimeoutMs: GUARD_MS }), {
    name: "WorkerDied",
    message: `the worker at ${endpoint} refused this controller's key (CURVE authentication failed): do both sides hold the same key file?`,
  });
  // another server's keys: the listener cannot read the handshake; no answer within the deadline
  const wrongServer = writeFile(work, "wrong-server.key", JSON.stringify({ ...good, server_public: other.server_public, server_secret: other.server_secret }));
  chmodSync(wrongServer, 0o600);
  await assert.rejects(Worker.connect({ endpoint, keyFile: wrongServer, startTimeoutMs: 2000 }), (e: Error) => {
    assert.equal(e.name, "WorkerDied");
    assert.ok(e.message.startsWith(`no answer from ${endpoint} within 2s: is \`kotara worker --listen\` running there, and do both sides hold the same key file?`), e.message);
    return true;
  });

  const warnings: string[] = [];
  const remote = await Worker.connect({ endpoint, keyFile, startTimeoutMs: GUARD_MS, onWarning: (m) => warnings.push(m) });
  assert.deepEqual(warnings, []);
  assert.equal(remote.pid, undefined, "no local process");
  assert.ok(remote.alive);
  let remoteSums;
  try {
    remoteSums = await evaluateWith(remote);
  } finally {
    await remote.close();
  }
  assert.equal(remote.alive, false);
  const local = await Worker.start({ python: PYTHON });
  let localSums;
  try {
    localSums = await evaluateWith(local);
  } finally {
    await local.close();
  }
  assert.deepEqual(remoteSums, localSums, "same machine, same code: the same sums");
  assert.ok(remoteSums.scored_tokens > 0);

  // a second session after the first one's shutdown; Ctrl-C on the worker's side ends it: a bye
  const again = await Worker.connect({ endpoint, keyFile, startTimeoutMs: GUARD_MS });
  assert.ok(again.alive);
  await waitFor(() => (listener!.output().match(/session started/g) ?? []).length === 2, GUARD_MS, "the second session");
  listener.child.kill("SIGINT");
  const r = await listener.child;
  assert.equal(r.exitCode, 0, listener.output());
  await waitFor(() => !again.alive, GUARD_MS, "the controller to hear that the worker stopped");
  await assert.rejects(again.load(loadRequest), { name: "WorkerDied", message: `the worker at ${endpoint} ended the session (it was stopped there) while idle` });
  await again.close();
  const out = listener.output();
  assert.match(out, /session ended: controller 127\.0\.0\.1 \(session 1, peer [0-9a-f]+\): the controller shut it down after/);
  assert.match(out, /kotara-worker: stopped \(SIGINT\)\s*$/);
});

test("kotara worker: a missing key file, no key file, a non-tcp endpoint (exit 2, before Python starts)", async () => {
  const missing = join(work, "nope.key");
  const r1 = await kotara(["worker", "--listen", "tcp://127.0.0.1:5555", "--key-file", missing]);
  assert.equal(r1.exitCode, 2);
  assert.equal(r1.stderr.trim(), `kotara: ${missing}: no such file (make one with \`kotara keygen ${missing}\` and copy it to both machines)`);
  const r2 = await kotara(["worker", "--listen", "tcp://127.0.0.1:5555"]);
  assert.equal(r2.exitCode, 2);
  assert.match(r2.stderr, /--listen needs --key-file FILE .*: a listening worker always requires the key, on any address, loopback included/);
  const r3 = await kotara(["worker", "--listen", "ipc:///tmp/w.sock", "--key-file", missing]);
  assert.equal(r3.exitCode, 2);
  assert.match(r3.stderr, /--listen takes tcp:\/\/HOST:PORT/);
  await assert.rejects(Worker.connect({ endpoint: "ipc:///tmp/w.sock", keyFile: missing }), { message: 'a remote worker\'s endpoint is tcp://HOST:PORT, got "ipc:///tmp/w.sock"' });
});

test("a pool of a local and a remote worker gives one worker's sums; the remote one lost mid-run, the local one finishes", async () => {
  const ONE_THREAD = { OMP_NUM_THREADS: "1", MKL_NUM_THREADS: "1" };
  const keyFile = await keygen("pool.key");
  const remote = await startListener(keyFile, ONE_THREAD);
  const text = writeFile(work, "pool.txt", readFileSync(join(PACKAGE_ROOT, "data/demo/docs-heldout-2k.txt"), "utf8").repeat(6));
  const opts = { dataset: { path: text, max_length: 128, stride: 64 }, batchSize: 2, strategies: ["average", "entropy"] as const };
  const models = demoModels.map((m) => m.ref);
  const open = (workers: WorkerSpec[] | null) => openSession({ models, workers, env: ONE_THREAD, startTimeoutMs: GUARD_MS });
  const one = await open(null);
  const want = await one.evaluate({ ...opts, strategies: [...opts.strategies] }).finally(() => one.close());
  const pool = await open([{ threads: 1 }, { connect: remote.endpoint, key_file: keyFile }]);
  const statuses: string[] = [];
  try {
    const both = await pool.evaluate({ ...opts, strategies: [...opts.strategies] });
    assert.deepEqual(both.result.sums, want.result.sums);
    const [here, there] = both.metrics.runtime.workers;
    assert.equal(there.endpoint, remote.endpoint);
    assert.ok(here.windows > 0 && there.windows > 0, JSON.stringify(both.metrics.runtime.workers));
  } finally {
    await pool.close();
  }
  // again, and the remote worker's process is killed once the run is under way
  const again = await openSession({ models, workers: [{ threads: 1 }, { connect: remote.endpoint, key_file: keyFile }], env: ONE_THREAD,
    startTimeoutMs: GUARD_MS, onStatus: (m) => statuses.push(m) });
  try {
    let killed = false;
    const r = await again.evaluate({
      ...opts, strategies: [...opts.strategies], onProgress: () => {
        if (killed) return;
        killed = true;
        for (const pid of childPids(remote.child.pid!)) process.kill(pid, "SIGKILL");
      },
    });
    assert.ok(killed);
    assert.deepEqual(r.result.sums, want.result.sums);
    assert.ok(statuses.some((m) => m.startsWith(`worker ${remote.endpoint}#2 was lost (`)), statuses.join("\n"));
    assert.ok(r.metrics.runtime.workers[1].lost);
  } finally {
    await again.close();
    remote.child.kill("SIGKILL");
  }
});
