// The controller's own logic on the fake worker (test/fake-worker/): no torch, no model.
// The fake's numbers are closed forms (test/fake-worker/canned.ts), restated here, so
// what the controller makes of the sums — PPL, bits per byte, word perplexity, weights,
// ranking, dedupe, the CSV and the heatmap, checkpoints after a failure, the exit codes
// of worker-reported errors, an abort — is checked against an independent computation.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { openSession } from "../src/index.js";
import { FAKE_PYTHON, kotara, tempDir, writeFile } from "./helpers.js";

let work: string;
let a: string;
let b: string;
let text: string;
const TEXT = "Ünïcödé prose — for the fake worker.\nIt has several lines,\tand some words 日本語.\n".repeat(8);
const BYTES = Buffer.byteLength(TEXT);
const WORDS = TEXT.split(/\s+/).filter(Boolean).length;
const LN2 = Math.log(2);

before(() => {
  work = tempDir("kotara-controller-");
  a = join(work, "model-a");
  b = join(work, "model-b");
  for (const m of [a, b]) {
    mkdirSync(m);
    writeFileSync(join(m, "config.json"), JSON.stringify({ vocab_size: 400, n_positions: 128, bos_token_id: 0 }));
  }
  text = writeFile(work, "text.txt", TEXT);
});

// ---- the fake's closed forms, restated (see canned.ts) ----
const BASE: Record<string, number> = { average: 18, poe: 18, entropy: 17, gap: 19 };
function fakeFusionPpl(type: string, t: number[], betas: number[] | null): number {
  const M = t.length;
  const temp = t.reduce((acc, x, m) => acc + (x - (1 + 0.1 * m)) ** 2, 0);
  const nb = type === "poe" && betas ? betas.map((x) => x / betas.reduce((p, q) => p + q, 0)) : null;
  return BASE[type] * (1 + temp) * (1 + (nb ? nb.reduce((acc, x) => acc + (x - 1 / M) ** 2, 0) : 0));
}
function fakeWeights(type: string, t: number[], betas: number[] | null): number[] {
  if (type === "average") return t.map(() => 1 / t.length);
  if (type === "poe") return betas ? betas.map((x) => x / betas.reduce((p, q) => p + q, 0)) : t.map(() => 1 / t.length);
  const inv = t.map((x) => 1 / x);
  return inv.map((x) => x / inv.reduce((p, q) => p + q, 0));
}
/** Windows of the Hugging Face loop over n "tokens" (the fake's are bytes). */
function hfWindows(n: number, L: number, S: number): number {
  let prevEnd = 0;
  let windows = 0;
  for (let begin = 0; begin < n; begin += S) {
    const end = Math.min(begin + L, n);
    if (Math.min(end - prevEnd, end - begin - 1) > 0) windows++;
    prevEnd = end;
    if (end === n) break;
  }
  return windows;
}
const close = (x: number, y: number, what: string, rel = 1e-12) => assert.ok(Math.abs(x - y) <= rel * Math.abs(y), `${what}: ${x} vs ${y}`);

const config = (extra: string) =>
  `models:\n  - { ref: ${a}, device: cpu }\n  - { ref: ${b}, device: cpu }\n` +
  `dataset: { path: ${text}, max_length: 64, stride: 32 }\n` + extra;

