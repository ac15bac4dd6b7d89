// Metrics (SPEC §6) from the worker's running sums, the console report, and the files
// a run writes: the metrics JSON (atomically), a CSV of the fusions next to it, and a
// heatmap SVG for two-model temperature sweeps.
//
// From sums to numbers, for a model or a fusion with Σ NLL = S (nats) over n scored
// tokens of a text of B UTF-8 bytes and W words:
//   nll = S / n · ppl = exp(S / n) · bits_per_byte = S / (ln 2 · B) · word_perplexity = exp(S / W)
//   weights_mean[m] = Σ α_m / n
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm } from "node:fs/promises";
import path from "node:path";
import type { RunPlan } from "./config.js";
import { heatmapSvg, heatmapText, heatmapPanels, isTwoModelGrid } from "./heatmap.js";
import type { HelloMsg, LoadedMsg, ModelSpec, ResultMsg, Setting } from "./protocol.js";
import { displayRef, fmtBpb, fmtInt as int, fmtPct, fmtPpl, table } from "./format.js";
import { formatNumber } from "./strategies.js";
import { type Sweep, checkSweep } from "./sweep.js";

// ---- the metrics file -----------------------------------------------------------------

export interface ModelMetrics {
  ref: string;
  ppl: number;
  nll: number;
  bits_per_byte: number;
  word_perplexity: number;
}

export interface FusionMetrics {
  id: string;
  strategy: { type: Setting["type"]; temperatures: number[]; betas: number[] | null };
  ppl: number;
  nll: number;
  bits_per_byte: number;
  word_perplexity: number;
  /** Mean α_m over scored positions, per model (static weights for average/poe). */
  weights_mean: number[];
}

export interface RankedFusion {
  rank: number;
  id: string;
  ppl: number;
  /** (ppl / best single model's ppl − 1) × 100: negative when the fusion is better. */
  delta_vs_best_model_pct: number;
}

export interface Metrics {
  kotara_version: string;
  dataset: {
    path: string;
    bytes: number;
    words: number;
    tokens: number;
    scored_tokens: number;
    windows: number;
    max_length: number;
    stride: number;
    bos_per_window: boolean;
  };
  models: ModelMetrics[];
  /** In request order (the config's strategies, then its sweep). */
  fusions: FusionMetrics[];
  /** The lowest-PPL fusion. */
  best: { id: string; ppl: number } | null;
  /** The lowest-PPL single model. */
  best_model: { ref: string; ppl: number };
  /** Fusions by PPL, best first. */
  ranked: RankedFusion[];
  sweep: Sweep | null;
  runtime: {
    device: string;
    dtype: string;
    torch: string;
    transformers: string;
    python: string;
    worker_version: string;
    /** Wall-clock seconds of the evaluation request. */
    seconds: number;
    /** Seconds of the worker's compute loop. */
    compute_seconds: number;
    load_seconds: number;
    /** Tokens of the text per second of compute. */
    tokens_per_second: number;
    peak_memory_bytes: number;
  };
  // The original research script's keys (two models; from the first fusion).
  baseline_ppl_a?: number;
  baseline_ppl_b?: number;
  fused_ppl?: number;
  strategy?: string;
  temps?: { a: number; b: number };
  poe_betas?: { a: number; b: number };
  weights?: { w_a_mean: number; w_b_mean: number };
  /** The config the run came from, as parsed. */
  config: unknown;
}

/** What an evaluation was asked: a RunPlan, or the same parts from a library session. */
export type MetricsRequest =
  | { plan: RunPlan }
  | {
      models: readonly Pick<ModelSpec, "ref">[];
      dataset: { path: string; max_length: number; stride: number; bos_per_window: boolean };
      settings: readonly Setting[];
      tokenizer?: string | null;
      /** Default: the config's `sweep:` block, when it has one. */
      sweep?: Sweep | null;
      config?: unknown;
    };

