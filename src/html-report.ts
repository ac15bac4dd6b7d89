// The HTML report of a run (`<metrics>.html`): one self-contained file, no network, no
// script — inline SVG and CSS only, and a Content-Security-Policy that forbids the rest. A pure function of the metrics (and, for the token
// view, the worker's per-position numbers and the text they cover): every string from
// the run is escaped. Sections:
//
//   Models and fusions  the models, and every fusion against the best single model: a
//                       forest plot of Δ bits per byte with its paired 95% interval
//                       (fusions[].vs_best_model), and the table of every number
//   Heatmaps            a two-model temperature sweep's heatmaps (heatmap.ts's SVG)
//   Fitted settings     metrics.fit, when `kotara fit` wrote one (rendered generically)
//   Token view          the text's first bytes, each token (each character in byte
//                       space) coloured by how much the fusion gains or loses there
//                       against the best model; its numbers and weights on hover
import { displayRef, fmtBpb, fmtInt, fmtPct, fmtPpl, fmtWeights, shortName } from "./format.js";
import type { FusionMetrics, Metrics } from "./metrics.js";
import { metricsHeatmapSvg } from "./outputs.js";
import type { Positions } from "./protocol.js";
import { ciFootnote, header, verdict } from "./report.js";

/** The token view's input: the worker's per-position numbers and the text they stand in. */
export interface TokenView {
  /** The first positions.bytes bytes of the text (more is ignored). */
  text: Uint8Array;
  /** positions.settings: indices into metrics.fusions (the request's settings, in order). */
  positions: Positions;
}

export interface HtmlReportOptions {
  /** The token view; null or absent: none (then `viewNote` says why, when given). */
  view?: TokenView | null;
  /** Why there is no token view (shown in its place). */
  viewNote?: string | null;
  /** The metrics file's name, named in the footer. */
  metricsFile?: string | null;
}

/** The page's Content-Security-Policy: inline styles only; no script, no fetch of any kind. */
export const CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/** `kotara fit` (written in parallel) puts its fitted settings under this key of the metrics. */
type WithFit = Metrics & { fit?: unknown };

/** The whole page. */
export function htmlReport(metrics: Metrics, opts: HtmlReportOptions = {}): string {
  const name = shortName(metrics.dataset.path);
  const sections = [
    resultsSection(metrics),
    heatmapSection(metrics),
    fitSection((metrics as WithFit).fit),
    tokenViewSection(metrics, opts.view ?? null, opts.viewNote ?? null),
  ].filter((s): s is string => s !== null);
  const nav = [["results", "Models and fusions"], ["heatmaps", "Heatmaps"], ["fit", "Fitted settings"], ["token-view", "Token view"]]
    .filter(([id]) => sections.some((s) => s.includes(`<section id="${id}"`)))
    .map(([id, label]) => `<a href="#${id}">${label}</a>`).join(" · ");
  const lines = header(metrics);
  return [
    "<!doctype html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    // nothing may be fetched or run: a browser blocks (and reports) anything that tries
    `<meta http-equiv="Content-Security-Policy" content="${CSP}">`,
    `<title>Kotara report · ${esc(name)}</title>`,
    `<style>${css(opts.view ? opts.view.positions.settings.length : 0)}</style>`,
    "</head>",
    "<body>",
    '<header id="top">',
    `<h1>Kotara report <span class="sub">${esc(name)}</span></h1>`,
    ...lines.map((l, i) => `<p class="${i === 0 ? "lede" : "meta"}">${esc(l)}</p>`),
    metrics.best ? `<p class="verdict">${esc(verdict(metrics))}</p>` : "",
    `<nav>${nav}</nav>`,
    "</header>",
    "<main>",
    ...sections,
    "</main>",
    `<footer>kotara ${esc(metrics.kotara_version)}${opts.metricsFile ? ` · ${esc(opts.metricsFile)}` : ""} · ` +
      `${metrics.space === "bytes" ? "byte space" : "token space"} · this page is self-contained: no script, nothing fetched</footer>`,
    "</body>",
    "</html>",
    "",
  ].filter((l) => l !== "").join("\n");
}

// ---- escaping -------------------------------------------------------------------------

