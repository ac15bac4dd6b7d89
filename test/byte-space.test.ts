// Byte space on the controller's side (SPEC §7): the config keys, the metrics and the
// report. The numbers are checked against sums made here from per-byte probabilities,
// not against typed-in values; the worker's byte LM has its own tests (python/tests).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path, { join } from "node:path";
import { after, describe, test } from "node:test";
import { ConfigError } from "../src/errors.js";
import { buildMetrics } from "../src/metrics.js";
import { parseConfig, planRequest, type RunPlan } from "../src/plan.js";
import type { HelloMsg, LoadedMsg, ResultMsg } from "../src/protocol.js";
import { formatReport } from "../src/report.js";
import { PACKAGE_ROOT } from "../src/worker.js";
import { execa } from "execa";
import { KOTARA, PYTHON, alive, childPids, kotara, rng, tempDir, tinyModels, waitFor, windowedSums, writeFile } from "./helpers.js";

const root = mkdtempSync(path.join(tmpdir(), "kotara-bytes-"));
after(() => rmSync(root, { recursive: true, force: true }));
const TEXT = "Grüße aus Köln — a text with a few words.\n".repeat(4);
const textFile = path.join(root, "t.txt");
writeFileSync(textFile, TEXT);
const BYTES = Buffer.byteLength(TEXT);
const WORDS = TEXT.split(/\s+/).filter(Boolean).length;

const base = { models: [{ ref: "org/a" }, { ref: "org/b" }], dataset: { path: textFile, max_length: 64, stride: 64 }, strategies: ["entropy", "poe"] };
const plan = (extra: Record<string, unknown> = {}): RunPlan => parseConfig({ ...base, ...extra }, root);
function problems(extra: Record<string, unknown>): string[] {
  try {
    plan(extra);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.lines;
  }
  assert.fail("accepted");
}

describe("config", () => {
  test("space defaults to auto; bytes to the defaults; both are in the plan", () => {
    const p = plan();
    assert.equal(p.space, "auto");
    assert.deepEqual(p.bytes, { beam: 8, prune: 0 });
    assert.deepEqual(plan({ space: "bytes", bytes: { beam: 2, prune: 0.25 } }).bytes, { beam: 2, prune: 0.25 });
    assert.deepEqual(plan({ bytes: { beam: 3 } }).bytes, { beam: 3, prune: 0 });
  });
  test("bad values name the field", () => {
    assert.deepEqual(problems({ space: "words" }), ['space: must be one of: tokens, bytes, auto, got "words"']);
    assert.deepEqual(problems({ bytes: { beam: 0 } }), ["bytes.beam: must be a positive integer, got 0"]);
    assert.deepEqual(problems({ bytes: { beam: 2.5 } }), ["bytes.beam: must be an integer, got 2.5"]);
    assert.deepEqual(problems({ bytes: { prune: 1 } }), ["bytes.prune: must be in [0, 1), got 1 (1 would prune everything but the best)"]);
    assert.deepEqual(problems({ bytes: { prune: -0.1 } }), ["bytes.prune: must be in [0, 1), got -0.1"]);
    assert.deepEqual(problems({ bytes: { K: 4 } }), ["bytes.K: unknown key; allowed: beam, prune"]);
  });
});


/** A byte-space result: per scored byte, each model's and each fusion's probability of it. */
function byteResult(p: RunPlan, pruned: number[]) {
  const rand = rng(3);
  const n = BYTES; // S = L: every byte scored (the start token is the first byte's context)
  const probs = (k: number) => Array.from({ length: k }, () => Array.from({ length: n }, () => 0.05 + 0.9 * rand()));
  const modelP = probs(2);
  const fusionP = probs(p.settings.length);
  const nlls = (ps: number[]) => ps.map((x) => -Math.log(x));
  const sizes = Array.from({ length: Math.ceil(BYTES / 64) }, (_, w) => Math.min(64, BYTES - 64 * w)); // windows of 64 bytes
  const result: ResultMsg = {
    seq: 5, type: "result", request_id: "r1", space: "bytes", tokens: BYTES, windows: sizes.length,
    sums: windowedSums({ modelNll: modelP.map(nlls), fusionNll: fusionP.map(nlls), sizes, bytes: sizes, fusionWeights: p.settings.map(() => [n / 2, n / 2]) }),
    byte_stats: pruned.map((k) => ({ pruned: k, pruned_positions: Math.min(k, 3), max_pruned_share: k ? 1.5e-6 : 0, max_hypotheses: 8 })),
    seconds: 2, tokenize_seconds: 0.1, peak_memory_bytes: 1, device: "cpu", dtype: "float32",
  };
  return { result, modelP, fusionP, n };
}