export type BuildMetricsInput = MetricsRequest & {
  result: ResultMsg;
  loaded: LoadedMsg;
  hello: HelloMsg;
  /** UTF-8 bytes and words of the text (config.ts datasetStats). */
  bytes: number;
  words: number;
  /** Wall-clock seconds of the evaluation. */
  seconds: number;
  version: string;
};

/** SPEC §6 metrics from a result's sums. @throws Error when the sums do not fit the request. */
export function buildMetrics(input: BuildMetricsInput): Metrics {
  const req =
    "plan" in input
      ? { ...input.plan, config: input.plan.raw }
      : { ...input, sweep: input.sweep === undefined ? sweepOfConfig(input.config, input.models.length) : input.sweep };
  const { result, loaded, hello, bytes, words } = input;
  const { sums } = result;
  const n = sums.scored_tokens;
  const nModels = req.models.length;
  if (sums.model_nll.length !== nModels) {
    throw new Error(`result has ${sums.model_nll.length} model sums for ${nModels} models`);
  }
  if (sums.fusion_nll.length !== req.settings.length || sums.fusion_weights.length !== req.settings.length) {
    throw new Error(`result has ${sums.fusion_nll.length} fusion sums for ${req.settings.length} settings`);
  }
  if (n <= 0) throw new Error("no tokens were scored: the text is too short for one window with a target");

  const stats = (nll: number) => ({
    ppl: Math.exp(nll / n),
    nll: nll / n,
    bits_per_byte: nll / (Math.LN2 * bytes),
    word_perplexity: Math.exp(nll / words),
  });
  const models: ModelMetrics[] = req.models.map((m, i) => ({ ref: m.ref, ...stats(sums.model_nll[i]) }));
  const fusions: FusionMetrics[] = req.settings.map((s, j) => ({
    id: s.id,
    strategy: { type: s.type, temperatures: [...s.temperatures], betas: s.betas ? [...s.betas] : null },
    ...stats(sums.fusion_nll[j]),
    weights_mean: sums.fusion_weights[j].map((w) => w / n),
  }));

  const bestModel = models.reduce((a, b) => (b.ppl < a.ppl ? b : a));
  const order = fusions.map((f, i) => i).sort((a, b) => fusions[a].ppl - fusions[b].ppl || a - b);
  const ranked: RankedFusion[] = order.map((i, k) => ({
    rank: k + 1,
    id: fusions[i].id,
    ppl: fusions[i].ppl,
    delta_vs_best_model_pct: (fusions[i].ppl / bestModel.ppl - 1) * 100,
  }));
  const best = ranked.length ? { id: ranked[0].id, ppl: ranked[0].ppl } : null;

  const metrics: Metrics = {
    kotara_version: input.version,
    dataset: {
      path: req.dataset.path,
      bytes,
      words,
      tokens: result.tokens,
      scored_tokens: n,
      windows: result.windows,
      max_length: req.dataset.max_length,
      stride: req.dataset.stride,
      bos_per_window: req.dataset.bos_per_window,
    },
    models,
    fusions,
    best,
    best_model: { ref: bestModel.ref, ppl: bestModel.ppl },
    ranked,
    sweep: req.sweep ?? null,
    runtime: {
      device: result.device,
      dtype: result.dtype,
      torch: hello.torch,
      transformers: hello.transformers,
      python: hello.python,
      worker_version: hello.worker_version,
      seconds: input.seconds,
      compute_seconds: result.seconds,
      load_seconds: loaded.seconds,
      tokens_per_second: result.seconds > 0 ? result.tokens / result.seconds : 0,
      peak_memory_bytes: result.peak_memory_bytes,
    },
    config: req.config ?? null,
  };

  const first = fusions[0];
  if (nModels === 2 && first) {
    const poe = first.strategy.type === "poe" && first.strategy.betas ? first.strategy.betas : [0.5, 0.5];
    Object.assign(metrics, {
      baseline_ppl_a: models[0].ppl,
      baseline_ppl_b: models[1].ppl,
      fused_ppl: first.ppl,
      strategy: first.strategy.type,
      temps: { a: first.strategy.temperatures[0], b: first.strategy.temperatures[1] },
      poe_betas: { a: poe[0], b: poe[1] },
      weights: { w_a_mean: first.weights_mean[0], w_b_mean: first.weights_mean[1] },
    });
    // keep `config` last, as in the original script's file
    const { config } = metrics;
    delete (metrics as Partial<Metrics>).config;
    metrics.config = config;
  }
  return metrics;
}

