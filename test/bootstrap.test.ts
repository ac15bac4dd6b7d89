// The paired block bootstrap (src/bootstrap.ts) and fusions[].vs_best_model (src/metrics.ts):
// the resampling against a brute-force one, coverage on synthetic windows whose true
// difference is known analytically, determinism, the edge cases (1 window, 2 windows,
// identical windows, a fusion equal to the best model), the config, the report's mark.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import {
  blockChoice, blockLength, mulberry32, pairedBootstrap, pairedInterval, percentileInterval, quantile, resamplePlan, resampledSums,
  type BootstrapOptions,
} from "../src/bootstrap.js";
import { ConfigError } from "../src/errors.js";
import { buildMetrics, type Metrics } from "../src/metrics.js";
import { toCsv, CSV_COLUMNS } from "../src/outputs.js";
import { parseConfig, planRequest, type RunPlan } from "../src/plan.js";
import type { HelloMsg, LoadedMsg, ResultMsg } from "../src/protocol.js";
import { CI_MARK, formatReport } from "../src/report.js";
import { rng, windowedSums } from "./helpers.js";

const OPTS: BootstrapOptions = { resamples: 2000, seed: 0, block_length: null };

// ---------------------------------------------------------------------------- synthetic windows

/** A standard normal from two uniforms (Box–Muller). */
function gaussian(u: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

interface Windows {
  targets: number[];
  bytes: number[];
  best: number[];
  fused: number[];
}

/**
 * n windows with a known answer. Per window w: targets t_w uniform on 100..140, bytes
 * b_w = 4 t_w + a uniform 0..40 (E[t] = 120, E[b] = 500); the best model's NLL
 * b_w (1.5 + 0.2 z_w); the fusion's that plus b_w (δ + e_w), where e is a stationary
 * AR(1) with lag-one correlation ρ and standard deviation σ, independent of t, b, z.
 * The true values are then the ratios of expectations:
 *   Δ bits per byte = E[b (δ + e)] / (ln 2 E[b]) = δ / ln 2,
 *   PPL ratio       = exp(E[b (δ + e)] / E[t])   = exp(δ · 500 / 120).
 */
function simulate(n: number, rho: number, seed: number, delta = -0.01, sigma = 0.3): Windows {
  const u = rng(seed);
  const z = gaussian(u);
  const w: Windows = { targets: [], bytes: [], best: [], fused: [] };
  let e = sigma * z();
  for (let i = 0; i < n; i++) {
    const t = 100 + Math.floor(41 * u());
    const b = 4 * t + Math.floor(41 * u());
    if (i > 0) e = rho * e + sigma * Math.sqrt(1 - rho * rho) * z();
    const best = b * (1.5 + 0.2 * z());
    w.targets.push(t);
    w.bytes.push(b);
    w.best.push(best);
    w.fused.push(best + b * (delta + e));
  }
  return w;
}
const truthBpb = (delta: number) => delta / Math.LN2;
const truthRatio = (delta: number) => Math.exp((delta * 500) / 120);
const sum = (xs: readonly number[]) => xs.reduce((a, x) => a + x, 0);

/** The share of `runs` simulated texts whose 95% intervals contain the truth. */
function coverage(runs: number, n: number, rho: number, opts: BootstrapOptions, seed0: number) {
  let bpb = 0;
  let ratio = 0;
  for (let s = 0; s < runs; s++) {
    const w = simulate(n, rho, seed0 + s);
    const boot = pairedBootstrap(w.bytes, w.targets, sum(w.bytes), { ...opts, seed: s })!;
    const ci = pairedInterval(boot, w.fused, w.best);
    const [lo, hi] = ci.delta_bits_per_byte!;
    if (lo <= truthBpb(-0.01) && truthBpb(-0.01) <= hi) bpb++;
    if (ci.ppl_ratio[0] <= truthRatio(-0.01) && truthRatio(-0.01) <= ci.ppl_ratio[1]) ratio++;
  }
  return { bpb: bpb / runs, ratio: ratio / runs };
}

/** 95% ± 3σ of a binomial share over `runs` independent runs. */
function band(runs: number): [number, number] {
  const sigma = Math.sqrt((0.95 * 0.05) / runs);
  return [0.95 - 3 * sigma, 0.95 + 3 * sigma];
}

// ---------------------------------------------------------------------------- the resampling

describe("the resampling", () => {
  test("mulberry32: the same numbers for a seed, in [0, 1); the tests' rng is the same generator", () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const t = rng(42);
    for (let i = 0; i < 1000; i++) {
      const x = a();
      assert.equal(x, b());
      assert.equal(x, t());
      assert.ok(x >= 0 && x < 1);
    }
    assert.notEqual(mulberry32(1)(), mulberry32(2)());
  });

  test("block length: ⌈n^(1/3)⌉, at most ⌊n/2⌋; an override, with the same cap; no block for one window", () => {
    for (let n = 2; n <= 3000; n++) {
      let cube = 1;
      while (cube ** 3 < n) cube++; // the smallest ℓ with ℓ³ ≥ n, in integers
      assert.equal(blockLength(n), Math.min(cube, Math.floor(n / 2)), `n = ${n}`);
    }
    assert.deepEqual([blockLength(8), blockLength(27), blockLength(1000), blockLength(1001)], [2, 3, 10, 11]);
    assert.deepEqual(blockChoice(132), { length: 6, rule: "ceil(n^(1/3))" });
    assert.deepEqual(blockChoice(2), { length: 1, rule: "ceil(n^(1/3)), at most n/2" });
    assert.deepEqual(blockChoice(100, 7), { length: 7, rule: "report.bootstrap.block_length (7)" });
    assert.deepEqual(blockChoice(10, 7), { length: 5, rule: "report.bootstrap.block_length (7), at most n/2" });
    assert.throws(() => blockLength(1), /two or more windows/);
    assert.equal(resamplePlan(1, OPTS), null);
    assert.equal(resamplePlan(50, { ...OPTS, resamples: 0 }), null);
  });

  test("resampledSums: each resample is ⌈n/ℓ⌉ circular blocks cut to n windows, summed as a brute force sums them", () => {
    const u = rng(5);
    for (const [n, ell] of [[17, 3], [20, 4], [9, 1], [2, 1], [50, null]] as const) {
      const x = Array.from({ length: n }, () => u() * 10 - 5);
      const plan = resamplePlan(n, { resamples: 300, seed: 9, block_length: ell })!;
      const got = resampledSums(plan, x);
      for (let r = 0; r < plan.resamples; r++) {
        const windows: number[] = [];
        for (let j = 0; j < plan.blocks; j++) {
          const start = plan.starts[r * plan.blocks + j];
          for (let k = 0; k < plan.blockLength && windows.length < n; k++) windows.push((start + k) % n);
        }
        assert.equal(windows.length, n);
        const want = windows.reduce((a, i) => a + x[i], 0);
        assert.ok(Math.abs(got[r] - want) <= 1e-12 * Math.max(1, Math.abs(want)), `n ${n} resample ${r}: ${got[r]} vs ${want}`);
      }
    }
  });

  test("circular blocks draw every window equally often: the resampled sum is centred on the sample's", () => {
    const u = rng(6);
    const n = 60;
    const x = Array.from({ length: n }, (_, i) => (i < 5 ? 100 : 0) + u()); // heavy windows at the start
    const plan = resamplePlan(n, { resamples: 20_000, seed: 3, block_length: 8 })!;
    const sums = resampledSums(plan, x);
    const mean = sum([...sums]) / sums.length;
    const sd = Math.sqrt(sum([...sums].map((s) => (s - mean) ** 2)) / (sums.length - 1));
    // the expectation is exactly Σ x (each of the n windows of a resample is uniform); 4 standard errors
    assert.ok(Math.abs(mean - sum(x)) <= (4 * sd) / Math.sqrt(sums.length), `${mean} vs ${sum(x)}`);
  });

  test("quantiles interpolate between order statistics (type 7), as numpy's default does", () => {
    const sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    assert.equal(quantile(sorted, 0), 1);
    assert.equal(quantile(sorted, 1), 11);
    assert.equal(quantile(sorted, 0.5), 6);
    assert.equal(quantile(sorted, 0.025), 1.25); // h = 10 · 0.025 = 0.25
    assert.deepEqual(percentileInterval(Float64Array.from([5, 1, 4, 2, 3]), 0.5), [2, 4]);
    // percentileInterval selects rather than sorts: the same numbers as quantiles of the sorted values
    const u = rng(8);
    for (const [len, distinct] of [[2000, 0], [2000, 7], [1999, 2], [41, 0], [2, 0], [1, 0], [500, 1]]) {
      const values = Float64Array.from({ length: len }, () => (distinct ? Math.floor(u() * distinct) : u() - 0.5));
      const sorted = Float64Array.from(values).sort();
      for (const level of [0.95, 0.9, 0.5]) {
        const tail = (1 - level) / 2;
        assert.deepEqual(percentileInterval(Float64Array.from(values), level), [quantile(sorted, tail), quantile(sorted, 1 - tail)], `${len}, ${distinct}, ${level}`);
      }
    }
  });
});

