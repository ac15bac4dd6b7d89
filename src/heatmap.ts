// Heatmaps of a two-model temperature sweep: for each strategy, PPL over the grid
// T(model A) × T(model B) (in byte space, bits per byte: log2 of the byte PPL, so the
// same order and the same best cell). As aligned text for the console report, and as a
// self-contained SVG (one panel per strategy, shared colour scale) next to the
// metrics file. No dependencies.
import { fmtBpb, fmtPpl } from "./format.js";
import type { Sweep } from "./sweep.js";
import { type ListParam, type StrategyType, defaultParam, formatNumber, paramsOf } from "./strategies.js";

/** The parts of a fusion result a heatmap reads (report.ts's FusionMetrics fits). */
export interface HeatmapFusion {
  id: string;
  strategy: { type: string; temperatures: number[] } & { [P in ListParam]?: number[] | null };
  ppl: number;
}

export interface HeatmapInput {
  sweep: Sweep;
  fusions: readonly HeatmapFusion[];
  /** Labels of the two models (rows: the first, columns: the second). */
  models?: readonly [string, string] | readonly string[];
  /** tokens (cells show PPL, the default) or bytes (cells show bits per byte; SPEC §7). */
  space?: "tokens" | "bytes";
}

/** What the cells say: the unit's name, and a PPL written in it. */
interface Unit {
  name: string;
  show: (ppl: number) => string;
}

function unitOf(input: HeatmapInput): Unit {
  return input.space === "bytes"
    ? { name: "bits/byte", show: (ppl) => fmtBpb(Math.log2(ppl)) }
    : { name: "PPL", show: fmtPpl };
}

export interface HeatmapCell {
  ppl: number;
  id: string;
}

export interface HeatmapPanel {
  type: StrategyType;
  /** e.g. "poe (best over betas)". */
  title: string;
  /** Temperatures of model A: one row each. */
  rows: number[];
  /** Temperatures of model B: one column each. */
  cols: number[];
  /** cells[r][c]; null where no result matched (e.g. a setting that failed). */
  cells: (HeatmapCell | null)[][];
  /** [row, col] of the lowest PPL in the panel. */
  best: [number, number] | null;
}

/** True when the sweep is a two-model temperature grid (the only kind drawn). */
export function isTwoModelGrid(sweep: Sweep | null | undefined): sweep is Sweep {
  return !!sweep && sweep.temperatures.length === 2;
}

/**
 * Does a fusion belong to the sweep's grid in the lists its type takes besides
 * temperatures (betas, …)? Each must be the type's default where the sweep has no
 * grid for it, or one value of each model's grid where it does.
 */
function listsMatch(f: HeatmapFusion, sweep: Sweep): boolean {
  const type = f.strategy.type as StrategyType;
  return paramsOf(type).every((p) => {
    const xs = f.strategy[p];
    if (!xs) return false;
    const g = sweep[p];
    if (!g) {
      const d = defaultParam(type, p, 2)!;
      return xs.length === d.length && xs.every((x, i) => x === d[i]);
    }
    return xs.length === g.length && xs.every((x, i) => g[i].includes(x));
  });
}

/**
 * One panel per strategy of the sweep. A cell is the fusion of that type at
 * (T_a, T_b), found by its parameters, not its id (an explicit strategy with the same
 * parameters stands in for the sweep's); for a strategy swept over betas too, the best
 * over them.
 */
export function heatmapPanels(input: HeatmapInput): HeatmapPanel[] {
  const { sweep } = input;
  if (!isTwoModelGrid(sweep)) return [];
  const [rows, cols] = sweep.temperatures;
  const types = [...new Set(sweep.strategies)];
  return types.map((type) => {
    const cells: (HeatmapCell | null)[][] = rows.map(() => cols.map(() => null));
    for (const f of input.fusions) {
      if (f.strategy.type !== type || f.strategy.temperatures.length !== 2 || !Number.isFinite(f.ppl)) continue;
      if (!listsMatch(f, sweep)) continue;
      const r = rows.indexOf(f.strategy.temperatures[0]);
      const c = cols.indexOf(f.strategy.temperatures[1]);
      if (r < 0 || c < 0) continue;
      const cur = cells[r][c];
      if (!cur || f.ppl < cur.ppl) cells[r][c] = { ppl: f.ppl, id: f.id };
    }
    let best: [number, number] | null = null;
    cells.forEach((row, r) =>
      row.forEach((cell, c) => {
        if (cell && (!best || cell.ppl < cells[best[0]][best[1]]!.ppl)) best = [r, c];
      }),
    );
    const over = paramsOf(type).filter((p) => sweep[p]);
    const title = over.length ? `${type} (best over ${over.join(" and ")})` : type;
    return { type, title, rows: [...rows], cols: [...cols], cells, best };
  });
}

