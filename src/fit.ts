// Fitting on the controller's side (`kotara fit`, session.fit; docs/fitting.md): the
// options of a fit request, the default comparison grid, the comparison of the fitted
// rules with the grid (the PackLLM-style anchor), the report, and the fitted config.
// The fitting itself runs in the worker (python/kotara_worker/fit.py).
import path from "node:path";
import YAML from "yaml";
import { pairedBootstrap, pairedInterval, type BootstrapOptions } from "./bootstrap.js";
import { DEFAULTS } from "./defaults.js";
import { ConfigError } from "./errors.js";
import { displayRef, fmtBpb, fmtInt, fmtNum, fmtPct, fmtPpl, fmtWeights, table } from "./format.js";
import type { Metrics } from "./metrics.js";
import { FitOptions, type FitKind, type FitResult, type ResultMsg, type Setting, type Space } from "./protocol.js";
import type { RunPlan } from "./plan.js";
import { resolveCommand, resolveRef } from "./paths.js";
import { makeSetting, settingId, settingKey } from "./strategies.js";
import { errorMap, isPlainObject, issueLines } from "./validation.js";

/** The ids of the fitted settings (the worker names them so). */
export const FITTED_IDS: Record<FitKind, string> = { loglinear: "fitted-poe", mix: "fitted-mix" };

/** What a caller may set of a fit (session.fit); everything else from DEFAULTS.fit. */
export interface FitInput {
  /** Which rules (default both: loglinear, then mix). */
  fits?: FitKind[];
  /** The grid of the mix's temperatures (1 is always in it). */
  mixTemperatures?: number[];
  /** The most the log-linear fit may keep (its logits: models × dev positions × vocabulary × 4 bytes). */
  memoryBudgetBytes?: number;
  maxIterations?: number;
  tolerance?: number;
  emMaxIterations?: number;
  emTolerance?: number;
}

/** The wire FitOptions of a FitInput, checked. @throws ConfigError with `fit.<key>: message` lines. */
export function resolveFitOptions(o: FitInput): FitOptions {
  const d = DEFAULTS.fit;
  const options = {
    fits: o.fits ?? [...d.fits],
    mix_temperatures: o.mixTemperatures ?? [...d.mix_temperatures],
    memory_budget_bytes: o.memoryBudgetBytes ?? d.memory_budget_bytes,
    max_iterations: o.maxIterations ?? d.max_iterations,
    tolerance: o.tolerance ?? d.tolerance,
    em_max_iterations: o.emMaxIterations ?? d.em_max_iterations,
    em_tolerance: o.emTolerance ?? d.em_tolerance,
  };
  const r = FitOptions.safeParse(options, { error: errorMap });
  const lines = r.success ? [] : issueLines(r.error, "fit");
  if (new Set(options.fits).size !== options.fits.length) lines.push(`fit.fits: each of mix, loglinear at most once, got ${options.fits.join(", ")}`);
  if (lines.length) throw new ConfigError(lines);
  return r.data!;
}

/**
 * The comparison grid when a config has no sweep: PackLLM's family, weights λ on the
 * simplex in steps of 1/steps (every model's share a multiple of it), at temperatures 1:
 * poe with betas λ (Σ λ_m log p_m: PackLLM's weighted logits) and mix with weights λ.
 */
export function defaultGrid(nModels: number, steps: number = DEFAULTS.fit.grid_steps): Setting[] {
  const points: number[][] = [];
  const walk = (left: number, prefix: number[]) => {
    if (prefix.length === nModels - 1) return points.push([...prefix, left].map((k) => k / steps));
    for (let k = left; k >= 0; k--) walk(left - k, [...prefix, k]);
  };
  walk(steps, []);
  const ones = Array.from({ length: nModels }, () => 1);
  const out: Setting[] = [];
  for (const type of ["poe", "mix"] as const) {
    for (const lambda of points) {
      const param = type === "poe" ? "betas" : "weights";
      const s = makeSetting(type, ones, { [param]: lambda }, "-");
      out.push({ ...s, id: settingId(s, { temperatures: true, params: [param] }) });
    }
  }
  return out;
}