// ---------------------------------------------------------------------------- coverage

describe("coverage on windows with a known answer", () => {
  test("AR(1) windows, ρ = 0.2, n = 1000: ~95% of 1,000 simulated texts' intervals contain the true Δ bits/byte and PPL ratio", (t) => {
    // The band: 95% ± 3σ of a binomial share, σ = sqrt(0.95 · 0.05 / 1000) = 0.69%: [92.9%, 97.1%].
    // What to expect inside it: a block bootstrap with blocks of ℓ estimates the long-run
    // variance Σ_k γ(k) with Bartlett weights (1 − |k|/ℓ), i.e. low by 2 Σ_k k γ(k) / ℓ.
    // For AR(1): Σ_k k ρ^k = ρ / (1 − ρ)² = 0.3125 and Σ_k γ(k) = γ(0) (1 + ρ) / (1 − ρ) = 1.5 γ(0),
    // so with ℓ = ⌈1000^(1/3)⌉ = 10 the variance is low by 2 · 0.3125 / (10 · 1.5) = 4.2%, the
    // interval narrow by 2.1%, and it covers P(|Z| < 1.96 · 0.979) ≈ 94.5%.
    const runs = 1000;
    const [lo, hi] = band(runs);
    const c = coverage(runs, 1000, 0.2, OPTS, 1000);
    t.diagnostic(`coverage: Δ bits/byte ${c.bpb}, PPL ratio ${c.ratio}; band [${lo.toFixed(4)}, ${hi.toFixed(4)}]`);
    assert.ok(c.bpb >= lo && c.bpb <= hi, `Δ bits/byte: ${c.bpb} outside [${lo}, ${hi}]`);
    assert.ok(c.ratio >= lo && c.ratio <= hi, `PPL ratio: ${c.ratio} outside [${lo}, ${hi}]`);
  });

  test("blocks matter: under stronger correlation (ρ = 0.5) windows resampled one by one cover far less", (t) => {
    // ℓ = 1 treats neighbouring windows as independent: its variance is γ(0) where the truth
    // is 3 γ(0), so it covers about P(|Z| < 1.96 / √3) ≈ 74%; blocks of ⌈200^(1/3)⌉ = 6 recover
    // most of it (2 Σ k ρ^k / (ℓ · 3) = 22% low: ≈ 92%). 200 runs of 200 windows, 500 resamples.
    const runs = 200;
    const [lo] = band(runs);
    const iid = coverage(runs, 200, 0.5, { resamples: 500, seed: 0, block_length: 1 }, 7000);
    const blocks = coverage(runs, 200, 0.5, { resamples: 500, seed: 0, block_length: null }, 7000);
    t.diagnostic(`coverage at ρ = 0.5: blocks of 6 ${blocks.bpb}, one by one ${iid.bpb}`);
    assert.ok(iid.bpb < lo, `one by one: ${iid.bpb} should fall below ${lo}`);
    assert.ok(blocks.bpb > iid.bpb + 0.08, `blocks ${blocks.bpb} vs one by one ${iid.bpb}`);
  });
});

