// A pool of workers (runtime.workers) against the real worker: the sums of any pool are
// one worker's bit for bit (token and byte space, the token view too); a worker killed
// mid-run is replaced by the others and the result does not change; losing every worker
// fails with a checkpoint that a pool of another size resumes to the same result.
//
// Every worker runs with one intra-op thread (OMP_NUM_THREADS=1, which `threads: 1` sets
// for a pool's worker and the env sets for the single worker compared with it): a
// matmul's reduction order may depend on its thread count, and bit-for-bit equality is
// only promised for workers that run the same kernels.
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { openSession, type EvaluateOptions } from "../src/index.js";
import { addShare, emptySums } from "../src/sums.js";
import { alive, kotara, longText as longTextIn, startRun, tempDir, tinyModels, waitFor, writeFile } from "./helpers.js";

const ONE_THREAD = { OMP_NUM_THREADS: "1", MKL_NUM_THREADS: "1" };
const TWO = [{ device: "cpu", threads: 1 }, { device: "cpu", threads: 1 }];

let models: string;
let work: string;
let longText: string;

before(() => {
  models = tinyModels();
  work = tempDir();
  longText = longTextIn(models, work);
});

async function evaluateWith(refs: string[], workers: typeof TWO | null, opts: EvaluateOptions, space?: "bytes") {
  const session = await openSession({ models: refs, workers, env: ONE_THREAD, space });
  try {
    return { ...(await session.evaluate(opts)), reports: session.workerReports, pids: session.members.map((m) => m.worker.pid!) };
  } finally {
    await session.close();
  }
}

test("two workers give exactly one worker's sums, token view included; each scored its share", async () => {
  const refs = [join(models, "gpt2-a"), join(models, "llama")];
  const opts: EvaluateOptions = {
    dataset: { path: join(models, "text.txt"), max_length: 48, stride: 24 }, batchSize: 3,
    strategies: ["average", "poe", "entropy", "gap", { type: "mix", weights: [0.3, 0.7] }],
    tokenView: { bytes: 600 },
  };
  const one = await evaluateWith(refs, null, opts);
  const two = await evaluateWith(refs, TWO, opts);
  assert.ok(one.result.windows > 6, "enough windows for several shares");
  assert.deepEqual(two.result.sums, one.result.sums);                 // every float, per window too
  assert.deepEqual(two.result.positions, one.result.positions);
  assert.ok(one.result.positions && one.result.positions.start.length > 10);
  assert.deepEqual(two.metrics.models, one.metrics.models);
  assert.deepEqual(two.metrics.fusions, one.metrics.fusions);
  // the pool in the metrics: both workers, their windows adding up to the text's
  const w = two.metrics.runtime.workers;
  assert.equal(w.length, 2);
  assert.deepEqual(w.map((x) => [x.device, x.threads, x.lost]), [["cpu", 1, null], ["cpu", 1, null]]);
  assert.ok(w.every((x) => x.windows > 0 && x.seconds > 0), JSON.stringify(w));
  assert.equal(w[0].windows + w[1].windows, one.result.windows);
  assert.equal(one.metrics.runtime.workers.length, 1);
  assert.equal(one.metrics.runtime.workers[0].windows, one.result.windows);
  for (const pid of [...one.pids, ...two.pids]) assert.equal(alive(pid), false);
});

test("in byte space too: two workers give one worker's sums and beam statistics", async () => {
  const refs = [join(models, "gpt2-a"), join(models, "gpt2-othertok")];
  const text = writeFile(work, "short.txt", readFileSync(join(models, "text.txt"), "utf8").slice(0, 700));
  const opts: EvaluateOptions = { dataset: { path: text, max_length: 96, stride: 96 }, batchSize: 2, strategies: ["average", "entropy"] };
  const one = await evaluateWith(refs, null, opts, "bytes");
  const two = await evaluateWith(refs, TWO, opts, "bytes");
  assert.equal(one.result.space, "bytes");
  assert.ok(one.result.windows >= 4);
  assert.deepEqual(two.result.sums, one.result.sums);
  assert.deepEqual(two.result.byte_stats, one.result.byte_stats);
});

