// The files a run writes next to each other: the metrics JSON, a CSV of every fusion,
// for a two-model temperature sweep a heatmap SVG, and the HTML report. Every file is written
// atomically (write-file-atomic: a temp file, fsync, rename), so a reader sees the old
// file or the new one, never a part.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { stringify } from "csv-stringify/sync";
import writeFileAtomic from "write-file-atomic";
import { heatmapPanels, heatmapSvg, isTwoModelGrid } from "./heatmap.js";
import { htmlReport, type HtmlReportOptions } from "./html-report.js";
import type { Metrics } from "./metrics.js";
import { shortName } from "./format.js";
import { LIST_PARAM_NAMES, formatNumber } from "./strategies.js";

/** `results/run.json` + ".csv" → `results/run.csv` (a name without .json keeps its name). */
export function sidePath(metricsPath: string, suffix: string): string {
  return (metricsPath.toLowerCase().endsWith(".json") ? metricsPath.slice(0, -5) : metricsPath) + suffix;
}

/** JSON (2-space indent, trailing newline), written atomically; creates the directory. */
export async function writeJsonAtomic(file: string, obj: unknown): Promise<void> {
  await writeTextAtomic(file, JSON.stringify(obj, null, 2) + "\n");
}

/** A file written atomically; creates the directory. */
export async function writeTextAtomic(file: string, data: string): Promise<void> {
  await mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await writeFileAtomic(file, data, { mode: 0o644 });
}

/** The CSV's columns: the setting's parameters come from the strategy registry's lists. */
export const CSV_COLUMNS = [
  "rank", "id", "type", "temperatures", ...LIST_PARAM_NAMES,
  "ppl", "nll", "bits_per_byte", "word_perplexity", "weights_mean", "delta_vs_best_model_pct",
  // vs_best_model: the paired 95% intervals (empty where there is none)
  "delta_bits_per_byte", "delta_bits_per_byte_ci95_lo", "delta_bits_per_byte_ci95_hi",
  "ppl_ratio", "ppl_ratio_ci95_lo", "ppl_ratio_ci95_hi", "ci95_excludes_zero",
] as const;

/** One row per fusion, in request order; lists are `;`-separated; full precision. */
export function toCsv(metrics: Metrics): string {
  const rank = new Map(metrics.ranked.map((r) => [r.id, r]));
  const list = (xs: readonly number[] | null) => (xs ? xs.map(formatNumber).join(";") : "");
  const num = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? "" : String(x));
  const rows = metrics.fusions.map((f) => [
    num(rank.get(f.id)?.rank),
    f.id,
    f.strategy.type,
    list(f.strategy.temperatures),
    ...LIST_PARAM_NAMES.map((p) => list(f.strategy[p])),
    num(f.ppl),
    num(f.nll),
    num(f.bits_per_byte),
    num(f.word_perplexity),
    list(f.weights_mean),
    num(rank.get(f.id)?.delta_vs_best_model_pct),
    num(f.vs_best_model.delta_bits_per_byte),
    num(f.vs_best_model.ci95?.[0]),
    num(f.vs_best_model.ci95?.[1]),
    num(f.vs_best_model.ppl_ratio),
    num(f.vs_best_model.ppl_ratio_ci95?.[0]),
    num(f.vs_best_model.ppl_ratio_ci95?.[1]),
    f.vs_best_model.excludes_zero === null ? "" : String(f.vs_best_model.excludes_zero),
  ]);
  return stringify([[...CSV_COLUMNS], ...rows], { record_delimiter: "unix" });
}

/** The heatmap SVG of a metrics file, or null when it has no two-model sweep. */
export function metricsHeatmapSvg(metrics: Metrics): string | null {
  if (!isTwoModelGrid(metrics.sweep)) return null;
  const input = { sweep: metrics.sweep, fusions: metrics.fusions, models: metrics.models.map((m) => shortName(m.ref)), space: metrics.space };
  if (heatmapPanels(input).length === 0) return null;
  const title = `${metrics.space === "bytes" ? "Bits per byte" : "Perplexity"} by temperature: ${shortName(metrics.models[0].ref)} × ${shortName(metrics.models[1].ref)} on ${path.basename(metrics.dataset.path)}`;
  return heatmapSvg(input, { title });
}

export interface RunOutputOptions {
  /** Also write the HTML report, `<metrics>.html` (src/html-report.ts), with these options. */
  html?: HtmlReportOptions | null;
}

/**
 * The files of a run: the metrics JSON, `<metrics>.csv` next to it, for a two-model
 * temperature sweep `<metrics>.heatmap.svg`, and when asked the HTML report
 * `<metrics>.html`. Returns the paths written.
 */
export async function writeRunOutputs(metricsPath: string, metrics: Metrics, opts: RunOutputOptions = {}): Promise<string[]> {
  const files: [string, string][] = [
    [metricsPath, JSON.stringify(metrics, null, 2) + "\n"],
    [sidePath(metricsPath, ".csv"), toCsv(metrics)],
  ];
  const svg = metricsHeatmapSvg(metrics);
  if (svg) files.push([sidePath(metricsPath, ".heatmap.svg"), svg]);
  if (opts.html) files.push([sidePath(metricsPath, ".html"), htmlReport(metrics, { metricsFile: path.basename(metricsPath), ...opts.html })]);
  for (const [file, data] of files) await writeTextAtomic(file, data);
  return files.map(([file]) => file);
}