// ---------------------------------------------------------------------------- metrics

const root = mkdtempSync(path.join(tmpdir(), "kotara-bootstrap-"));
after(() => rmSync(root, { recursive: true, force: true }));
const textFile = path.join(root, "text.txt");
writeFileSync(textFile, "A text for the bootstrap tests, of no particular length.\n".repeat(40));
const TEXT_BYTES = Buffer.byteLength("A text for the bootstrap tests, of no particular length.\n") * 40;

const hello: HelloMsg = { seq: 0, type: "hello", protocol_version: 3, worker_version: "x", pid: 1, python: "3", torch: "t", transformers: "t", cuda_devices: 0 };
const loaded = (p: RunPlan): LoadedMsg => ({
  seq: 1, type: "loaded", seconds: 1, space: "tokens", space_reason: "every vocabulary agrees", tokenizer: { ref: "a", vocab_size: 10, bos_token_id: null },
  models: p.models.map((m) => ({ ref: m.ref, device: "cpu", dtype: "float32", parameters: 1, vocab_size: 10, max_positions: null, head_path: "scored" as const, tokenizer: "a" })),
});

function planOf(extra: Record<string, unknown> = {}, strategies: unknown[] = ["average", "entropy", "gap"]): RunPlan {
  return parseConfig({ models: [{ ref: "org/a" }, { ref: "org/b" }], dataset: { path: textFile, max_length: 64, stride: 64 }, strategies, ...extra }, root);
}

