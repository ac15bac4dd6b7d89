// Metrics (SPEC §6) from the worker's running sums: every number of a run, in the
// shape of the metrics file.
//
// From sums to numbers, for a model or a fusion with Σ NLL = S (nats) over n scored
// positions (tokens; bytes in byte space) of a text of B UTF-8 bytes and W words:
//   nll = S / n · ppl = exp(S / n) · bits_per_byte = S / (ln 2 · B) · word_perplexity = exp(S / W)
//   weights_mean[m] = Σ α_m / n
// In byte space (SPEC §7) n counts bytes, so ppl is the byte perplexity (also written
// as byte_perplexity) and nll is nats per scored byte.
//
// Every fusion against the best single model (the lowest NLL), vs_best_model: Δ bits per
// byte = (S_fusion − S_best) / (ln 2 · B), PPL ratio = exp((S_fusion − S_best) / n), and
// their paired 95% intervals from the per-window sums (src/bootstrap.ts; docs/metrics.md).
import { LEVEL, blockChoice, pairedBootstrap, pairedInterval, type BootstrapOptions } from "./bootstrap.js";
import type { DatasetStats } from "./dataset.js";
import { DEFAULTS } from "./defaults.js";
import { windowProblem } from "./sums.js";
import type { ByteOptions, ByteStats, DatasetSpec, HelloMsg, LoadedMsg, ModelSpec, PositionsRequest, ResultMsg, Setting, Space, Sums } from "./protocol.js";
import type { Sweep } from "./sweep.js";
import type { WorkerReport } from "./pool.js";

/** The numbers of one model or fusion. */
export interface Scores {
  /** Perplexity per scored position: per token, or per byte in byte space. */
  ppl: number;
  /** Mean NLL per scored position (nats). */
  nll: number;
  bits_per_byte: number;
  word_perplexity: number;
  /** Byte space: exp(nll), the same number as ppl; documents mode: lm-eval's exp(Σ NLL / Σ bytes). */
  byte_perplexity?: number;
}

export interface ModelMetrics extends Scores {
  ref: string;
}

export interface FusionMetrics extends Scores {
  id: string;
  /** The setting's parameters: type, temperatures and every declared list (null where the type takes none). */
  strategy: Omit<Setting, "id">;
  /** Mean α_m over scored positions, per model (static weights for average/poe). */
  weights_mean: number[];
  /** Against the best single model, with paired 95% intervals over windows (src/bootstrap.ts). */
  vs_best_model: VsBestModel;
}

/** A fusion against the best single model (the lowest NLL): the differences, and their 95% intervals. */
export interface VsBestModel {
  /** fusion − best model, bits per byte (negative: the fusion is better). */
  delta_bits_per_byte: number;
  /** Its 95% interval; null where there is none (fewer than 2 windows, or resamples 0: see Metrics.bootstrap.note). */
  ci95: [number, number] | null;
  /** fusion PPL / best model PPL (per scored position: byte PPL in byte space). */
  ppl_ratio: number;
  ppl_ratio_ci95: [number, number] | null;
  /** Whether ci95 excludes 0 (and so ppl_ratio_ci95 excludes 1); null without an interval. */
  excludes_zero: boolean | null;
}

