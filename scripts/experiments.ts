// `npm run experiments`: tests the original research's three heuristics on Kotara's demo
// models and writes docs/experiments.md from the measurements.
//
//   npm run experiments                   # run every config, then write the page (≈ 2-5 min on 2 cores)
//   npm run experiments -- --no-run       # rewrite the page from the metrics already in results/experiments/
//   npm run experiments -- --only twins   # run one experiment (repeatable); the page uses the others' last results
//   nice -n 5 npm run experiments         # on a shared machine (the worker inherits the niceness)
//   npm run experiments -- --help         # every option
//
// Each experiment is one committed config, configs/experiments/<name>.yaml, run by the real
// CLI exactly as the page's rows say (`./bin/kotara run configs/experiments/<name>.yaml`,
// here with --quiet). The page's numbers and its prose are computed from the metrics files
// those runs write (results/experiments/<name>.json); no number on the page is typed in.
//
// The heuristics (from the research that Kotara generalizes):
//   1. an identical pair (a model with itself) gains nothing;
//   2. a similar pair (twins: same architecture and data, other seed; siblings: other
//      architecture, same data) gains;
//   3. a pair from distant domains gains little or loses.
// "Gain" is measured two ways: at T = 1 (the fusion itself), and with temperatures tuned on
// the grid, against the best *tempered* single model (temperature scaling of one model is not
// fusion, and an identical pair "fused" at two temperatures is only a retempered model).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg, release, totalmem, type as osType } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { ParseArgsConfig } from "node:util";
import { UsageError, parseFlags } from "./cli-flags.js";
import { fmtInt, fmtNum, fmtPct, fmtPpl, fmtWeights } from "../src/format.js";
import type { StrategyType } from "../src/protocol.js";
import { KNOWN_STRATEGIES, defaultParam, isKnownStrategy, paramsOf } from "../src/strategies.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** A fusion is a "gain" when its PPL is at least this many percent below the reference. */
export const GAIN_PCT = 1;

export type Heuristic = "identical" | "similar" | "distant";

export interface Experiment {
  name: string;
  heuristic: Heuristic;
  /** What is fused, in words. */
  pair: string;
  /** Which held-out text. */
  text: "docs" | "code";
}

export const EXPERIMENTS: Experiment[] = [
  { name: "identical", heuristic: "identical", pair: "twin-a + twin-a", text: "docs" },
  { name: "twins", heuristic: "similar", pair: "twin-a + twin-b", text: "docs" },
  { name: "siblings", heuristic: "similar", pair: "twin-a + sibling", text: "docs" },
  { name: "distant", heuristic: "distant", pair: "twin-a + far", text: "docs" },
  { name: "distant-code", heuristic: "distant", pair: "twin-a + far", text: "code" },
];

export const HEURISTIC_TEXT: Record<Heuristic, string> = {
  identical: "an identical pair gains nothing",
  similar: "a similar pair gains",
  distant: "a pair from distant domains gains little or loses",
};

/**
 * Byte space (SPEC §7), the page's last section. A pair whose tokenizers differ, judged as a
 * similar pair (same data) but in bits per byte; and every demo model in both spaces on one
 * window of text (`SPACES`: their metrics files), where byte ≤ token bits per byte must hold.
 */
export const CROSS_TOKENIZER: Experiment = { name: "cross-tokenizer", heuristic: "similar", pair: "cousin + sibling", text: "docs" };
export const SPACES = { bytes: "spaces-bytes", tokens: ["spaces-tokens", "spaces-tokens-cousin"] } as const;
/** Every config `npm run experiments` runs, in order. */
export const RUN_NAMES: readonly string[] = [...EXPERIMENTS.map((e) => e.name), CROSS_TOKENIZER.name, SPACES.bytes, ...SPACES.tokens];

// What the page knows about strategies beyond the registry (src/strategies.ts declares
// each type's parameters and default betas, not these facts of their arithmetic); the
// names are checked against the registry when this module loads.
/**
 * Pairs [a, b] where a at its default parameters is b: poe with betas 1/N each is
 * average (Σ β_m log p_m and Σ y_m / N differ by a constant per position, which the
 * softmax removes). The page measures it (Analysis.poeVsAverage) and counts the two as one.
 */
export const SAME_AT_DEFAULTS: readonly (readonly [StrategyType, StrategyType])[] = [["poe", "average"]];
/** Types whose fusion weights α_m change from position to position (data-dependent). */
export const PER_POSITION_WEIGHTS: readonly StrategyType[] = ["entropy", "gap"];
/**
 * [mixture, logits]: a mixture of the models' probabilities (log Σ w_m p_m) against the
 * plain mean of their logits, both with the same 1/N shares at their defaults. The page
 * compares the two on every pair (Analysis.mixVsLogits).
 */
export const MIXTURE_VS_LOGITS: readonly [StrategyType, StrategyType] = ["mix", "average"];
for (const t of [...SAME_AT_DEFAULTS.flat(), ...PER_POSITION_WEIGHTS, ...MIXTURE_VS_LOGITS]) {
  if (!isKnownStrategy(t)) throw new Error(`scripts/experiments.ts names strategy "${t}", which src/strategies.ts does not declare`);
}
const [SAME_A, SAME_B] = SAME_AT_DEFAULTS[0];
const [MIXTURE, LOGITS] = MIXTURE_VS_LOGITS;

/** "five" for the five strategies the registry declares (prose that counts them). */
const STRATEGY_COUNT = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][KNOWN_STRATEGIES.length] ?? String(KNOWN_STRATEGIES.length);

/** Types that take betas (the registry declares them). */
const takesBetas = (type: string) => isKnownStrategy(type) && paramsOf(type).includes("betas");

export function commandFor(name: string): string {
  return `./bin/kotara run configs/experiments/${name}.yaml`;
}

// ---------------------------------------------------------------------------- metrics input

/** The parts of a Kotara metrics file (SPEC §6, src/report.ts) that this script reads. */
export interface MetricsInput {
  kotara_version: string;
  /** tokens | bytes (SPEC §7); absent in metrics from before byte space (tokens). */
  space?: "tokens" | "bytes";
  dataset: { path: string; bytes: number; words: number; tokens: number; scored_tokens: number; windows: number; max_length: number; stride: number };
  models: { ref: string; ppl: number; bits_per_byte?: number }[];
  fusions: {
    id: string;
    /** Every list the registry declares (betas, weights); a list missing from an older metrics file reads as null. */
    strategy: { type: string; temperatures: number[]; betas: number[] | null; weights?: number[] | null };
    ppl: number;
    bits_per_byte?: number;
    weights_mean: number[];
  }[];
  /** Byte space: the beam and how much each model's beam pruned. */
  bytes?: { beam: number; prune: number; models: { ref: string; pruned: number; max_pruned_share: number }[] };
  sweep: { strategies: string[]; temperatures: number[][] } | null;
  runtime: { device: string; dtype: string; torch: string; transformers: string; python?: string; seconds: number; tokens_per_second?: number };
}

// ---------------------------------------------------------------------------- analysis

export interface FusionPoint {
  id: string;
  type: StrategyType;
  temperatures: number[];
  ppl: number;
  /** (ppl / best single model at T = 1 − 1) × 100; negative is better. */
  delta: number;
  weights: number[];
  /** A temperature sits at the end of the swept grid (the optimum may lie beyond it). */
  atEdge: boolean;
}

export interface TemperedModel {
  model: number;
  name: string;
  t: number;
  ppl: number;
  /** t is the end of the swept grid (the model's optimum may lie beyond it). */
  atEdge?: boolean;
}