const ESC: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Text or an attribute value, HTML-escaped. */
export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESC[c]);
}

/** Text of the run's file for a `pre-wrap` element: escaped, control characters shown as symbols (U+2400…). */
function escText(s: string): string {
  // eslint-disable-next-line no-control-regex
  return esc(s).replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, (c) =>
    String.fromCharCode(c === "\u007f" ? 0x2421 : 0x2400 + c.charCodeAt(0)));
}

/** An attribute value that may hold newlines (a title): escaped, newlines as &#10;. */
function escAttr(s: string): string {
  return escText(s).replace(/\r?\n/g, "&#10;");
}

// ---- models and fusions ---------------------------------------------------------------

function bestModelIndex(metrics: Metrics): number {
  return metrics.models.reduce((b, m, i) => (m.ppl < metrics.models[b].ppl ? i : b), 0);
}

/** Fusions by rank (best first), ties in request order (metrics.ranked). */
function rankedFusions(metrics: Metrics): { f: FusionMetrics; rank: number; k: number }[] {
  const index = new Map(metrics.fusions.map((f, k) => [f.id, k]));
  return metrics.ranked.map((r) => ({ f: metrics.fusions[index.get(r.id)!], rank: r.rank, k: index.get(r.id)! }));
}

/** "−0.0468" bits per byte, signed (the minus sign a real one). */
function signedBpb(x: number): string {
  const s = x.toFixed(4);
  if (s === "0.0000" || s === "-0.0000") return "0.0000";
  return (x > 0 ? "+" : "−") + Math.abs(x).toFixed(4);
}

const pct = (ratio: number) => fmtPct((ratio - 1) * 100).replace("-", "−");

function resultsSection(metrics: Metrics): string {
  const best = bestModelIndex(metrics);
  const bytes = metrics.space === "bytes";
  const bestRef = displayRef(metrics.models[best].ref);
  const modelRows = metrics.models.map((m, i) => {
    const delta = m.bits_per_byte - metrics.models[best].bits_per_byte;
    return `<tr class="model${i === best ? " best" : ""}"><td class="name">${esc(displayRef(m.ref))}${i === best ? ' <span class="tag">best model</span>' : ""}</td>` +
      (bytes ? `<td>${fmtBpb(m.bits_per_byte)}</td><td>${fmtPpl(m.ppl)}</td>` : `<td>${fmtPpl(m.ppl)}</td><td>${fmtBpb(m.bits_per_byte)}</td>`) +
      `<td>${fmtPpl(m.word_perplexity)}</td><td>${i === best ? "—" : signedBpb(delta)}</td></tr>`;
  });
  const modelHead = bytes ? "<th>bits/byte</th><th>byte PPL</th>" : "<th>PPL</th><th>bits/byte</th>";
  const fusionRows = rankedFusions(metrics).map(({ f, rank }) => {
    const v = f.vs_best_model;
    const mark = v.excludes_zero ? ' <span class="mark" title="the 95% interval excludes 0">*</span>' : "";
    const ci = v.ci95 ? `[${signedBpb(v.ci95[0])}, ${signedBpb(v.ci95[1])}]` : "—";
    const pci = v.ppl_ratio_ci95 ? `[${pct(v.ppl_ratio_ci95[0])}, ${pct(v.ppl_ratio_ci95[1])}]` : "—";
    const cls = verdictClass(f);
    return `<tr class="fusion ${cls}" data-id="${esc(f.id)}"><td>${rank}</td><td class="name">${esc(f.id)}</td>` +
      (bytes ? `<td>${fmtBpb(f.bits_per_byte)}</td><td>${fmtPpl(f.ppl)}</td>` : `<td>${fmtPpl(f.ppl)}</td><td>${fmtBpb(f.bits_per_byte)}</td>`) +
      `<td>${signedBpb(v.delta_bits_per_byte)}</td><td class="ci">${ci}${mark}</td><td>${pct(v.ppl_ratio)}</td><td class="ci">${pci}</td>` +
      `<td>${fmtPpl(f.word_perplexity)}</td><td>${esc(fmtWeights(f.weights_mean))}</td></tr>`;
  });
  const notes = ciFootnote(metrics).map((l) => `<p class="note">${esc(l.trim())}</p>`);
  return [
    '<section id="results">',
    "<h2>Models and fusions</h2>",
    `<p class="explain">Each fusion against the best single model, <b>${esc(bestRef)}</b>: the change in bits per byte ` +
      "(negative: the fusion is better) with its paired 95% interval. Blue: better beyond the text's noise (the interval excludes 0); " +
      "red: worse beyond it; grey: the interval includes 0. Diamonds: the models themselves.</p>",
    forestPlot(metrics),
    ...notes,
    '<h3>Models</h3>',
    `<table class="models"><thead><tr><th></th>${modelHead}<th>word PPL</th><th>Δ bits/byte</th></tr></thead><tbody>`,
    ...modelRows,
    "</tbody></table>",
    `<h3>${metrics.fusions.length === 1 ? "Fusion" : "Fusions, best first"}</h3>`,
    `<table class="fusions"><thead><tr><th>#</th><th></th>${modelHead}<th>Δ bits/byte</th><th>95% CI</th>` +
      "<th>PPL change</th><th>95% CI</th><th>word PPL</th><th>mean weights</th></tr></thead><tbody>",
    ...fusionRows,
    "</tbody></table>",
    "</section>",
  ].join("\n");
}

