// scripts/experiments.ts: the analysis, verdicts and page of `npm run experiments`, on
// synthetic metrics objects (no model runs here).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  CROSS_TOKENIZER,
  EXPERIMENTS,
  GAIN_BPB,
  GAIN_PCT,
  analyseCross,
  byteFindings,
  crossSection,
  spacesRows,
  spacesSection,
  type MetricsInput,
  type RunRecord,
  aloneModel,
  analyse,
  buildPage,
  commandFor,
  findings,
  judge,
  summaryTable,
  verdicts,
} from "../scripts/experiments.js";
import { fmtPct } from "../src/format.js";

const GRID = [0.8, 1, 1.25];
type F = MetricsInput["fusions"][number];

function fusion(type: string, temperatures: number[], ppl: number, opts: { betas?: number[] | null; id?: string; weights?: number[]; mixWeights?: number[] } = {}): F {
  const n = temperatures.length;
  const betas = opts.betas !== undefined ? opts.betas : type === "poe" ? temperatures.map(() => 1 / n) : null;
  const mixWeights = opts.mixWeights ?? (type === "mix" ? temperatures.map(() => 1 / n) : null);
  const defaults = (xs: number[] | null) => xs === null || xs.every((b) => b === 1 / n);
  const id = opts.id ?? (temperatures.every((t) => t === 1) && defaults(betas) && defaults(mixWeights) ? type : `${type}@t=${temperatures.join(",")}`);
  return { id, strategy: { type, temperatures, betas, weights: mixWeights }, ppl, weights_mean: opts.weights ?? mixWeights ?? temperatures.map(() => 1 / n) };
}

/** Metrics of a two-model run: T = 1 PPLs per strategy, extra sweep points, single-model baselines. */
function metrics(refs: [string, string], modelPpl: [number, number], t1: Record<string, number>, extra: F[] = []): MetricsInput {
  const fusions: F[] = Object.keys(t1).map((t) => fusion(t, [1, 1], t1[t]));
  fusions.push(...extra);
  return {
    kotara_version: "0.1.0",
    dataset: { path: "/x/docs.txt", bytes: 1000, words: 200, tokens: 400, scored_tokens: 399, windows: 4, max_length: 256, stride: 128 },
    models: refs.map((ref, i) => ({ ref, ppl: modelPpl[i] })),
    fusions,
    sweep: { strategies: ["average", "poe", "entropy", "gap"], temperatures: [GRID, GRID] },
    runtime: { device: "cpu", dtype: "float32", torch: "2.x", transformers: "5.x", python: "3.11", seconds: 12.5 },
  };
}

const exp = (name: string) => EXPERIMENTS.find((e) => e.name === name)!;

// identical: every strategy at T = 1 is the model; average at (1.25, 1.25) is the model retempered.
const identical = metrics(["/m/twin-a", "/m/twin-a"], [100, 100], { average: 100, poe: 100, entropy: 100, gap: 100 }, [
  fusion("average", [1.25, 1.25], 97),
  fusion("poe", [1.25, 1.25], 97),
  fusion("average", [1, 1.25], 96.9),
  fusion("poe", [1, 1.25], 96.9),
  fusion("poe", [0.8, 1], 120, { betas: [1, 0], id: "alone:twin-a@t=0.8" }),
]);
// similar: gains at T = 1 and beyond the tempered models.
const similar = metrics(["/m/twin-a", "/m/sibling"], [120, 100], { average: 90, poe: 90, entropy: 91, gap: 99.5, mix: 92 }, [
  fusion("entropy", [1.25, 1], 88, { weights: [0.4, 0.6] }),
  fusion("mix", [1.25, 1], 89),
  fusion("mix", [1, 1], 88.5, { mixWeights: [0.2, 0.8], id: "mix@t=1,1;w=0.2,0.8" }),
  fusion("poe", [1.25, 1], 98, { betas: [1, 0], id: "alone:twin-a@t=1.25" }),
  fusion("poe", [1, 1.25], 98.5, { betas: [0, 1], id: "alone:sibling@t=1.25" }),
]);
// distant: loses at T = 1, gains once tempered (against the heuristic).
const distant = metrics(["/m/twin-a", "/m/far"], [100, 400], { average: 110, poe: 110, entropy: 103, gap: 108, mix: 104 }, [
  fusion("entropy", [0.8, 1.25], 95, { weights: [0.6, 0.4] }),
  fusion("poe", [1.25, 1], 99, { betas: [1, 0], id: "alone:twin-a@t=1.25" }),
]);