/** A description of the default grid, for the report. */
export function defaultGridLabel(nModels: number, steps: number = DEFAULTS.fit.grid_steps): string {
  const n = defaultGrid(nModels, steps).length;
  return `${n} points: poe and mix at T = 1, weights on the simplex in steps of ${fmtNum(1 / steps)} (PackLLM's family)`;
}

// ---- the comparison -------------------------------------------------------------------

/** The grid points of a fitted rule's own family: static log-linear rules (average, poe) for loglinear, mix for mix. */
export function sameFamily(kind: FitKind, s: Pick<Setting, "type">): boolean {
  return kind === "mix" ? s.type === "mix" : s.type === "average" || s.type === "poe";
}

/** One fitted rule on the test text against a grid's best point there (picked on test). */
export interface AnchorRow {
  id: string;
  kind: FitKind;
  /** Which grid points: those of the rule's own family, or all of them. */
  against: "family" | "grid";
  /** The fitted rule on test, and the best of those grid points on test (picked on test: an oracle). */
  test: number;
  grid_best_id: string;
  grid_best_test: number;
  /** fitted − grid best, mean nats per scored position (negative: the fitted rule is better). */
  delta_nll: number;
  /** The same in bits per byte, with its paired 95% interval over test windows (null: no interval). */
  delta_bits_per_byte: number;
  delta_bits_per_byte_ci95: [number, number] | null;
  ppl_ratio: number;
  ppl_ratio_ci95: [number, number] | null;
  /** fitted ≤ the grid's best on test. */
  beats_or_equals: boolean;
}

export interface Anchor {
  /** Where the grid came from: the config's sweep, or defaultGrid. */
  grid: { source: "sweep" | "default"; size: number; label: string; ids: string[] };
  /** The grid point with the lowest dev NLL (what a grid search on dev picks), and its numbers. */
  picked_on_dev: { id: string; dev: number; test: number };
  /** The grid point with the lowest test NLL (an oracle: chosen on the text it is scored on). */
  best_on_test: { id: string; dev: number; test: number };
  /** The unit of dev/test above: PPL (tokens) or bits per byte (bytes). */
  unit: "ppl" | "bits_per_byte";
  rows: AnchorRow[];
}

/** The report's number of a model or a fusion: PPL in token space, bits per byte in byte space. */
function headline(space: Space) {
  return (x: { ppl: number; bits_per_byte: number }) => (space === "bytes" ? x.bits_per_byte : x.ppl);
}

/**
 * The fitted rules against the grid on test: each against the best grid point of its own
 * family and against the best of the whole grid (both picked on test), with paired 95%
 * intervals of the difference over the test windows.
 */