/** better | worse (the interval excludes 0 on that side) | unsure. */
function verdictClass(f: FusionMetrics): "better" | "worse" | "unsure" {
  const v = f.vs_best_model;
  if (!v.excludes_zero) return "unsure";
  return v.delta_bits_per_byte < 0 ? "better" : "worse";
}

/** Steps of 1, 2 or 5 × 10^k giving about `n` ticks over [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
  return out;
}

const LABEL_W = 230;
const PLOT_W = 430;
const VALUE_W = 190;
const ROW_H = 20;

/** The x position of a number on the plot: data-domain [lo, hi] → [LABEL_W, LABEL_W + PLOT_W]. */
export function forestScale(lo: number, hi: number): (x: number) => number {
  return (x) => LABEL_W + ((x - lo) / (hi - lo)) * PLOT_W;
}

/** A short label for the plot (the full one in its title). */
function clip(s: string, n = 32): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

/** Numbers in the SVG's coordinates: two decimals, enough for a pixel. */
const px = (x: number) => String(Number(x.toFixed(2)));

/**
 * Δ bits per byte against the best model: a row per model (a diamond at its Δ, the best
 * at 0) and per fusion by rank (a dot and its 95% interval). Each fusion row carries its
 * numbers at full precision (data-delta, data-lo, data-hi); the SVG its scale
 * (data-domain, data-range), so a reader can check the drawing against the metrics.
 */