export interface Analysis {
  models: { name: string; ppl: number }[];
  /** Index of the best single model at T = 1. */
  bestModel: number;
  bestModelPpl: number;
  /** Every strategy at its defaults (T = 1, default betas and weights). */
  atT1: Partial<Record<StrategyType, FusionPoint>>;
  /** Per strategy, its lowest-PPL setting (defaults and sweep). */
  swept: Partial<Record<StrategyType, FusionPoint>>;
  bestT1: FusionPoint;
  bestSwept: FusionPoint;
  /** The best single model at any temperature measured (T = 1 and the "alone:" baselines). */
  bestTempered: TemperedModel;
  /** Per model, its best temperature. */
  temperedPerModel: TemperedModel[];
  /** bestT1 vs the best single model, %. */
  gainT1: number;
  /** bestSwept vs the best single model at T = 1, % (the naive reading). */
  gainSweptRaw: number;
  /** bestSwept vs the best tempered single model, % (the fair reading). */
  gainSweptVsTempered: number;
  /** Largest |ppl_poe / ppl_average − 1| over settings with the same temperatures (default betas); null if none pair up. */
  poeVsAverage: number | null;
  /** Largest |ppl / ppl_model − 1| of the strategies at T = 1 when all models are the same model; null otherwise. */
  identicalT1Deviation: number | null;
  /** MIXTURE_VS_LOGITS: the mixture's PPL vs the logits' mean, % (negative: the mixture is better), at T = 1 and best swept; null where either is missing. */
  mixVsLogits: { t1: number | null; swept: number | null };
  /**
   * The mixture at T = 1 against the geometric mean of the models' PPLs (weights 1/N): by
   * Jensen, −log Σ w_m p_m ≤ Σ w_m (−log p_m) at every token, so its PPL is at most that mean. Null without it.
   */
  mixtureBound: { ppl: number; geometricMean: number } | null;
}

const pct = (ppl: number, ref: number) => (ppl / ref - 1) * 100;
const allOnes = (ts: number[]) => ts.every((t) => t === 1);
/** Every list the type takes (betas, weights) is its default (the registry's), to float tolerance. */
const defaultLists = (type: StrategyType, strategy: MetricsInput["fusions"][number]["strategy"], n: number) =>
  paramsOf(type).every((p) => {
    const got = strategy[p] ?? null;
    const want = defaultParam(type, p, n);
    if (got === null || want === null) return got === want;
    return got.length === want.length && got.every((b, i) => Math.abs(b - want[i]) < 1e-12);
  });
const lowest = (ps: FusionPoint[]) => ps.reduce((a, b) => (b.ppl < a.ppl ? b : a));

/** A setting with betas (poe: f = Σ β_m log p_m) and exactly one nonzero beta is that model alone at its temperature. */
export function aloneModel(f: MetricsInput["fusions"][number]): number | null {
  if (!takesBetas(f.strategy.type) || !f.strategy.betas) return null;
  const nz = f.strategy.betas.map((b, i) => (b > 0 ? i : -1)).filter((i) => i >= 0);
  return nz.length === 1 ? nz[0] : null;
}

export function modelName(ref: string): string {
  return basename(ref.replace(/[\\/]+$/, ""));
}

/** Is t at an end of a swept grid (with more than one point)? */
const atGridEdge = (t: number, g: number[] | undefined) => !!g && g.length > 1 && (t === Math.min(...g) || t === Math.max(...g));

interface Points {
  atT1: Analysis["atT1"];
  swept: Analysis["swept"];
  temperedPerModel: TemperedModel[];
  /** "type|temps" → ppl of the SAME_AT_DEFAULTS types at their default betas */
  sameAtDefaults: Map<string, number>;
}

/** The fusions sorted out: the strategies at T = 1, the best swept setting per strategy, the single-model baselines. */
function collectPoints(m: MetricsInput, models: Analysis["models"], ref: number): Points {
  const n = m.models.length;
  const grid = m.sweep?.temperatures ?? null;
  const temperedPerModel: TemperedModel[] = models.map((x, i) => ({ model: i, name: x.name, t: 1, ppl: x.ppl }));
  const p: Points = { atT1: {}, swept: {}, temperedPerModel, sameAtDefaults: new Map() };
  for (const f of m.fusions) {
    const alone = aloneModel(f);
    if (alone !== null) {
      const t = f.strategy.temperatures[alone];
      if (f.ppl < temperedPerModel[alone].ppl) temperedPerModel[alone] = { model: alone, name: models[alone].name, t, ppl: f.ppl };
      continue;
    }
    const type = f.strategy.type;
    if (!isKnownStrategy(type)) continue;
    const isDefault = defaultLists(type, f.strategy, n);
    const point: FusionPoint = {
      id: f.id, type, temperatures: f.strategy.temperatures, ppl: f.ppl, delta: pct(f.ppl, ref), weights: f.weights_mean,
      atEdge: grid !== null && f.strategy.temperatures.some((t, i) => atGridEdge(t, grid[i])),
    };
    if (isDefault && allOnes(f.strategy.temperatures) && !p.atT1[type]) p.atT1[type] = { ...point, atEdge: false };
    if (!p.swept[type] || f.ppl < p.swept[type]!.ppl) p.swept[type] = point;
    if (isDefault && (type === SAME_A || type === SAME_B)) p.sameAtDefaults.set(`${type}|${f.strategy.temperatures.join(",")}`, f.ppl);
  }
  return p;
}

/** The identical pair: "average@t=T,T" is the model alone at T, so it counts as a tempered baseline too. */
function identicalPairBaselines(m: MetricsInput, models: Analysis["models"], tempered: TemperedModel[]): void {
  for (const f of m.fusions) {
    const ts = f.strategy.temperatures;
    if (aloneModel(f) === null && ts.every((t) => t === ts[0]) && f.ppl < tempered[0].ppl) {
      tempered[0] = { model: 0, name: models[0].name, t: ts[0], ppl: f.ppl };
    }
  }
}

/** Largest |ppl_a / ppl_b − 1| of SAME_AT_DEFAULTS at the same temperatures; null if none pair up. */
function sameAtDefaultsDeviation(byKey: Map<string, number>): number | null {
  let worst: number | null = null;
  for (const [k, ppl] of byKey) {
    if (!k.startsWith(`${SAME_A}|`)) continue;
    const other = byKey.get(`${SAME_B}|${k.slice(SAME_A.length + 1)}`);
    if (other === undefined) continue;
    const d = Math.abs(ppl / other - 1);
    worst = worst === null ? d : Math.max(worst, d);
  }
  return worst;
}

export function analyse(m: MetricsInput): Analysis {
  const models = m.models.map((x) => ({ name: modelName(x.ref), ppl: x.ppl }));
  let bestModel = 0;
  models.forEach((x, i) => { if (x.ppl < models[bestModel].ppl) bestModel = i; });
  const ref = models[bestModel].ppl;
  const { atT1, swept, temperedPerModel, sameAtDefaults } = collectPoints(m, models, ref);
  const same = new Set(m.models.map((x) => resolve(x.ref))).size === 1;
  if (same) identicalPairBaselines(m, models, temperedPerModel);
  const present = KNOWN_STRATEGIES.filter((t) => atT1[t]);
  if (present.length === 0) throw new Error(`the metrics have none of the strategies (${KNOWN_STRATEGIES.join(", ")}) at their defaults (T = 1)`);
  const bestT1 = lowest(present.map((t) => atT1[t]!));
  const bestSwept = lowest(KNOWN_STRATEGIES.filter((t) => swept[t]).map((t) => swept[t]!));
  for (const t of temperedPerModel) t.atEdge = atGridEdge(t.t, m.sweep?.temperatures?.[t.model]);
  const bestTempered = temperedPerModel.reduce((a, b) => (b.ppl < a.ppl ? b : a));
  const identicalT1Deviation = same ? Math.max(...present.map((t) => Math.abs(atT1[t]!.ppl / models[0].ppl - 1))) : null;
  const versus = (x: FusionPoint | undefined, y: FusionPoint | undefined) => (x && y ? pct(x.ppl, y.ppl) : null);
  const mixVsLogits = { t1: versus(atT1[MIXTURE], atT1[LOGITS]), swept: versus(swept[MIXTURE], swept[LOGITS]) };
  const geometricMean = Math.exp(models.reduce((acc, x) => acc + Math.log(x.ppl), 0) / models.length);
  const mixtureBound = atT1[MIXTURE] ? { ppl: atT1[MIXTURE]!.ppl, geometricMean } : null;
  return {
    models, bestModel, bestModelPpl: ref, atT1, swept, bestT1, bestSwept, bestTempered, temperedPerModel,
    gainT1: bestT1.delta,
    gainSweptRaw: bestSwept.delta,
    gainSweptVsTempered: pct(bestSwept.ppl, bestTempered.ppl),
    poeVsAverage: sameAtDefaultsDeviation(sameAtDefaults), identicalT1Deviation, mixVsLogits, mixtureBound,
  };
}