function modelLabels(input: HeatmapInput): [string, string] {
  return [input.models?.[0] ?? "model A", input.models?.[1] ?? "model B"];
}


/**
 * Aligned text tables, one per strategy: rows T of model A, columns T of model B,
 * `*` marks the panel's best cell.
 */
export function heatmapText(input: HeatmapInput): string {
  const panels = heatmapPanels(input);
  if (panels.length === 0) return "";
  const [a, b] = modelLabels(input);
  const unit = unitOf(input);
  const out = [`${unit.name} by temperature (rows: T of ${a}; columns: T of ${b}; * best of the panel)`];
  for (const p of panels) {
    const corner = "T_a \\ T_b";
    const body = p.cells.map((row, r) =>
      row.map((cell, c) => (cell ? unit.show(cell.ppl) : "-") + (p.best && p.best[0] === r && p.best[1] === c ? "*" : " ")),
    );
    const head = p.cols.map((t) => formatNumber(t) + " ");
    const width = Math.max(...head.map((h) => h.length), ...body.flat().map((s) => s.length));
    const first = Math.max(corner.length, ...p.rows.map((t) => formatNumber(t).length));
    out.push("", `${p.title}`);
    out.push(`  ${corner.padStart(first)}  ${head.map((h) => h.padStart(width)).join(" ")}`.trimEnd());
    p.rows.forEach((t, r) =>
      out.push(`  ${formatNumber(t).padStart(first)}  ${body[r].map((s) => s.padStart(width)).join(" ")}`.trimEnd()),
    );
  }
  return out.join("\n");
}

// ---- SVG -----------------------------------------------------------------------------

// Viridis, sampled: the best (lowest) PPL is yellow, the worst purple.
const VIRIDIS = ["#fde725", "#90d743", "#35b779", "#21918c", "#31688e", "#443983", "#440154"];

