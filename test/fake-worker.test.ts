// The fake worker (test/fake-worker/) against the protocol, so that it cannot drift from
// src/protocol.ts and the real worker silently: what it sends validates as FromWorker and
// has the shape of protocol/golden/*.json; the golden to-worker messages are accepted as
// they are; it drops what python/kotara_worker/protocol.py drops, with the same lines;
// its numbers are the closed forms documented in test/fake-worker/canned.ts, restated
// here; and each fault it can inject does what its env var says.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { encode } from "@msgpack/msgpack";
import { FromWorker, PROTOCOL_VERSION, ToWorker, type Sums } from "../src/protocol.js";
import { appendWindows } from "../src/sums.js";
import { PACKAGE_ROOT } from "../src/worker.js";
import { planWindows } from "./fake-worker/canned.js";
import { FAKE_PYTHON, RawWorker } from "./fake-worker/harness.js";
import { waitFor } from "./helpers.js";

const golden = join(PACKAGE_ROOT, "protocol", "golden");
const goldenJson = (name: string) => JSON.parse(readFileSync(join(golden, `${name}.json`), "utf8"));

let dir: string;
let modelA: string;
let modelB: string;
let modelC: string;
let text: string;
const TEXT = "The fake worker scores bytes, not tokens. ".repeat(5); // 210 ASCII bytes
const N = Buffer.byteLength(TEXT);

before(() => {
  dir = join(tmpdir(), `kotara-fake-test-${process.pid}`);
  modelA = join(dir, "model-a");
  modelB = join(dir, "model-b");
  modelC = join(dir, "model-c");
  for (const [m, cfg] of [
    [modelA, { vocab_size: 400, n_positions: 128, bos_token_id: 0 }],
    [modelB, { vocab_size: 512, max_position_embeddings: 96 }], // no BOS
    [modelC, { vocab_size: 600, max_position_embeddings: 200 }],
  ] as const) {
    mkdirSync(m, { recursive: true });
    writeFileSync(join(m, "config.json"), JSON.stringify(cfg));
  }
  text = join(dir, "text.txt");
  writeFileSync(text, TEXT);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const spec = (ref: string) => ({ ref, revision: null, trust_remote_code: false, dtype: "auto", device: "auto" });
const load = () => ({ type: "load", models: [spec(modelA), spec(modelB)], tokenizer: null, max_length: 32, bos_per_window: false, space: "auto", bytes: { beam: 8, prune: 0 } });
const evaluate = (request_id: string, extra: Record<string, unknown> = {}) => ({
  type: "evaluate", request_id, dataset: { path: text, max_length: 32, stride: 16, bos_per_window: false },
  settings: [
    { id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null },
    { id: "poe@b=0.8,0.2", type: "poe", temperatures: [1, 1.1], betas: [0.8, 0.2], weights: null },
    { id: "mix@w=3,1", type: "mix", temperatures: [1, 1], betas: null, weights: [3, 1] },
  ],
  batch_size: 3, progress_every: 2, resume: null, ...extra,
});

/** The keys of a message, recursively (arrays by their first element): its shape without the values. */
function keys(v: unknown): unknown {
  if (Array.isArray(v)) return v.length ? [keys(v[0])] : [];
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, keys((v as Record<string, unknown>)[k])]));
  }
  return "·";
}

/** The Hugging Face fixed-length loop, restated: windows and scored targets over n tokens. */
function hfLoop(n: number, L: number, S: number) {
  let prevEnd = 0;
  let windows = 0;
  let scored = 0;
  for (let begin = 0; begin < n; begin += S) {
    const end = Math.min(begin + L, n);
    const s = Math.min(end - prevEnd, end - begin - 1); // targets no earlier window scored; position 0 has no context
    if (s > 0) (windows++, (scored += s));
    prevEnd = end;
    if (end === n) break;
  }
  return { windows, scored };
}

const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) <= 1e-12 * Math.abs(b), `${what}: ${a} vs ${b}`);