// ---------------------------------------------------------------------------- verdicts

export interface Verdict {
  holds: boolean;
  /** The number that decides it, in words. */
  because: string;
}

/** Does `delta` (% PPL vs the reference, negative is better) agree with the heuristic? */
export function judge(h: Heuristic, delta: number, reference: string): Verdict {
  const gain = delta <= -GAIN_PCT;
  const holds = h === "similar" ? gain : !gain;
  const what = `${fmtPct(delta)} PPL vs ${reference}` + (Math.abs(delta) < 0.005 ? " (no change)" : delta > 0 ? " (a loss)" : "");
  const rule = h === "similar" ? `a gain needs ≤ -${GAIN_PCT}%` : `a gain would be ≤ -${GAIN_PCT}%`;
  return { holds, because: `${what}; ${rule}` };
}

export function verdicts(h: Heuristic, a: Analysis): { t1: Verdict; tuned: Verdict } {
  return {
    t1: judge(h, a.gainT1, `${a.models[a.bestModel].name} (best model)`),
    tuned: judge(h, a.gainSweptVsTempered, `${a.bestTempered.name} at T=${fmtNum(a.bestTempered.t)} (best tempered model)`),
  };
}

// ---------------------------------------------------------------------------- formatting

// Numbers: src/format.ts (fmtPpl, fmtPct, fmtNum, fmtWeights), as in the report.
/** "… PPLs ${fmtSame(x)}": a largest relative difference that may be exactly 0. */
export function fmtSame(x: number): string {
  return x === 0 ? "are identical to the last bit" : `differ by at most ${x.toExponential(1)} (relative)`;
}
const holdText = (v: Verdict) => (v.holds ? "**holds**" : "**does not hold**");
const esc = (s: string) => s.replace(/\|/g, "\\|");

export interface RunRecord {
  experiment: Experiment;
  metrics: MetricsInput;
  /** Wall seconds of the whole command (process start to exit), or null when not measured by this run. */
  wallSeconds: number | null;
}

/** One row per experiment: the summary table. */
export function summaryTable(records: RunRecord[]): string {
  const out = [
    "| experiment | heuristic | text | best model alone (T=1) | best fusion at T=1 | Δ at T=1 | verdict at T=1 | best swept fusion | vs best model at T=1 | best tempered model | swept fusion vs tempered model | verdict, temperatures tuned | wall time | command |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of records) {
    const a = analyse(r.metrics);
    const v = verdicts(r.experiment.heuristic, a);
    out.push("| " + [
      `${r.experiment.name}: ${r.experiment.pair}`,
      HEURISTIC_TEXT[r.experiment.heuristic],
      r.experiment.text,
      `${a.models[a.bestModel].name} ${fmtPpl(a.bestModelPpl)}`,
      `${a.bestT1.id} ${fmtPpl(a.bestT1.ppl)}`,
      fmtPct(a.gainT1),
      holdText(v.t1),
      `${esc(a.bestSwept.id)} ${fmtPpl(a.bestSwept.ppl)}${a.bestSwept.atEdge ? " (grid edge)" : ""}`,
      fmtPct(a.gainSweptRaw),
      `${a.bestTempered.name} @T=${fmtNum(a.bestTempered.t)} ${fmtPpl(a.bestTempered.ppl)}${a.bestTempered.atEdge ? " (grid edge)" : ""}`,
      fmtPct(a.gainSweptVsTempered),
      holdText(v.tuned),
      wallText(r),
      `\`${commandFor(r.experiment.name)}\``,
    ].join(" | ") + " |");
  }
  return out.join("\n");
}

function wallText(r: RunRecord): string {
  const w = r.wallSeconds === null ? "" : `${r.wallSeconds.toFixed(1)} s`;
  const e = `${r.metrics.runtime.seconds.toFixed(1)} s eval`;
  return w ? `${w} (${e})` : e;
}

/** The detail section of one experiment. */
export function detailSection(r: RunRecord): string {
  const a = analyse(r.metrics);
  const v = verdicts(r.experiment.heuristic, a);
  const d = r.metrics.dataset;
  const grid = r.metrics.sweep?.temperatures;
  const out: string[] = [];
  out.push(`### ${r.experiment.name}: ${r.experiment.pair}, held-out ${r.experiment.text}`);
  out.push("");
  out.push(`Heuristic: *${HEURISTIC_TEXT[r.experiment.heuristic]}*. Command: \`${commandFor(r.experiment.name)}\` ` +
    `(config [configs/experiments/${r.experiment.name}.yaml](../configs/experiments/${r.experiment.name}.yaml)). ` +
    `${fmtInt(d.scored_tokens)} scored tokens (${fmtInt(d.bytes)} bytes) in ${d.windows} windows of ${d.max_length}, stride ${d.stride}; ` +
    `${r.metrics.fusions.length} settings in one pass; wall time ${wallText(r)}.`);
  out.push("");
  out.push("| model alone | PPL at T=1 | best PPL over T (grid) | at T |");
  out.push("| --- | --- | --- | --- |");
  const seen = new Set<string>();
  a.models.forEach((x, i) => {
    const t = a.temperedPerModel[i] ?? a.temperedPerModel[0];
    const row = `| ${x.name}${i === a.bestModel ? " (best)" : ""} | ${fmtPpl(x.ppl)} | ${fmtPpl(t.ppl)} | ${fmtNum(t.t)}${t.atEdge ? " (grid edge)" : ""} |`;
    if (!seen.has(x.name)) out.push(row);
    seen.add(x.name);
  });
  out.push("");
  out.push(`| strategy | PPL at T=1 | Δ vs ${a.models[a.bestModel].name} | mean weights at T=1 | best swept setting | PPL | Δ vs ${a.models[a.bestModel].name} | Δ vs best tempered model |`);
  out.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const t of KNOWN_STRATEGIES) {
    const p = a.atT1[t];
    const s = a.swept[t];
    out.push("| " + [
      t,
      p ? fmtPpl(p.ppl) : "—",
      p ? fmtPct(p.delta) : "—",
      p ? fmtWeights(p.weights) : "—",
      s ? `${esc(s.id)}${s.atEdge ? " (grid edge)" : ""}` : "—",
      s ? fmtPpl(s.ppl) : "—",
      s ? fmtPct(s.delta) : "—",
      s ? fmtPct(pct(s.ppl, a.bestTempered.ppl)) : "—",
    ].join(" | ") + " |");
  }
  out.push("");
  out.push(`- At T = 1: ${holdText(v.t1)} (${v.t1.because}).`);
  out.push(`- Temperatures tuned: ${holdText(v.tuned)} (${v.tuned.because}). ` +
    `Against the untempered best model the best swept fusion reads ${fmtPct(a.gainSweptRaw)}.`);
  if (a.mixVsLogits.t1 !== null) out.push(`- ${MIXTURE} vs ${LOGITS}: ${versusText(a, "t1")}; ${versusText(a, "swept")}.`);
  if (grid) out.push(`- Swept grid: ${grid.map((g, i) => `${a.models[i]?.name ?? `model ${i + 1}`} [${g.map(fmtNum).join(", ")}]`).join("; ")}.`);
  return out.join("\n");
}

// ---------------------------------------------------------------------------- findings

/** One experiment, analysed and judged. */
interface Judged {
  r: RunRecord;
  a: Analysis;
  v: { t1: Verdict; tuned: Verdict };
}

