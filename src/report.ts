// The console report of a run (stdout): the text, the models, the fusions best first,
// the verdict, and for a two-model sweep a text heatmap per strategy.
import { heatmapText, isTwoModelGrid } from "./heatmap.js";
import { displayRef, fmtBpb, fmtInt as int, fmtPct, fmtPpl, fmtWeights, shortName, table } from "./format.js";
import type { Metrics, VsBestModel } from "./metrics.js";
import { sidePath } from "./outputs.js";

export interface ReportOptions {
  /** Fusions listed (best first); the rest are counted. Default 10. */
  top?: number;
  /** Named where the report says that more fusions are in the metrics file. */
  metricsPath?: string | null;
}

/** The text printed on stdout after a run. */
export function formatReport(metrics: Metrics, opts: ReportOptions = {}): string {
  const out = [...header(metrics), "", "Models", ...modelTable(metrics), "", ...fusionTable(metrics, opts)];
  if (metrics.best) out.push("", verdict(metrics));
  if (metrics.bytes) out.push(...beamReport(metrics.bytes));
  if (isTwoModelGrid(metrics.sweep)) {
    const text = heatmapText({ sweep: metrics.sweep, fusions: metrics.fusions, models: metrics.models.map((m) => shortName(m.ref)), space: metrics.space });
    if (text) out.push("", text);
  }
  return out.join("\n");
}

/** The text and its windows; the device and the speed. */
export function header({ space, dataset: d, runtime: rt, bytes }: Metrics): string[] {
  const text = `${displayRef(d.path)}: ${int(d.bytes)} bytes, ${int(d.words)} words`;
  // a pool: how many workers, and each one's windows (a lost one marked)
  const pool = rt.workers && rt.workers.length > 1
    ? ` · ${rt.workers.length} workers (${rt.workers.map((w) => `${w.label} ${int(w.windows)}${w.lost ? ", lost" : ""}`).join(", ")})` : "";
  const speed = (unit: string) => `${rt.device} · ${rt.dtype} · ${rt.seconds.toFixed(1)} s (${int(rt.tokens_per_second)} ${unit}/s)${pool} · ` +
    `torch ${rt.torch} · transformers ${rt.transformers}`;
  if (space === "bytes") {
    return [
      `${text}; byte space (beam ${bytes?.beam ?? "?"}${bytes?.prune ? `, prune ${bytes.prune}` : ""}): ${int(d.scored_tokens)} bytes scored ` +
        `in ${int(d.windows)} windows of ${d.max_length} bytes, stride ${d.stride}`,
      speed("bytes"),
    ];
  }
  if (d.mode === "documents") {
    return [
      `${text} (lm-eval's counts) in ${int(d.documents ?? 1)} documents, each scored alone: ${int(d.scored_tokens)} tokens ` +
        `in ${int(d.windows)} rolling windows of ${d.max_length} (lm-eval's loglikelihood_rolling)`,
      speed("tokens"),
    ];
  }
  return [
    `${text}${d.documents !== undefined ? ` (${int(d.documents)} documents joined)` : ""}, ${int(d.tokens)} tokens (${int(d.scored_tokens)} scored) in ${int(d.windows)} windows of ${d.max_length}, stride ${d.stride}` +
      (d.bos_per_window ? ", BOS per window" : ""),
    speed("tokens"),
  ];
}

/** In byte space the report leads with bits per byte (the number every tokenizer shares). */
function modelTable(metrics: Metrics): string[] {
  if (metrics.space === "bytes") {
    return table(
      ["", "bits/byte", "byte PPL", "word PPL"],
      metrics.models.map((m) => [displayRef(m.ref), fmtBpb(m.bits_per_byte), fmtPpl(m.ppl), fmtPpl(m.word_perplexity)]),
      ["l", "r", "r", "r"],
    );
  }
  return table(
    ["", "PPL", "bits/byte", "word PPL"],
    metrics.models.map((m) => [displayRef(m.ref), fmtPpl(m.ppl), fmtBpb(m.bits_per_byte), fmtPpl(m.word_perplexity)]),
    ["l", "r", "r", "r"],
  );
}

/** A share of probability mass: "18%", "0.25%", "3.1e-7". */
function fmtShare(x: number): string {
  return x >= 0.01 ? `${Math.round(x * 100)}%` : x >= 1e-4 ? `${(x * 100).toFixed(2)}%` : x.toExponential(1);
}

/** How much each model's beam pruned: none means its byte NLL is exact for this K. */
function beamReport(bytes: NonNullable<Metrics["bytes"]>): string[] {
  const lines = bytes.models.map((m) =>
    m.pruned === 0
      ? `  ${displayRef(m.ref)}: exact (nothing pruned; at most ${m.max_hypotheses} token prefixes at once)`
      : `  ${displayRef(m.ref)}: pruned at ${int(m.pruned_positions)} bytes, the largest pruned share ${fmtShare(m.max_pruned_share)} of a byte's mass`,
  );
  const any = bytes.models.some((m) => m.pruned > 0);
  const resumed = bytes.windows_resumed > 0
    ? [`  (over the ${int(bytes.windows_counted)} windows this run scored; the ${int(bytes.windows_resumed)} before its checkpoint are not counted)`]
    : [];
  return ["", `Beam (K = ${bytes.beam}${bytes.prune ? `, prune ${bytes.prune}` : ""})${any ? "; a larger bytes.beam makes it exact" : ""}`, ...lines, ...resumed];
}