function forestPlot(metrics: Metrics): string {
  const best = bestModelIndex(metrics);
  const b0 = metrics.models[best].bits_per_byte;
  const models = metrics.models.map((m, i) => ({ label: displayRef(m.ref), delta: m.bits_per_byte - b0, best: i === best }));
  const fusions = rankedFusions(metrics);
  const values = [0, ...models.map((m) => m.delta), ...fusions.flatMap(({ f }) => [f.vs_best_model.delta_bits_per_byte, ...(f.vs_best_model.ci95 ?? [])])]
    .filter(Number.isFinite);
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  const pad = (hi - lo) * 0.06 || 0.01;
  lo -= pad;
  hi += pad;
  const x = forestScale(lo, hi);
  const top = 28;
  const rows = models.length + fusions.length + (fusions.length ? 1 : 0);
  const height = top + rows * ROW_H + 48;
  const width = LABEL_W + PLOT_W + VALUE_W;
  const o: string[] = [];
  o.push(`<svg class="forest" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `role="img" aria-label="Forest plot: change in bits per byte against ${esc(displayRef(metrics.models[best].ref))}" ` +
    `data-domain="${lo} ${hi}" data-range="${LABEL_W} ${LABEL_W + PLOT_W}">`);
  const ticks = niceTicks(lo, hi);
  const axisY = top + rows * ROW_H + 6;
  for (const t of ticks) {
    o.push(`<line class="grid" x1="${px(x(t))}" x2="${px(x(t))}" y1="${top - 6}" y2="${axisY}"/>`);
    o.push(`<text class="tick" x="${px(x(t))}" y="${axisY + 14}" text-anchor="middle">${esc(signedBpb(t).replace(/0+$/, "").replace(/\.$/, ""))}</text>`);
  }
  o.push(`<line class="zero" x1="${px(x(0))}" x2="${px(x(0))}" y1="${top - 10}" y2="${axisY}"/>`);
  o.push(`<text class="axis" x="${LABEL_W + PLOT_W / 2}" y="${axisY + 32}" text-anchor="middle">Δ bits per byte vs ${esc(clip(displayRef(metrics.models[best].ref), 40))} (negative: better)</text>`);
  o.push(`<text class="head" x="${LABEL_W + PLOT_W + 10}" y="${top - 12}">Δ [95% CI]</text>`);
  let y = top;
  for (const m of models) {
    const cy = y + ROW_H / 2;
    const cx = x(m.delta);
    o.push(`<g class="row model" data-ref="${esc(m.label)}" data-delta="${m.delta}">`);
    o.push(`<title>${esc(m.label)}: ${m.best ? "the best single model" : `${signedBpb(m.delta)} bits/byte`}</title>`);
    o.push(`<text class="label" x="${LABEL_W - 10}" y="${cy + 4}" text-anchor="end">${esc(clip(m.label))}</text>`);
    o.push(`<path class="diamond" d="M${px(cx)} ${px(cy - 6)} L${px(cx + 6)} ${px(cy)} L${px(cx)} ${px(cy + 6)} L${px(cx - 6)} ${px(cy)} Z"/>`);
    o.push(`<text class="value" x="${LABEL_W + PLOT_W + 10}" y="${cy + 4}">${m.best ? "best model" : signedBpb(m.delta)}</text>`);
    o.push("</g>");
    y += ROW_H;
  }
  if (fusions.length) {
    o.push(`<line class="sep" x1="10" x2="${width - 10}" y1="${y + ROW_H / 2}" y2="${y + ROW_H / 2}"/>`);
    y += ROW_H;
  }
  for (const { f, rank } of fusions) {
    const v = f.vs_best_model;
    const cy = y + ROW_H / 2;
    const cls = verdictClass(f);
    const ci = v.ci95;
    o.push(`<g class="row fusion ${cls}" data-id="${esc(f.id)}" data-delta="${v.delta_bits_per_byte}"` +
      (ci ? ` data-lo="${ci[0]}" data-hi="${ci[1]}"` : "") + ` data-excludes-zero="${v.excludes_zero}">`);
    o.push(`<title>${esc(f.id)}: ${signedBpb(v.delta_bits_per_byte)} bits/byte${ci ? `, 95% CI [${signedBpb(ci[0])}, ${signedBpb(ci[1])}]` : ", no interval"}; ` +
      `PPL ${pct(v.ppl_ratio)}${v.ppl_ratio_ci95 ? ` [${pct(v.ppl_ratio_ci95[0])}, ${pct(v.ppl_ratio_ci95[1])}]` : ""}</title>`);
    o.push(`<text class="label" x="${LABEL_W - 10}" y="${cy + 4}" text-anchor="end">${rank}. ${esc(clip(f.id, 28))}</text>`);
    if (ci) {
      o.push(`<line class="ci" x1="${px(x(ci[0]))}" x2="${px(x(ci[1]))}" y1="${px(cy)}" y2="${px(cy)}"/>`);
      for (const e of ci) o.push(`<line class="cap" x1="${px(x(e))}" x2="${px(x(e))}" y1="${px(cy - 4)}" y2="${px(cy + 4)}"/>`);
    }
    o.push(`<circle class="point" cx="${px(x(v.delta_bits_per_byte))}" cy="${px(cy)}" r="4.5"/>`);
    o.push(`<text class="value" x="${LABEL_W + PLOT_W + 10}" y="${cy + 4}">${signedBpb(v.delta_bits_per_byte)}${ci ? ` [${signedBpb(ci[0])}, ${signedBpb(ci[1])}]` : ""}</text>`);
    o.push("</g>");
    y += ROW_H;
  }
  o.push("</svg>");
  return `<figure class="forest-plot">\n${o.join("\n")}\n</figure>`;
}

// ---- heatmaps -------------------------------------------------------------------------

function heatmapSection(metrics: Metrics): string | null {
  const svg = metricsHeatmapSvg(metrics);
  if (!svg) return null;
  return [
    '<section id="heatmaps">',
    "<h2>Temperature heatmaps</h2>",
    `<p class="explain">${metrics.space === "bytes" ? "Bits per byte" : "Perplexity"} of each strategy of the sweep over the two models' temperatures; ` +
      "the red outline is the best cell of each panel. Hover a cell for its setting.</p>",
    `<figure class="heatmap">${svg.trim()}</figure>`,
    "</section>",
  ].join("\n");
}