test("a run with a sweep: metrics, ranking, dedupe, CSV and heatmap agree with the fake's closed forms", async () => {
  const cfg = writeFile(work, "sweep.yaml", config(
    "strategies: [entropy, { type: poe, betas: [0.8, 0.2] }]\n" +
    "sweep: { strategies: [entropy, gap], temperatures: [[0.9, 1, 1.1], [1, 1.1, 1.2]] }\n"));
  const out = join(work, "sweep.json");
  const record = join(work, "sweep.jsonl");
  const r = await kotara(["run", cfg, "--metrics", out], { env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_RECORD: record } });
  assert.equal(r.exitCode, 0, r.stderr);
  const m = JSON.parse(readFileSync(out, "utf8"));

  // what the worker was asked: entropy at T = (1, 1) once, though both the list and the sweep name it
  const sent = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l)).find((x) => x.type === "evaluate");
  assert.equal(sent.settings.length, 2 + 2 * 3 * 3 - 1);
  assert.equal(new Set(sent.settings.map((s: any) => JSON.stringify([s.type, s.temperatures, s.betas]))).size, sent.settings.length);
  assert.deepEqual(sent.settings.slice(0, 2).map((s: any) => [s.id === "entropy", s.type]), [[true, "entropy"], [false, "poe"]], "the list first, then the sweep");
  assert.match(r.stderr, /note: "entropy@t=1,1" is the same setting as "entropy"/);

  const scored = BYTES - 1; // stride < max_length: every byte after the first, once
  assert.deepEqual(
    [m.dataset.bytes, m.dataset.words, m.dataset.tokens, m.dataset.scored_tokens, m.dataset.windows],
    [BYTES, WORDS, BYTES, scored, hfWindows(BYTES, 64, 32)],
  );
  const check = (row: any, ppl: number, what: string) => {
    const nll = Math.log(ppl);
    close(row.ppl, ppl, `${what} ppl`);
    close(row.nll, nll, `${what} nll`);
    close(row.bits_per_byte, (nll * scored) / (LN2 * BYTES), `${what} bits/byte`);
    close(row.word_perplexity, Math.exp((nll * scored) / WORDS), `${what} word ppl`, 1e-9);
  };
  check(m.models[0], 20, "model a");
  check(m.models[1], 25, "model b");
  assert.equal(m.fusions.length, sent.settings.length);
  for (const f of m.fusions) {
    check(f, fakeFusionPpl(f.strategy.type, f.strategy.temperatures, f.strategy.betas), f.id);
    fakeWeights(f.strategy.type, f.strategy.temperatures, f.strategy.betas).forEach((w, i) => close(f.weights_mean[i], w, `${f.id} α${i}`));
  }
  // ranking: by PPL; the best is entropy at the fake's optimum T = (1, 1.1), PPL 17
  const byPpl = [...m.fusions].sort((x: any, y: any) => x.ppl - y.ppl).map((f: any) => f.id);
  assert.deepEqual(m.ranked.map((x: any) => x.id), byPpl);
  assert.equal(m.best.id, "entropy@t=1,1.1");
  for (const x of m.ranked) close(x.delta_vs_best_model_pct, (100 * (x.ppl - 20)) / 20, `${x.id} Δ`, 1e-9);
  assert.match(r.stdout, /^Best: entropy@t=1,1\.1, PPL 17\.00/m);

  // against the best model (a, PPL 20): the differences from the closed forms; the paired
  // intervals over windows hold them, narrowly (every window has the same NLL per token; a
  // window's bytes are its scored tokens, but for the first, which also has token 0)
  assert.equal(m.bootstrap.best_model, a);
  assert.equal(m.bootstrap.windows, m.dataset.windows);
  assert.equal(m.bootstrap.block_length, Math.ceil(Math.cbrt(m.dataset.windows) - 1e-9));
  for (const f of m.fusions) {
    const v = f.vs_best_model;
    const dNll = (Math.log(fakeFusionPpl(f.strategy.type, f.strategy.temperatures, f.strategy.betas)) - Math.log(20)) * scored;
    close(v.delta_bits_per_byte, dNll / (LN2 * BYTES), `${f.id} Δ bits/byte`, 1e-9);
    close(v.ppl_ratio, f.ppl / 20, `${f.id} PPL ratio`, 1e-9);
    const tol = 1e-12 * Math.abs(v.delta_bits_per_byte);
    assert.ok(v.ci95[0] - tol <= v.delta_bits_per_byte && v.delta_bits_per_byte <= v.ci95[1] + tol, `${f.id}: ${v.delta_bits_per_byte} in ${v.ci95}`);
    assert.ok(Math.abs(v.ci95[1] - v.ci95[0]) <= 0.05 * Math.abs(v.delta_bits_per_byte), `${f.id}: ${v.ci95}`);
    assert.equal(v.excludes_zero, true, f.id);
  }
  assert.match(r.stdout, /95% CI vs .*model-a: paired block bootstrap over \d+ windows \(blocks of \d+\), 2,000 resamples, seed 0/);

  // the CSV next to the metrics: one row per fusion, its PPL at full precision
  const csv = readFileSync(join(work, "sweep.csv"), "utf8").trimEnd().split("\n");
  const header = csv[0].split(",");
  assert.equal(csv.length, 1 + m.fusions.length);
  const [idCol, pplCol] = [header.indexOf("id"), header.indexOf("ppl")];
  const csvPpl = Object.fromEntries(csv.slice(1).map((l) => l.split(",")).map((c) => [c[idCol], Number(c[pplCol])]));
  for (const f of m.fusions) if (!f.id.includes(",")) assert.equal(csvPpl[f.id], f.ppl, f.id);
  // the heatmap: an SVG next to it, and in the report one best cell per panel (entropy 17, gap 19)
  assert.ok(existsSync(join(work, "sweep.heatmap.svg")));
  assert.match(r.stdout, /PPL by temperature/);
  assert.ok(r.stdout.includes("17.00*") && r.stdout.includes("19.00*"), r.stdout);
});