function sweepOfConfig(config: unknown, nModels: number): Sweep | null {
  if (typeof config !== "object" || config === null || !("sweep" in config)) return null;
  return checkSweep((config as { sweep: unknown }).sweep, nModels).value;
}

// ---- the console report -----------------------------------------------------------------

export interface ReportOptions {
  /** Fusions listed (best first); the rest are counted. Default 10. */
  top?: number;
  /** Named where the report says that more fusions are in the metrics file. */
  metricsPath?: string | null;
}

/** The text printed on stdout after a run. */
export function formatReport(metrics: Metrics, opts: ReportOptions = {}): string {
  const top = Math.max(1, opts.top ?? 10);
  const d = metrics.dataset;
  const rt = metrics.runtime;
  const out: string[] = [];
  out.push(
    `${displayRef(d.path)}: ${int(d.bytes)} bytes, ${int(d.words)} words, ${int(d.tokens)} tokens ` +
      `(${int(d.scored_tokens)} scored) in ${int(d.windows)} windows of ${d.max_length}, stride ${d.stride}` +
      (d.bos_per_window ? ", BOS per window" : ""),
  );
  out.push(
    `${rt.device} · ${rt.dtype} · ${rt.seconds.toFixed(1)} s (${int(rt.tokens_per_second)} tokens/s) · ` +
      `torch ${rt.torch} · transformers ${rt.transformers}`,
  );

  out.push("", "Models");
  out.push(
    ...table(
      ["", "PPL", "bits/byte", "word PPL"],
      metrics.models.map((m) => [displayRef(m.ref), fmtPpl(m.ppl), fmtBpb(m.bits_per_byte), fmtPpl(m.word_perplexity)]),
      ["l", "r", "r", "r"],
    ),
  );

  const byId = new Map(metrics.fusions.map((f) => [f.id, f]));
  const shown = metrics.ranked.slice(0, top);
  out.push("", metrics.ranked.length > 1 ? "Fusions, best first" : "Fusion");
  out.push(
    ...table(
      ["#", "", "PPL", "Δ vs best model", "bits/byte", "word PPL", "mean weights"],
      shown.map((r) => {
        const f = byId.get(r.id)!;
        return [
          String(r.rank),
          r.id,
          fmtPpl(f.ppl),
          fmtPct(r.delta_vs_best_model_pct),
          fmtBpb(f.bits_per_byte),
          fmtPpl(f.word_perplexity),
          f.weights_mean.map((w) => w.toFixed(2)).join(" / "),
        ];
      }),
      ["r", "l", "r", "r", "r", "r", "l"],
    ),
  );
  const more = metrics.ranked.length - shown.length;
  if (more > 0) {
    const where = opts.metricsPath ? `${displayRef(opts.metricsPath)} (and ${displayRef(sidePath(opts.metricsPath, ".csv"))})` : "the metrics file";
    out.push(`  … ${more} more fusion${more === 1 ? "" : "s"} in ${where}`);
  }

  if (metrics.best) {
    const bm = metrics.best_model;
    const delta = (metrics.best.ppl / bm.ppl - 1) * 100;
    const verdict =
      delta < 0
        ? `${Math.abs(delta).toFixed(2)}% below the best single model`
        : `${delta.toFixed(2)}% above the best single model; no fusion beat it`;
    out.push("", `Best: ${metrics.best.id}, PPL ${fmtPpl(metrics.best.ppl)}, ${verdict} (${displayRef(bm.ref)}, PPL ${fmtPpl(bm.ppl)})`);
  }

  if (isTwoModelGrid(metrics.sweep)) {
    const text = heatmapText({ sweep: metrics.sweep, fusions: metrics.fusions, models: metrics.models.map((m) => shortName(m.ref)) });
    if (text) out.push("", text);
  }
  return out.join("\n");
}