describe("the fake worker speaks the protocol", () => {
  test("a whole session: every message validates, has its golden message's shape, seq counts from 0", async () => {
    const w = await RawWorker.start({}, 0.05);
    try {
      const hello = w.messages[0] as Extract<FromWorker, { type: "hello" }>;
      assert.equal(hello.type, "hello");
      assert.equal(hello.protocol_version, PROTOCOL_VERSION);
      assert.equal(hello.pid, w.pid, "the fake runs in the process the controller started (exec)");

      await w.send(load());
      const loaded = await w.next("loaded");
      assert.deepEqual(loaded.models.map((m) => [m.vocab_size, m.max_positions, m.device, m.dtype]), [[400, 128, "cpu", "float32"], [512, 96, "cpu", "float32"]]);
      assert.deepEqual(loaded.tokenizer, { ref: modelA, vocab_size: 400, bos_token_id: 0 });

      await w.send(evaluate("r1"));
      const result = await w.next("result");
      const progress = w.progress("r1");
      const { windows, scored } = hfLoop(N, 32, 16);
      assert.equal(result.windows, windows);
      assert.equal(result.tokens, N, "the fake's tokens are the text's bytes");
      assert.equal(result.sums.windows_done, windows);
      assert.equal(result.sums.scored_tokens, scored);
      assert.equal(scored, N - 1, "stride < max_length: every token after the first is scored once");
      // progress after a batch (3 windows here) once progress_every (2) windows passed since the last
      const done = progress.map((p) => p.sums.windows_done);
      assert.ok(done.length >= 2 && done.every((d, i) => d - (done[i - 1] ?? 0) >= 2 && d <= windows), JSON.stringify(done));
      assert.ok(progress.every((p) => p.windows_total === windows && p.tokens_total === N));
      // the documented closed forms: model m has PPL 20 + 5m; entropy at T = (1, 1) is 17·(1 + 0.1²);
      // poe with betas (0.8, 0.2) at T = (1, 1.1) is 18·(1 + 0)·(1 + 0.3² + 0.3²); weights as documented
      close(Math.exp(result.sums.model_nll[0] / scored), 20, "model 0");
      close(Math.exp(result.sums.model_nll[1] / scored), 25, "model 1");
      close(Math.exp(result.sums.fusion_nll[0] / scored), 17 * 1.01, "entropy");
      close(Math.exp(result.sums.fusion_nll[1] / scored), 18 * 1.18, "poe");
      close(result.sums.fusion_weights[0][0] / scored, 0.5, "entropy α_0");
      close(result.sums.fusion_weights[1][0] / scored, 0.8, "poe α_0");
      // mix with weights (3, 1), normalized to (3/4, 1/4), at T = (1, 1): 18.5·(1 + 0.1²)·(1 + (1/4)² + (1/4)²)
      close(Math.exp(result.sums.fusion_nll[2] / scored), 18.5 * (1 + 0.1 ** 2) * (1 + (3 / 4 - 1 / 2) ** 2 + (1 / 4 - 1 / 2) ** 2), "mix");
      close(result.sums.fusion_weights[2][0] / scored, 3 / 4, "mix α_0");

      // generation: the canned letters; a stop string cuts prompt 1's text ("bcdef" ends before "ef")
      await w.send({
        type: "generate", request_id: "g1", prompts: ["x", "y"], max_new: 5, stop: ["ef"], truncate: true,
        setting: { id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null },
        sampling: { greedy: true, temperature: 1, top_k: 0, top_p: 1, seed: 0 },
      });
      const generated = await w.next("generated");
      assert.deepEqual(generated.outputs.map((o) => [o.text, o.finish]), [["abcde", "length"], ["bcd", "stop"]]);
      const streamed = w.messages.filter((m) => m.type === "chunk").flatMap((m) => m.chunks);
      assert.deepEqual(streamed.filter((c) => c.prompt === 1).map((c) => c.text), ["b", "c", "d", "", ""], "the start of a stop string is held back, then dropped");

      // fitting: the evaluate pass with the request's setting, then the documented closed forms
      // (canned.ts fittedSettings): poe at T = 1 with c_m = 1 / (M τ_m), mix at the grid points
      // nearest τ_m with weights 1/M; their NLLs those of any setting (the PPL formula)
      await w.send({
        type: "fit", request_id: "f1", dataset: { path: text, max_length: 32, stride: 16, bos_per_window: false },
        settings: [{ id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null }], batch_size: 3, progress_every: 2,
        options: { fits: ["loglinear", "mix"], mix_temperatures: [0.9, 1.15], memory_budget_bytes: 2 ** 30, max_iterations: 50, tolerance: 1e-6, em_max_iterations: 100, em_tolerance: 1e-9 },
      });
      const fitted = await w.next("fitted");
      assert.ok(w.progress("f1").length >= 2, "progress during the fit's pass");
      assert.deepEqual(fitted.fits.map((f) => f.setting.id), ["fitted-poe", "fitted-mix"]);
      const c = [1 / 2, 1 / (2 * 1.1)];
      assert.deepEqual(fitted.fits[0].setting.betas, c);
      assert.deepEqual(fitted.fits[1].setting.temperatures, [1, 1.15]);
      const shares = c.map((x) => x / (c[0] + c[1]));
      close(Math.exp(fitted.sums.fusion_nll[0] / scored), 17 * 1.01, "entropy on the fit's pass");
      close(Math.exp(fitted.sums.fusion_nll[1] / scored), 18 * (1 + 0.1 ** 2) * (1 + shares.reduce((a, x) => a + (x - 0.5) ** 2, 0)), "fitted-poe");
      close(Math.exp(fitted.sums.fusion_nll[2] / scored), 18.5 * (1 + 0.05 ** 2), "fitted-mix");
      assert.equal(fitted.kept_bytes, 2 * scored * 400 * 4 + 2 * 3 * scored * 8 + scored * 16, "kept: the logits, the target log-probabilities");

      await w.send(evaluate("r2", { dataset: { path: join(dir, "missing.txt"), max_length: 32, stride: 16, bos_per_window: false } }));
      const err = await w.next("error");
      assert.deepEqual([err.request_id, err.code], ["r2", "not_found"]);
      // a fast machine can get here before the first heartbeat (every 50 ms): wait for one
      // (a bound, not a timing: polled, and only a fake that never beats reaches it)
      await waitFor(() => w.messages.some((m) => m.type === "heartbeat"), 60_000, "a heartbeat");
      await w.send({ type: "shutdown" });
      await w.next("bye");
      assert.deepEqual(await w.exit, { code: 0, signal: null });

      assert.deepEqual(w.problems, []);
      const types = new Set(w.messages.map((m) => m.type));
      assert.deepEqual([...types].sort(), FromWorker.options.map((o) => o.shape.type.value).sort(), "every message type was sent");
      for (const type of types) {
        const m = w.messages.find((x) => x.type === type)!;
        assert.deepEqual(keys(m), keys(goldenJson(type)), `${type} has the golden shape`);
      }
      assert.ok(w.messages.filter((m) => m.type === "heartbeat").length >= 1, "heartbeats at --heartbeat");
      assert.ok(w.messages.some((m) => m.type === "status" && m.message === `tokenizing ${text}`));
    } finally {
      await w.close();
    }
  });

  test("dropped like the worker drops them, with its lines: bad frames and signatures, undecodable, off-schema, replayed", async () => {
    const w = await RawWorker.start();
    try {
      const cancel = encode({ seq: 0, type: "cancel", request_id: "nothing-running" });
      await w.sendSigned(cancel);
      await w.sendSigned(cancel); // the same signed frames again
      await w.sendFrames([encode({ type: "shutdown", seq: 10 }), Buffer.alloc(32, 7)]); // forged
      await w.sendFrames([encode({ type: "shutdown", seq: 11 })]); // unsigned
      await w.sendSigned(Buffer.from([0xc1])); // 0xc1: never used in msgpack
      const bad = structuredClone(goldenJson("evaluate"));
      bad.seq = 12;
      bad.settings[0].temperatures = [0, 1];
      await w.sendSigned(encode(bad));
      await w.until(() => w.stderr.filter((l) => l.includes("dropped")).length >= 5, 10_000, "five drops");
      // the lines the real worker writes (faults.test.ts matches these against it)
      assert.ok(w.stderr.some((l) => l === "kotara-worker: dropped a replayed message (seq 0 after 0)"), w.stderr.join("\n"));
      assert.ok(w.stderr.some((l) => l === "kotara-worker: dropped a message: bad signature"));
      assert.ok(w.stderr.some((l) => l === "kotara-worker: dropped a message: expected 2 frames (body, mac), got 1"));
      assert.ok(w.stderr.some((l) => l.startsWith("kotara-worker: dropped a message: undecodable body: ")));
      assert.ok(w.stderr.some((l) => l.startsWith("kotara-worker: dropped a message: off-schema message: settings.0.temperatures.0: ")));
      assert.ok(w.running, "a forged shutdown does not stop it");

      // then the golden to-worker messages, as they are (seq 1..5: load, evaluate,
      // evaluate_resume, cancel, shutdown): accepted, and answered as the worker answers them
      for (const name of ["load", "evaluate", "evaluate_resume", "cancel", "shutdown"]) {
        assert.ok(ToWorker.safeParse(goldenJson(name)).success);
        await w.sendSigned(readFileSync(join(golden, `${name}.msgpack`)));
      }
      const loadError = await w.next("error");
      assert.equal(loadError.code, "not_found"); // "/models/distilgpt2" is no directory here
      assert.match(loadError.message, /\/models\/distilgpt2 not found/);
      for (const _ of [1, 2]) {
        const e = await w.next("error");
        assert.deepEqual([e.code, e.message], ["bad_request", "no models are loaded (send load first)"]);
      }
      await w.next("bye");
      assert.equal((await w.exit).code, 0);
      assert.equal(w.stderr.filter((l) => /dropped/.test(l)).length, 5, "no golden message was dropped");
      assert.deepEqual(w.problems, []);
    } finally {
      await w.close();
    }
  });
});