const rec = (name: string, m: MetricsInput, wall: number | null = 17.25): RunRecord => ({ experiment: exp(name), metrics: m, wallSeconds: wall });

describe("analyse", () => {
  test("single-model baselines: poe with one nonzero beta is that model alone", () => {
    assert.equal(aloneModel(fusion("poe", [0.8, 1], 1, { betas: [1, 0] })), 0);
    assert.equal(aloneModel(fusion("poe", [1, 0.8], 1, { betas: [0, 2] })), 1);
    assert.equal(aloneModel(fusion("poe", [1, 1], 1)), null);
    assert.equal(aloneModel(fusion("average", [1, 1], 1)), null);
  });

  test("the identical pair: no gain at T = 1; its swept 'gain' is measured against the retempered model", () => {
    const a = analyse(identical);
    assert.equal(a.gainT1, 0);
    assert.equal(a.identicalT1Deviation, 0);
    // (1.25, 1.25) of the same model counts as the model alone at 1.25
    assert.deepEqual([a.bestTempered.name, a.bestTempered.t, a.bestTempered.ppl], ["twin-a", 1.25, 97]);
    assert.equal(a.bestTempered.atEdge, true);
    assert.equal(a.bestSwept.ppl, 96.9);
    assert.ok(Math.abs(a.gainSweptRaw - -3.1) < 1e-9);
    assert.ok(Math.abs(a.gainSweptVsTempered - (96.9 / 97 - 1) * 100) < 1e-9);
    const v = verdicts("identical", a);
    assert.equal(v.t1.holds, true);
    assert.equal(v.tuned.holds, true);
    assert.match(v.t1.because, /no change/);
  });

  test("strategies at T = 1, best swept per strategy, baselines kept out of the fusions", () => {
    const a = analyse(similar);
    assert.equal(a.bestModel, 1);
    assert.equal(a.atT1.gap!.ppl, 99.5);
    assert.equal(a.bestT1.type, "average");
    assert.ok(Math.abs(a.gainT1 - -10) < 1e-9);
    assert.equal(a.swept.entropy!.id, "entropy@t=1.25,1");
    assert.equal(a.swept.entropy!.atEdge, true);
    assert.equal(a.swept.average!.atEdge, false);
    assert.equal(a.bestSwept.ppl, 88); // not the 98 of "alone:twin-a@t=1.25"
    assert.deepEqual([a.bestTempered.name, a.bestTempered.ppl], ["twin-a", 98]);
    assert.equal(a.poeVsAverage, 0);
    assert.equal(a.identicalT1Deviation, null);
    const v = verdicts("similar", a);
    assert.equal(v.t1.holds, true);
    assert.equal(v.tuned.holds, true);
  });

  test("mix vs average: at T = 1 (default weights only) and best swept; the mixture's Jensen bound", () => {
    const a = analyse(similar);
    assert.equal(a.atT1.mix!.ppl, 92, "mix@t=1,1;w=0.2,0.8 is not mix at its defaults");
    assert.equal(a.swept.mix!.id, "mix@t=1,1;w=0.2,0.8");
    assert.ok(Math.abs(a.mixVsLogits.t1! - (92 / 90 - 1) * 100) < 1e-9);
    assert.equal(a.swept.average!.ppl, 90);
    assert.ok(Math.abs(a.mixVsLogits.swept! - (88.5 / 90 - 1) * 100) < 1e-9);
    assert.equal(a.mixtureBound!.ppl, 92);
    assert.ok(Math.abs(a.mixtureBound!.geometricMean / Math.sqrt(120 * 100) - 1) < 1e-12, "exp of the mean log: rounding only");
    const none = analyse(identical);
    assert.deepEqual(none.mixVsLogits, { t1: null, swept: null });
    assert.equal(none.mixtureBound, null);
  });

  test("poe vs average: the largest relative difference at equal temperatures", () => {
    const m = metrics(["/m/a", "/m/b"], [100, 100], { average: 90, poe: 90.009, entropy: 91, gap: 92 });
    assert.ok(Math.abs(analyse(m).poeVsAverage! - 1e-4) < 1e-12);
  });
});