const hello: HelloMsg = { seq: 0, type: "hello", protocol_version: 2, worker_version: "x", pid: 1, python: "3.11", torch: "2.13", transformers: "5", cuda_devices: 0 };
const loaded = (p: RunPlan): LoadedMsg => ({
  seq: 1, type: "loaded", seconds: 1, space: "bytes", space_reason: "the vocabularies of org/a and org/b differ",
  tokenizer: { ref: "org/a", vocab_size: 512, bos_token_id: 0 },
  models: p.models.map((m) => ({ ref: m.ref, device: "cpu", dtype: "float32", parameters: 1, vocab_size: 512, max_positions: 128, head_path: "scored" as const, tokenizer: m.ref })),
});

describe("metrics and report in byte space", () => {
  const p = plan({ space: "bytes" });
  const { result, modelP, fusionP, n } = byteResult(p, [0, 12]);
  const metrics = buildMetrics({ models: p.models, request: planRequest(p), result, loaded: loaded(p), hello, seconds: 3, version: "v", bytes: p.bytes });

  test("nll per byte, bits per byte, byte perplexity = ppl, word perplexity, scored bytes", () => {
    assert.equal(metrics.space, "bytes");
    assert.equal(metrics.dataset.scored_bytes, n);
    const check = (got: { nll: number; ppl: number; bits_per_byte: number; word_perplexity: number; byte_perplexity?: number }, ps: number[]) => {
      // independent: log2 of each probability, summed
      const bits = ps.reduce((a, x) => a - Math.log2(x), 0);
      assert.ok(Math.abs(got.bits_per_byte - bits / BYTES) <= 1e-12 * (bits / BYTES));
      assert.ok(Math.abs(got.nll - (bits * Math.LN2) / n) <= 1e-12 * got.nll);
      assert.equal(got.byte_perplexity, got.ppl);
      assert.ok(Math.abs(Math.log(got.ppl) - got.nll) <= 1e-12 * got.nll);
      assert.ok(Math.abs(Math.log(got.word_perplexity) - (bits * Math.LN2) / WORDS) <= 1e-12 * Math.log(got.word_perplexity));
    };
    metrics.models.forEach((m, i) => check(m, modelP[i]));
    metrics.fusions.forEach((f, j) => check(f, fusionP[j]));
  });

  test("the beam's report: options and per-model stats", () => {
    assert.deepEqual(metrics.bytes, {
      beam: 8, prune: 0, windows_counted: result.windows, windows_resumed: 0,
      models: [
        { ref: "org/a", pruned: 0, pruned_positions: 0, max_pruned_share: 0, max_hypotheses: 8 },
        { ref: "org/b", pruned: 12, pruned_positions: 3, max_pruned_share: 1.5e-6, max_hypotheses: 8 },
      ],
    });
  });

  test("the report leads with bits per byte, names the space and says which beam pruned", () => {
    const text = formatReport(metrics);
    const lines = text.split("\n");
    assert.match(lines[0], new RegExp(`byte space \\(beam 8\\): ${BYTES} bytes scored in \\d+ windows of 64 bytes, stride 64$`));
    assert.match(lines[1], / bytes\/s\) · /);
    assert.match(text, /^\s+bits\/byte\s+byte PPL\s+word PPL$/m);
    assert.match(text, /^\s+#\s+bits\/byte\s+Δ vs best model\s+95% CI\s+byte PPL/m);
    const best = Math.min(...metrics.models.map((m) => m.bits_per_byte));
    const top = metrics.fusions.find((f) => f.id === metrics.best!.id)!;
    const d = top.bits_per_byte - best;
    assert.ok(text.includes(`${top.bits_per_byte.toFixed(4)} bits/byte, ${Math.abs(d).toFixed(4)} bits/byte ${d < 0 ? "below" : "above"} the best single model`));
    assert.match(text, /org\/a: exact \(nothing pruned/);
    assert.match(text, /org\/b: pruned at 3 bytes, the largest pruned share 1\.5e-6 of a byte's mass/);
    assert.match(text, /a larger bytes\.beam makes it exact/);
    assert.doesNotMatch(text, /before its checkpoint/);
  });

  test("after a resume the beam's stats say which windows they cover", () => {
    const resumed = buildMetrics({ models: p.models, request: planRequest(p), result, loaded: loaded(p), hello, seconds: 3, version: "v", bytes: p.bytes, resumedWindows: 1 });
    assert.deepEqual([resumed.bytes!.windows_counted, resumed.bytes!.windows_resumed], [result.windows - 1, 1]);
    assert.match(formatReport(resumed), new RegExp(`\\(over the ${result.windows - 1} windows this run scored; the 1 before its checkpoint are not counted\\)`));
  });

  test("a byte-space result without beam stats is a bug, not numbers", () => {
    const bad = { ...result, byte_stats: null };
    assert.throws(() => buildMetrics({ models: p.models, request: planRequest(p), result: bad, loaded: loaded(p), hello, seconds: 1, version: "v", bytes: p.bytes }), /one beam report per model/);
  });
});

describe("end to end: two tiny models with different tokenizers, through the CLI and the real worker", () => {
  test("each model's byte NLL and the average fusion equal a brute-force enumeration of every tokenization", async () => {
    const models = tinyModels();
    const dir = tempDir();
    const text = "The cat sees."; // 13 bytes: few enough covers to enumerate them all
    const file = writeFile(dir, "t.txt", text);
    const cfg = writeFile(dir, "c.yaml", [
      "space: auto", "bytes: { beam: 100000, prune: 0 }",
      "models:", `  - { ref: ${join(models, "gpt2-a")}, dtype: float32 }`, `  - { ref: ${join(models, "gpt2-othertok")}, dtype: float32 }`,
      `dataset: { path: ${file}, max_length: 64, stride: 64 }`, "strategies: [average]", `output: { metrics: ${join(dir, "m.json")} }`,
    ].join("\n"));
    const r = await kotara(["run", cfg, "--quiet"]);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = JSON.parse(readFileSync(join(dir, "m.json"), "utf8"));
    assert.equal(m.space, "bytes");
    assert.equal(m.dataset.scored_bytes, Buffer.byteLength(text), "S = L: every byte is scored, the start token the first one's context");
    assert.ok(m.bytes.models.every((s: { pruned: number }) => s.pruned === 0), "a beam this wide holds every cover");
    // The reference: python/tests/byte_reference.py enumerates every cover of every prefix
    // with one full forward per token sequence (no beam, no KV cache, no trie).
    const script = `
import json, sys, torch
sys.path.insert(0, "python/tests"); sys.path.insert(0, "python")
from transformers import AutoModelForCausalLM, AutoTokenizer
from byte_reference import reference_rows
from kotara_worker.token_bytes import token_bytes, start_token
x = open(sys.argv[3], "rb").read()
rows = []
for ref in sys.argv[1:3]:
    tok = AutoTokenizer.from_pretrained(ref); model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    table = token_bytes(tok, model.get_output_embeddings().weight.shape[0])
    rows.append(reference_rows(model, table, start_token(tok), x, 0)[0])
t = torch.tensor(list(x))
nll = [float(-r[torch.arange(len(x)), t].sum()) for r in rows]
fused = torch.log_softmax((rows[0] + rows[1]) / 2, -1)   # SPEC §3 average over the 257 outcomes
print(json.dumps({"models": nll, "average": float(-fused[torch.arange(len(x)), t].sum())}))
`;
    const ref = JSON.parse(execFileSync(PYTHON, ["-c", script, join(models, "gpt2-a"), join(models, "gpt2-othertok"), file], { cwd: PACKAGE_ROOT, encoding: "utf8" }).trim().split("\n").pop()!);
    // Tolerance: both sides take float32 logits from the same weights, by different kernels
    // (a batched, KV-cached forward vs one full forward per sequence): |Δ logit| ≲ 1e-6 at
    // the tiny models' logit sizes, log-softmax is 2-Lipschitz in the sup norm, so each
    // byte's NLL moves ≲ 2e-6 and 13 bytes ≲ 3e-5 on totals of ~30-60 nats: ≤ 1e-6 relative.
    // Everything after the logits is float64 on both sides. Allowed: 1e-5 relative.
    const n = m.dataset.scored_bytes;
    ref.models.forEach((want: number, i: number) => {
      const got = m.models[i].nll * n;
      assert.ok(Math.abs(got - want) <= 1e-5 * want, `model ${i}: ${got} vs the enumeration's ${want}`);
    });
    const got = m.fusions[0].nll * n;
    assert.ok(Math.abs(got - ref.average) <= 1e-5 * ref.average, `average: ${got} vs ${ref.average}`);
  });
});

describe("byte space through the CLI: a sweep with its heatmap, Ctrl-C, --resume", () => {
  test("an interrupted run resumes to the uninterrupted numbers; the heatmap shows each fusion's bits per byte", async () => {
    const models = tinyModels();
    const dir = tempDir();
    // 120 windows of 48 bytes (the tiny models' whole text), K = 1 (the fastest beam: the
    // resume logic is the same at every K), two models with different tokenizers
    const cfg = (name: string) => writeFile(dir, `${name}.yaml`, [
      "space: auto", "bytes: { beam: 1 }",
      "models:", `  - { ref: ${join(models, "gpt2-a")}, device: cpu }`, `  - { ref: ${join(models, "gpt2-othertok")}, device: cpu }`,
      `dataset: { path: ${join(models, "text.txt")}, max_length: 48, stride: 48 }`, "strategies: [average, entropy]",
      "sweep: { strategies: [average, gap], temperatures: [[0.8, 1.0], [1.0, 1.25]] }",
      "runtime: { batch_size: 2, checkpoint_every: 4 }", `output: { metrics: ${join(dir, `${name}.json`)} }`,
    ].join("\n"));
    const child = execa(process.execPath, [KOTARA, "run", cfg("cut")], { reject: false, all: true });
    const checkpoint = join(dir, "cut.json.checkpoint.json");
    await waitFor(() => existsSync(checkpoint), 60_000, "a first checkpoint");
    const [workerPid] = childPids(child.pid!);
    child.kill("SIGINT");
    const r = await child;
    assert.equal(r.exitCode, 130, r.all);
    assert.match(r.all!, /saved \d+\/120 windows to .*cut\.json\.checkpoint\.json/);
    if (workerPid) assert.ok(!alive(workerPid), "no worker left behind");
    const saved = JSON.parse(readFileSync(checkpoint, "utf8"));
    assert.ok(saved.sums.windows_done > 0 && saved.sums.windows_done < 120, `a mid-run checkpoint: ${saved.sums.windows_done} windows`);

    const resumed = await kotara(["run", cfg("cut"), "--resume"]);
    assert.equal(resumed.exitCode, 0, resumed.stderr);
    assert.match(resumed.stderr, new RegExp(`resuming from .*: ${saved.sums.windows_done}/120 windows done`));
    const fresh = await kotara(["run", cfg("fresh"), "--quiet"]);
    assert.equal(fresh.exitCode, 0, fresh.stderr);
    const a = JSON.parse(readFileSync(join(dir, "cut.json"), "utf8"));
    const b = JSON.parse(readFileSync(join(dir, "fresh.json"), "utf8"));
    assert.equal(a.space, "bytes");
    // every window's sums are added in window order either way, and a batch's windows are
    // grouped by absolute index (so a resumed run batches as the uninterrupted one): equal to the bit
    assert.deepEqual(a.models.map((m: any) => m.bits_per_byte), b.models.map((m: any) => m.bits_per_byte));
    assert.deepEqual(a.fusions.map((f: any) => [f.id, f.bits_per_byte, f.weights_mean]), b.fusions.map((f: any) => [f.id, f.bits_per_byte, f.weights_mean]));
    assert.equal(a.dataset.scored_bytes, Buffer.byteLength(readFileSync(join(models, "text.txt"))));
    assert.deepEqual([a.bytes.windows_resumed, a.bytes.windows_counted], [saved.sums.windows_done, 120 - saved.sums.windows_done]);
    assert.deepEqual([b.bytes.windows_resumed, b.bytes.windows_counted], [0, 120]);
    assert.match(resumed.stdout, /before its checkpoint are not counted/);

    // the heatmap, on the console and in the SVG: each cell is its fusion's bits per byte
    assert.match(resumed.stdout, /bits\/byte by temperature \(rows: T of gpt2-a; columns: T of gpt2-othertok/);
    const svg = readFileSync(join(dir, "fresh.heatmap.svg"), "utf8");
    // the grid's cells (a setting the config names too, "average" at T = 1, 1, is run once, under its own id)
    const cells = b.fusions.filter((f: any) => ["average", "gap"].includes(f.strategy.type) &&
      [0.8, 1].includes(f.strategy.temperatures[0]) && [1, 1.25].includes(f.strategy.temperatures[1]));
    assert.equal(cells.length, 8, "2 strategies × 2 × 2 temperatures");
    for (const f of cells) {
      const cell = `<title>${f.id}: bits/byte ${f.bits_per_byte.toFixed(4)}</title>`;
      assert.ok(svg.includes(cell), `the SVG has ${cell}`);
      assert.ok(resumed.stdout.includes(f.bits_per_byte.toFixed(4)), `the console heatmap shows ${f.id}'s ${f.bits_per_byte.toFixed(4)}`);
    }
  });
});