export function compareWithGrid(dev: Metrics, test: Metrics, testResult: ResultMsg, gridIds: readonly string[],
  grid: { source: "sweep" | "default"; label: string }, fits: readonly FitResult[], bootstrap: BootstrapOptions = DEFAULTS.bootstrap): Anchor {
  if (gridIds.length === 0) throw new Error("compareWithGrid needs a grid");
  const num = headline(test.space);
  const devBy = new Map(dev.fusions.map((f) => [f.id, f]));
  const testIndex = new Map(test.fusions.map((f, i) => [f.id, i]));
  const argmin = (m: Metrics, ids: readonly string[]) => {
    const by = new Map(m.fusions.map((f) => [f.id, f]));
    return ids.reduce((best, id) => (by.get(id)!.nll < by.get(best)!.nll ? id : best), ids[0]);
  };
  const pick = (id: string) => ({ id, dev: num(devBy.get(id)!), test: num(test.fusions[testIndex.get(id)!]) });
  const sums = testResult.sums;
  const boot = pairedBootstrap(sums.window_bytes, sums.window_targets, test.dataset.bytes, bootstrap);
  const onTest = argmin(test, gridIds);
  const row = (fit: FitResult, against: AnchorRow["against"], best: string): AnchorRow => {
    const k = testIndex.get(fit.setting.id)!;
    const g = testIndex.get(best)!;
    const diff = sums.fusion_nll[k] - sums.fusion_nll[g];
    const ci = boot ? pairedInterval(boot, sums.window_fusion_nll[k], sums.window_fusion_nll[g]) : null;
    return {
      id: fit.setting.id, kind: fit.kind, against, test: num(test.fusions[k]), grid_best_id: best, grid_best_test: num(test.fusions[g]),
      delta_nll: diff / sums.scored_tokens, delta_bits_per_byte: diff / (Math.LN2 * test.dataset.bytes),
      delta_bits_per_byte_ci95: ci?.delta_bits_per_byte ?? null, ppl_ratio: Math.exp(diff / sums.scored_tokens),
      ppl_ratio_ci95: ci ? ci.ppl_ratio : null, beats_or_equals: diff <= 0,
    };
  };
  const rows: AnchorRow[] = [];
  for (const fit of fits) {
    const family = gridIds.filter((id) => sameFamily(fit.kind, test.fusions[testIndex.get(id)!].strategy));
    const familyBest = family.length ? argmin(test, family) : null;
    if (familyBest) rows.push(row(fit, "family", familyBest));
    if (familyBest !== onTest) rows.push(row(fit, "grid", onTest));
  }
  return {
    grid: { ...grid, size: gridIds.length, ids: [...gridIds] }, picked_on_dev: pick(argmin(dev, gridIds)), best_on_test: pick(onTest),
    unit: test.space === "bytes" ? "bits_per_byte" : "ppl", rows,
  };
}

// ---- the report -----------------------------------------------------------------------

export interface FitReport {
  kotara_version: string;
  space: Space;
  config: string | null;
  /** The ids of the config's own strategies (the defaults), as evaluated. */
  strategies: string[];
  /** The fitted config `kotara run` accepts (its dataset: the test text). */
  fitted_config: string | null;
  fits: FitResult[];
  /** What the fit kept per position, and how long it took. */
  fit: { positions: number; kept_bytes: number; seconds: number; fit_seconds: number; peak_memory_bytes: number };
  anchor: Anchor;
  dev: Metrics;
  test: Metrics;
}

function describeFit(f: FitResult, grid: readonly number[]): string {
  const c = f.coefficients;
  if (f.kind === "loglinear") {
    const sum = c.reduce((a, b) => a + b, 0);
    const held = f.at_bound.some(Boolean) ? `; held at 0: ${f.at_bound.map((b, m) => (b ? `model ${m + 1}` : null)).filter(Boolean).join(", ")}` : "";
    return `log-linear f = Σ c_m z_m, c = ${c.map((x) => x.toFixed(4)).join(", ")} (weights ${fmtWeights(c.map((x) => x / sum))} ` +
      `at a common T = ${(1 / sum).toFixed(3)})${held}: Newton, ${f.iterations} iteration${f.iterations === 1 ? "" : "s"} ` +
      `(${f.evaluations} passes), |∇| ${f.gradient_norm.toExponential(1)}${f.converged ? "" : ", NOT converged"}`;
  }
  const lo = Math.min(...grid, 1);
  const hi = Math.max(...grid, 1);
  return `mix, weights ${fmtWeights(c)} at T = ${f.setting.temperatures.map(fmtNum).join(", ")}: EM, ${fmtInt(f.iterations)} iterations ` +
    `in ${f.evaluations} run${f.evaluations === 1 ? "" : "s"} (temperatures over ${grid.length} values, ${fmtNum(lo)}–${fmtNum(hi)}), ` +
    `gap ${f.gradient_norm.toExponential(1)}${f.converged ? "" : ", NOT converged"}`;
}

