// Faults against the real worker: each asserts what the user is told and that no
// process is left behind. Two are controller checks that run on the fake worker
// (test/fake-worker/): a checkpoint of another text, and a protocol version mismatch.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PROTOCOL_VERSION } from "../src/protocol.js";
import { before, test } from "node:test";
import { encode } from "@msgpack/msgpack";
import { Worker } from "../src/worker.js";
import { FAKE_PYTHON, PYTHON, alive, kotara, longText as longTextIn, startRun, tempDir, tinyModels, waitFor, writeFile } from "./helpers.js";

let models: string;
let work: string;
let longText: string;

before(() => {
  models = tinyModels();
  work = tempDir();
  longText = longTextIn(models, work);
});

function longConfig(name: string, stride = 8) {
  return writeFile(work, `${name}.yaml`,
    `models:\n  - { ref: ${join(models, "gpt2-a")}, device: cpu }\n  - { ref: ${join(models, "llama")}, device: cpu }\n` +
    `dataset: { path: ${longText}, max_length: 64, stride: ${stride} }\nstrategies: [average, entropy]\n` +
    `runtime: { batch_size: 4, checkpoint_every: 8 }\noutput: { metrics: ${join(work, `${name}.json`)} }\n`);
}

/** Start `kotara run` in the background and wait until its worker is evaluating. */
async function startLongRun(name: string, env: Record<string, string> = {}) {
  const { child, pids, output } = await startRun(longConfig(name), env, 60_000);
  const [workerPid] = pids;
  assert.ok(workerPid, "the worker is a child of the controller");
  return { child, workerPid, output };
}

test("the worker killed with SIGKILL mid-run: the run fails at once, says so, keeps what was done", async () => {
  const { child, workerPid } = await startLongRun("kill9");
  process.kill(workerPid, "SIGKILL");
  const r = await child;
  assert.equal(r.exitCode, 1);
  assert.match(r.all!, /the worker died: it was killed by SIGKILL while evaluating/);
  assert.ok(!alive(workerPid));
  assert.equal(alive(child.pid!), false);
});

test("a hung worker (SIGSTOP) is reported by the watchdog and stopped", async () => {
  // 2.5 s of silence: a stopped worker sends nothing, so the watchdog fires on any machine;
  // a machine so slow that heartbeats lapse before the SIGSTOP gets the same message and
  // exit code, sooner. No duration is asserted.
  const { child, workerPid } = await startLongRun("hang", { KOTARA_HEARTBEAT_TIMEOUT_MS: "2500" });
  process.kill(workerPid, "SIGSTOP");
  const r = await child;
  assert.equal(r.exitCode, 1);
  assert.match(r.all!, /the worker stopped answering: no heartbeat for \d+\.\ds while evaluating/);
  // An upper bound, not a timing: polled every 100 ms (a healthy machine passes at once);
  // only a worker that is never killed reaches it.
  await waitFor(() => !alive(workerPid), 60_000, "the stopped worker to be killed");
});

test("Ctrl-C mid-run exits 130, saves a checkpoint, leaves no worker; --resume gives the uninterrupted result", async () => {
  const { child, workerPid } = await startLongRun("sigint");
  const cfg = join(work, "sigint.yaml");
  const checkpoint = join(work, "sigint.json.checkpoint.json");
  await waitFor(() => existsSync(checkpoint), 60_000, "a first checkpoint");
  child.kill("SIGINT");
  const r = await child;
  assert.equal(r.exitCode, 130, r.all);
  assert.match(r.all!, /saved \d+\/\d+ windows to .*sigint\.json\.checkpoint\.json/);
  assert.ok(!alive(workerPid));
  assert.ok(!existsSync(join(work, "sigint.json")), "no metrics from a partial run");

  const resumed = await kotara(["run", cfg, "--resume", "--quiet"]);
  assert.equal(resumed.exitCode, 0, resumed.stderr);
  assert.ok(!existsSync(checkpoint), "the checkpoint is removed once the run is complete");
  const a = JSON.parse(readFileSync(join(work, "sigint.json"), "utf8"));

  const fresh = await kotara(["run", cfg, "--metrics", join(work, "fresh.json"), "--quiet"]);
  assert.equal(fresh.exitCode, 0, fresh.stderr);
  const b = JSON.parse(readFileSync(join(work, "fresh.json"), "utf8"));
  assert.deepEqual(a.models.map((m: any) => m.ppl), b.models.map((m: any) => m.ppl));
  assert.deepEqual(a.fusions.map((f: any) => [f.id, f.ppl, f.weights_mean]), b.fusions.map((f: any) => [f.id, f.ppl, f.weights_mean]));
  assert.equal(a.dataset.scored_tokens, b.dataset.scored_tokens);
});