// ---- fitted settings ------------------------------------------------------------------
// FIT: `kotara fit` (written in parallel) is to put its fitted settings into the metrics
// under `fit`. Until its shape settles, whatever it holds is rendered generically: a
// mapping as key / value rows, a list of mappings as a table with a column per key.
// Without a `fit` key the section is left out.

function fitSection(fit: unknown): string | null {
  if (fit === undefined || fit === null) return null;
  return [
    '<section id="fit" class="fit" data-section="fit">',
    "<h2>Fitted settings</h2>",
    '<p class="explain">What <code>kotara fit</code> fitted (the metrics file\'s <code>fit</code>).</p>',
    renderValue(fit, 0),
    "</section>",
  ].join("\n");
}

function renderValue(v: unknown, depth: number): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? fmtInt(v) : esc(String(Number(v.toPrecision(6))));
  if (typeof v === "string" || typeof v === "boolean") return esc(String(v));
  if (depth > 3) return `<code>${esc(JSON.stringify(v))}</code>`;
  if (Array.isArray(v)) {
    if (v.every((x) => x === null || typeof x !== "object")) return v.map((x) => renderValue(x, depth + 1)).join(" / ");
    if (v.every((x) => x && typeof x === "object" && !Array.isArray(x))) {
      const keys = [...new Set(v.flatMap((x) => Object.keys(x as object)))];
      const rows = v.map((x) => `<tr>${keys.map((k) => `<td>${renderValue((x as Record<string, unknown>)[k], depth + 1)}</td>`).join("")}</tr>`);
      return `<table class="fit-table"><thead><tr>${keys.map((k) => `<th>${esc(k)}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
    }
    return `<ol>${v.map((x) => `<li>${renderValue(x, depth + 1)}</li>`).join("")}</ol>`;
  }
  if (typeof v === "object") {
    const rows = Object.entries(v as Record<string, unknown>).map(([k, x]) => `<tr><th>${esc(k)}</th><td>${renderValue(x, depth + 1)}</td></tr>`);
    return `<table class="fit-kv"><tbody>${rows.join("")}</tbody></table>`;
  }
  return esc(String(v));
}

// ---- token view -----------------------------------------------------------------------

/** One piece of the view's text with the positions that stand for it. */
export interface Segment {
  /** Byte range of the text: [start, end), on UTF-8 character boundaries. */
  start: number;
  end: number;
  /** Indices into the positions. */
  positions: number[];
}

const isCont = (b: number | undefined) => b !== undefined && (b & 0xc0) === 0x80;

/**
 * The positions grouped into pieces of text that can be shown: each position's span
 * widened to whole UTF-8 characters (a byte of a character in byte space; a token
 * that ends inside one), overlapping spans merged, and a position without text of its
 * own (an empty span) put with the piece before it (the first: with the next one).
 */
export function segments(text: Uint8Array, start: readonly number[], end: readonly number[]): Segment[] {
  const n = text.length;
  const down = (i: number) => {
    let p = Math.max(0, Math.min(i, n));
    while (p > 0 && p < n && isCont(text[p])) p--;
    return p;
  };
  const up = (i: number) => {
    let p = Math.max(0, Math.min(i, n));
    while (p < n && isCont(text[p])) p++;
    return p;
  };
  const out: Segment[] = [];
  let pending: number[] = [];
  for (let j = 0; j < start.length; j++) {
    const a = down(start[j]);
    const b = up(end[j]);
    const last = out[out.length - 1];
    if (a >= b) {
      if (last) last.positions.push(j);
      else pending.push(j);
    } else if (last && a < last.end) {
      last.end = Math.max(last.end, b);
      last.positions.push(j);
    } else {
      out.push({ start: a, end: b, positions: [...pending, j] });
      pending = [];
    }
  }
  return out;
}