function fmtMiB(n: number): string {
  return `${(n / 2 ** 20).toFixed(n < 10 * 2 ** 20 ? 1 : 0)} MiB`;
}

function textLine(label: string, m: Metrics): string {
  const d = m.dataset;
  const head = `${label} ${displayRef(d.path)}: ${fmtInt(d.bytes)} bytes`;
  return m.space === "bytes"
    ? `${head}, ${fmtInt(d.scored_tokens)} bytes scored in ${fmtInt(d.windows)} windows of ${d.max_length} bytes, stride ${d.stride}`
    : `${head}, ${fmtInt(d.tokens)} tokens (${fmtInt(d.scored_tokens)} scored) in ${fmtInt(d.windows)} windows of ${d.max_length}, stride ${d.stride}`;
}

/** The console report of a fit: what was fitted, then dev and test side by side, then the anchor. */
export function formatFitReport(r: FitReport, mixTemperatures: readonly number[] = DEFAULTS.fit.mix_temperatures): string {
  const bytes = r.space === "bytes";
  const num = headline(r.space);
  const fmt = bytes ? fmtBpb : fmtPpl;
  const unit = bytes ? "bits/byte" : "PPL";
  const rt = r.test.runtime;
  const out = [
    textLine("dev ", r.dev),
    textLine("test", r.test),
    `${rt.device} · ${rt.dtype} · fit ${r.fit.seconds.toFixed(1)} s (optimizers ${r.fit.fit_seconds.toFixed(1)} s) · test ${rt.compute_seconds.toFixed(1)} s · ` +
      `kept ${fmtMiB(r.fit.kept_bytes)} for ${fmtInt(r.fit.positions)} dev positions · peak ${fmtMiB(Math.max(r.fit.peak_memory_bytes, rt.peak_memory_bytes))}`,
    "",
    "Fitted on dev",
    ...r.fits.map((f) => `  ${f.setting.id}  ${describeFit(f, mixTemperatures)}`),
    "",
  ];
  const devBy = new Map(r.dev.fusions.map((f) => [f.id, f]));
  const testBy = new Map(r.test.fusions.map((f) => [f.id, f]));
  const ci = (id: string) => {
    const v = testBy.get(id)!.vs_best_model;
    if (bytes) return v.ci95 ? `[${v.ci95.map(signedBpb).join(", ")}]${v.excludes_zero ? " *" : ""}` : "—";
    return v.ppl_ratio_ci95 ? `[${v.ppl_ratio_ci95.map((x) => fmtPct((x - 1) * 100)).join(", ")}]${v.excludes_zero ? " *" : ""}` : "—";
  };
  const delta = (id: string) => {
    const v = testBy.get(id)!.vs_best_model;
    return bytes ? signedBpb(v.delta_bits_per_byte) : fmtPct((v.ppl_ratio - 1) * 100);
  };
  const rows: string[][] = r.test.models.map((m, i) => [displayRef(m.ref), fmt(num(r.dev.models[i])), fmt(num(m)), "", ""]);
  const fusionRow = (label: string, id: string) => [label, fmt(num(devBy.get(id)!)), fmt(num(testBy.get(id)!)), delta(id), ci(id)];
  for (const id of r.strategies) rows.push(fusionRow(id, id));
  for (const f of r.fits) rows.push(fusionRow(f.setting.id, f.setting.id));
  const a = r.anchor;
  rows.push(fusionRow(`grid, best on dev: ${a.picked_on_dev.id}`, a.picked_on_dev.id));
  rows.push(fusionRow(`grid, best on test: ${a.best_on_test.id}`, a.best_on_test.id));
  out.push(...table(["", `dev ${unit}`, `test ${unit}`, "test Δ vs best model", "test 95% CI"], rows, ["l", "r", "r", "r", "l"]));
  const b = r.test.bootstrap;
  if (b.block_length !== null) out.push(`  Δ and 95% CI vs ${displayRef(b.best_model)} on test (paired block bootstrap over ${fmtInt(b.windows)} windows); * the interval excludes 0`);
  if (b.note) out.push(`  note: ${b.note}`);
  out.push("", `Against the grid: ${a.grid.source === "sweep" ? "the config's sweep" : "the default grid (the config has no sweep)"}, ${a.grid.label}`);
  out.push(`  each fitted rule (fitted on dev) against the grid point that is best on the test text itself: an oracle, PackLLM-style selection by perplexity`);
  const family = { loglinear: "the grid's best static log-linear rule (average, poe)", mix: "the grid's best mix" };
  for (const row of a.rows) {
    const d = bytes ? `${signedBpb(row.delta_bits_per_byte)} bits/byte` : `${fmtPct((row.ppl_ratio - 1) * 100)} PPL`;
    const interval = bytes
      ? row.delta_bits_per_byte_ci95 && `[${row.delta_bits_per_byte_ci95.map(signedBpb).join(", ")}]`
      : row.ppl_ratio_ci95 && `[${row.ppl_ratio_ci95.map((x) => fmtPct((x - 1) * 100)).join(", ")}]`;
    const lohi = bytes ? row.delta_bits_per_byte_ci95 : row.ppl_ratio_ci95 && row.ppl_ratio_ci95.map((x) => x - 1);
    const noise = lohi && lohi[0] <= 0 && lohi[1] >= 0 ? " (the interval includes 0)" : "";
    out.push(`  ${row.id} ${fmt(row.test)} vs ${row.grid_best_id} ${fmt(row.grid_best_test)}: ${d}${interval ? `, 95% CI ${interval}` : ""} — ` +
      (row.beats_or_equals ? "beats or equals " : "worse than ") + (row.against === "family" ? family[row.kind] : "the grid's best") + noise);
  }
  if (r.fitted_config) out.push("", `Fitted config: ${displayRef(r.fitted_config)} (kotara run evaluates it on the test text)`);
  return out.join("\n");
}