describe("verdicts", () => {
  test("a gain is a PPL at least GAIN_PCT below the reference", () => {
    assert.equal(judge("similar", -GAIN_PCT, "x").holds, true);
    assert.equal(judge("similar", -GAIN_PCT + 0.01, "x").holds, false);
    assert.equal(judge("identical", -GAIN_PCT + 0.01, "x").holds, true);
    assert.equal(judge("identical", -GAIN_PCT, "x").holds, false);
    assert.equal(judge("distant", 5, "x").holds, true);
    assert.match(judge("distant", 5, "x").because, /a loss/);
    assert.equal(judge("distant", -3, "x").holds, false);
  });

  test("distant pair: holds at T = 1, not with temperatures tuned", () => {
    const v = verdicts("distant", analyse(distant));
    assert.equal(v.t1.holds, true);
    assert.equal(v.tuned.holds, false);
    assert.match(v.tuned.because, /-4\.04% PPL vs twin-a at T=1\.25/);
  });

  test("percentages (src/format.ts): signed; one that rounds to zero, exactly 0 included, is unsigned", () => {
    assert.equal(fmtPct(-5.583), "-5.58%");
    assert.equal(fmtPct(2.5), "+2.50%");
    assert.equal(fmtPct(-0.0001), "0.00%");
    assert.equal(fmtPct(0.0001), "0.00%");
    assert.equal(fmtPct(0), "0.00%");
    assert.match(judge("identical", 0, "x").because, /^0\.00% PPL vs x \(no change\)/);
  });
});