const GAIN: [number, number, number] = [33, 102, 172]; // #2166ac
const LOSS: [number, number, number] = [178, 24, 43]; // #b2182b

/**
 * The background of a difference d (bits) on a scale of ±s: white at 0, blue for a gain,
 * red for a loss, deeper up to full colour at |d| = s; the least difference still a tint
 * (5%), so the colour always has the difference's sign.
 */
export function deltaColour(d: number, s: number): string {
  if (!(d !== 0) || !Number.isFinite(d)) return "#ffffff";
  const t = Math.max(0.05, Math.min(1, Math.abs(d) / s));
  const c = d < 0 ? GAIN : LOSS;
  return `#${c.map((v) => Math.round(255 + (v - 255) * t).toString(16).padStart(2, "0")).join("")}`;
}

/** Quantile q of xs (type 7), 0 for none. */
function quantile(xs: number[], q: number): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const h = (s.length - 1) * q;
  const i = Math.floor(h);
  return s[i] + (h - i) * ((s[Math.min(i + 1, s.length - 1)] ?? s[i]) - s[i]);
}

const bits = (nats: number) => nats / Math.LN2;
const f2 = (x: number) => x.toFixed(2).replace("-", "−");

function tokenViewSection(metrics: Metrics, view: TokenView | null, note: string | null): string | null {
  if (!view) {
    return note ? ['<section id="token-view">', "<h2>Token view</h2>", `<p class="note">${esc(note)}</p>`, "</section>"].join("\n") : null;
  }
  const p = view.positions;
  const best = bestModelIndex(metrics);
  const bestName = shortName(metrics.models[best].ref);
  const names = metrics.models.map((m) => shortName(m.ref));
  const text = view.text.subarray(0, Math.min(view.text.length, p.bytes));
  const segs = segments(text, p.start, p.end);
  const dec = new TextDecoder("utf-8");
  const piece = (a: number, b: number) => dec.decode(text.subarray(a, b));
  const unit = metrics.space === "bytes" ? "byte" : "token";
  // per asked setting and segment: Σ (fused − best model) NLL, nats
  const deltas = p.settings.map((_, a) => segs.map((s) => s.positions.reduce((acc, j) => acc + p.fusion_nll[a][j] - p.model_nll[best][j], 0)));
  const scale = Math.max(0.1, quantile(deltas.flat().map((d) => Math.abs(bits(d))), 0.95));
  const ids = p.settings.map((k) => metrics.fusions[k]?.id ?? `setting ${k}`);
  const radios = ids.map((id, a) =>
    `<input type="radio" name="tv" id="tv-${a}"${a === 0 ? " checked" : ""}><label for="tv-${a}" class="tab">${esc(id)}</label>`);
  const summaries = p.settings.map((k, a) => {
    const gains = deltas[a].filter((d) => d < 0).length;
    const total = deltas[a].reduce((x, y) => x + y, 0);
    const fused = p.fusion_nll[a].reduce((x, y) => x + y, 0);
    const base = p.model_nll[best].reduce((x, y) => x + y, 0);
    const whole = metrics.fusions[k]?.vs_best_model.delta_bits_per_byte;
    return `<p class="tv-summary" id="tv-summary-${a}" data-setting="${esc(ids[a])}"><b>${esc(ids[a])}</b> against ${esc(bestName)} over the view: ` +
      `${fmtInt(p.start.length)} scored ${unit}s, ${f2(bits(base))} → ${f2(bits(fused))} bits (${total > 0 ? "+" : ""}${f2(bits(total))}; ` +
      `${signedBpb(bits(total) / Math.max(1, text.length))} bits/byte, on the whole text ${whole === undefined ? "—" : signedBpb(whole)}); ` +
      `better at ${segs.length ? Math.round((100 * gains) / segs.length) : 0}% of the pieces shown.</p>`;
  });
  const spans: string[] = [];
  let cursor = 0;
  segs.forEach((s, i) => {
    if (s.start > cursor) spans.push(`<span class="ctx">${escText(piece(cursor, s.start))}</span>`);
    const vars = p.settings.map((_, a) => {
      const db = bits(deltas[a][i]);
      return `--c${a}:${deltaColour(db, scale)}${Math.abs(db) / scale > 0.6 ? `;--t${a}:#fff` : ""}`;
    });
    // Δ nats per fusion, 6 digits (the JSON below has every number at full precision)
    const data = p.settings.map((_, a) => ` data-d${a}="${Number(deltas[a][i].toPrecision(6))}"`).join("");
    spans.push(`<span class="tok" style="${vars.join(";")}"${data} data-positions="${s.positions.join(" ")}" ` +
      `title="${escAttr(hoverText(p, ids, s, names, best, unit, piece(s.start, s.end)))}">${escText(piece(s.start, s.end))}</span>`);
    cursor = s.end;
  });
  if (cursor < text.length) spans.push(`<span class="ctx">${escText(piece(cursor, text.length))}</span>`);
  const covered = `The first ${fmtInt(text.length)} bytes of ${fmtInt(metrics.dataset.bytes)}`;
  const legend = `<div class="tv-legend"><span class="lg-label">fusion better</span>` +
    `<span class="lg-bar" style="background:linear-gradient(to right, ${deltaColour(-scale, scale)}, #ffffff, ${deltaColour(scale, scale)})"></span>` +
    `<span class="lg-label">fusion worse</span> <span class="lg-scale">(±${scale.toFixed(2)} bits per ${metrics.space === "bytes" ? "character" : unit} and beyond: full colour)</span></div>`;
  return [
    '<section id="token-view">',
    "<h2>Token view</h2>",
    `<p class="explain">${esc(covered)}, each ${metrics.space === "bytes" ? "character (the NLLs of its bytes added up)" : "token"} coloured by ` +
      `the fusion's NLL minus that of the best model, <b>${esc(bestName)}</b>, there. Grey: text that no scored ${unit} stands for. ` +
      `Hover a ${metrics.space === "bytes" ? "character" : "token"} for each model's NLL, each fusion's (and its change), and the weights α it gave ` +
      `${esc(names.join(" / "))}${metrics.space === "bytes" ? " (per byte)" : ""}.</p>`,
    '<div class="tv">',
    ...radios,
    legend,
    ...summaries,
    `<div class="tokens">${spans.join("")}</div>`,
    "</div>",
    `<script type="application/json" id="kotara-token-view">${jsonForScript({
      best_model: best, models: metrics.models.map((m) => m.ref), settings: ids, positions: p,
    })}</script>`,
    "</section>",
  ].join("\n");
}