test("more workers than groups: the idle ones get nothing to do, the result is one worker's", async () => {
  const refs = [join(models, "gpt2-a"), join(models, "llama")];
  const text = writeFile(work, "two-windows.txt", readFileSync(join(models, "text.txt"), "utf8").slice(0, 300));
  const opts: EvaluateOptions = { dataset: { path: text, max_length: 48, stride: 48 }, batchSize: 8, strategies: ["entropy"] };
  const one = await evaluateWith(refs, null, opts);
  const three = await evaluateWith(refs, [...TWO, { device: "cpu", threads: 1 }], opts);
  assert.ok(one.result.windows <= 8, "one group");
  assert.deepEqual(three.result.sums, one.result.sums);
  assert.deepEqual(three.reports.map((r) => r.windows).sort(), [0, 0, one.result.windows]);
});

test("addShare joins shares in window order and refuses one out of place", () => {
  // the same floats added in another grouping differ: (a + b) + c ≠ a + (b + c) here
  const a = 0.1, b = 0.2, c = 0.3;
  assert.notEqual((a + b) + c, a + (b + c));
  const share = (first: number, values: number[], weights: number) => ({
    ...emptySums(1, 1), windows_done: first + values.length, scored_tokens: values.length, window_first: first,
    model_nll: [values.reduce((s, x) => s + x, 0)], fusion_nll: [0], fusion_weights: [[weights]],
    window_targets: values.map(() => 1), window_bytes: values.map(() => 2), window_model_nll: [values], window_fusion_nll: [values.map(() => 0)],
  });
  const joined = addShare(addShare(null, share(0, [a], 0.5)), share(1, [b, c], 0.25));
  assert.equal(joined.model_nll[0], (a + b) + c);                // one worker's order, not a + (b + c)
  assert.deepEqual(joined.window_model_nll, [[a, b, c]]);
  assert.deepEqual(joined.fusion_weights, [[0.75]]);
  assert.equal(joined.windows_done, 3);
  assert.throws(() => addShare(null, share(1, [b], 0)), /lists windows 1\.\.1 after 0 windows/);
  assert.throws(() => addShare(joined, share(2, [b], 0)), /after 3 windows/);
});

function poolConfig(name: string, workers: string) {
  return writeFile(work, `${name}.yaml`,
    `models:\n  - { ref: ${join(models, "gpt2-a")}, device: cpu }\n  - { ref: ${join(models, "llama")}, device: cpu }\n` +
    `dataset: { path: ${longText}, max_length: 64, stride: 8 }\nstrategies: [average, entropy]\n` +
    `runtime: { batch_size: 4, checkpoint_every: 8${workers ? `, workers: ${workers}` : ""} }\n` +
    `report: { html: false }\noutput: { metrics: ${join(work, `${name}.json`)} }\n`);
}

const POOL2 = "[{ device: cpu, threads: 1 }, { device: cpu, threads: 1 }]";
const POOL3 = "[{ threads: 1 }, { threads: 1 }, { threads: 1 }]";

/** `kotara run` in the background, once every worker of its pool is running and progress shows. */
async function startPoolRun(cfg: string, workers: number) {
  const { child, pids, output } = await startRun(cfg, ONE_THREAD, 90_000);
  assert.equal(pids.length, workers, "every worker is a child of the controller");
  return { child, pids, output };
}

function numbers(path: string) {
  const m = JSON.parse(readFileSync(path, "utf8"));
  return { models: m.models.map((x: any) => [x.ppl, x.nll_sum]), fusions: m.fusions.map((f: any) => [f.id, f.ppl, f.weights_mean]), scored: m.dataset.scored_tokens, workers: m.runtime.workers };
}