const nameOf = (r: RunRecord) => `**${r.experiment.name}** (${r.experiment.pair}, held-out ${r.experiment.text})`;
const ofHeuristic = (rows: Judged[], h: Heuristic) => rows.filter((x) => x.r.experiment.heuristic === h);
/** "average -9.67%, poe -9.67%, …": the strategies at T = 1 vs the best model. */
const atT1List = (a: Analysis) => KNOWN_STRATEGIES.filter((t) => a.atT1[t]).map((t) => `${t} ${fmtPct(a.atT1[t]!.delta)}`).join(", ");

/**
 * "Where the measurements disagree with the heuristics": sentences built from the numbers,
 * in this order: outright disagreements, then per heuristic (identical, similar, distant),
 * then across experiments (ordering, which strategy wins, poe = average, grid edges, scale).
 */
export function findings(records: RunRecord[]): string[] {
  const rows: Judged[] = records.map((r) => {
    const a = analyse(r.metrics);
    return { r, a, v: verdicts(r.experiment.heuristic, a) };
  });
  return [
    ...disagreements(rows),
    ...ofHeuristic(rows, "identical").map(identicalFinding),
    ...ofHeuristic(rows, "similar").map(similarFinding),
    ...similarPairsCompared(ofHeuristic(rows, "similar")),
    ...distantFindings(ofHeuristic(rows, "distant")),
    ...orderingFinding(ofHeuristic(rows, "similar"), ofHeuristic(rows, "distant")),
    ...strategyCounts(rows.filter((x) => x.r.experiment.heuristic !== "identical")),
    ...sameAtDefaultsFinding(rows),
    ...mixtureFindings(rows),
    gridEdgesFinding(rows),
    scaleFinding(records),
  ];
}

/** Outright disagreements first (or a line saying there are none). */
function disagreements(rows: Judged[]): string[] {
  const disagree = rows.filter((x) => !x.v.t1.holds || !x.v.tuned.holds);
  if (disagree.length === 0) {
    return [`No outright disagreement: every experiment agrees with its heuristic both at T = 1 and with temperatures tuned ` +
      `(a gain means a PPL at least ${GAIN_PCT}% below the reference). The points below are where the agreement needs qualifying.`];
  }
  return disagree.map(({ r, a, v }) => {
    const parts: string[] = [];
    if (!v.t1.holds) parts.push(`at T = 1 the best fusion (${a.bestT1.id}, PPL ${fmtPpl(a.bestT1.ppl)}) is ${fmtPct(a.gainT1)} vs the best model`);
    if (!v.tuned.holds) parts.push(`with temperatures tuned the best fusion (${a.bestSwept.id}, PPL ${fmtPpl(a.bestSwept.ppl)}) is ${fmtPct(a.gainSweptVsTempered)} vs the best tempered model`);
    const agrees = v.t1.holds ? ` At T = 1 it agrees (${v.t1.because}).` : v.tuned.holds ? ` With temperatures tuned it agrees (${v.tuned.because}).` : "";
    return `${nameOf(r)} disagrees with "${HEURISTIC_TEXT[r.experiment.heuristic]}": ${parts.join("; and ")}.${agrees}`;
  });
}

/** Heuristic 1: the identical pair's swept "gain" is temperature, not fusion. */
function identicalFinding({ r, a }: Judged): string {
  const dev = a.identicalT1Deviation;
  let s = `${nameOf(r)}: at T = 1 all ${STRATEGY_COUNT} strategies give the model itself` +
    (dev !== null ? ` (their PPLs and the model's ${fmtSame(dev)})` : "") + ", as they must: fusing a model with itself changes nothing.";
  if (a.gainSweptRaw > -GAIN_PCT) return s;
  const ts = a.bestSwept.temperatures;
  const teff = 1 / (ts.reduce((x, t) => x + 1 / t, 0) / ts.length);
  // the plain mean of one model's tempered logits (and what equals it at its defaults) is that model at one temperature
  const same = a.bestSwept.type === SAME_B || a.bestSwept.type === SAME_A
    ? ` (${a.bestSwept.type} of one model at temperatures ${ts.map(fmtNum).join(" and ")} is that model at T = 1 / mean(1/T) = ${teff.toFixed(3)}, a temperature between the grid's points)`
    : a.bestSwept.type === MIXTURE
      ? ` (${MIXTURE} of one model at temperatures ${ts.map(fmtNum).join(" and ")} is a mixture of two tempered copies of the model, which no single temperature gives)`
      : ` (${a.bestSwept.type} of one model at two temperatures is that model at a per-position temperature)`;
  const confidence = a.bestTempered.t > 1 ? "too confident" : "not confident enough";
  s += ` With temperatures swept the pair seems to gain: ${a.bestSwept.id} is ${fmtPct(a.gainSweptRaw)} vs the model at T = 1${same}. But ${a.bestTempered.name} alone at ` +
    `T = ${fmtNum(a.bestTempered.t)} already reaches ${fmtPpl(a.bestTempered.ppl)} (${fmtPct(pct(a.bestTempered.ppl, a.bestModelPpl))}); ` +
    `the fusion is ${fmtPct(a.gainSweptVsTempered)} from that. `;
  if (a.gainSweptVsTempered > -GAIN_PCT) {
    return s + `The apparent gain is the model being ${confidence} at T = 1, fixed by a temperature; it is not a gain from fusing. ` +
      `Read swept gains against the best tempered single model, not against T = 1.`;
  }
  const share = Math.round((pct(a.bestTempered.ppl, a.bestModelPpl) / a.gainSweptRaw) * 100);
  return s + `About ${share}% of the apparent gain is the model being ${confidence} at T = 1, fixed by a temperature; the rest is real, ` +
    `but it comes from no second model: it is the shape of ${a.bestSwept.type} itself, applied to one model. ` +
    `Read swept gains against the best tempered single model, not against T = 1.`;
}

/** Heuristic 2: how much of a similar pair's gain survives tempering; which strategies fail to gain. */
function similarFinding({ r, a }: Judged): string {
  const noGain = KNOWN_STRATEGIES.filter((t) => a.atT1[t] && a.atT1[t]!.delta > -GAIN_PCT);
  const temperOnly = pct(a.bestTempered.ppl, a.bestModelPpl);
  let s = `${nameOf(r)}: at T = 1 ${atT1List(a)}.`;
  if (noGain.length) s += ` ${noGain.join(" and ")} ${noGain.length > 1 ? "do" : "does"} not gain at T = 1.`;
  s += ` Tempering the best single model alone is worth ${fmtPct(temperOnly)}; the best swept fusion is ${fmtPct(a.gainSweptRaw)} vs the model at T = 1 ` +
    `and ${fmtPct(a.gainSweptVsTempered)} vs the best tempered model, so ` +
    (a.gainSweptRaw < 0 ? `${Math.round((a.gainSweptVsTempered / a.gainSweptRaw) * 100)}% of the swept gain is fusion and the rest temperature.` : "the sweep finds no gain.");
  return s;
}

/** Of two similar pairs, which gains more at T = 1. */
function similarPairsCompared(sim: Judged[]): string[] {
  if (sim.length < 2) return [];
  const [x, y] = [...sim].sort((p, q) => p.a.gainT1 - q.a.gainT1);
  return [`Of the similar pairs, **${x.r.experiment.name}** gains more at T = 1 (${fmtPct(x.a.gainT1)}) than **${y.r.experiment.name}** (${fmtPct(y.a.gainT1)})` +
    (x.r.experiment.name === "siblings" ? ": the pair with *different* architectures (same data) gains more than the same-architecture twins. " +
      "On these models a different architecture helps rather than hurts; what makes a pair \"similar\" enough to gain is the data. " +
      "(The two pairs also differ in quality: the gain is measured against each pair's better model.)" : ".")];
}

/** Heuristic 3: per text, and what the data-dependent weights do. The overlap remark comes once. */
function distantFindings(dist: Judged[]): string[] {
  let overlapNoted = false;
  return dist.map((x) => {
    const s = distantFinding(x, overlapNoted);
    if (x.a.gainSweptVsTempered <= -GAIN_PCT) overlapNoted = true;
    return s;
  });
}

