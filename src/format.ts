// Numbers and tables for people: the one home of every console format (the report,
// the bench, the experiments page).
import path from "node:path";

/** 16969 → "16,969". */
export const fmtInt = (x: number): string => Math.round(x).toLocaleString("en-US");

/** A perplexity: two decimals; scientific from 1e6 on (a diverged fusion stays readable). */
export function fmtPpl(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return x >= 1e6 ? x.toExponential(3) : x.toFixed(2);
}

/** Bits per byte: four decimals. */
export const fmtBpb = (x: number): string => (Number.isFinite(x) ? x.toFixed(4) : String(x));

/** A signed percentage, two decimals: "-9.67%", "+2.50%"; one that rounds to zero is "0.00%". */
export function fmtPct(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const s = x.toFixed(2);
  if (s === "0.00" || s === "-0.00") return "0.00%";
  return `${x > 0 ? "+" : ""}${s}%`;
}

/** A parameter for prose: at most four decimals, no trailing zeros (0.85, 1). */
export const fmtNum = (x: number): string => String(Number(x.toFixed(4)));

/** Mean weights "0.50 / 0.50". */
export const fmtWeights = (w: readonly number[]): string => w.map((x) => x.toFixed(2)).join(" / ");

/** A model ref for humans: a local path relative to the working directory. */
export function displayRef(ref: string): string {
  if (!path.isAbsolute(ref)) return ref;
  const rel = path.relative(process.cwd(), ref);
  return rel && !rel.startsWith(`..${path.sep}..`) ? rel : ref;
}

/** A model's name in a heatmap: the directory name of a local model, else the Hub id. */
export function shortName(ref: string): string {
  return path.isAbsolute(ref) ? path.basename(ref) : ref;
}

export type Align = "l" | "r";

/**
 * Aligned columns, two spaces apart, no borders: the report's and the bench's tables.
 * Kept here rather than taken from a library: it is ten lines, and cli-table3 draws
 * borders and colours we would switch off one by one.
 */
export function table(head: readonly string[], rows: readonly (readonly string[])[], align: readonly Align[], indent = "  "): string[] {
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: readonly string[]) =>
    indent + cells.map((s, c) => (align[c] === "l" ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join("  ").trimEnd();
  return [line(head), ...rows.map(line)];
}
