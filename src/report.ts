// The console report of a run (stdout): the text, the models, the fusions best first,
// the verdict, and for a two-model sweep a text heatmap per strategy.
import { heatmapText, isTwoModelGrid } from "./heatmap.js";
import { displayRef, fmtBpb, fmtInt as int, fmtPct, fmtPpl, fmtWeights, shortName, table } from "./format.js";
import type { Metrics } from "./metrics.js";
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
  if (isTwoModelGrid(metrics.sweep)) {
    const text = heatmapText({ sweep: metrics.sweep, fusions: metrics.fusions, models: metrics.models.map((m) => shortName(m.ref)) });
    if (text) out.push("", text);
  }
  return out.join("\n");
}

/** The text and its windows; the device and the speed. */
function header({ dataset: d, runtime: rt }: Metrics): string[] {
  return [
    `${displayRef(d.path)}: ${int(d.bytes)} bytes, ${int(d.words)} words, ${int(d.tokens)} tokens ` +
      `(${int(d.scored_tokens)} scored) in ${int(d.windows)} windows of ${d.max_length}, stride ${d.stride}` +
      (d.bos_per_window ? ", BOS per window" : ""),
    `${rt.device} · ${rt.dtype} · ${rt.seconds.toFixed(1)} s (${int(rt.tokens_per_second)} tokens/s) · ` +
      `torch ${rt.torch} · transformers ${rt.transformers}`,
  ];
}

function modelTable(metrics: Metrics): string[] {
  return table(
    ["", "PPL", "bits/byte", "word PPL"],
    metrics.models.map((m) => [displayRef(m.ref), fmtPpl(m.ppl), fmtBpb(m.bits_per_byte), fmtPpl(m.word_perplexity)]),
    ["l", "r", "r", "r"],
  );
}

/** The best `top` fusions, and where the others are. */
function fusionTable(metrics: Metrics, opts: ReportOptions): string[] {
  const byId = new Map(metrics.fusions.map((f) => [f.id, f]));
  const shown = metrics.ranked.slice(0, Math.max(1, opts.top ?? 10));
  const out = [metrics.ranked.length > 1 ? "Fusions, best first" : "Fusion"];
  out.push(
    ...table(
      ["#", "", "PPL", "Δ vs best model", "bits/byte", "word PPL", "mean weights"],
      shown.map((r) => {
        const f = byId.get(r.id)!;
        return [String(r.rank), r.id, fmtPpl(f.ppl), fmtPct(r.delta_vs_best_model_pct), fmtBpb(f.bits_per_byte), fmtPpl(f.word_perplexity), fmtWeights(f.weights_mean)];
      }),
      ["r", "l", "r", "r", "r", "r", "l"],
    ),
  );
  const more = metrics.ranked.length - shown.length;
  if (more > 0) {
    const where = opts.metricsPath ? `${displayRef(opts.metricsPath)} (and ${displayRef(sidePath(opts.metricsPath, ".csv"))})` : "the metrics file";
    out.push(`  … ${more} more fusion${more === 1 ? "" : "s"} in ${where}`);
  }
  return out;
}

function verdict(metrics: Metrics): string {
  const best = metrics.best!;
  const bm = metrics.best_model;
  const delta = (best.ppl / bm.ppl - 1) * 100;
  const how = delta < 0
    ? `${Math.abs(delta).toFixed(2)}% below the best single model`
    : `${delta.toFixed(2)}% above the best single model; no fusion beat it`;
  return `Best: ${best.id}, PPL ${fmtPpl(best.ppl)}, ${how} (${displayRef(bm.ref)}, PPL ${fmtPpl(bm.ppl)})`;
}