function distantFinding({ r, a }: Judged, overlapNoted: boolean): string {
  const best = a.models[a.bestModel];
  const other = a.models.find((_, i) => i !== a.bestModel)!;
  let s = `${nameOf(r)}: ${best.name} is the in-domain model (PPL ${fmtPpl(best.ppl)}; ${other.name} ${fmtPpl(other.ppl)}, ${(other.ppl / best.ppl).toFixed(1)}× worse). ` +
    `At T = 1: ${atT1List(a)}.` + perPositionWeights(a);
  s += a.gainT1 <= -GAIN_PCT
    ? ` The best fusion still gains ${fmtPct(a.gainT1)}, against the heuristic.`
    : a.gainT1 < 0 ? ` The best fusion gains only ${fmtPct(a.gainT1)}: "gains little", as the heuristic says.`
      : ` Every strategy loses at T = 1, as the heuristic says.`;
  if (a.gainSweptVsTempered > -GAIN_PCT) {
    return s + ` With temperatures tuned the best fusion (${a.bestSwept.id}) is ${fmtPct(a.gainSweptVsTempered)} vs the best tempered model.`;
  }
  const ts = a.bestSwept.temperatures;
  const at = (m: { name: string }, t: number) => `${m.name} at T = ${fmtNum(t)} (${t < 1 ? "sharpened" : t > 1 ? "flattened" : "as is"})`;
  const how = `${at(best, ts[a.bestModel])} and ${at(other, ts[a.models.indexOf(other)])}`;
  return s + ` With temperatures tuned the best fusion, ${a.bestSwept.id} (${how}), is ${fmtPct(a.gainSweptVsTempered)} vs the best tempered model ` +
    `(${a.bestTempered.name} at T = ${fmtNum(a.bestTempered.t)}): ${a.gainT1 > 0 ? "the loss at T = 1 becomes a gain" : "a gain"}, against "gains little or loses". ` +
    `The out-of-domain model still helps once its temperature is tuned${a.bestSwept.atEdge ? " (and the best setting is at the grid's edge, so perhaps more)" : ""}` +
    (overlapNoted ? "." : `. (A possible reason, not measured here: Python docs and Python source share keywords, identifiers and code examples, so these "distant" domains overlap.)`);
}

/** Do the data-dependent weights (PER_POSITION_WEIGHTS) favour the in-domain (best) model? */
function perPositionWeights(a: Analysis): string {
  const best = a.models[a.bestModel];
  const types = PER_POSITION_WEIGHTS.filter((t) => a.atT1[t]);
  if (!types.length) return "";
  const w = types.map((t) => a.atT1[t]!.weights[a.bestModel]);
  const each = types.map((t, k) => `${t} gives ${best.name} a mean weight of ${w[k].toFixed(2)}`).join("; ");
  const even = 1 / a.models.length;
  const of = types.join(" and ");
  if (w.every((x) => x > even)) return ` The per-position weights of ${of} lean toward the in-domain model, but only partly (${each}).`;
  if (w.every((x) => x <= even)) {
    return ` The per-position weights of ${of} do not favour the in-domain model at all (${each}: at most an even share): ` +
      `a confident model is not a model that knows the domain.`;
  }
  return ` The per-position weights disagree about the in-domain model (${each}).`;
}

/** Does every distant experiment gain less at T = 1 than every similar pair? */
function orderingFinding(sim: Judged[], dist: Judged[]): string[] {
  if (!dist.length || !sim.length) return [];
  const worstSim = Math.max(...sim.map((x) => x.a.gainT1));
  const bestDist = Math.min(...dist.map((x) => x.a.gainT1));
  return [bestDist > worstSim
    ? `Ordering: every distant experiment gains less at T = 1 (best ${fmtPct(bestDist)}) than every similar pair (worst ${fmtPct(worstSim)}), as the heuristics order them.`
    : `Ordering: a distant experiment gains at least as much at T = 1 (${fmtPct(bestDist)}) as a similar pair (${fmtPct(worstSim)}), against the heuristics' ordering.`];
}

/** Which strategy wins, across the pairs of two different models (SAME_AT_DEFAULTS counted as one). */
function strategyCounts(diff: Judged[]): string[] {
  if (!diff.length) return [];
  const count = (pick: (a: Analysis) => StrategyType) => {
    const c = new Map<string, number>();
    for (const x of diff) {
      const t = pick(x.a);
      const k = t === SAME_A ? SAME_B : t; // the same distribution (see sameAtDefaultsFinding)
      c.set(k, (c.get(k) ?? 0) + 1);
    }
    return [...c.entries()].sort((p, q) => q[1] - p[1]).map(([k, n]) => `${k === SAME_B ? `${SAME_B}/${SAME_A}` : k} ${n}`).join(", ");
  };
  const worstT1 = (a: Analysis) => KNOWN_STRATEGIES.filter((t) => a.atT1[t]).map((t) => a.atT1[t]!).reduce((p, q) => (q.ppl > p.ppl ? q : p)).type;
  return [`Strategies, over the ${diff.length} experiments with two different models: best at T = 1: ${count((a) => a.bestT1.type)}; ` +
    `worst at T = 1: ${count(worstT1)}; best with temperatures swept: ${count((a) => a.bestSwept.type)} (experiments counted).`];
}

/** poe with default betas is average, measured. */
function sameAtDefaultsFinding(rows: Judged[]): string[] {
  const pv = rows.map((x) => x.a.poeVsAverage).filter((x): x is number => x !== null);
  if (!pv.length) return [];
  return [`\`${SAME_A}\` with its default betas (1/N each) is \`${SAME_B}\`: over every pair of settings with the same temperatures, in every experiment, ` +
    `their PPLs ${fmtSame(Math.max(...pv))}. Σ β_m log p_m and Σ y_m / N differ by a constant per position, which the ` +
    `softmax removes. Its rows are not an independent test; ${SAME_A} differs only with other betas (not swept here).`];
}

/** "+1.23% at T = 1 (mix 98.00 vs average 96.80)"; "—" when either is missing. */
function versusText(a: Analysis, which: "t1" | "swept"): string {
  const x = which === "t1" ? a.atT1[MIXTURE] : a.swept[MIXTURE];
  const y = which === "t1" ? a.atT1[LOGITS] : a.swept[LOGITS];
  const d = a.mixVsLogits[which];
  if (!x || !y || d === null) return "—";
  return which === "t1" ? `${fmtPct(d)} at T = 1 (${fmtPpl(x.ppl)} vs ${fmtPpl(y.ppl)})`
    : `${fmtPct(d)} with temperatures swept (${esc(x.id)} ${fmtPpl(x.ppl)} vs ${esc(y.id)} ${fmtPpl(y.ppl)})`;
}

/** The mixture of probabilities against the mean of logits (MIXTURE_VS_LOGITS), on every pair; and its Jensen bound. */
function mixtureFindings(rows: Judged[]): string[] {
  const have = rows.filter((x) => x.a.mixVsLogits.t1 !== null);
  if (!have.length) return [];
  const each = have.map(({ r, a }) => `**${r.experiment.name}** ${versusText(a, "t1")}, ${versusText(a, "swept")}`).join("; ");
  const diff = have.filter((x) => x.r.experiment.heuristic !== "identical");
  const wins = (w: "t1" | "swept") => diff.filter((x) => (x.a.mixVsLogits[w] ?? 0) < 0).length;
  const out = [`\`${MIXTURE}\` (log Σ w_m p_m: a mixture of the probabilities) against \`${LOGITS}\` (the mean of the tempered logits), ` +
    `both with shares 1/N; PPL of ${MIXTURE} relative to ${LOGITS}: ${each}. ` +
    (diff.length ? `Over the ${diff.length} pairs of two different models the mixture is the better of the two in ${wins("t1")} at T = 1 ` +
      `and in ${wins("swept")} with temperatures swept.` : "")];
  const bounds = have.map((x) => ({ x, b: x.a.mixtureBound })).filter((y): y is { x: Judged; b: NonNullable<Analysis["mixtureBound"]> } => y.b !== null);
  if (bounds.length) {
    const broken = bounds.filter(({ b }) => b.ppl > b.geometricMean * (1 + 1e-9));
    const list = bounds.map(({ x, b }) => `${x.r.experiment.name} ${fmtPpl(b.ppl)} ≤ ${fmtPpl(b.geometricMean)}`).join(", ");
    out.push(broken.length === 0
      ? `The mixture's guarantee holds in every experiment: −log Σ w_m p_m ≤ Σ w_m (−log p_m) at every token (Jensen), so ${MIXTURE}'s PPL at T = 1 is at most ` +
        `the geometric mean of the models' PPLs (${list}). ${LOGITS} has no such bound (a mean of logits can be sharper, and worse, than either model).`
      : `The mixture's guarantee (PPL at T = 1 at most the geometric mean of the models' PPLs, by Jensen) FAILS in ` +
        `${broken.map(({ x }) => x.r.experiment.name).join(", ")} (${list}): a bug to investigate.`);
  }
  return out;
}