/**
 * A result whose windows are given: per window the targets, bytes and each model's and
 * setting's Σ NLL (one position a window: windowedSums then sums nothing within a window).
 */
function resultOf(w: { targets: number[]; bytes: number[]; models: number[][]; fusions: number[][] }): ResultMsg {
  const sums = windowedSums({ modelNll: w.models, fusionNll: w.fusions, sizes: w.targets.map(() => 1), bytes: w.bytes, fusionWeights: w.fusions.map(() => [0, 0]) });
  // one position per window above; the windows' real target counts:
  sums.window_targets = [...w.targets];
  sums.scored_tokens = sum(w.targets);
  return {
    seq: 2, type: "result", request_id: "r1", space: "tokens", tokens: sums.scored_tokens + 1, windows: w.targets.length, sums, byte_stats: null,
    seconds: 1, tokenize_seconds: 0, peak_memory_bytes: 0, device: "cpu", dtype: "float32",
  };
}

function metricsOf(p: RunPlan, result: ResultMsg): Metrics {
  return buildMetrics({ models: p.models, request: planRequest(p), result, loaded: loaded(p), hello, seconds: 1, version: "v" });
}

/** Three fusions over simulated windows: clearly better than model b (the best), no different from it, and worse. */
function threeFusions(n: number, seed = 1) {
  const better = simulate(n, 0.2, seed, -0.05, 0.1);
  const same = simulate(n, 0.2, seed, 0, 0.3);
  const worse = simulate(n, 0.2, seed, 0.04, 0.1);
  const bytes = better.bytes.map((b) => (b * TEXT_BYTES) / sum(better.bytes)); // scale: not integers, fine for the bootstrap
  return {
    targets: better.targets, bytes: better.bytes, scaledBytes: bytes,
    models: [better.best.map((x) => x * 1.2), better.best],
    fusions: [better.fused, same.fused.map((x, i) => x - same.best[i] + better.best[i]), worse.fused.map((x, i) => x - worse.best[i] + better.best[i])],
  };
}