describe("one fake worker, request after request", () => {
  let w: RawWorker;
  before(async () => {
    w = await RawWorker.start({ KOTARA_FAKE_DELAY_MS: "20" });
  });
  after(() => w.close());

  test("cancel between batches: the finished windows, then cancelled; resuming from them gives the uninterrupted sums bit for bit", async () => {
    await w.send(load());
    await w.next("loaded");
    await w.send(evaluate("r1", { progress_every: 1, batch_size: 1 }));
    await w.next("progress");
    await w.send({ type: "cancel", request_id: "r1" });
    const cancelled = await w.next("error");
    assert.deepEqual([cancelled.request_id, cancelled.code, cancelled.message], ["r1", "cancelled", "cancelled by the controller"]);
    const progress = w.progress("r1");
    const last = progress.at(-1)!;
    assert.equal(w.messages[w.messages.indexOf(cancelled) - 1], last, "the finished windows come just before the error");
    assert.ok(last.sums.windows_done > 0 && last.sums.windows_done < last.windows_total);
    // each progress message lists the windows since the previous one; appended, they are the checkpoint
    const checkpoint = progress.reduce<Sums | null>((acc, p) => appendWindows(acc, p.sums), null)!;
    assert.equal(checkpoint.window_targets.length, last.sums.windows_done);
    await w.send(evaluate("r2", { resume: checkpoint, batch_size: 4 }));
    const resumed = await w.next("result");
    await w.send(evaluate("r3", { batch_size: 4 }));
    const fresh = await w.next("result");
    assert.deepEqual(resumed.sums, fresh.sums);
    assert.equal(resumed.sums.scored_tokens, N - 1);
    // resume sums that do not fit the request, or whose totals are not their windows' sums: bad_request
    await w.send(evaluate("r4", { resume: { ...fresh.sums, model_nll: [1] } }));
    const e = await w.next("error");
    assert.deepEqual([e.code, e.message.startsWith("resume sums do not match 2 models")], ["bad_request", true]);
    await w.send(evaluate("r5", { resume: { ...checkpoint, fusion_nll: checkpoint.fusion_nll.map((x) => x + 1) } }));
    const e5 = await w.next("error");
    assert.deepEqual([e5.code, e5.message.startsWith("resume sums do not add up")], ["bad_request", true]);
  });

  test("the worker's checks: context, BOS, settings, not UTF-8, too short, a missing model", async () => {
    await w.send({ ...load(), max_length: 100 });
    assert.match((await w.next("error")).message, /^model .*model-b has a context of 96 positions; max_length 100 needs 100$/);
    await w.send({ ...load(), models: [spec(modelA), spec(join(dir, "nope"))] });
    const nf = await w.next("error");
    assert.deepEqual([nf.code, nf.message], ["not_found", `model ${join(dir, "nope")} not found: looked for the local directory ${join(dir, "nope")}`]);
    await w.send({ ...load(), tokenizer: modelB });
    assert.deepEqual((await w.next("error")).code, "tokenizer_mismatch"); // 400 output rows, a 512-token tokenizer
    await w.send({ ...load(), models: [spec(modelB), spec(modelC)] });
    assert.deepEqual((await w.next("loaded")).tokenizer, { ref: modelB, vocab_size: 512, bos_token_id: null });
    const ask = async (extra: Record<string, unknown>) => {
      await w.send(evaluate("r", extra));
      return w.next("error");
    };
    assert.equal((await ask({ dataset: { path: text, max_length: 96, stride: 96, bos_per_window: true } })).code, "context");
    assert.equal((await ask({ dataset: { path: text, max_length: 32, stride: 32, bos_per_window: true } })).message,
      "dataset.bos_per_window is true but the tokenizer has no BOS token");
    assert.equal((await ask({ settings: [{ id: "x", type: "gap", temperatures: [1, 1, 1], betas: null, weights: null }] })).message, "setting x: needs one temperature per model (2)");
    assert.equal((await ask({ settings: [{ id: "m", type: "mix", temperatures: [1, 1], betas: null, weights: [1, 1, 1] }] })).message, "setting m: needs one weight per model (2)");
    const latin1 = join(dir, "latin1.txt");
    writeFileSync(latin1, Buffer.concat([Buffer.from("héllo ", "utf8"), Buffer.from([0xe9, 0x74])]));
    assert.equal((await ask({ dataset: { path: latin1, max_length: 32, stride: 32, bos_per_window: false } })).message,
      `dataset ${latin1} is not UTF-8 (first bad byte at offset 7)`);
    const one = join(dir, "one.txt");
    writeFileSync(one, "x");
    assert.equal((await ask({ dataset: { path: one, max_length: 32, stride: 32, bos_per_window: false } })).message,
      "the text has 1 token(s): at least 2 are needed to score anything");
    assert.deepEqual(w.problems, []);
  });
});