/** The best `top` fusions, and where the others are. */
function fusionTable(metrics: Metrics, opts: ReportOptions): string[] {
  const byId = new Map(metrics.fusions.map((f) => [f.id, f]));
  const shown = metrics.ranked.slice(0, Math.max(1, opts.top ?? 10)).map((r) => ({ r, f: byId.get(r.id)! }));
  const out = [metrics.ranked.length > 1 ? "Fusions, best first" : "Fusion"];
  if (metrics.space === "bytes") {
    const best = bestModelBpb(metrics);
    out.push(
      ...table(
        ["#", "", "bits/byte", "Δ vs best model", "95% CI", "byte PPL", "word PPL", "mean weights"],
        shown.map(({ r, f }) => [String(r.rank), r.id, fmtBpb(f.bits_per_byte), fmtDeltaBpb(f.bits_per_byte - best), ciCell(f.vs_best_model, "bytes"),
          fmtPpl(f.ppl), fmtPpl(f.word_perplexity), fmtWeights(f.weights_mean)]),
        ["r", "l", "r", "r", "l", "r", "r", "l"],
      ),
    );
  } else {
    out.push(
      ...table(
        ["#", "", "PPL", "Δ vs best model", "95% CI", "bits/byte", "word PPL", "mean weights"],
        shown.map(({ r, f }) => [String(r.rank), r.id, fmtPpl(f.ppl), fmtPct(r.delta_vs_best_model_pct), ciCell(f.vs_best_model, "tokens"),
          fmtBpb(f.bits_per_byte), fmtPpl(f.word_perplexity), fmtWeights(f.weights_mean)]),
        ["r", "l", "r", "r", "l", "r", "r", "l"],
      ),
    );
  }
  const more = metrics.ranked.length - shown.length;
  if (more > 0) {
    const where = opts.metricsPath ? `${displayRef(opts.metricsPath)} (and ${displayRef(sidePath(opts.metricsPath, ".csv"))})` : "the metrics file";
    out.push(`  … ${more} more fusion${more === 1 ? "" : "s"} in ${where}`);
  }
  out.push(...ciFootnote(metrics));
  return out;
}

/** The marker of a fusion whose 95% interval excludes 0: it is better (or worse) than the best model beyond the windows' noise. */
export const CI_MARK = "*";

/**
 * The 95% interval of the change against the best single model, in the unit of the
 * Δ column: the PPL change in % (token space), bits per byte (byte space); marked when
 * it excludes 0 (the PPL ratio's and the bits-per-byte interval exclude 0 together).
 */
function ciCell(v: VsBestModel, space: Metrics["space"]): string {
  if (space === "bytes" ? !v.ci95 : !v.ppl_ratio_ci95) return "—";
  const [lo, hi] = space === "bytes" ? v.ci95!.map(fmtDeltaBpb) : v.ppl_ratio_ci95!.map((x) => fmtPct((x - 1) * 100));
  return `[${lo}, ${hi}]${v.excludes_zero ? ` ${CI_MARK}` : ""}`;
}

/** How the intervals were drawn, what the mark means, or why there are none. */
export function ciFootnote({ bootstrap: b }: Metrics): string[] {
  if (!b) return [];
  if (b.block_length === null) return [`  95% CI: none (${b.note ?? "no resamples"})`];
  const how = `paired block bootstrap over ${int(b.windows)} windows (blocks of ${b.block_length}), ${int(b.resamples)} resamples, seed ${b.seed}`;
  return [`  95% CI vs ${displayRef(b.best_model)}: ${how}; ${CI_MARK} the interval excludes 0`, ...(b.note ? [`  note: ${b.note}`] : [])];
}

/** The best single model's bits per byte (also the lowest-PPL one: the same text, the same bytes). */
function bestModelBpb(metrics: Metrics): number {
  return Math.min(...metrics.models.map((m) => m.bits_per_byte));
}

/** "-0.0468" bits per byte, signed. */
function fmtDeltaBpb(x: number): string {
  const s = x.toFixed(4);
  return s === "0.0000" || s === "-0.0000" ? "0.0000" : `${x > 0 ? "+" : ""}${s}`;
}

/** "Best: …, PPL …, …% below the best single model (…)". */
export function verdict(metrics: Metrics): string {
  const best = metrics.best!;
  const bm = metrics.best_model;
  if (metrics.space === "bytes") {
    const f = metrics.fusions.find((x) => x.id === best.id)!;
    const d = f.bits_per_byte - bestModelBpb(metrics);
    const how = d < 0 ? `${fmtBpb(-d)} bits/byte below the best single model` : `${fmtBpb(d)} bits/byte above the best single model; no fusion beat it`;
    return `Best: ${best.id}, ${fmtBpb(f.bits_per_byte)} bits/byte, ${how} (${displayRef(bm.ref)}, ${fmtBpb(bestModelBpb(metrics))} bits/byte)`;
  }
  const delta = (best.ppl / bm.ppl - 1) * 100;
  const how = delta < 0
    ? `${Math.abs(delta).toFixed(2)}% below the best single model`
    : `${delta.toFixed(2)}% above the best single model; no fusion beat it`;
  return `Best: ${best.id}, PPL ${fmtPpl(best.ppl)}, ${how} (${displayRef(bm.ref)}, PPL ${fmtPpl(bm.ppl)})`;
}