describe("fusions[].vs_best_model", () => {
  test("the differences are the fusions' against the best model; the intervals those of the paired bootstrap of the windows", () => {
    const p = planOf();
    const w = threeFusions(300);
    const m = metricsOf(p, resultOf(w));
    assert.equal(m.best_model.ref, "org/b");
    const best = m.models[1];
    const boot = pairedBootstrap(w.bytes, w.targets, TEXT_BYTES, OPTS)!;
    m.fusions.forEach((f, k) => {
      const v = f.vs_best_model;
      assert.ok(Math.abs(v.delta_bits_per_byte - (f.bits_per_byte - best.bits_per_byte)) <= 1e-12 * Math.abs(best.bits_per_byte), f.id);
      assert.ok(Math.abs(v.ppl_ratio - f.ppl / best.ppl) <= 1e-12, f.id);
      const ci = pairedInterval(boot, w.fusions[k], w.models[1]);
      assert.deepEqual(v.ci95, ci.delta_bits_per_byte);
      assert.deepEqual(v.ppl_ratio_ci95, ci.ppl_ratio);
      assert.ok(v.ci95![0] <= v.delta_bits_per_byte && v.delta_bits_per_byte <= v.ci95![1], `${f.id}: the point inside its interval`);
    });
    assert.deepEqual(m.fusions.map((f) => f.vs_best_model.excludes_zero), [true, false, true]);
    assert.deepEqual(
      { ...m.bootstrap },
      { method: "paired circular block bootstrap over windows, percentile intervals", level: 0.95, resamples: 2000, seed: 0, windows: 300, block_length: 7,
        block_rule: "ceil(n^(1/3))", best_model: "org/b", note: null },
    );
  });

  test("the same seed gives the same intervals; another seed others; a setting's interval does not depend on the other settings", () => {
    const w = threeFusions(200);
    const a = metricsOf(planOf(), resultOf(w));
    const b = metricsOf(planOf(), resultOf(w));
    assert.deepEqual(a.fusions.map((f) => f.vs_best_model), b.fusions.map((f) => f.vs_best_model));
    const other = metricsOf(planOf({ report: { bootstrap: { seed: 7 } } }), resultOf(w));
    assert.notDeepEqual(other.fusions[1].vs_best_model.ci95, a.fusions[1].vs_best_model.ci95);
    // the resamples are drawn once per run, from the seed and the windows: each setting's interval is its own
    const alone = metricsOf(planOf({}, ["entropy"]), resultOf({ ...w, fusions: [w.fusions[1]] }));
    assert.deepEqual(alone.fusions[0].vs_best_model, a.fusions[1].vs_best_model);
  });

  test("window bytes that do not add up to the text's (a tokenizer without offsets) are scaled to them", () => {
    const w = threeFusions(120);
    const exact = metricsOf(planOf(), resultOf({ ...w, bytes: w.scaledBytes }));
    const doubled = metricsOf(planOf(), resultOf({ ...w, bytes: w.scaledBytes.map((b) => 2 * b) }));
    exact.fusions.forEach((f, k) => {
      const [x, y] = [f.vs_best_model.ci95!, doubled.fusions[k].vs_best_model.ci95!];
      assert.ok(Math.abs(x[0] - y[0]) <= 1e-12 * Math.abs(x[0]) && Math.abs(x[1] - y[1]) <= 1e-12 * Math.abs(x[1]), `${x} vs ${y}`);
    });
  });

  test("one window: no interval (null), and the metrics say why", () => {
    const m = metricsOf(planOf(), resultOf({ targets: [50], bytes: [TEXT_BYTES], models: [[90], [80]], fusions: [[70], [80], [85]] }));
    for (const f of m.fusions) {
      assert.equal(f.vs_best_model.ci95, null);
      assert.equal(f.vs_best_model.ppl_ratio_ci95, null);
      assert.equal(f.vs_best_model.excludes_zero, null);
    }
    assert.ok(Math.abs(m.fusions[0].vs_best_model.delta_bits_per_byte - -10 / (Math.LN2 * TEXT_BYTES)) <= 1e-15);
    assert.equal(m.bootstrap.block_length, null);
    assert.match(m.bootstrap.note!, /^only 1 window: the bootstrap resamples windows, so there is no interval$/);
    const text = formatReport(m);
    assert.match(text, /95% CI: none \(only 1 window/);
    assert.ok(text.split("\n").filter((l) => /^\s+\d\s/.test(l)).every((l) => l.includes("—") && !l.includes(CI_MARK)), text);
  });

  test("two windows: blocks of one, and the interval runs from one window's ratio to the other's", () => {
    // four equally likely resamples ({1,1}, {1,2}, {2,1}, {2,2}): the 2.5% and 97.5% quantiles
    // of 2,000 fall among the ~500 copies of {1,1} and of {2,2}
    const w = { targets: [40, 60], bytes: [300, TEXT_BYTES - 300], models: [[200, 250], [150, 240]], fusions: [[140, 250], [150, 240], [160, 230]] };
    const m = metricsOf(planOf(), resultOf(w));
    assert.equal(m.bootstrap.block_length, 1);
    assert.match(m.bootstrap.note!, /only 2 windows \(2 blocks of 1\)/);
    m.fusions.forEach((f, k) => {
      const perWindowBpb = [0, 1].map((i) => (w.fusions[k][i] - w.models[1][i]) / (Math.LN2 * w.bytes[i]));
      const perWindowRatio = [0, 1].map((i) => Math.exp((w.fusions[k][i] - w.models[1][i]) / w.targets[i]));
      const close = (x: number, y: number) => Math.abs(x - y) <= 1e-12 * Math.max(1, Math.abs(y));
      const [lo, hi] = f.vs_best_model.ci95!;
      assert.ok(close(lo, Math.min(...perWindowBpb)) && close(hi, Math.max(...perWindowBpb)), `${f.id}: [${lo}, ${hi}] vs ${perWindowBpb}`);
      const [rlo, rhi] = f.vs_best_model.ppl_ratio_ci95!;
      assert.ok(close(rlo, Math.min(...perWindowRatio)) && close(rhi, Math.max(...perWindowRatio)), f.id);
    });
  });

  test("a fusion equal to the best model in every window: 0, [0, 0], ratio 1, not marked; identical windows: a point interval", () => {
    const n = 40;
    const best = Array.from({ length: n }, (_, i) => 100 + (i % 7));
    const same = metricsOf(planOf({}, ["average"]), resultOf({ targets: Array(n).fill(30), bytes: Array(n).fill(TEXT_BYTES / n), models: [best.map((x) => x + 5), best], fusions: [best] }));
    const v = same.fusions[0].vs_best_model;
    assert.deepEqual([v.delta_bits_per_byte, v.ci95, v.ppl_ratio, v.ppl_ratio_ci95, v.excludes_zero], [0, [0, 0], 1, [1, 1], false]);
    assert.ok(!formatReport(same).split("\n").some((l) => /^\s+1\s+average/.test(l) && l.includes(CI_MARK)));
    // every window the same: each resample is the text again (up to rounding), so is the interval
    const flat = metricsOf(planOf({}, ["average"]), resultOf({ targets: Array(n).fill(30), bytes: Array(n).fill(TEXT_BYTES / n), models: [Array(n).fill(105), Array(n).fill(100)], fusions: [Array(n).fill(99)] }));
    const f = flat.fusions[0].vs_best_model;
    for (const x of f.ci95!) assert.ok(Math.abs(x - f.delta_bits_per_byte) <= 1e-12 * Math.abs(f.delta_bits_per_byte), `${x} vs ${f.delta_bits_per_byte}`);
    assert.equal(f.excludes_zero, true);
  });

  test("report.bootstrap.resamples 0: no intervals, said so", () => {
    const m = metricsOf(planOf({ report: { bootstrap: { resamples: 0 } } }), resultOf(threeFusions(50)));
    assert.ok(m.fusions.every((f) => f.vs_best_model.ci95 === null && f.vs_best_model.excludes_zero === null));
    assert.equal(m.bootstrap.note, "report.bootstrap.resamples is 0: no intervals");
    assert.match(formatReport(m), /95% CI: none \(report\.bootstrap\.resamples is 0: no intervals\)/);
  });

  test("the report marks a fusion whose interval excludes 0, and says how the intervals were drawn; the CSV has them", () => {
    const m = metricsOf(planOf({ report: { bootstrap: { resamples: 1000, seed: 3, block_length: 5 } } }), resultOf(threeFusions(300)));
    const text = formatReport(m);
    assert.match(text, /^\s+#\s+PPL\s+Δ vs best model\s+95% CI\s+bits\/byte/m);
    const row = (id: string) => text.split("\n").find((l) => new RegExp(`^\\s+\\d+\\s+${id}\\s`).test(l))!;
    const pct = (x: number) => `${x > 1 ? "+" : ""}${((x - 1) * 100).toFixed(2)}%`;
    const [lo, hi] = m.fusions[0].vs_best_model.ppl_ratio_ci95!;
    assert.ok(row("average").includes(`[${pct(lo)}, ${pct(hi)}] ${CI_MARK}`), row("average"));
    assert.ok(!row("entropy").includes(CI_MARK), row("entropy"));
    assert.ok(row("gap").endsWith("0.00 / 0.00") && row("gap").includes(`] ${CI_MARK}`), row("gap"));
    assert.ok(text.includes(`  95% CI vs org/b: paired block bootstrap over 300 windows (blocks of 5), 1,000 resamples, seed 3; ${CI_MARK} the interval excludes 0`), text);

    const lines = toCsv(m).trimEnd().split("\n");
    const col = (name: string) => CSV_COLUMNS.indexOf(name as (typeof CSV_COLUMNS)[number]);
    const first = lines[1].split(",");
    assert.equal(Number(first[col("delta_bits_per_byte_ci95_lo")]), m.fusions[0].vs_best_model.ci95![0]);
    assert.equal(Number(first[col("ppl_ratio_ci95_hi")]), hi);
    assert.equal(first[col("ci95_excludes_zero")], "true");
  });
});

describe("report.bootstrap in the config", () => {
  const problems = (bootstrap: unknown): string[] => {
    try {
      planOf({ report: { bootstrap } });
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      return e.lines;
    }
    assert.fail("accepted");
  };

  test("defaults: 2,000 resamples, seed 0, blocks of ⌈n^(1/3)⌉; given values reach the request", () => {
    assert.deepEqual(planOf().report.bootstrap, { resamples: 2000, seed: 0, block_length: null });
    assert.deepEqual(planOf({ report: {} }).report.bootstrap, { resamples: 2000, seed: 0, block_length: null });
    const p = planOf({ report: { bootstrap: { resamples: 500, seed: 12, block_length: 4 } } });
    assert.deepEqual(planRequest(p).bootstrap, { resamples: 500, seed: 12, block_length: 4 });
    assert.deepEqual(planOf({ report: { bootstrap: { resamples: 0 } } }).report.bootstrap.resamples, 0);
  });

  test("bad values name the field and what is allowed", () => {
    assert.deepEqual(problems({ resamples: 50 }), ["report.bootstrap.resamples: must be 0 (no intervals) or from 100 to 1000000, got 50"]);
    assert.deepEqual(problems({ resamples: -1 }), ["report.bootstrap.resamples: must be 0 (no intervals) or from 100 to 1000000, got -1"]);
    assert.deepEqual(problems({ resamples: 2500.5 }), ["report.bootstrap.resamples: must be an integer, got 2500.5"]);
    assert.deepEqual(problems({ resamples: "many" }), ['report.bootstrap.resamples: expected a number, got "many"']);
    assert.deepEqual(problems({ seed: -3 }), ["report.bootstrap.seed: must be an integer from 0 to 4294967295, got -3"]);
    assert.deepEqual(problems({ seed: 2 ** 32 }), ["report.bootstrap.seed: must be an integer from 0 to 4294967295, got 4294967296"]);
    assert.deepEqual(problems({ block_length: 0 }), ["report.bootstrap.block_length: must be a positive integer, got 0"]);
    assert.deepEqual(problems({ blocks: 3 }), ["report.bootstrap.blocks: unknown key; allowed: resamples, seed, block_length"]);
    assert.throws(() => planOf({ report: { boot: {} } }), (e: unknown) => e instanceof ConfigError && e.lines[0] === "report.boot: unknown key; allowed: bootstrap, html, token_view_bytes, token_view_settings");
  });
});