let fresh: ReturnType<typeof numbers> | null = null;
/** One worker, one thread, never interrupted: what every pool run below must give. */
async function freshNumbers() {
  if (fresh) return fresh;
  const r = await kotara(["run", poolConfig("fresh", ""), "--quiet"], { env: ONE_THREAD, timeout: 300_000 });
  assert.equal(r.exitCode, 0, r.stderr);
  return (fresh = numbers(join(work, "fresh.json")));
}

test("a worker killed mid-run: the others finish its windows, the result is unchanged, the run says who was lost", async () => {
  const cfg = poolConfig("kill-one", POOL2);
  const { child, pids } = await startPoolRun(cfg, 2);
  process.kill(pids[1], "SIGKILL");
  const r = await child;
  assert.equal(r.exitCode, 0, r.all);
  const said = /worker cpu#(\d) was lost \(the worker died: it was killed by SIGKILL while evaluating .*\); windows \d+\.\.\d+ go to the 1 others/.exec(r.all!);
  assert.ok(said, r.all);
  const got = numbers(join(work, "kill-one.json"));
  const want = await freshNumbers();
  assert.deepEqual([got.models, got.fusions, got.scored], [want.models, want.fusions, want.scored]);
  const lost = Number(said[1]) - 1;
  assert.match(got.workers[lost].lost, /killed by SIGKILL/);
  assert.equal(got.workers[1 - lost].lost, null);
  for (const pid of pids) assert.equal(alive(pid), false);
});