/** What hovering a piece of the view says: where it is, each model's NLL, each fusion's (and its change), the weights. */
function hoverText(p: Positions, ids: string[], s: Segment, names: string[], best: number, unit: string, text: string): string {
  const sum = (row: number[]) => s.positions.reduce((acc, j) => acc + row[j], 0);
  const shown = JSON.stringify(text).slice(1, -1);
  const where = s.positions.length === 1 ? `bytes ${s.start}–${s.end}` : `bytes ${s.start}–${s.end}, ${s.positions.length} ${unit}s`;
  const baseline = sum(p.model_nll[best]);
  const lines = [`"${shown}" (${where})`, `NLL in bits: ${names.map((n, m) => `${n} ${f2(bits(sum(p.model_nll[m])))}`).join(" · ")}`];
  const first = s.positions.slice(0, 4);
  ids.forEach((id, a) => {
    const fused = sum(p.fusion_nll[a]);
    const alpha = first.map((j) => p.weights[a].map((w) => w[j].toFixed(2)).join("/")).join(", ") + (s.positions.length > first.length ? ", …" : "");
    lines.push(`${id} ${f2(bits(fused))} (${fused - baseline > 0 ? "+" : ""}${f2(bits(fused - baseline))}) α ${alpha}`);
  });
  return lines.join("\n");
}