function signedBpb(x: number): string {
  const s = x.toFixed(4);
  return s === "0.0000" || s === "-0.0000" ? "0.0000" : `${x > 0 ? "+" : ""}${s}`;
}

// ---- the fitted config ------------------------------------------------------------------

/**
 * A path for a config at `outDir`: relative (starting with "." so that it reads as local)
 * when the two share a top-level directory (a checkout), else absolute.
 */
function relativeTo(outDir: string, abs: string): string {
  const top = (p: string) => path.resolve(p).split(path.sep).filter(Boolean)[0];
  if (top(outDir) !== top(abs)) return abs;
  const rel = path.relative(outDir, abs) || ".";
  return rel.startsWith(".") || path.isAbsolute(rel) ? rel : `./${rel}`;
}

/** A fitted setting as a `strategies:` entry (full precision: the numbers round-trip). */
export function fittedEntry(s: Setting): Record<string, unknown> {
  const entry: Record<string, unknown> = { id: s.id, type: s.type, temperatures: [...s.temperatures] };
  if (s.betas) entry.betas = [...s.betas];
  if (s.weights) entry.weights = [...s.weights];
  return entry;
}

/**
 * The fitted config: the original document with the fitted strategies appended (an entry
 * with a fitted id is replaced), its dataset the test text, every path rewritten for the
 * file's new directory. Returns YAML text with a header that says what was fitted.
 */