describe("the fake's fault injection", () => {
  test("KOTARA_FAKE_FAIL, _FAIL_AFTER, _PROTOCOL_VERSION, _DIE_AFTER, _DIE_SIGNAL, _HANG_AFTER, _RECORD; no key: exit 2", async () => {
    const record = join(dir, "record.jsonl");
    const start = (env: Record<string, string>, heartbeatS = 1) => RawWorker.start(env, heartbeatS);
    // started at once: each is a separate process
    const [failing, loadFails, dies, killed, hangs] = await Promise.all([
      start({ KOTARA_FAKE_FAIL: "evaluate:numerical", KOTARA_FAKE_FAIL_AFTER: "4", KOTARA_FAKE_PROTOCOL_VERSION: "7", KOTARA_FAKE_RECORD: record }),
      start({ KOTARA_FAKE_FAIL: "load:remote_code", KOTARA_FAKE_FAIL_MESSAGE: "needs custom code" }),
      start({ KOTARA_FAKE_DIE_AFTER: "3" }),
      start({ KOTARA_FAKE_DIE_AFTER: "0", KOTARA_FAKE_DIE_SIGNAL: "SIGKILL" }),
      start({ KOTARA_FAKE_HANG_AFTER: "2" }, 0.05),
    ]);
    try {
      assert.equal((failing.messages[0] as Extract<FromWorker, { type: "hello" }>).protocol_version, 7);
      await Promise.all([failing, dies, killed, hangs].map((w) => w.send(load())));
      await loadFails.send(load());
      const lf = await loadFails.next("error");
      assert.deepEqual([lf.request_id, lf.code, lf.message], [null, "remote_code", "needs custom code"]);

      for (const w of [failing, dies, killed, hangs]) {
        await w.next("loaded");
        await w.send(evaluate("r1", { batch_size: 1, progress_every: 1 }));
      }
      const num = await failing.next("error");
      assert.deepEqual(failing.progress("r1").map((m) => m.sums.windows_done), [1, 2, 3, 4], "progress up to FAIL_AFTER windows, then the error");
      assert.deepEqual([num.code, num.request_id], ["numerical", "r1"]);
      const recorded = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l));
      assert.deepEqual(recorded.map((m) => m.type), ["load", "evaluate"]);
      assert.equal(recorded[1].request_id, "r1");

      assert.deepEqual(await dies.exit, { code: 3, signal: null });
      assert.equal(dies.progress("r1").length, 3);
      assert.ok(dies.stderr.some((l) => /dies after 3 windows/.test(l)));
      assert.deepEqual(await killed.exit, { code: null, signal: "SIGKILL" });

      await hangs.until(() => hangs.stderr.some((l) => /goes silent after 2 windows/.test(l)), 10_000, "silence");
      const count = hangs.messages.length;
      await new Promise((r) => setTimeout(r, 400)); // 8 heartbeat periods
      assert.equal(hangs.messages.length, count, "nothing, not even a heartbeat");
      assert.ok(hangs.running, "still running");
      for (const w of [failing, loadFails, dies, killed, hangs]) assert.deepEqual(w.problems, []);
    } finally {
      await Promise.all([failing, loadFails, dies, killed, hangs].map((w) => w.close()));
    }
    // no session key on stdin: exit 2, as the worker does
    const r = spawnSync(FAKE_PYTHON, ["-m", "kotara_worker", "--endpoint", "ipc:///nonexistent"], { input: "not-hex\n", encoding: "utf8" });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /no session key on stdin/);
  });
});

describe("the canned numbers", () => {
  test("windows as windows.py plans them (checked against the Hugging Face loop), with BOS every token is scored", () => {
    for (const [n, L, S] of [[210, 32, 16], [210, 32, 32], [100, 64, 8], [2, 4, 4], [65, 64, 64], [1000, 17, 5]]) {
      const ws = planWindows(n, L, S, false);
      const hf = hfLoop(n, L, S);
      assert.equal(ws.length, hf.windows, `${n} ${L} ${S}`);
      assert.equal(ws.reduce((a, w) => a + w.end - w.firstScored, 0), hf.scored, `${n} ${L} ${S}`);
      const bos = planWindows(n, L, S, true);
      assert.equal(bos.reduce((a, w) => a + w.end - w.firstScored, 0), n, `${n} ${L} ${S} with BOS`);
    }
    assert.throws(() => planWindows(1, 8, 8), /at least 2 are needed/);
    assert.throws(() => planWindows(10, 8, 9), /stride \(9\) must be <= max_length \(8\)/);
  });
});