/** How the intervals of vs_best_model were drawn. */
export interface BootstrapReport {
  method: string;
  level: number;
  resamples: number;
  seed: number;
  /** Windows resampled. */
  windows: number;
  /** Windows per block; null without intervals. */
  block_length: number | null;
  /** How block_length was chosen. */
  block_rule: string | null;
  /** The model every fusion is compared with (the lowest NLL). */
  best_model: string;
  /** Why there are no intervals, or what to keep in mind about them; null when nothing. */
  note: string | null;
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
  /** Where the fusion ran: over the shared token vocabulary, or over bytes (SPEC §7). */
  space: Space;
  dataset: {
    path: string;
    bytes: number;
    words: number;
    tokens: number;
    /** Scored positions: tokens, or bytes in byte space (then also scored_bytes). */
    scored_tokens: number;
    scored_bytes?: number;
    windows: number;
    max_length: number;
    stride: number;
    bos_per_window: boolean;
    /** stream: one text (SPEC §2); documents: each document alone, lm-eval's rolling windows.
     * With documents, only for a .jsonl (or an exported dataset) or documents mode. */
    mode?: "stream" | "documents";
    documents?: number;
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
  /** The paired block bootstrap behind fusions[].vs_best_model. */
  bootstrap: BootstrapReport;
  /** Byte space only: the beam, and per model how much it pruned (0: its byte NLL is exact). */
  bytes?: ByteOptions & {
    /** The windows the per-model stats cover: all of them, or those after a checkpoint this run resumed from. */
    windows_counted: number;
    /** Windows scored before the checkpoint a resumed run started from (their beams are not in the stats). */
    windows_resumed: number;
    models: (ByteStats & { ref: string })[];
  };
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
    /**
     * Every worker of the run (one without runtime.workers): its device, threads, endpoint
     * (a remote one), the windows it scored in this run and the seconds it spent on them,
     * and why it was lost (null: it was not).
     */
    workers: WorkerReport[];
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

/** One evaluation, fully resolved: what the session sends and what the metrics describe. */
export interface EvaluationRequest {
  dataset: DatasetSpec;
  /** Bytes, words and hash of dataset.path (dataset.ts scanDataset). */
  text: DatasetStats;
  /** Distinct settings, in request order. */
  settings: readonly Setting[];
  /** The grid the settings came from, for the heatmap; null when there is none. */
  sweep: Sweep | null;
  batchSize: number;
  /** The config the run came from, as parsed, echoed into the metrics. */
  config: unknown;
  /** How the paired intervals are drawn (default: DEFAULTS.bootstrap). */
  bootstrap?: BootstrapOptions;
  /** Per-position numbers for the HTML report's token view (protocol v6); null or absent: none. */
  positions?: PositionsRequest | null;
}

export interface BuildMetricsInput {
  models: readonly Pick<ModelSpec, "ref">[];
  request: EvaluationRequest;
  result: ResultMsg;
  loaded: LoadedMsg;
  hello: HelloMsg;
  /** Wall-clock seconds of the evaluation. */
  seconds: number;
  version: string;
  /** The session's byte options (reported in byte space). */
  bytes?: ByteOptions;
  /** Windows done before this request (the checkpoint it resumed from); 0 otherwise. */
  resumedWindows?: number;
  /** runtime.workers[] (default: the one worker, from the result). */
  workers?: WorkerReport[];
}

/** SPEC §6 metrics from a result's sums. @throws Error when the sums do not fit the request. */
export function buildMetrics(input: BuildMetricsInput): Metrics {
  const { request, result } = input;
  checkSums(result.sums, input.models.length, request.settings.length);
  const n = result.sums.scored_tokens;
  const bytes = result.space === "bytes";
  const stats = statsOf(n, request.text, bytes, request.dataset.mode === "documents");
  const models: ModelMetrics[] = input.models.map((m, i) => ({ ref: m.ref, ...stats(result.sums.model_nll[i]) }));
  const best = bestModelIndex(models);
  const paired = vsBestModel(result.sums, best, models[best].ref, request.text.bytes, request.bootstrap ?? DEFAULTS.bootstrap);
  const fusions: FusionMetrics[] = request.settings.map(({ id, ...strategy }, j) => ({
    id,
    strategy: structuredClone(strategy),
    ...stats(result.sums.fusion_nll[j]),
    weights_mean: result.sums.fusion_weights[j].map((w) => w / n),
    vs_best_model: paired.fusion(j),
  }));
  const { bestModel, ranked } = rank(models, fusions);
  const metrics: Metrics = {
    kotara_version: input.version,
    space: result.space,
    dataset: {
      path: request.dataset.path,
      bytes: request.text.bytes,
      words: request.text.words,
      tokens: result.tokens,
      scored_tokens: n,
      ...(bytes ? { scored_bytes: n } : {}),
      windows: result.windows,
      max_length: request.dataset.max_length,
      stride: request.dataset.stride,
      bos_per_window: request.dataset.bos_per_window,
      // a .jsonl, an exported dataset, or documents mode (a plain text file in stream mode: as before v6)
      ...(request.dataset.field || request.dataset.mode === "documents"
        ? { mode: request.dataset.mode ?? "stream", documents: request.text.documents ?? 1 } : {}),
    },
    models,
    fusions,
    best: ranked.length ? { id: ranked[0].id, ppl: ranked[0].ppl } : null,
    best_model: { ref: bestModel.ref, ppl: bestModel.ppl },
    ranked,
    sweep: request.sweep,
    bootstrap: paired.report,
    ...(bytes ? { bytes: byteReport(input) } : {}),
    runtime: runtimeOf(input),
    config: request.config ?? null,
  };
  return withScriptKeys(metrics);
}

function checkSums(sums: Sums, nModels: number, nSettings: number): void {
  if (sums.model_nll.length !== nModels) throw new Error(`result has ${sums.model_nll.length} model sums for ${nModels} models`);
  if (sums.fusion_nll.length !== nSettings || sums.fusion_weights.length !== nSettings) {
    throw new Error(`result has ${sums.fusion_nll.length} fusion sums for ${nSettings} settings`);
  }
  if (sums.scored_tokens <= 0) throw new Error("no tokens were scored: the text is too short for one window with a target");
  const problem = windowProblem(sums, nModels, nSettings);
  if (problem) throw new Error(`the worker's per-window sums do not fit its totals: ${problem}`);
}

/** The best single model: the lowest NLL (hence the lowest PPL; the first of equals). */
function bestModelIndex(models: ModelMetrics[]): number {
  return models.reduce((b, m, i) => (m.ppl < models[b].ppl ? i : b), 0);
}

/**
 * Every fusion against the best single model: the differences from the totals (the
 * numbers the report shows), the intervals from the paired bootstrap over windows,
 * its resamples drawn once for all the settings.
 */
function vsBestModel(sums: Sums, best: number, bestRef: string, textBytes: number, opts: BootstrapOptions) {
  const n = sums.windows_done;
  const boot = pairedBootstrap(sums.window_bytes, sums.window_targets, textBytes, opts);
  const ell = boot?.plan.blockLength ?? null;
  const rule = boot ? blockChoice(n, opts.block_length).rule : null;
  const note = opts.resamples === 0 ? "report.bootstrap.resamples is 0: no intervals"
    : n < 2 ? `only ${n} window${n === 1 ? "" : "s"}: the bootstrap resamples windows, so there is no interval`
    : boot && boot.plan.blocks < 10 ? `only ${n} windows (${boot.plan.blocks} blocks of ${ell}): an interval from so few is rough and tends to be too narrow`
    : null;
  const report: BootstrapReport = {
    method: "paired circular block bootstrap over windows, percentile intervals",
    level: LEVEL, resamples: opts.resamples, seed: opts.seed, windows: n, block_length: ell, block_rule: rule, best_model: bestRef, note,
  };
  const fusion = (k: number): VsBestModel => {
    const diff = sums.fusion_nll[k] - sums.model_nll[best];
    const ci = boot ? pairedInterval(boot, sums.window_fusion_nll[k], sums.window_model_nll[best]) : null;
    const bpb = ci?.delta_bits_per_byte ?? null;
    return {
      delta_bits_per_byte: diff / (Math.LN2 * textBytes),
      ci95: bpb,
      ppl_ratio: Math.exp(diff / sums.scored_tokens),
      ppl_ratio_ci95: ci ? ci.ppl_ratio : null,
      excludes_zero: ci ? ci.excludes_zero : null,
    };
  };
  return { report, fusion };
}

/** Σ NLL over n scored positions → the numbers of a model or a fusion. */
function statsOf(n: number, text: DatasetStats, bytes: boolean, documents: boolean) {
  return (nll: number): Scores => ({
    ppl: Math.exp(nll / n),
    nll: nll / n,
    bits_per_byte: nll / (Math.LN2 * text.bytes),
    word_perplexity: Math.exp(nll / text.words),
    ...(bytes ? { byte_perplexity: Math.exp(nll / n) } : {}),
    // documents mode: lm-eval's byte_perplexity, exp(Σ NLL / Σ bytes)
    ...(documents ? { byte_perplexity: Math.exp(nll / text.bytes) } : {}),
  });
}

function byteReport({ result, models, bytes, resumedWindows = 0 }: BuildMetricsInput): NonNullable<Metrics["bytes"]> {
  if (!bytes || !result.byte_stats || result.byte_stats.length !== models.length) {
    throw new Error("a byte-space result needs the session's byte options and one beam report per model");
  }
  // the worker reports the beams of the windows it scored in this request: a resumed
  // run's checkpoint holds the sums of the earlier windows, not their beams
  return {
    ...bytes, windows_counted: result.windows - resumedWindows, windows_resumed: resumedWindows,
    models: result.byte_stats.map((s, i) => ({ ref: models[i].ref, ...s })),
  };
}

/** The best single model, and the fusions by PPL (ties in request order). */
function rank(models: ModelMetrics[], fusions: FusionMetrics[]) {
  const bestModel = models[bestModelIndex(models)];
  const order = fusions.map((_, i) => i).sort((a, b) => fusions[a].ppl - fusions[b].ppl || a - b);
  const ranked: RankedFusion[] = order.map((i, k) => ({
    rank: k + 1,
    id: fusions[i].id,
    ppl: fusions[i].ppl,
    delta_vs_best_model_pct: (fusions[i].ppl / bestModel.ppl - 1) * 100,
  }));
  return { bestModel, ranked };
}

function runtimeOf({ result, loaded, hello, seconds, workers }: BuildMetricsInput): Metrics["runtime"] {
  return {
    device: result.device,
    dtype: result.dtype,
    torch: hello.torch,
    transformers: hello.transformers,
    python: hello.python,
    worker_version: hello.worker_version,
    seconds,
    compute_seconds: result.seconds,
    load_seconds: loaded.seconds,
    tokens_per_second: result.seconds > 0 ? result.tokens / result.seconds : 0,
    peak_memory_bytes: result.peak_memory_bytes,
    workers: workers ?? [{ label: `${result.device}#1`, device: result.device, threads: null, endpoint: null, windows: result.windows, seconds: result.seconds, lost: null }],
  };
}

/** The original research script's keys (two models; from the first fusion), `config` kept last as in its file. */
function withScriptKeys(metrics: Metrics): Metrics {
  const first = metrics.fusions[0];
  if (metrics.models.length !== 2 || !first) return metrics;
  const betas = first.strategy.betas ?? [0.5, 0.5];
  const { config, ...rest } = metrics;
  return {
    ...rest,
    baseline_ppl_a: metrics.models[0].ppl,
    baseline_ppl_b: metrics.models[1].ppl,
    fused_ppl: first.ppl,
    strategy: first.strategy.type,
    temps: { a: first.strategy.temperatures[0], b: first.strategy.temperatures[1] },
    poe_betas: { a: betas[0], b: betas[1] },
    weights: { w_a_mean: first.weights_mean[0], w_b_mean: first.weights_mean[1] },
    config,
  };
}