function hexToRgb(h: string): [number, number, number] {
  const n = parseInt(h.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Colour for t in [0, 1] (0 = best). */
export function colourAt(t: number): string {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [hexToRgb(VIRIDIS[i]), hexToRgb(VIRIDIS[i + 1])];
  const rgb = a.map((v, k) => Math.round(v + (b[k] - v) * f));
  return `#${rgb.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

function textColourFor(t: number): string {
  return t < 0.55 ? "#111111" : "#ffffff";
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);
}

const CELL_W = 64;
const CELL_H = 30;
const LEFT = 78;
const TOP = 58;
const PANEL_GAP = 36;

/** One log-PPL colour scale shared by every panel: [lo, hi] and the position of a PPL on it. */
function logScale(panels: HeatmapPanel[]) {
  const values = panels.flatMap((p) => p.cells.flat().filter((c): c is HeatmapCell => c !== null).map((c) => c.ppl));
  const lo = values.length ? Math.log(Math.min(...values)) : 0;
  const hi = values.length ? Math.log(Math.max(...values)) : 1;
  return { empty: values.length === 0, lo, hi, at: (ppl: number) => (hi > lo ? (Math.log(ppl) - lo) / (hi - lo) : 0) };
}
type Scale = ReturnType<typeof logScale>;

/**
 * A self-contained SVG: one panel per strategy (two per row), cells coloured on one
 * log-PPL scale shared by all panels, values written in the cells, the best cell of
 * each panel outlined, axis labels, and a colour bar.
 */
export function heatmapSvg(input: HeatmapInput, opts: { title?: string } = {}): string {
  const panels = heatmapPanels(input);
  const scale = logScale(panels);
  const unit = unitOf(input);
  const nCols = panels[0]?.cols.length ?? 1;
  const nRows = panels[0]?.rows.length ?? 1;
  const panelW = LEFT + nCols * CELL_W + 16;
  const panelH = TOP + nRows * CELL_H + 12;
  const perRow = Math.min(2, Math.max(1, panels.length));
  const gridRows = Math.max(1, Math.ceil(panels.length / perRow));
  const legendH = 84;
  const width = Math.max(360, perRow * panelW + (perRow - 1) * PANEL_GAP + 40);
  const height = 44 + gridRows * panelH + (gridRows - 1) * PANEL_GAP + legendH;

  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
      `font-family="Helvetica, Arial, sans-serif" font-size="12">`,
  );
  o.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  o.push(`<text x="20" y="26" font-size="15" font-weight="bold">${esc(opts.title ?? `${unit.name === "PPL" ? "Perplexity" : "Bits per byte"} by temperature`)}</text>`);
  panels.forEach((p, k) => {
    const x0 = 20 + (k % perRow) * (panelW + PANEL_GAP);
    const y0 = 44 + Math.floor(k / perRow) * (panelH + PANEL_GAP);
    o.push(...svgPanel(p, modelLabels(input), scale, unit, x0, y0));
  });
  o.push(...svgLegend(scale, unit, height - legendH + 18, Math.min(300, width - 40)));
  o.push(`</svg>`);
  return o.join("\n") + "\n";
}

/** One strategy's grid at (x0, y0): title, axis labels, coloured cells, the best outlined. */
function svgPanel(p: HeatmapPanel, [a, b]: [string, string], scale: Scale, unit: Unit, x0: number, y0: number): string[] {
  const o: string[] = [];
  o.push(`<g class="panel" data-strategy="${esc(p.type)}" transform="translate(${x0},${y0})">`);
  o.push(`<text x="${LEFT}" y="16" font-size="14" font-weight="bold">${esc(p.title)}</text>`);
  // column header: T of model B
  o.push(`<text x="${LEFT + (p.cols.length * CELL_W) / 2}" y="34" text-anchor="middle" fill="#444">T ${esc(b)}</text>`);
  p.cols.forEach((t, c) =>
    o.push(`<text x="${LEFT + c * CELL_W + CELL_W / 2}" y="${TOP - 6}" text-anchor="middle">${formatNumber(t)}</text>`),
  );
  // row header: T of model A
  const midY = TOP + (p.rows.length * CELL_H) / 2;
  o.push(`<text x="14" y="${midY}" text-anchor="middle" fill="#444" transform="rotate(-90 14 ${midY})">T ${esc(a)}</text>`);
  p.rows.forEach((t, r) =>
    o.push(`<text x="${LEFT - 8}" y="${TOP + r * CELL_H + CELL_H / 2 + 4}" text-anchor="end">${formatNumber(t)}</text>`),
  );
  p.cells.forEach((row, r) => row.forEach((cell, c) => o.push(...svgCell(cell, LEFT + c * CELL_W, TOP + r * CELL_H, scale, unit))));
  if (p.best) {
    const [r, c] = p.best;
    o.push(
      `<rect class="best" x="${LEFT + c * CELL_W + 1.5}" y="${TOP + r * CELL_H + 1.5}" width="${CELL_W - 3}" height="${CELL_H - 3}" ` +
        `fill="none" stroke="#d62728" stroke-width="3"/>`,
    );
  }
  o.push(`</g>`);
  return o;
}

function svgCell(cell: HeatmapCell | null, x: number, y: number, scale: Scale, unit: Unit): string[] {
  if (!cell) {
    return [
      `<rect x="${x}" y="${y}" width="${CELL_W}" height="${CELL_H}" fill="#eeeeee" stroke="#ffffff"/>`,
      `<text x="${x + CELL_W / 2}" y="${y + CELL_H / 2 + 4}" text-anchor="middle" fill="#999">–</text>`,
    ];
  }
  const t = scale.at(cell.ppl);
  return [
    `<rect x="${x}" y="${y}" width="${CELL_W}" height="${CELL_H}" fill="${colourAt(t)}" stroke="#ffffff">` +
      `<title>${esc(cell.id)}: ${unit.name} ${unit.show(cell.ppl)}</title></rect>`,
    `<text x="${x + CELL_W / 2}" y="${y + CELL_H / 2 + 4}" text-anchor="middle" fill="${textColourFor(t)}">${unit.show(cell.ppl)}</text>`,
  ];
}

/** The colour bar (log-PPL scale, labelled in the unit) at height `ly`, `lw` wide. */
function svgLegend(scale: Scale, unit: Unit, ly: number, lw: number): string[] {
  const o: string[] = [];
  o.push(`<defs><linearGradient id="kotara-scale" x1="0" x2="1" y1="0" y2="0">`);
  VIRIDIS.forEach((col, i) => o.push(`<stop offset="${(i / (VIRIDIS.length - 1)).toFixed(3)}" stop-color="${col}"/>`));
  o.push(`</linearGradient></defs>`);
  o.push(`<rect x="20" y="${ly}" width="${lw}" height="12" fill="url(#kotara-scale)"/>`);
  if (!scale.empty) {
    o.push(`<text x="20" y="${ly + 28}">${unit.show(Math.exp(scale.lo))} (best)</text>`);
    o.push(`<text x="${20 + lw}" y="${ly + 28}" text-anchor="end">${unit.show(Math.exp(scale.hi))}</text>`);
  }
  o.push(`<text x="20" y="${ly + 46}" fill="#444">${unit.name === "PPL" ? "PPL (log scale)" : "bits/byte (linear: log2 of the byte PPL)"}; red outline: best of the panel</text>`);
  return o;
}