/** Best settings at an end of the temperature grid (the optimum may lie beyond it). */
function gridEdgesFinding(rows: Judged[]): string {
  const edges = rows.filter((x) => x.a.bestSwept.atEdge || x.a.bestTempered.atEdge);
  if (!edges.length) {
    return `Every best setting lies inside the temperature grid (none at its ends), so the swept numbers are not cut short by the grid.`;
  }
  const what = (x: Judged) => [
    x.a.bestSwept.atEdge ? `the best fusion ${x.a.bestSwept.id}` : "",
    x.a.bestTempered.atEdge ? `the best tempered model (${x.a.bestTempered.name} at T = ${fmtNum(x.a.bestTempered.t)})` : "",
  ].filter(Boolean).join(" and ");
  return `Grid edges: in ${edges.map((x) => `**${x.r.experiment.name}** ${what(x)}`).join("; in ")} ` +
    `${edges.length > 1 ? "sit" : "sits"} at the end of the temperature grid. A wider grid contains this one, so it could only lower those PPLs further.`;
}

function scaleFinding(records: RunRecord[]): string {
  return `Scale: each experiment is one held-out text of ${[...new Set(records.map((r) => r.metrics.dataset.scored_tokens))].map(fmtInt).join(" or ")} ` +
    `scored tokens and one training seed per model, on ~1M-parameter toy models; differences of a fraction of a percent are not meaningful.`;
}

// ---------------------------------------------------------------------------- the page

export function machineSection(records: RunRecord[], startedAt: Date | null, loadAtStart: number[] | null, totalSeconds: number | null): string {
  const rt = records[0]?.metrics.runtime;
  const cpu = cpus();
  const lines = [
    `- Machine: ${cpu[0]?.model ?? "unknown CPU"}, ${cpu.length} logical cores, ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ${osType()} ${release()}` +
      (loadAtStart ? `; load average at start ${loadAtStart.map((x) => x.toFixed(2)).join(" / ")} (a shared machine: wall times vary with it)` : ""),
    `- Versions: Kotara ${records[0]?.metrics.kotara_version ?? "?"}, Node ${process.version}` +
      (rt ? `, Python ${rt.python ?? "?"}, torch ${rt.torch}, transformers ${rt.transformers}; device ${rt.device}, ${rt.dtype}` : ""),
  ];
  if (startedAt) lines.push(`- Run: ${startedAt.toISOString().replace(/\.\d+Z$/, "Z")}` + (totalSeconds !== null ? `, ${totalSeconds.toFixed(1)} s for all runs` : ""));
  return lines.join("\n");
}

/** "8 × 8" (the grids' sizes, from the metrics). */
function gridText(records: RunRecord[]): string {
  const sizes = [...new Set(records.map((r) => (r.metrics.sweep?.temperatures ?? []).map((g) => g.length).join(" × ")).filter(Boolean))];
  return sizes.join(" or ") || "(no)";
}

/** The byte-space runs the page's last section reads (each null / empty when absent). */
export interface ByteRecords {
  cross: RunRecord | null;
  spacesBytes: MetricsInput | null;
  spacesTokens: MetricsInput[];
}

export function buildPage(records: RunRecord[], opts: { startedAt: Date | null; loadAtStart: number[] | null; totalSeconds: number | null; bytes?: ByteRecords }): string {
  const out: string[] = [];
  out.push("# Experiments: do the research's heuristics hold on Kotara's demo models?");
  out.push("");
  out.push("<!-- Generated by `npm run experiments` (scripts/experiments.ts) from the metrics of the runs below. Do not edit by hand. -->");
  out.push("");
  out.push("The research behind Kotara left three rules of thumb for fusing language models at the level of their next-token distributions:");
  out.push("");
  out.push(`1. ${HEURISTIC_TEXT.identical} (a model fused with itself);`);
  out.push(`2. ${HEURISTIC_TEXT.similar} (twins: same architecture and data, another seed; siblings: another architecture, same data);`);
  out.push(`3. ${HEURISTIC_TEXT.distant}.`);
  out.push("");
  out.push("Each experiment below is one Kotara run of one committed config (`configs/experiments/`), on Kotara's own ~1M-parameter demo models " +
    "([models/demo/](../models/demo/README.md)): `twin-a` and `twin-b` (GPT-2, Python docs, seeds 1 and 2), `sibling` (Llama, the same docs) and `far` " +
    "(GPT-2, Python standard-library source). The texts are the held-out docs and code that `scripts/demo_text.py` extracts from the Python " +
    `interpreter (another Python version gives slightly different text and numbers). Every run evaluates all ${STRATEGY_COUNT} strategies at T = 1, ` +
    "each model alone at the grid's temperatures (`alone:M@t=T`: `poe` with betas [1, 0], which is exactly model M at temperature T), and " +
    `all ${STRATEGY_COUNT} strategies over a temperature grid (${gridText(records)} pairs of temperatures), from one forward pass per model per window.`);
  out.push("");
  out.push(`**How to read it.** Δ is the PPL relative to a reference (negative is better). A *gain* is a PPL at least ${GAIN_PCT}% below the reference. ` +
    `Each heuristic is judged twice: **at T = 1** (best of the ${STRATEGY_COUNT} strategies vs the best single model), and **with temperatures tuned** ` +
    "(best swept fusion vs the best single model at its best grid temperature). The second reference matters: sweeping temperatures also " +
    "retempers each model, and a retempered model is not a fusion. \"vs best model at T=1\" is the naive reading of a sweep, shown for comparison.");
  out.push("");
  out.push("## Summary");
  out.push("");
  out.push(summaryTable(records));
  out.push("");
  out.push("## Where the measurements disagree with the heuristics");
  out.push("");
  for (const f of findings(records)) out.push(`- ${f}`);
  out.push("");
  out.push("## Each experiment");
  out.push("");
  for (const r of records) {
    out.push(detailSection(r));
    out.push("");
  }
  if (opts.bytes) out.push(...byteSpacePart(opts.bytes));
  out.push("## Machine and versions");
  out.push("");
  out.push(machineSection(records, opts.startedAt, opts.loadAtStart, opts.totalSeconds));
  out.push("");
  out.push("Reproduce: `npm run experiments` (after `bash scripts/setup.sh`; `nice -n 5 npm run experiments` on a shared machine), " +
    "or any single row with its command. `npm run experiments -- --no-run` rewrites this page from the metrics already in `results/experiments/`.");
  out.push("");
  return out.join("\n");
}

// ---------------------------------------------------------------------------- byte space

/** A gain in bits per byte: GAIN_PCT% lower byte PPL is log2(1 − GAIN_PCT / 100) bits per byte (−0.0145). */
export const GAIN_BPB = Math.log2(1 - GAIN_PCT / 100);

/** Bits per byte of a PPL of `m` (per scored position): nll · n / (ln 2 · bytes); in byte space every byte is scored, so log2(ppl). */
export const bpbOfPpl = (m: MetricsInput, ppl: number) => (Math.log(ppl) * m.dataset.scored_tokens) / (Math.LN2 * m.dataset.bytes);
const fmtBits = (x: number) => x.toFixed(4);
const fmtBitsDelta = (d: number) => `${d > 0 ? "+" : d < 0 ? "−" : ""}${Math.abs(d).toFixed(4)}`;
const fmtShareOf = (x: number) => (x === 0 ? "0" : x >= 0.01 ? `${(100 * x).toFixed(0)}%` : `${(100 * x).toPrecision(2)}%`);

