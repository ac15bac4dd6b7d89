// Metrics, the console report and the output files (src/report.ts, src/heatmap.ts).
// The numbers are checked against an independent computation from per-token
// probabilities, not against typed-in values.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { datasetStats } from "../src/dataset.js";
import { heatmapPanels, heatmapSvg, heatmapText } from "../src/heatmap.js";
import type { HelloMsg, LoadedMsg, ResultMsg } from "../src/protocol.js";
import { type Metrics, buildMetrics } from "../src/metrics.js";
import { CSV_COLUMNS, toCsv, writeJsonAtomic, writeRunOutputs } from "../src/outputs.js";
import { type RunPlan, parseConfig, planRequest } from "../src/plan.js";
import { formatReport } from "../src/report.js";
import { rng, windowedSums } from "./helpers.js";

const root = mkdtempSync(path.join(tmpdir(), "kotara-report-"));
after(() => rmSync(root, { recursive: true, force: true }));

const TEXT = "Ünïcödé prose — for the fusion test.\nIt has several lines,\tand some words 日本語.\n".repeat(3);
const textFile = path.join(root, "text.txt");
writeFileSync(textFile, TEXT);
const BYTES = new TextEncoder().encode(TEXT).length;
const WORDS = TEXT.split(" ").flatMap((s) => s.split("\n")).flatMap((s) => s.split("\t")).filter((s) => s !== "").length;


interface Truth {
  /** Per model, per scored token: the probability of the target. */
  modelP: number[][];
  /** Per fusion, per scored token. */
  fusionP: number[][];
  /** Per fusion, per scored token, per model: α. */
  alpha: number[][][];
}

const SCORED = 120;

/** Per-token probabilities and weights, and the worker's sums of them. */
function simulate(plan: RunPlan, seed = 7, better: Record<string, number> = {}): { truth: Truth; result: ResultMsg } {
  const rand = rng(seed);
  const nM = plan.models.length;
  const modelP = plan.models.map((_, m) => Array.from({ length: SCORED }, () => 0.02 + 0.5 * rand() * (m === 0 ? 1 : 0.8)));
  const fusionP = plan.settings.map((s) =>
    Array.from({ length: SCORED }, () => Math.min(0.99, (0.02 + 0.5 * rand()) * (better[s.id] ?? 1))),
  );
  const alpha = plan.settings.map(() =>
    Array.from({ length: SCORED }, () => {
      const raw = Array.from({ length: nM }, () => rand() + 0.01);
      const sum = raw.reduce((a, b) => a + b, 0);
      return raw.map((x) => x / sum);
    }),
  );
  const nlls = (ps: number[]) => ps.map((p) => -Math.log(p));
  const third = Math.floor(BYTES / 3);
  const sums = windowedSums({
    modelNll: modelP.map(nlls), fusionNll: fusionP.map(nlls), sizes: [40, 40, 40], bytes: [third, third, BYTES - 2 * third],
    fusionWeights: alpha.map((perPos) => Array.from({ length: nM }, (_, m) => perPos.reduce((acc, a) => acc + a[m], 0))),
  });
  const result: ResultMsg = {
    seq: 9,
    type: "result",
    request_id: "r1",
    space: "tokens",
    byte_stats: null,
    tokenize_seconds: 0.1,
    tokens: SCORED + 1,
    windows: 3,
    sums,
    seconds: 2.5,
    peak_memory_bytes: 1 << 20,
    device: "cpu",
    dtype: "float32",
  };
  return { truth: { modelP, fusionP, alpha }, result };
}

const hello: HelloMsg = {
  seq: 0, type: "hello", protocol_version: 1, worker_version: "0.1.0", pid: 42, python: "3.11.9", torch: "2.4.0", transformers: "4.44.0", cuda_devices: 0,
};
function loadedFor(plan: RunPlan): LoadedMsg {
  return {
    seq: 1, type: "loaded", seconds: 1.25, space: "tokens", space_reason: "every vocabulary agrees",
    models: plan.models.map((m) => ({ ref: m.ref, device: "cpu", dtype: "float32", parameters: 1000, vocab_size: 512, max_positions: 1024, head_path: "scored" as const, tokenizer: plan.models[0].ref })),
    tokenizer: { ref: plan.models[0].ref, vocab_size: 512, bos_token_id: 0 },
  };
}

function planOf(config: Record<string, unknown>): RunPlan {
  return parseConfig({ dataset: { path: textFile, max_length: 64, stride: 32 }, ...config }, root, { checkFiles: true });
}