test("a worker-reported error mid-run: exit 1, the finished windows kept; --resume continues to the uninterrupted numbers", async () => {
  const cfg = writeFile(work, "fails.yaml", config("strategies: [gap]\nruntime: { batch_size: 4, checkpoint_every: 8 }\n"));
  const out = join(work, "fails.json");
  const checkpoint = `${out}.checkpoint.json`;
  const r = await kotara(["run", cfg, "--metrics", out], {
    env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_FAIL: "evaluate:numerical", KOTARA_FAKE_FAIL_AFTER: "20", KOTARA_FAKE_FAIL_MESSAGE: "NaN or infinite logits in window 20" },
  });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /NaN or infinite logits in window 20/);
  const total = hfWindows(BYTES, 64, 32);
  assert.match(r.stderr, new RegExp(`the run failed after 20/${total} windows; they are saved in .*fails\\.json\\.checkpoint\\.json`));
  assert.ok(existsSync(checkpoint) && !existsSync(out));
  assert.doesNotMatch(r.stderr, /Traceback|at .*\.js:\d+/);

  // the checkpoint lists every finished window (progress messages carry only their newest ones)
  const saved = JSON.parse(readFileSync(checkpoint, "utf8")).sums;
  assert.deepEqual([saved.window_first, saved.window_targets.length, saved.window_fusion_nll[0].length], [0, 20, 20]);
  const record = join(work, "fails.jsonl");
  const resumed = await kotara(["run", cfg, "--metrics", out, "--resume"], { env: { KOTARA_PYTHON: FAKE_PYTHON, KOTARA_FAKE_RECORD: record } });
  assert.equal(resumed.exitCode, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`resuming from .*: 20/${total} windows done`));
  const sent = readFileSync(record, "utf8").trim().split("\n").map((l) => JSON.parse(l)).find((x) => x.type === "evaluate");
  assert.equal(sent.resume.windows_done, 20);
  assert.ok(!existsSync(checkpoint), "the checkpoint is removed once the run is complete");
  const m = JSON.parse(readFileSync(out, "utf8"));
  assert.equal(m.dataset.scored_tokens, BYTES - 1);
  close(m.models[0].ppl, 20, "model a");
  close(m.fusions[0].ppl, 19 * (1 + 0.01), "gap at T = (1, 1)");
  // the same numbers as a run that never stopped, the intervals too
  const whole = join(work, "whole.json");
  assert.equal((await kotara(["run", cfg, "--metrics", whole, "--quiet"], { env: { KOTARA_PYTHON: FAKE_PYTHON } })).exitCode, 0);
  assert.deepEqual(m.fusions, JSON.parse(readFileSync(whole, "utf8")).fusions);
});

test("session API: worker errors carry their exit codes, a death its stderr; an abort stops at a batch, and resuming from the last progress gives the uninterrupted sums", async () => {
  const open = (env: Record<string, string>) => openSession({ models: [a, b], python: FAKE_PYTHON, env });
  const dataset = { path: text, max_length: 64, stride: 32 };
  // a worker-reported error at load (exit 2) and in an evaluation (internal: exit 1, with the detail); a worker that dies
  const [loadFails, evalFails, dies, ok] = await Promise.allSettled([
    open({ KOTARA_FAKE_FAIL: "load:remote_code" }),
    open({ KOTARA_FAKE_FAIL: "evaluate:internal" }),
    open({ KOTARA_FAKE_DIE_AFTER: "8" }),
    open({ KOTARA_FAKE_DELAY_MS: "50" }), // 11 batches of 50 ms: time for the abort to land mid-run
  ]);
  assert.equal(loadFails.status, "rejected");
  assert.equal((loadFails as PromiseRejectedResult).reason.exitCode, 2);
  assert.match(String((loadFails as PromiseRejectedResult).reason.message), /KOTARA_FAKE_FAIL=load:remote_code/);
  const sessions = [evalFails, dies, ok].map((s) => (s as PromiseFulfilledResult<Awaited<ReturnType<typeof openSession>>>).value);
  try {
    await assert.rejects(sessions[0].evaluate({ dataset, strategies: ["entropy"] }), (e: any) => e.exitCode === 1 && /Traceback/.test(e.detail));
    await assert.rejects(sessions[1].evaluate({ dataset, strategies: ["entropy"], batchSize: 4 }), (e: any) =>
      e.exitCode === 1 && /the worker died: it exited with code 3 while evaluating/.test(e.message) && /dies after 8 windows/.test(e.message));

    const s = sessions[2];
    const abort = new AbortController();
    let last: any = null;
    await assert.rejects(
      s.evaluate({ dataset, strategies: ["entropy", "gap"], batchSize: 2, signal: abort.signal, onProgress: (p) => ((last = p), abort.abort()) }),
      (e: any) => e.exitCode === 130,
    );
    assert.ok(last.sums.windows_done >= 2 && last.sums.windows_done < last.windows_total, JSON.stringify(last.sums));
    // the hook sees every window so far, though each progress message carries only its newest
    assert.deepEqual([last.sums.window_first, last.sums.window_targets.length], [0, last.sums.windows_done]);
    // the same worker keeps serving: resume from the last progress, and a fresh pass
    const resumed = await s.evaluate({ dataset, strategies: ["entropy", "gap"], batchSize: 2, resume: last.sums });
    const fresh = await s.evaluate({ dataset, strategies: ["entropy", "gap"], batchSize: 2 });
    assert.deepEqual(resumed.result.sums, fresh.result.sums);
    assert.deepEqual(resumed.metrics.fusions, fresh.metrics.fusions); // PPLs and the paired intervals
    close(fresh.metrics.fusions[0].ppl, 17 * 1.01, "entropy");
  } finally {
    await Promise.all(sessions.map((x) => x?.close()));
  }
});