export interface CrossAnalysis {
  a: Analysis;
  /** Bits per byte of each model at T = 1, of the best fusion at T = 1, of the best swept one and the best tempered model. */
  models: number[];
  bestModel: number;
  bestT1: number;
  bestSwept: number;
  bestTempered: number;
  /** bestT1 − the best model; bestSwept − the best tempered model (negative is better). */
  gainT1: number;
  gainTuned: number;
}

export function analyseCross(m: MetricsInput): CrossAnalysis {
  if (m.space !== "bytes") throw new Error(`the cross-tokenizer metrics are in ${m.space ?? "token"} space, not byte space`);
  const a = analyse(m);
  const b = (ppl: number) => bpbOfPpl(m, ppl);
  const bestT1 = b(a.bestT1.ppl);
  const bestSwept = b(a.bestSwept.ppl);
  const bestTempered = b(a.bestTempered.ppl);
  return {
    a, models: a.models.map((x) => b(x.ppl)), bestModel: b(a.bestModelPpl), bestT1, bestSwept, bestTempered,
    gainT1: bestT1 - b(a.bestModelPpl), gainTuned: bestSwept - bestTempered,
  };
}

const gainText = (d: number) => `${fmtBitsDelta(d)} bits/byte` + (d <= GAIN_BPB ? " (a gain)" : d > 0 ? " (a loss)" : " (less than a gain)");

/** The cross-tokenizer pair: the same tables as a token-space experiment, in bits per byte. */
export function crossSection(r: RunRecord): string {
  const m = r.metrics;
  const x = analyseCross(m);
  const { a } = x;
  const b = (ppl: number) => bpbOfPpl(m, ppl);
  const best = a.models[a.bestModel].name;
  const out: string[] = [];
  out.push(`### ${r.experiment.name}: ${r.experiment.pair}, held-out docs (the first ${fmtInt(m.dataset.bytes)} bytes), byte space`);
  out.push("");
  out.push(`Command: \`${commandFor(r.experiment.name)}\` (config [configs/experiments/${r.experiment.name}.yaml](../configs/experiments/${r.experiment.name}.yaml)). ` +
    `${fmtInt(m.dataset.scored_tokens)} scored bytes in ${m.dataset.windows} windows of ${m.dataset.max_length} bytes, stride ${m.dataset.stride}; ` +
    `beam K = ${m.bytes?.beam ?? "?"}${m.bytes?.prune ? `, prune ${m.bytes.prune}` : ""}; ${m.fusions.length} settings in one pass; wall time ${wallText(r)}.`);
  out.push("");
  out.push("| model alone | bits/byte at T=1 | best bits/byte over T (grid) | at T | beam: largest share of a byte's mass pruned |");
  out.push("| --- | --- | --- | --- | --- |");
  a.models.forEach((mm, i) => {
    const t = a.temperedPerModel[i];
    const beam = m.bytes?.models[i];
    out.push(`| ${mm.name}${i === a.bestModel ? " (best)" : ""} | ${fmtBits(x.models[i])} | ${fmtBits(b(t.ppl))} | ${fmtNum(t.t)}${t.atEdge ? " (grid edge)" : ""} | ${beam ? fmtShareOf(beam.max_pruned_share) : "—"} |`);
  });
  out.push("");
  out.push(`| strategy | bits/byte at T=1 | Δ vs ${best} | mean weights at T=1 | best swept setting | bits/byte | Δ vs ${best} | Δ vs best tempered model |`);
  out.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const t of KNOWN_STRATEGIES) {
    const p = a.atT1[t];
    const sw = a.swept[t];
    out.push("| " + [
      t,
      p ? fmtBits(b(p.ppl)) : "—",
      p ? fmtBitsDelta(b(p.ppl) - x.bestModel) : "—",
      p ? fmtWeights(p.weights) : "—",
      sw ? `${esc(sw.id)}${sw.atEdge ? " (grid edge)" : ""}` : "—",
      sw ? fmtBits(b(sw.ppl)) : "—",
      sw ? fmtBitsDelta(b(sw.ppl) - x.bestModel) : "—",
      sw ? fmtBitsDelta(b(sw.ppl) - x.bestTempered) : "—",
    ].join(" | ") + " |");
  }
  out.push("");
  out.push(`- At T = 1: the best fusion, ${a.bestT1.id}, is ${gainText(x.gainT1)} vs ${best}, the better model ` +
    `(a gain is at most ${fmtBitsDelta(GAIN_BPB)} bits/byte: ${GAIN_PCT}% lower byte PPL).`);
  out.push(`- Temperatures tuned: the best swept fusion, ${esc(a.bestSwept.id)}, is ${gainText(x.gainTuned)} vs the best tempered model ` +
    `(${a.bestTempered.name} at T = ${fmtNum(a.bestTempered.t)}, ${fmtBits(x.bestTempered)} bits/byte).`);
  return out.join("\n");
}

export interface SpacesRow {
  model: string;
  tokenBpb: number;
  byteBpb: number;
  /** The beam's largest pruned share of a byte's mass (0: exact). */
  pruned: number;
}

/** Per model: its bits per byte in token space and in byte space (the same text in one window of each). */
export function spacesRows(bytes: MetricsInput, tokens: MetricsInput[]): SpacesRow[] {
  if (bytes.space !== "bytes") throw new Error(`${SPACES.bytes}: the metrics are not in byte space`);
  if (bytes.dataset.windows !== 1 || tokens.some((t) => t.dataset.windows !== 1)) {
    throw new Error("byte vs token space needs the text in one window in both spaces (SPEC §7's inequality holds there)");
  }
  const tokenBpb = new Map<string, number>();
  for (const t of tokens) {
    if (t.dataset.path !== bytes.dataset.path) throw new Error(`byte vs token space on different texts: ${t.dataset.path} and ${bytes.dataset.path}`);
    for (const mm of t.models) tokenBpb.set(resolve(mm.ref), mm.bits_per_byte!);
  }
  return bytes.models.map((mm, i) => {
    const t = tokenBpb.get(resolve(mm.ref));
    if (t === undefined) throw new Error(`no token-space run of ${mm.ref}`);
    return { model: modelName(mm.ref), tokenBpb: t, byteBpb: mm.bits_per_byte!, pruned: bytes.bytes?.models[i]?.max_pruned_share ?? 0 };
  });
}

export function spacesSection(bytes: MetricsInput, tokens: MetricsInput[]): string {
  const rows = spacesRows(bytes, tokens);
  const B = bytes.dataset.bytes;
  const out: string[] = [];
  out.push(`### Byte space next to token space, every demo model`);
  out.push("");
  out.push(`The first ${fmtInt(B)} bytes of the held-out docs, in one window in both spaces, both from the start token ` +
    `(token space: \`bos_per_window: true\`; byte space: K = ${bytes.bytes?.beam ?? "?"}): ` +
    `${SPACES.tokens.map((n) => `\`${commandFor(n)}\``).join(", ")} and \`${commandFor(SPACES.bytes)}\`. ` +
    "The canonical tokenization is one of the covers that byte space sums (SPEC §7), so byte ≤ token bits per byte must hold; " +
    "the difference is the mass on the other tokenizations: with B bytes, p(canonical) / Q(x) = 2^(−B · (token − byte)), " +
    "so the share of Q(x) off the canonical tokenization is 1 − 2^(−B · difference).");
  out.push("");
  out.push("| model | token space bits/byte | byte space bits/byte | byte − token | byte ≤ token | p(canonical) / Q(x) | share of Q(x) off the canonical tokenization | beam: largest pruned share |");
  out.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rows) {
    const d = r.byteBpb - r.tokenBpb;
    const bits = B * d;                       // log2 p(canonical) / Q(x)
    const off = 1 - 2 ** bits;
    out.push(`| ${r.model} | ${fmtBits(r.tokenBpb)} | ${fmtBits(r.byteBpb)} | ${fmtBitsDelta(d)} | ${d <= 0 ? "**yes**" : "**no**"} | ` +
      `2^${bits > 0 ? "+" : bits < 0 ? "−" : ""}${Math.abs(bits).toFixed(1).replace(/\.0$/, "")} | ${off > 0.9999 ? "> 99.99%" : `${(100 * off).toFixed(1)}%`} | ${fmtShareOf(r.pruned)} |`);
  }
  return out.join("\n");
}