test("every worker lost: exit 1 and a checkpoint; a pool of another size resumes it to the same result", async () => {
  const cfg = poolConfig("lose-all", POOL2);
  const checkpoint = join(work, "lose-all.json.checkpoint.json");
  const { child, pids } = await startPoolRun(cfg, 2);
  await waitFor(() => existsSync(checkpoint), 90_000, "a first checkpoint");
  for (const pid of pids) process.kill(pid, "SIGKILL");
  const r = await child;
  assert.equal(r.exitCode, 1, r.all);
  assert.match(r.all!, /every worker of the pool was lost:\n {2}cpu#1: .*\n {2}cpu#2: /);
  assert.ok(existsSync(checkpoint), "the windows joined before the loss are kept");
  assert.ok(!existsSync(join(work, "lose-all.json")), "no metrics from a partial run");
  // resumed by three workers (the config edited: the pool is not part of what a checkpoint checks)
  writeFileSync(cfg, readFileSync(cfg, "utf8").replace(POOL2, POOL3));
  const resumed = await kotara(["run", cfg, "--resume"], { env: ONE_THREAD, timeout: 300_000 });
  assert.equal(resumed.exitCode, 0, resumed.stderr);
  assert.match(resumed.stderr, /resuming from .*: \d+\/\d+ windows done/);
  const got = numbers(join(work, "lose-all.json"));
  const want = await freshNumbers();
  assert.deepEqual([got.models, got.fusions, got.scored], [want.models, want.fusions, want.scored]);
  assert.equal(got.workers.length, 3);
});

test("Ctrl-C stops a pool with a checkpoint; one worker resumes it to the same result", async () => {
  const cfg = poolConfig("sigint-pool", POOL2);
  const checkpoint = join(work, "sigint-pool.json.checkpoint.json");
  const { child, pids } = await startPoolRun(cfg, 2);
  await waitFor(() => existsSync(checkpoint), 90_000, "a first checkpoint");
  child.kill("SIGINT");
  const r = await child;
  assert.equal(r.exitCode, 130, r.all);
  for (const pid of pids) assert.equal(alive(pid), false);
  writeFileSync(cfg, readFileSync(cfg, "utf8").replace(`, workers: ${POOL2}`, ""));
  const resumed = await kotara(["run", cfg, "--resume", "--quiet"], { env: ONE_THREAD, timeout: 300_000 });
  assert.equal(resumed.exitCode, 0, resumed.stderr);
  const got = numbers(join(work, "sigint-pool.json"));
  const want = await freshNumbers();
  assert.deepEqual([got.models, got.fusions, got.scored], [want.models, want.fusions, want.scored]);
});

test("runtime.workers is checked entry by entry, as path: message lines", async () => {
  const cfg = writeFile(work, "bad-workers.yaml",
    `models: [{ ref: ${join(models, "gpt2-a")} }, { ref: ${join(models, "llama")} }]\ndataset: { path: ${longText} }\nstrategies: [average]\n` +
    `runtime:\n  workers:\n    - { device: gpu }\n    - { threads: 0 }\n    - { connect: "gpu-box:5555", key_file: k }\n    - { device: cpu, colour: red }\n`);
  const r = await kotara(["run", cfg]);
  assert.equal(r.exitCode, 2, r.stderr);
  for (const line of [
    /runtime\.workers\[0\]\.device: must be auto, cpu, cuda, cuda:N or mps, got "gpu"/,
    /runtime\.workers\[1\]\.threads: must be a positive integer, got 0/,
    /runtime\.workers\[2\]\.connect: must be tcp:\/\/HOST:PORT, got "gpu-box:5555"/,
    /runtime\.workers\[3\]\.colour: unknown key; allowed: device, threads/,
  ]) assert.match(r.stderr, line);
  const noKey = writeFile(work, "no-key.yaml", readFileSync(cfg, "utf8").replace(/ {2}workers:[\s\S]*/, `  workers: [{ connect: "tcp://127.0.0.1:1", key_file: none.key }]\n`));
  const k = await kotara(["run", noKey]);
  assert.equal(k.exitCode, 2);
  assert.match(k.stderr, /runtime\.workers\[0\]\.key_file: not found: .*none\.key \(make one with kotara keygen\)/);
  const empty = writeFile(work, "no-workers.yaml", readFileSync(cfg, "utf8").replace(/runtime:[\s\S]*/, "runtime: { workers: [] }\n"));
  const e = await kotara(["run", empty]);
  assert.equal(e.exitCode, 2);
  assert.match(e.stderr, /runtime\.workers: must list at least one worker/);
});

test("kotara eval --workers: each device checked as the config's entries (exit 2); --threads must be positive", async () => {
  const base = ["eval", "--model_a", join(models, "gpt2-a"), "--model_b", join(models, "llama"), "--dataset_path", longText];
  const bad = await kotara([...base, "--workers", "gpu,cpu"]);
  assert.equal(bad.exitCode, 2, bad.stderr);
  assert.match(bad.stderr, /runtime\.workers\[0\]\.device: must be auto, cpu, cuda, cuda:N or mps, got "gpu"/);
  const zero = await kotara([...base, "--workers", "cpu,cpu", "--threads", "0"]);
  assert.equal(zero.exitCode, 2, zero.stderr);
  assert.match(zero.stderr, /--threads must be a positive integer, got "0"/);
});

test("a worker of the pool that cannot start fails the run naming its entry (exit 1), with no metrics", async () => {
  // a remote entry where nothing listens: no answer within the connect deadline
  const key = join(work, "unused.key");
  const made = await kotara(["keygen", key]);
  assert.equal(made.exitCode, 0, made.stderr);
  const cfg = poolConfig("no-listener", `[{ threads: 1 }, { connect: "tcp://127.0.0.1:9", key_file: ${key} }]`);
  const r = await kotara(["run", cfg, "--quiet"], { env: { ...ONE_THREAD, KOTARA_CONNECT_TIMEOUT_MS: "1500" } });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /^kotara: runtime\.workers\[1\]: no answer from tcp:\/\/127\.0\.0\.1:9 within 1\.5s: is `kotara worker --listen` running there/m);
  assert.ok(!existsSync(join(work, "no-listener.json")));
});