const TWO = [{ ref: "org/model-a" }, { ref: "org/model-b" }];
const SWEEP_PLAN = () =>
  planOf({
    models: TWO,
    strategies: [{ type: "poe", betas: [0.8, 0.2] }],
    sweep: { strategies: ["entropy", "gap"], temperatures: [[0.9, 1, 1.1], [0.8, 1, 1.2]] },
  });

function metricsOf(plan: RunPlan, seed = 7, better: Record<string, number> = {}) {
  const { truth, result } = simulate(plan, seed, better);
  const metrics = buildMetrics({ models: plan.models, request: planRequest(plan), result, loaded: loadedFor(plan), hello, seconds: 4, version: "9.9.9" });
  return { truth, result, metrics };
}

/** |a − b| ≤ 1e-12 relative. */
function close(a: number, b: number, what: string): void {
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
}

/** The independent computation: products of probabilities and log2. */
function expected(ps: number[]) {
  let ppl = 1;
  let wordPpl = 1;
  let bits = 0;
  for (const p of ps) {
    ppl *= Math.pow(1 / p, 1 / ps.length);
    wordPpl *= Math.pow(1 / p, 1 / WORDS);
    bits += -Math.log2(p);
  }
  const nll = ps.reduce((acc, p) => acc + Math.log(1 / p), 0) / ps.length;
  return { ppl, nll, bits_per_byte: bits / BYTES, word_perplexity: wordPpl };
}