describe("the page", () => {
  const records = [rec("identical", identical), rec("twins", similar, null), rec("distant", distant)];

  test("one summary row per experiment, with its command, verdicts and wall time", () => {
    const rows = summaryTable(records).split("\n").slice(2);
    assert.equal(rows.length, 3);
    for (const [i, r] of records.entries()) assert.ok(rows[i].includes(`\`${commandFor(r.experiment.name)}\``), rows[i]);
    assert.match(rows[0], /\*\*holds\*\* .*\*\*holds\*\*/);
    assert.match(rows[0], /17\.3 s \(12\.5 s eval\)/);
    assert.match(rows[0], /\| 0\.00% \| \*\*holds\*\* \|/); // the identical pair's Δ at T = 1: exactly 0, unsigned
    assert.match(rows[1], /\| 12\.5 s eval \|/);
    assert.match(rows[2], /\*\*holds\*\* .*\*\*does not hold\*\*/);
  });

  test("findings come from the numbers: disagreements first, retempering is not fusion, poe = average", () => {
    const f = findings(records);
    assert.match(f[0], /^\*\*distant\*\* .* disagrees with "a pair from distant domains gains little or loses": with temperatures tuned .* -4\.04%/);
    assert.match(f[0], /At T = 1 it agrees/);
    const id = f.find((s) => s.startsWith("**identical**"))!;
    assert.match(id, /identical to the last bit/);
    assert.match(id, /seems to gain: average@t=1,1\.25 is -3\.10%/);
    assert.match(id, /T = 1 \/ mean\(1\/T\) = 1\.111/);
    assert.match(id, /not a gain from fusing/);
    assert.ok(f.some((s) => s.startsWith("`poe` with its default betas") && s.includes("identical to the last bit")));
    assert.ok(f.some((s) => s.startsWith("Grid edges:")));
  });

  test("mix vs average on every pair, and the mixture's bound, from the numbers", () => {
    const f = findings(records);
    const mix = f.find((s) => s.startsWith("`mix`"))!;
    assert.ok(mix.includes(`**twins** ${fmtPct((92 / 90 - 1) * 100)} at T = 1 (92.00 vs 90.00)`), mix);
    assert.ok(mix.includes(`${fmtPct((88.5 / 90 - 1) * 100)} with temperatures swept (mix@t=1,1;w=0.2,0.8 88.50 vs average 90.00)`), mix);
    assert.ok(mix.includes(`**distant** ${fmtPct((104 / 110 - 1) * 100)} at T = 1`), mix);
    assert.match(mix, /Over the 2 pairs of two different models the mixture is the better of the two in 1 at T = 1 and in 2 with temperatures swept/);
    const bound = f.find((s) => s.startsWith("The mixture's guarantee"))!;
    assert.match(bound, /holds in every experiment/);
    assert.ok(bound.includes(`twins 92.00 ≤ ${Math.sqrt(120 * 100).toFixed(2)}`), bound);
    const broken = findings([rec("twins", metrics(["/m/a", "/m/b"], [100, 100], { average: 90, poe: 90, entropy: 91, gap: 92, mix: 101 }))]);
    assert.match(broken.find((s) => s.startsWith("The mixture's guarantee"))!, /FAILS in twins/);
  });

  test("the identical pair with a swept gain beyond tempering (mix of one model at two temperatures): said to come from no second model", () => {
    const m = metrics(["/m/twin-a", "/m/twin-a"], [100, 100], { average: 100, poe: 100, entropy: 100, gap: 100, mix: 100 }, [
      fusion("average", [1.25, 1.25], 97),
      fusion("mix", [0.8, 1.25], 95),
    ]);
    const f = findings([rec("identical", m)]);
    assert.match(f[0], /^\*\*identical\*\* .* disagrees with "an identical pair gains nothing": with temperatures tuned the best fusion \(mix@t=0\.8,1\.25, PPL 95\.00\)/);
    const id = f.find((s) => s.startsWith("**identical**") && s.includes("all five strategies"))!;
    assert.match(id, /mix of one model at temperatures 0\.8 and 1\.25 is a mixture of two tempered copies of the model/);
    assert.ok(id.includes(`the fusion is ${fmtPct((95 / 97 - 1) * 100)} from that`), id);
    assert.ok(id.includes(`About ${Math.round(((97 / 100 - 1) / (95 / 100 - 1)) * 100)}% of the apparent gain`), id);
    assert.match(id, /comes from no second model/);
    assert.doesNotMatch(id, /it is not a gain from fusing/);
  });

  test("no disagreement: says so", () => {
    const f = findings([rec("identical", identical), rec("twins", similar)]);
    assert.match(f[0], /^No outright disagreement/);
  });

  test("the whole page builds and names every config", () => {
    const page = buildPage(records, { startedAt: new Date(0), loadAtStart: [1, 2, 3], totalSeconds: 50 });
    assert.match(page, /^# Experiments/);
    assert.match(page, /## Where the measurements disagree with the heuristics/);
    for (const r of records) assert.ok(page.includes(`configs/experiments/${r.experiment.name}.yaml`));
    assert.match(page, /50\.0 s for all runs/);
    assert.match(page, /over a temperature grid \(3 × 3 pairs of temperatures\)/);
  });
});

describe("byte space", () => {
  // Byte-space metrics: every byte scored (scored_tokens = bytes), so bits/byte = log2(byte PPL).
  const B = 1000;
  const bytesMetrics = (refs: string[], modelPpl: number[], fusions: F[] = [], extra: Partial<MetricsInput> = {}): MetricsInput => ({
    kotara_version: "0.1.0", space: "bytes",
    dataset: { path: "/x/one.txt", bytes: B, words: 150, tokens: B, scored_tokens: B, windows: 1, max_length: 1024, stride: 1024 },
    models: refs.map((ref, i) => ({ ref, ppl: modelPpl[i], bits_per_byte: Math.log2(modelPpl[i]) })),
    fusions, sweep: null, bytes: { beam: 8, prune: 0, models: refs.map((ref) => ({ ref, pruned: 3, max_pruned_share: 0.25 })) },
    runtime: { device: "cpu", dtype: "float32", torch: "2.x", transformers: "5.x", seconds: 4 }, ...extra,
  });
  const tokenMetrics = (refs: string[], bpb: number[]): MetricsInput => ({
    ...bytesMetrics(refs, bpb.map((b) => 2 ** b)), space: "tokens",
    models: refs.map((ref, i) => ({ ref, ppl: 99, bits_per_byte: bpb[i] })),
  });

  test("the cross-tokenizer pair is judged in bits per byte: a gain is GAIN_PCT% lower byte PPL", () => {
    assert.ok(Math.abs(2 ** GAIN_BPB - (1 - GAIN_PCT / 100)) < 1e-15);
    // model 2 is better (PPL 3.9); average gains just past the threshold, entropy just short of it
    const gainPpl = 3.9 * 2 ** (GAIN_BPB - 1e-4);
    const shortPpl = 3.9 * 2 ** (GAIN_BPB + 1e-4);
    const m = bytesMetrics(["/m/cousin", "/m/sibling"], [4.3, 3.9], [
      ...["average", "poe", "entropy", "gap"].map((t) => fusion(t, [1, 1], t === "entropy" ? shortPpl : t === "gap" ? 4.0 : gainPpl)),
      fusion("poe", [1, 1.25], 3.8, { betas: [0, 1], id: "alone:sibling@t=1.25" }),
      fusion("entropy", [1.25, 1], 3.8 * 2 ** (GAIN_BPB + 1e-4)),
    ]);
    const x = analyseCross(m);
    const near = (a: number, b: number) => Math.abs(a - b) < 1e-12;   // ln(ppl)·n/(ln 2·B) vs log2(ppl): rounding only
    assert.ok(near(x.bestModel, Math.log2(3.9)));
    assert.ok(Math.abs(x.gainT1 - (GAIN_BPB - 1e-4)) < 1e-12, String(x.gainT1));
    assert.ok(near(x.bestTempered, Math.log2(3.8)));
    assert.ok(Math.abs(x.gainTuned - (GAIN_BPB + 1e-4)) < 1e-12);
    const rec = { experiment: CROSS_TOKENIZER, metrics: m, wallSeconds: 9 };
    const [finding] = byteFindings(rec, null, []);
    assert.match(finding, /gains at T = 1 \(average: −0\.0146 bits\/byte vs sibling\) and does not gain with temperatures tuned \(entropy@t=1\.25,1: −0\.0144/);
    const section = crossSection(rec);
    assert.match(section, /\| sibling \(best\) \| 1\.9635 \| 1\.9260 \| 1\.25 \| 25% \|/);
    assert.match(section, /the best fusion, average, is −0\.0146 bits\/byte \(a gain\)/);
    assert.match(section, /is −0\.0144 bits\/byte \(less than a gain\) vs the best tempered model \(sibling at T = 1\.25/);
    assert.throws(() => analyseCross({ ...m, space: "tokens" }), /not byte space/);
  });

  test("byte vs token space per model: the inequality, the difference and the mass off the canonical tokenization", () => {
    const bytes = bytesMetrics(["/m/twin-a", "/m/cousin"], [2 ** 2.0, 2 ** 2.2]);
    const tokens = [tokenMetrics(["/m/twin-a"], [2.01]), tokenMetrics(["/m/cousin", "/m/cousin"], [2.1, 2.1])];
    const rows = spacesRows(bytes, tokens);
    assert.deepEqual(rows.map((r) => [r.model, r.tokenBpb, r.byteBpb]), [["twin-a", 2.01, 2.0], ["cousin", 2.1, 2.2]]);
    const table = spacesSection(bytes, tokens).split("\n").filter((l) => l.startsWith("| twin-a") || l.startsWith("| cousin"));
    // twin-a: 0.01 bits/byte less over 1000 bytes: p(canonical)/Q = 2^-10, so 99.9% of Q is elsewhere
    assert.match(table[0], /\| twin-a \| 2\.0100 \| 2\.0000 \| −0\.0100 \| \*\*yes\*\* \| 2\^−10 \| 99\.9% \| 25% \|/);
    assert.match(table[1], /\| cousin \| 2\.1000 \| 2\.2000 \| \+0\.1000 \| \*\*no\*\* \| 2\^\+100 \|/);
    const [finding] = byteFindings(null, bytes, tokens);
    assert.match(finding, /\*\*fails\*\* for cousin/);
    assert.match(byteFindings(null, bytesMetrics(["/m/twin-a"], [2 ** 2.0]), [tokens[0]])[0], /\*\*holds\*\* for every demo model, by 0\.0100 to 0\.0100 bits per byte/);
    // the conditions: one window in both spaces, the same text, a token run of every model
    assert.throws(() => spacesRows({ ...bytes, dataset: { ...bytes.dataset, windows: 2 } }, tokens), /one window in both spaces/);
    assert.throws(() => spacesRows(bytes, [{ ...tokens[0], dataset: { ...tokens[0].dataset, path: "/x/other.txt" } }]), /different texts/);
    assert.throws(() => spacesRows(bytes, [tokens[0]]), /no token-space run of \/m\/cousin/);
  });
});