test("--resume refuses a checkpoint of another text, and says why (exit 2)", async () => {
  // controller bookkeeping: the fake worker (20 ms a batch, so that there is time to interrupt it)
  const fake = { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_DELAY_MS: "20" };
  const { child } = await startLongRun("changed", fake);
  const checkpoint = join(work, "changed.json.checkpoint.json");
  await waitFor(() => existsSync(checkpoint), 60_000, "a first checkpoint");
  child.kill("SIGINT");
  assert.equal((await child).exitCode, 130);
  writeFile(work, "long.txt", readFileSync(longText, "utf8") + " one more line\n");
  const r = await kotara(["run", join(work, "changed.yaml"), "--resume", "--quiet"], { env: fake });
  assert.equal(r.exitCode, 2);
  assert.match(r.stderr, /cannot resume from .*: the text file changed/);
  const none = await kotara(["run", longConfig("never-ran"), "--resume", "--quiet"], { env: fake });
  assert.equal(none.exitCode, 2);
  assert.match(none.stderr, /no usable checkpoint .* there is none/);
});

test("the controller killed with SIGKILL: the worker notices and exits by itself", async () => {
  const { child, workerPid } = await startLongRun("orphan");
  process.kill(child.pid!, "SIGKILL");
  await child;
  // An upper bound, not a timing: the worker sees its stdin close at once and its parent
  // change within its heartbeat period; only a worker that never exits reaches 60 s.
  await waitFor(() => !alive(workerPid), 60_000, "the orphaned worker to exit");
});

test("forged and replayed messages are dropped; the worker keeps serving", async () => {
  const stderr: string[] = [];
  const w = await Worker.start({ python: PYTHON, onStderr: (l) => stderr.push(l) });
  try {
    const cancel = w.frame({ type: "cancel", request_id: "nothing-running" });
    await w.sendFrames(cancel);
    await w.sendFrames(cancel); // the same signed frames again
    const forged = encode({ type: "shutdown", seq: 10_000 });
    await w.sendFrames([forged, Buffer.alloc(32, 7)]);
    await w.sendFrames([encode({ type: "shutdown", seq: 10_001 })]); // unsigned
    await waitFor(() => stderr.filter((l) => l.includes("dropped")).length >= 3, 10_000, "the worker to log the drops");
    assert.ok(stderr.some((l) => /dropped a replayed message/.test(l)), stderr.join("\n"));
    assert.ok(stderr.some((l) => /dropped a message: bad signature/.test(l)));
    assert.ok(stderr.some((l) => /dropped a message: expected 2 frames/.test(l)));
    assert.ok(w.alive, "a forged shutdown does not stop the worker");
    const loaded = await w.load({
      models: ["gpt2-a", "gpt2-b"].map((m) => ({ ref: join(models, m), revision: null, trust_remote_code: false, dtype: "auto" as const, device: "cpu" })),
      tokenizer: null, max_length: 64, bos_per_window: false, space: "auto", bytes: { beam: 8, prune: 0 },
    });
    assert.equal(loaded.models.length, 2);
  } finally {
    await w.close();
  }
  assert.ok(!alive(w.pid!));
});

test("a worker that speaks another protocol version is refused, and stopped", async () => {
  // the fake worker, saying hello with protocol version 999
  const r = await kotara(["run", longConfig("version"), "--quiet"], { env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_PROTOCOL_VERSION: "999" } });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`protocol version mismatch: the controller speaks ${PROTOCOL_VERSION}, the worker .* speaks 999`));
});

test("a Python without Kotara's requirements gets a set-up hint, not a traceback first", async () => {
  const r = await kotara(["run", longConfig("nopython"), "--quiet"], { env: { KOTARA_PYTHON: join(work, "no-such-python") } });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /KOTARA_PYTHON/);
  assert.doesNotMatch(r.stderr.split("\n")[0], /Traceback/);
});