describe("buildMetrics", () => {
  test("the words and bytes of the test text are what the config counts", () => {
    const { bytes, words } = datasetStats(textFile);
    assert.deepEqual({ bytes, words }, { bytes: BYTES, words: WORDS });
  });

  test("per model and per fusion: ppl, nll, bits per byte, word perplexity, mean weights", () => {
    const plan = SWEEP_PLAN();
    const { truth, metrics } = metricsOf(plan);
    assert.equal(metrics.models.length, 2);
    assert.equal(metrics.fusions.length, 1 + 2 * 3 * 3);
    metrics.models.forEach((m, i) => {
      const e = expected(truth.modelP[i]);
      assert.equal(m.ref, plan.models[i].ref);
      for (const k of ["ppl", "nll", "bits_per_byte", "word_perplexity"] as const) close(m[k], e[k], `${m.ref} ${k}`);
    });
    metrics.fusions.forEach((f, j) => {
      const e = expected(truth.fusionP[j]);
      assert.equal(f.id, plan.settings[j].id);
      const { id: _, ...strategy } = plan.settings[j];
      assert.deepEqual(f.strategy, strategy);
      for (const k of ["ppl", "nll", "bits_per_byte", "word_perplexity"] as const) close(f[k], e[k], `${f.id} ${k}`);
      f.weights_mean.forEach((w, m) => {
        let mean = 0;
        for (const a of truth.alpha[j]) mean += a[m] / SCORED;
        close(w, mean, `${f.id} weight ${m}`);
      });
    });
  });

  test("best, ranked, dataset and runtime", () => {
    const plan = SWEEP_PLAN();
    const { metrics, result } = metricsOf(plan, 11, { "gap@t=1.1,0.8": 1.9 });
    const byPpl = [...metrics.fusions].sort((a, b) => a.ppl - b.ppl);
    assert.deepEqual(metrics.best, { id: byPpl[0].id, ppl: byPpl[0].ppl });
    assert.deepEqual(metrics.ranked.map((r) => r.id), byPpl.map((f) => f.id));
    assert.deepEqual(metrics.ranked.map((r) => r.rank), byPpl.map((_, i) => i + 1));
    const bestModel = Math.min(...metrics.models.map((m) => m.ppl));
    assert.equal(metrics.best_model.ppl, bestModel);
    for (const r of metrics.ranked) close(r.delta_vs_best_model_pct, 100 * (r.ppl - bestModel) / bestModel, r.id);
    assert.deepEqual(metrics.dataset, {
      path: textFile, bytes: BYTES, words: WORDS, tokens: result.tokens, scored_tokens: SCORED, windows: 3, max_length: 64, stride: 32, bos_per_window: false,
    });
    assert.equal(metrics.kotara_version, "9.9.9");
    assert.equal(metrics.runtime.seconds, 4);
    assert.equal(metrics.runtime.compute_seconds, 2.5);
    close(metrics.runtime.tokens_per_second, result.tokens / 2.5, "tokens/s");
    assert.equal(metrics.runtime.torch, "2.4.0");
    assert.equal(metrics.runtime.device, "cpu");
    assert.deepEqual(metrics.sweep, plan.sweep);
  });

  test("the original script's keys come from the first fusion (poe: its betas)", () => {
    const plan = SWEEP_PLAN();
    const { metrics } = metricsOf(plan);
    const first = metrics.fusions[0];
    assert.equal(metrics.baseline_ppl_a, metrics.models[0].ppl);
    assert.equal(metrics.baseline_ppl_b, metrics.models[1].ppl);
    assert.equal(metrics.fused_ppl, first.ppl);
    assert.equal(metrics.strategy, "poe");
    assert.deepEqual(metrics.temps, { a: 1, b: 1 });
    assert.deepEqual(metrics.poe_betas, { a: 0.8, b: 0.2 });
    assert.deepEqual(metrics.weights, { w_a_mean: first.weights_mean[0], w_b_mean: first.weights_mean[1] });
    assert.equal(metrics.config, plan.raw);
    const keys = Object.keys(metrics);
    assert.equal(keys[keys.length - 1], "config");
    assert.deepEqual(keys.slice(0, 6), ["kotara_version", "space", "dataset", "models", "fusions", "best"]);
  });

  test("a first fusion that is not poe reports poe_betas 0.5 / 0.5", () => {
    const plan = planOf({ models: TWO, strategies: [{ type: "entropy", temperatures: [0.85, 1.1] }, "poe"] });
    const { metrics } = metricsOf(plan);
    assert.equal(metrics.strategy, "entropy");
    assert.deepEqual(metrics.temps, { a: 0.85, b: 1.1 });
    assert.deepEqual(metrics.poe_betas, { a: 0.5, b: 0.5 });
  });

  test("three models: no two-model keys", () => {
    const plan = planOf({ models: [...TWO, { ref: "org/model-c" }], strategies: ["entropy"] });
    const { metrics } = metricsOf(plan);
    assert.equal(metrics.models.length, 3);
    assert.equal(metrics.fusions[0].weights_mean.length, 3);
    assert.equal("baseline_ppl_a" in metrics, false);
  });

  test("a request built by hand (a library session's) gives the plan's numbers; its sweep is what it says", () => {
    const plan = SWEEP_PLAN();
    const { result } = simulate(plan);
    const request = { dataset: plan.dataset, text: datasetStats(textFile), settings: plan.settings, sweep: null, batchSize: 8, config: null };
    const metrics = buildMetrics({ models: plan.models, request, result, loaded: loadedFor(plan), hello, seconds: 3, version: "x" });
    assert.equal(metrics.sweep, null, "no sweep is guessed from a config");
    assert.deepEqual(metrics.fusions, metricsOf(plan).metrics.fusions);
  });

  test("sums that do not fit the request are a bug, not numbers", () => {
    const plan = SWEEP_PLAN();
    const { result } = simulate(plan);
    result.sums.fusion_nll.pop();
    assert.throws(
      () => buildMetrics({ models: plan.models, request: planRequest(plan), result, loaded: loadedFor(plan), hello, seconds: 1, version: "x" }),
      /fusion sums for 19 settings/,
    );
    // per-window sums whose totals are not their in-order sums, or that miss a window
    const off = simulate(plan).result;
    off.sums.model_nll[1] += 1e-9;
    assert.throws(() => buildMetrics({ models: plan.models, request: planRequest(plan), result: off, loaded: loadedFor(plan), hello, seconds: 1, version: "x" }),
      /per-window sums do not fit its totals: model 2's per-window NLL does not add up/);
    const short = simulate(plan).result;
    short.sums.window_fusion_nll[3].pop();
    assert.throws(() => buildMetrics({ models: plan.models, request: planRequest(plan), result: short, loaded: loadedFor(plan), hello, seconds: 1, version: "x" }),
      /per-window lists do not all have 3 entries/);
  });
});

describe("formatReport", () => {
  test("models, ranked fusions, the best, and the rest counted", () => {
    const plan = SWEEP_PLAN();
    const { metrics } = metricsOf(plan, 3, { "entropy@t=1.1,1.2": 2.5 });
    const text = formatReport(metrics, { top: 5, metricsPath: path.join(root, "m.json") });
    assert.match(text, /org\/model-a\s+\d+\.\d{2}\s+\d\.\d{4}\s+\d+\.\d{2}/);
    const rows = text.split("\n").filter((l) => /^\s+\d+\s{2}\S+@|^\s+\d+\s{2}poe/.test(l));
    assert.equal(rows.length, 5, text);
    assert.match(rows[0], /^\s+1\s+entropy@t=1\.1,1\.2\s/);
    assert.match(text, new RegExp(`… ${metrics.fusions.length - 5} more fusions in .*m\\.json`));
    assert.match(text, /^Best: entropy@t=1\.1,1\.2, PPL \d+\.\d{2}, \d+\.\d{2}% (below|above) the best single model/m);
    // the Δ column: the best fusion against the best model
    const delta = metrics.ranked[0].delta_vs_best_model_pct;
    assert.ok(rows[0].includes(`${delta > 0 ? "+" : ""}${delta.toFixed(2)}%`));
    assert.match(text, /PPL by temperature/, "a two-model sweep includes the heatmap");
  });

  test("no more-line and no heatmap when everything fits and there is no sweep", () => {
    const plan = planOf({ models: TWO, strategies: ["entropy", "gap"] });
    const text = formatReport(metricsOf(plan).metrics);
    assert.doesNotMatch(text, /more fusion/);
    assert.doesNotMatch(text, /PPL by temperature/);
  });
});

describe("heatmap", () => {
  test("the text table marks the best cell of each panel", () => {
    const plan = SWEEP_PLAN();
    const { metrics } = metricsOf(plan, 5, { "gap@t=0.9,1.2": 3 });
    const text = heatmapText({ sweep: metrics.sweep!, fusions: metrics.fusions, models: ["a", "b"] });
    const gapBlock = text.split("\n\n").find((b) => b.startsWith("gap"))!;
    const gapBest = metrics.fusions.find((f) => f.id === "gap@t=0.9,1.2")!;
    const row = gapBlock.split("\n").find((l) => /^\s+0\.9\s/.test(l))!;
    assert.ok(row.includes(`${gapBest.ppl.toFixed(2)}*`), row);
    assert.equal((gapBlock.match(/\*/g) ?? []).length, 1);
    const panels = heatmapPanels({ sweep: metrics.sweep!, fusions: metrics.fusions });
    assert.deepEqual(panels.map((p) => p.type), ["entropy", "gap"]);
    assert.deepEqual(panels[1].best, [0, 2]);
  });

  test("a sweep over mix weights: one mix panel, each cell the best over the weights", () => {
    const plan = planOf({ models: TWO, sweep: { strategies: ["average", "mix"], temperatures: [[0.9, 1], [1, 1.1]], weights: [[1], [0.5, 1, 2]] } });
    const { metrics } = metricsOf(plan, 3, { "mix@t=1,1.1;w=1,2": 3 });
    const panels = heatmapPanels({ sweep: metrics.sweep!, fusions: metrics.fusions });
    assert.deepEqual(panels.map((p) => [p.type, p.title]), [["average", "average"], ["mix", "mix (best over weights)"]]);
    const mix = panels[1];
    mix.rows.forEach((ta, r) => mix.cols.forEach((tb, c) => {
      const candidates = metrics.fusions.filter((f) => f.strategy.type === "mix" && f.strategy.temperatures[0] === ta && f.strategy.temperatures[1] === tb);
      assert.equal(candidates.length, 3);
      assert.equal(mix.cells[r][c]!.ppl, Math.min(...candidates.map((f) => f.ppl)));
    }));
    assert.deepEqual(mix.best, [1, 1]);
    assert.equal(mix.cells[1][1]!.id, "mix@t=1,1.1;w=1,2");
    const text = heatmapText({ sweep: metrics.sweep!, fusions: metrics.fusions, models: ["a", "b"] });
    assert.ok(text.includes("mix (best over weights)"));
    assert.ok(heatmapSvg({ sweep: metrics.sweep!, fusions: metrics.fusions }).includes('data-strategy="mix"'));
  });

  test("the SVG has one panel per strategy, a colour scale, labels and values", () => {
    const plan = planOf({ models: TWO, sweep: { strategies: ["average", "poe", "entropy", "gap"], temperatures: [[0.9, 1], [1, 1.1]] } });
    const { metrics } = metricsOf(plan);
    const svg = heatmapSvg({ sweep: metrics.sweep!, fusions: metrics.fusions, models: ["model-a", "model-b"] });
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.ok(svg.trimEnd().endsWith("</svg>"));
    for (const s of ["average", "poe", "entropy", "gap"]) assert.ok(svg.includes(`data-strategy="${s}"`), s);
    assert.equal((svg.match(/<g class="panel"/g) ?? []).length, 4);
    assert.equal((svg.match(/class="best"/g) ?? []).length, 4);
    assert.ok(svg.includes("linearGradient"));
    assert.ok(svg.includes("T model-a") && svg.includes("T model-b"));
    assert.ok(svg.includes(metrics.fusions[0].ppl.toFixed(2)));
    assert.doesNotMatch(svg, /NaN|undefined/);
  });
});

describe("files", () => {
  test("writeJsonAtomic creates the directory, writes the JSON, leaves no temp file", async () => {
    const dir = path.join(root, "atomic", "deep");
    const file = path.join(dir, "m.json");
    await writeJsonAtomic(file, { a: 1, b: [1.5, "x"] });
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), { a: 1, b: [1.5, "x"] });
    await writeJsonAtomic(file, { a: 2 });
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), { a: 2 });
    assert.deepEqual(readdirSync(dir), ["m.json"]);
  });

  test("a failed write leaves the target as it was and no temp file", async () => {
    const dir = path.join(root, "atomic-fail");
    mkdirSync(path.join(dir, "taken.json"), { recursive: true }); // a directory where the file should go
    await assert.rejects(writeJsonAtomic(path.join(dir, "taken.json"), { a: 1 }));
    assert.deepEqual(readdirSync(dir), ["taken.json"]);
  });

  test("toCsv: a header and one row per fusion, values at full precision, fields quoted", () => {
    const plan = planOf({
      models: TWO,
      strategies: [{ id: 'sharp, "cool"', type: "gap", temperatures: [0.7, 0.7] }, { type: "poe", betas: [0.8, 0.2] }, "entropy", { type: "mix", weights: [0.7, 0.3] }],
    });
    const { metrics } = metricsOf(plan);
    const lines = toCsv(metrics).trimEnd().split("\n");
    assert.equal(lines[0], CSV_COLUMNS.join(","));
    assert.equal(lines.length, 1 + metrics.fusions.length);
    const col = (name: (typeof CSV_COLUMNS)[number]) => CSV_COLUMNS.indexOf(name);
    const rows = lines.slice(1).map(parseCsvLine);
    assert.equal(rows[0][col("id")], 'sharp, "cool"');
    assert.equal(rows[0][col("type")], "gap");
    assert.equal(rows[0][col("temperatures")], "0.7;0.7");
    assert.equal(rows[0][col("betas")], "");
    assert.equal(rows[0][col("weights")], "");
    assert.equal(rows[1][col("betas")], "0.8;0.2");
    assert.equal(rows[3][col("id")], "mix@t=1,1;w=0.7,0.3");
    assert.equal(rows[3][col("betas")], "");
    assert.equal(rows[3][col("weights")], "0.7;0.3");
    rows.forEach((r, j) => {
      assert.equal(r.length, CSV_COLUMNS.length);
      assert.equal(Number(r[col("ppl")]), metrics.fusions[j].ppl);
      assert.equal(Number(r[col("bits_per_byte")]), metrics.fusions[j].bits_per_byte);
      assert.equal(Number(r[col("rank")]), metrics.ranked.find((x) => x.id === metrics.fusions[j].id)!.rank);
      assert.deepEqual(r[col("weights_mean")].split(";").map(Number), metrics.fusions[j].weights_mean);
    });
  });

  test("writeRunOutputs: the metrics JSON, the CSV next to it, and the heatmap SVG of a two-model sweep", async () => {
    const plan = SWEEP_PLAN();
    const { metrics } = metricsOf(plan);
    const dir = path.join(root, "run-out");
    const file = path.join(dir, "sweep.json");
    const written = await writeRunOutputs(file, metrics);
    assert.deepEqual(written, [file, path.join(dir, "sweep.csv"), path.join(dir, "sweep.heatmap.svg")]);
    assert.deepEqual(readdirSync(dir).sort(), ["sweep.csv", "sweep.heatmap.svg", "sweep.json"]);
    const back = JSON.parse(readFileSync(file, "utf8")) as Metrics;
    assert.deepEqual(back, JSON.parse(JSON.stringify(metrics)));
    const svg = readFileSync(path.join(dir, "sweep.heatmap.svg"), "utf8");
    assert.equal((svg.match(/<g class="panel"/g) ?? []).length, 2);
  });

  test("no SVG without a sweep", async () => {
    const plan = planOf({ models: TWO, strategies: ["entropy"] });
    const dir = path.join(root, "run-out-2");
    const written = await writeRunOutputs(path.join(dir, "e.json"), metricsOf(plan).metrics);
    assert.deepEqual(written.map((f) => path.basename(f)), ["e.json", "e.csv"]);
  });
});

/** RFC 4180, one line. */
function parseCsvLine(line: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i <= line.length) {
    if (line[i] === '"') {
      let s = "";
      i++;
      while (i < line.length) {
        if (line[i] === '"' && line[i + 1] === '"') (s += '"'), (i += 2);
        else if (line[i] === '"') break;
        else s += line[i++];
      }
      out.push(s);
      i += 2;
    } else {
      const j = line.indexOf(",", i);
      const end = j < 0 ? line.length : j;
      out.push(line.slice(i, end));
      i = end + 1;
    }
  }
  return out;
}