/** JSON inside a <script type="application/json">: nothing in it can close the element. */
function jsonForScript(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// ---- style ----------------------------------------------------------------------------

function css(views: number): string {
  // the radio buttons pick the fusion: its tab, its summary, its colours (custom properties on each token)
  const show = Array.from({ length: views }, (_, a) =>
    `#tv-${a}:checked + label{background:#1f2937;color:#fff;border-color:#1f2937}#tv-${a}:checked ~ #tv-summary-${a}{display:block}` +
    `#tv-${a}:checked ~ .tokens .tok{background:var(--c${a});color:var(--t${a},inherit)}`).join("\n");
  return `
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2937;background:#f7f7f5}
header,main,footer{max-width:1100px;margin:0 auto;padding:0 24px}
header{padding-top:20px}
h1{font-size:22px;margin:0 0 6px}h1 .sub{font-weight:normal;color:#6b7280}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
p{margin:4px 0}.lede{font-weight:600}.meta,.note,.explain{color:#4b5563}.note{font-size:12.5px}
.verdict{margin-top:8px;padding:6px 10px;background:#eef2ff;border-left:3px solid #4f46e5;display:inline-block}
nav{margin:12px 0 0;font-size:13px}nav a{color:#4f46e5;text-decoration:none}
section{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:4px 18px 16px;margin:18px 0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0 8px}
th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #f0f0f0;white-space:nowrap}
th{font-weight:600;color:#374151;border-bottom:1px solid #d1d5db}
td.name,th:first-child{text-align:left}table.fusions td:nth-child(2){text-align:left}
td.ci{color:#4b5563}.mark{color:#4f46e5;font-weight:bold}
tr.better td.name{color:#2166ac}tr.worse td.name{color:#b2182b}tr.best td.name{font-weight:600}
.tag{font-size:11px;background:#e5e7eb;border-radius:3px;padding:0 4px;color:#374151;font-weight:normal}
figure{margin:8px 0;overflow-x:auto}
svg.forest{font:12px -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;font-variant-numeric:tabular-nums}
svg.forest .grid{stroke:#eef0f3}svg.forest .zero{stroke:#6b7280;stroke-dasharray:4 3}
svg.forest .tick{fill:#6b7280;font-size:11px}svg.forest .axis,svg.forest .head{fill:#374151}
svg.forest .label{fill:#1f2937}svg.forest .value{fill:#4b5563;font-size:11.5px}svg.forest .sep{stroke:#e5e7eb}
svg.forest .diamond{fill:#9ca3af;stroke:#4b5563}
svg.forest .ci,svg.forest .cap{stroke:#6b7280;stroke-width:1.6}svg.forest .point{fill:#6b7280}
svg.forest .better .ci,svg.forest .better .cap{stroke:#2166ac}svg.forest .better .point{fill:#2166ac}
svg.forest .worse .ci,svg.forest .worse .cap{stroke:#b2182b}svg.forest .worse .point{fill:#b2182b}
svg.forest .row:hover .label{font-weight:bold}
.fit-kv th{text-align:left}.fit-table td,.fit-table th{text-align:left}
.tv{position:relative}.tv input[type=radio]{position:absolute;opacity:0;width:0;height:0}
.tv input[type=radio]:focus-visible + label{outline:2px solid #4f46e5}
.tv .tab{display:inline-block;margin:6px 6px 6px 0;padding:3px 10px;border:1px solid #d1d5db;border-radius:14px;cursor:pointer;font-size:13px;background:#fff}
.tv-legend{margin:4px 0 8px;font-size:12px;color:#4b5563;display:flex;align-items:center;gap:8px;flex-wrap:wrap}
.lg-bar{display:inline-block;width:180px;height:12px;border:1px solid #d1d5db}
.tv-summary{display:none;font-size:13px;color:#374151;margin:6px 0}${show}
.tokens{white-space:pre-wrap;word-wrap:break-word;font:13px/1.75 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;border:1px solid #e5e7eb;border-radius:4px;padding:10px 12px;background:#fff}
.tokens .tok{border-radius:2px}.tokens .tok:hover{outline:1px solid #111}
.tokens .ctx{color:#9ca3af}
footer{color:#6b7280;font-size:12px;padding:8px 24px 28px}
`.trim();
}