/** The byte-space findings: the cross-tokenizer verdicts and the inequality. */
export function byteFindings(cross: RunRecord | null, bytes: MetricsInput | null, tokens: MetricsInput[]): string[] {
  const out: string[] = [];
  if (cross) {
    const x = analyseCross(cross.metrics);
    const best = x.a.models[x.a.bestModel].name;
    const said = (d: number) => (d <= GAIN_BPB ? "gains" : "does not gain");
    out.push(`**${cross.experiment.name}** (${cross.experiment.pair}, different tokenizers) ${said(x.gainT1)} at T = 1 ` +
      `(${x.a.bestT1.id}: ${fmtBitsDelta(x.gainT1)} bits/byte vs ${best}) and ${said(x.gainTuned)} with temperatures tuned ` +
      `(${esc(x.a.bestSwept.id)}: ${fmtBitsDelta(x.gainTuned)} bits/byte vs the best tempered model): ` +
      `${x.gainT1 <= GAIN_BPB && x.gainTuned <= GAIN_BPB ? "like the same-tokenizer similar pairs, a pair trained on the same data gains, across tokenizers." : "see its section."}`);
  }
  if (bytes && tokens.length) {
    const rows = spacesRows(bytes, tokens);
    const ds = rows.map((r) => r.byteBpb - r.tokenBpb);
    const all = ds.every((d) => d <= 0);
    out.push(`Byte ≤ token bits per byte ${all ? "**holds** for every demo model" : "**fails** for " + rows.filter((_, i) => ds[i] > 0).map((r) => r.model).join(", ")}, ` +
      `by ${fmtBits(-Math.max(...ds))} to ${fmtBits(-Math.min(...ds))} bits per byte on this window (K = ${bytes.bytes?.beam ?? "?"}).`);
  }
  return out;
}

function byteSpacePart(b: ByteRecords): string[] {
  const out = ["## Byte space: models whose tokenizers differ", ""];
  out.push("Byte space (SPEC §7) reads each model as a distribution over the next byte (256 bytes and \"end\"), summing over every " +
    "tokenization its beam holds, and fuses those: any two models, whatever their tokenizers, in bits per byte. `cousin` " +
    "(Llama, its own 3072-token sentencepiece-style BPE with byte fallback) shares no vocabulary with the family's 2048-token " +
    "byte-level BPE. A gain here is at least " + `${GAIN_PCT}% lower byte PPL (${fmtBitsDelta(GAIN_BPB)} bits/byte).`);
  out.push("");
  for (const f of byteFindings(b.cross, b.spacesBytes, b.spacesTokens)) out.push(`- ${f}`);
  out.push("");
  if (b.cross) out.push(crossSection(b.cross), "");
  if (b.spacesBytes && b.spacesTokens.length) out.push(spacesSection(b.spacesBytes, b.spacesTokens), "");
  return out;
}

// ---------------------------------------------------------------------------- running

interface Options {
  run: boolean;
  only: string[];
  out: string;
}

const HELP = () => `usage: npm run experiments -- [--no-run] [--only NAME]... [--out FILE]

Runs each experiment's committed config (configs/experiments/NAME.yaml) with the real CLI,
then writes the page (docs/experiments.md) from the metrics in results/experiments/.

  --no-run       run nothing: rewrite the page from the metrics already in results/experiments/
  --only NAME    run only this experiment (repeatable); the page uses the others' last metrics.
                 NAME is one of: ${RUN_NAMES.join(", ")}
  --out FILE     where to write the page (default docs/experiments.md)
  -h, --help     this text
`;

const OPTION_SPEC = {
  "no-run": { type: "boolean" },
  only: { type: "string", multiple: true },
  out: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];


/** The options, or null after --help has been printed. */
function parseOptions(argv: string[]): Options | null {
  const values = parseFlags(argv, OPTION_SPEC, HELP());
  if (!values) return null;
  const only = values.only ?? [];
  for (const v of only) {
    if (!RUN_NAMES.includes(v)) throw new UsageError(`--only needs one of: ${RUN_NAMES.join(", ")}; got ${JSON.stringify(v)}`);
  }
  return { run: !values["no-run"], only, out: values.out !== undefined ? resolve(values.out) : join(ROOT, "docs", "experiments.md") };
}

const metricsPath = (name: string) => join(ROOT, "results", "experiments", `${name}.json`);

function readMetrics(name: string): MetricsInput {
  const p = metricsPath(name);
  if (!existsSync(p)) throw new Error(`no metrics for "${name}" at ${p}: run \`npm run experiments\` (or ${commandFor(name)})`);
  return JSON.parse(readFileSync(p, "utf8")) as MetricsInput;
}
const wallPath = (name: string) => join(ROOT, "results", "experiments", `${name}.wall.json`);

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

function ensureBuilt(): void {
  const cli = join(ROOT, "dist", "cli.js");
  if (existsSync(cli) && statSync(cli).mtimeMs >= newestMtime(join(ROOT, "src"))) return;
  process.stderr.write("experiments: dist/ is missing or older than src/; running npm run build\n");
  const r = spawnSync("npm", ["run", "build", "--silent"], { cwd: ROOT, stdio: "inherit" });
  if (r.status !== 0) throw new Error("npm run build failed");
}

function runOne(name: string): number {
  const args = ["run", `configs/experiments/${name}.yaml`, "--quiet"];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(join(ROOT, "bin", "kotara"), args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) {
    process.stderr.write(r.stdout ?? "");
    process.stderr.write(r.stderr ?? "");
    throw new Error(`${commandFor(name)} failed (exit ${r.status ?? r.signal})`);
  }
  mkdirSync(dirname(wallPath(name)), { recursive: true });
  writeFileSync(wallPath(name), JSON.stringify({ command: commandFor(name), wall_seconds: wall, finished_at: new Date().toISOString() }, null, 2) + "\n");
  return wall;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (!o) return;
  const startedAt = new Date();
  const loadAtStart = loadavg();
  const toRun = o.run ? RUN_NAMES.filter((n) => o.only.length === 0 || o.only.includes(n)) : [];
  if (toRun.length) ensureBuilt();
  let total = 0;
  for (const [i, name] of toRun.entries()) {
    process.stderr.write(`[${i + 1}/${toRun.length}] ${commandFor(name)} --quiet … `);
    const w = runOne(name);
    total += w;
    process.stderr.write(`${w.toFixed(1)} s\n`);
  }
  const record = (e: Experiment): RunRecord => {
    const w = existsSync(wallPath(e.name)) ? (JSON.parse(readFileSync(wallPath(e.name), "utf8")) as { wall_seconds: number }).wall_seconds : null;
    return { experiment: e, metrics: readMetrics(e.name), wallSeconds: w };
  };
  const records = EXPERIMENTS.map(record);
  const bytes: ByteRecords = { cross: record(CROSS_TOKENIZER), spacesBytes: readMetrics(SPACES.bytes), spacesTokens: SPACES.tokens.map(readMetrics) };
  const fullRun = toRun.length === RUN_NAMES.length;
  const page = buildPage(records, {
    startedAt: toRun.length ? startedAt : null, loadAtStart: toRun.length ? loadAtStart : null, totalSeconds: fullRun ? total : null, bytes,
  });
  mkdirSync(dirname(o.out), { recursive: true });
  writeFileSync(o.out, page);
  process.stderr.write(`wrote ${o.out}${toRun.length ? ` (runs: ${total.toFixed(1)} s)` : ""}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`experiments: ${(e as Error).message}\n`);
    process.exit(e instanceof UsageError ? 2 : 1);
  });
}