function shortName(ref: string): string {
  return path.isAbsolute(ref) ? path.basename(ref) : ref;
}

// ---- files --------------------------------------------------------------------------------

/** `results/run.json` + ".csv" → `results/run.csv` (a name without .json keeps its name). */
export function sidePath(metricsPath: string, suffix: string): string {
  return (metricsPath.toLowerCase().endsWith(".json") ? metricsPath.slice(0, -5) : metricsPath) + suffix;
}

/**
 * Writes a file atomically: a temp file in the same directory, fsync, rename over the
 * target (then fsync the directory where the platform allows). Creates the directory.
 * Readers see the old file or the new one, never a part.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    const fh = await open(tmp, "wx", 0o644);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  try {
    const dh = await open(dir, "r");
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch {
    // directories cannot be fsynced on some platforms (Windows); the rename stands
  }
}

/** JSON (2-space indent, trailing newline), written atomically. */
export async function writeJsonAtomic(file: string, obj: unknown): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(obj, null, 2) + "\n");
}

function csvField(v: string | number | null): string {
  const s = v === null ? "" : typeof v === "number" ? (Number.isFinite(v) ? String(v) : "") : v;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export const CSV_COLUMNS = [
  "rank",
  "id",
  "type",
  "temperatures",
  "betas",
  "ppl",
  "nll",
  "bits_per_byte",
  "word_perplexity",
  "weights_mean",
  "delta_vs_best_model_pct",
] as const;

/** One row per fusion, in request order; lists are `;`-separated; full precision. */
export function toCsv(metrics: Metrics): string {
  const rank = new Map(metrics.ranked.map((r) => [r.id, r]));
  const list = (xs: readonly number[] | null) => (xs ? xs.map(formatNumber).join(";") : "");
  const rows = metrics.fusions.map((f) =>
    [
      rank.get(f.id)?.rank ?? null,
      f.id,
      f.strategy.type,
      list(f.strategy.temperatures),
      list(f.strategy.betas),
      f.ppl,
      f.nll,
      f.bits_per_byte,
      f.word_perplexity,
      list(f.weights_mean),
      rank.get(f.id)?.delta_vs_best_model_pct ?? null,
    ]
      .map(csvField)
      .join(","),
  );
  return [CSV_COLUMNS.join(","), ...rows].join("\n") + "\n";
}

/** The heatmap SVG of a metrics file, or null when it has no two-model sweep. */
export function metricsHeatmapSvg(metrics: Metrics): string | null {
  if (!isTwoModelGrid(metrics.sweep)) return null;
  const input = { sweep: metrics.sweep, fusions: metrics.fusions, models: metrics.models.map((m) => shortName(m.ref)) };
  if (heatmapPanels(input).length === 0) return null;
  const title = `Perplexity by temperature: ${shortName(metrics.models[0].ref)} × ${shortName(metrics.models[1].ref)} on ${path.basename(metrics.dataset.path)}`;
  return heatmapSvg(input, { title });
}

/**
 * The files of a run: the metrics JSON, `<metrics>.csv` next to it, and for a
 * two-model temperature sweep `<metrics>.heatmap.svg`. Returns the paths written.
 */
export async function writeRunOutputs(metricsPath: string, metrics: Metrics): Promise<string[]> {
  const written: string[] = [];
  await writeJsonAtomic(metricsPath, metrics);
  written.push(metricsPath);
  const csv = sidePath(metricsPath, ".csv");
  await writeFileAtomic(csv, toCsv(metrics));
  written.push(csv);
  const svg = metricsHeatmapSvg(metrics);
  if (svg) {
    const file = sidePath(metricsPath, ".heatmap.svg");
    await writeFileAtomic(file, svg);
    written.push(file);
  }
  return written;
}

