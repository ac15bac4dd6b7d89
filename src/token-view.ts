// The HTML report's token view on the controller's side: which fusions it shows (the
// config's report.token_view_settings, or the default), the per-position request to
// the worker (protocol v6 `positions`), and the text it covers, read back for the page.
import { closeSync, openSync, readSync } from "node:fs";
import type { TokenView } from "./html-report.js";
import { MAX_VIEW_SETTINGS, type PositionsRequest, type ResultMsg, type Setting } from "./protocol.js";

/**
 * The default fusions of the token view: up to MAX_VIEW_SETTINGS of those at T = 1 (every
 * model's temperature 1), in request order; none at T = 1: the first setting.
 */
export function defaultViewSettings(settings: readonly Setting[]): number[] {
  const atOne = settings.map((s, k) => [s, k] as const).filter(([s]) => s.temperatures.every((t) => t === 1)).map(([, k]) => k);
  return (atOne.length ? atOne : settings.length ? [0] : []).slice(0, MAX_VIEW_SETTINGS);
}

/**
 * Fusion ids → indices into the settings. `aliases`: the id of a setting evaluated once
 * under another id (a duplicate) → that id. Problems as `[i]: message` lines (the caller
 * puts the field's path in front).
 */
export function resolveViewSettings(ids: readonly string[], settings: readonly Setting[], aliases: ReadonlyMap<string, string> = new Map()): { value: number[]; lines: string[] } {
  const index = new Map(settings.map((s, k) => [s.id, k]));
  const lines: string[] = [];
  const value: number[] = [];
  ids.forEach((raw, i) => {
    const id = aliases.get(raw) ?? raw;
    const k = index.get(id);
    if (k === undefined) {
      const known = settings.slice(0, 8).map((s) => s.id).join(", ") + (settings.length > 8 ? `, … (${settings.length} in all)` : "");
      lines.push(`[${i}]: no fusion of this run has the id ${JSON.stringify(raw)}; its ids: ${known}`);
    } else if (value.includes(k)) {
      lines.push(`[${i}]: ${JSON.stringify(raw)} is listed twice${id !== raw ? ` (it is the same setting as ${JSON.stringify(id)})` : ""}`);
    } else {
      value.push(k);
    }
  });
  return { value, lines };
}

/** The first `bytes` bytes of a file (fewer when it is shorter). */
export function readHead(file: string, bytes: number): Uint8Array {
  const buf = Buffer.alloc(bytes);
  const fd = openSync(file, "r");
  try {
    let got = 0;
    while (got < bytes) {
      const n = readSync(fd, buf, got, bytes - got, got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/**
 * The token view of a finished request: the worker's per-position numbers and the text
 * they cover, or why there is none.
 */
export function tokenViewOf(textPath: string, asked: PositionsRequest | null | undefined, result: ResultMsg): { view: TokenView | null; viewNote: string | null } {
  if (!asked) return { view: null, viewNote: null };
  if (!result.positions) {
    return { view: null, viewNote: "No token view: the worker has no per-position numbers for this run (its tokenizer gives no offset mapping, so where each token's text lies is unknown)." };
  }
  return { view: { text: readHead(textPath, result.positions.bytes), positions: result.positions }, viewNote: null };
}