export function fittedConfigText(plan: RunPlan, fits: readonly FitResult[], outPath: string, testPath: string, header: string[]): string {
  if (!plan.configPath || !isPlainObject(plan.raw)) throw new Error("fittedConfigText needs a plan read from a config file");
  const configDir = path.dirname(plan.configPath);
  const outDir = path.dirname(path.resolve(outPath));
  const doc = structuredClone(plan.raw) as Record<string, any>;
  if (Array.isArray(doc.models)) {
    doc.models.forEach((m: any, i: number) => {
      if (isPlainObject(m) && typeof m.ref === "string" && resolveRef(m.ref, configDir).local) m.ref = relativeTo(outDir, plan.models[i].ref);
    });
  }
  if (typeof doc.tokenizer === "string" && resolveRef(doc.tokenizer, configDir).local && plan.tokenizer) doc.tokenizer = relativeTo(outDir, plan.tokenizer);
  doc.dataset = { ...doc.dataset, path: relativeTo(outDir, testPath) };
  if (isPlainObject(doc.runtime) && typeof doc.runtime.python === "string" && plan.runtime.python) {
    const resolved = resolveCommand(doc.runtime.python, configDir);
    if (path.isAbsolute(resolved)) doc.runtime.python = relativeTo(outDir, resolved);
  }
  if (isPlainObject(doc.output) && typeof doc.output.metrics === "string" && plan.output.metrics) {
    const name = `${path.basename(outPath).replace(/\.ya?ml$/i, "")}.json`;
    doc.output.metrics = relativeTo(outDir, path.join(path.dirname(plan.output.metrics), name));
  }
  const fittedIds = new Set(fits.map((f) => f.setting.id));
  const kept = Array.isArray(doc.strategies)
    ? doc.strategies.filter((e: unknown) => !(isPlainObject(e) && typeof e.id === "string" && fittedIds.has(e.id)))
    : [];
  doc.strategies = [...kept, ...fits.map((f) => fittedEntry(f.setting))];
  const ordered: Record<string, unknown> = {};
  for (const key of ["space", "bytes", "models", "tokenizer", "dataset", "strategies", "sweep", "runtime", "output", "report"]) {
    if (key in doc) ordered[key] = doc[key];
  }
  for (const key of Object.keys(doc)) if (!(key in ordered)) ordered[key] = doc[key];
  const yaml = new YAML.Document(ordered);
  // lists of numbers or names in flow style ([1, 1]), as the shipped configs write them
  YAML.visit(yaml, { Seq: (_, node) => { if (node.items.every((x) => YAML.isScalar(x))) node.flow = true; } });
  const body = yaml.toString({ lineWidth: 0, flowCollectionPadding: false });
  return header.map((l) => (l ? `# ${l}` : "#")).join("\n") + "\n" + body;
}

/** The header of a fitted config: what was fitted on which text, and the dev and test numbers. */
export function fittedConfigHeader(r: Omit<FitReport, "fitted_config">, command: string): string[] {
  const bytes = r.space === "bytes";
  const num = headline(r.space);
  const fmt = bytes ? fmtBpb : fmtPpl;
  const unit = bytes ? "bits/byte" : "PPL";
  const devBy = new Map(r.dev.fusions.map((f) => [f.id, f]));
  const testBy = new Map(r.test.fusions.map((f) => [f.id, f]));
  return [
    `Written by \`${command}\` (kotara ${r.kotara_version}).`,
    `Fitted on ${displayRef(r.dev.dataset.path)} (${fmtInt(r.fit.positions)} scored ${bytes ? "bytes" : "tokens"}); the dataset below is the test text.`,
    "The config's own strategies (and sweep) are kept; the fitted ones are appended:",
    ...r.fits.map((f) => {
      const what = f.kind === "loglinear"
        ? "the log-linear rule f = Σ c_m z_m, as poe with temperatures 1 and betas = c"
        : "mix, weights by EM at temperatures from a grid";
      return `  ${f.setting.id}: ${what}; ${unit} dev ${fmt(num(devBy.get(f.setting.id)!))}, test ${fmt(num(testBy.get(f.setting.id)!))}`;
    }),
    `Numbers are written in full (shortest round-trip decimals): \`kotara run\` on the dev text reproduces the fit's dev NLL.`,
    "",
  ];
}

/** settingKey → the id a deduplicated request gives that setting. */
export function idsByKey(settings: readonly Setting[]): Map<string, string> {
  return new Map(settings.map((s) => [settingKey(s), s.id]));
}
