// The fake worker's canned numbers: documented closed forms, so that a test can compute
// what the controller must report without running a model (and without this file's code:
// the rules below are short enough to restate in a test).
//
// Tokens. The fake has no tokenizer: the "tokens" of a dataset are its UTF-8 bytes,
// n = byte length of the file. Windows over them follow python/kotara_worker/windows.py
// exactly (planWindows below is a line-by-line port).
//
// NLL per scored token (nats), the same for every token:
//   model m (0-based):             ν_m = ln(20 + 5·m)                 → PPL 20, 25, 30, …
//   setting s over M models:       ν_s = ln(B(type) · (1 + Σ_m (T_m − τ_m)²) · (1 + D(s)))
//       B: average 18, poe 18, entropy 17, gap 19, mix 18.5
//       τ_m = 1 + 0.1·m            (model 0 is best at T = 1, model 1 at T = 1.1, …)
//       D(s) = Σ_m (x_m/Σx − 1/M)² for the static per-model list x of the type (poe's
//              betas, mix's weights: the first list the registry says it takes), else 0
//     so PPL_s = B · (1 + Σ (T_m − τ_m)²) · (1 + D): poe with equal betas is average
//     (as SPEC §3 has it), and a temperature sweep has an interior best cell.
// Weight α_m per scored token (Σ_m α_m = 1):
//   average: 1/M;  poe, mix: x_m/Σx (1/M when Σx = 0);  entropy and gap: (1/T_m) / Σ_k (1/T_k)
//
// Sums: each window adds n_scored(w)·ν (and n_scored(w)·α_m) in window order, in float64,
// so sum/scored_tokens is ν up to rounding, and a run resumed from a checkpoint's sums
// repeats the uninterrupted run's additions bit for bit. Per window (protocol v3) the
// same n_scored(w)·ν is listed for every model and setting, with n_scored(w) targets and
// bytes(w) bytes: the fake's tokens are bytes, so a window's bytes are the stream
// positions it adds, from the previous window's end (0 for the first) to its own end
// (the text's end for the last), as the worker counts them; they add up to the text's.
//
// Positions (protocol v6, an evaluate request's `positions`): the fake's tokens are bytes,
// so every scored stream index t whose byte lies before the view's cut is a position with
// the span [t, t + 1), the cut being the last UTF-8 character boundary at or before
// min(bytes asked, n). Each position has the same numbers as every token: ν_m per model,
// ν_s per asked setting, α per asked setting and model. A resumed request gives every
// position of the view too (the worker scores the checkpoint's windows of the view again).
import type { FitOptions, FitResult, Positions, PositionsRequest, Setting, Sums } from "../../src/protocol.js";
import { paramsOf } from "../../src/strategies.js";

export interface Window {
  start: number; // first stream index fed to the model
  end: number; // one past the last
  firstScored: number; // targets firstScored .. end-1 are scored
}

/** python/kotara_worker/windows.py plan_windows, ported. Throws the same messages. */
export function planWindows(nTokens: number, maxLength: number, stride: number, bos = false): Window[] {
  if (maxLength <= 0) throw new Error(`max_length must be > 0, got ${maxLength}`);
  if (stride <= 0) throw new Error(`stride must be > 0, got ${stride}`);
  if (stride > maxLength) {
    throw new Error(`stride (${stride}) must be <= max_length (${maxLength}): a larger stride would skip tokens`);
  }
  if (nTokens < 2) throw new Error(`the text has ${nTokens} token(s): at least 2 are needed to score anything`);
  const windows: Window[] = [];
  let prevEnd = 0;
  for (let start = 0; start < nTokens; start += stride) {
    const end = Math.min(start + maxLength, nTokens);
    const trgLen = end - prevEnd;
    let firstScored = end - trgLen;
    if (!bos) firstScored = Math.max(firstScored, start + 1); // position 0 has no context
    if (firstScored < end) windows.push({ start, end, firstScored });
    prevEnd = end;
    if (end === nTokens) break;
  }
  return windows;
}

/** python/kotara_worker/evaluate.py plan_batches, ported: window index ranges [start, stop). */
export function planBatches(windows: Window[], batchSize: number): [number, number][] {
  const batches: [number, number][] = [];
  const len = (w: Window) => w.end - w.start;
  for (let g = 0; g < windows.length; g += batchSize) {
    let start = g;
    const stop = Math.min(g + batchSize, windows.length);
    for (let i = g + 1; i <= stop; i++) {
      if (i === stop || len(windows[i]) !== len(windows[start])) {
        batches.push([start, i]);
        start = i;
      }
    }
  }
  return batches;
}

export const BASE_PPL: Record<Setting["type"], number> = { average: 18, poe: 18, entropy: 17, gap: 19, mix: 18.5 };

/** The canned perplexity of model m alone. */
export const modelPpl = (m: number): number => 20 + 5 * m;

/** τ_m: the temperature at which the fake's fusion is best for model m. */
export const bestTemperature = (m: number): number => 1 + 0.1 * m;

/** The type's static per-model list (poe's betas, mix's weights), normalized to sum 1; null for the others. */
function normalizedShares(s: Setting): number[] | null {
  const [param] = paramsOf(s.type);
  const xs = param ? s[param] : null;
  if (!xs) return null;
  const total = xs.reduce((a, b) => a + b, 0);
  const M = s.temperatures.length;
  return total > 0 ? xs.map((b) => b / total) : xs.map(() => 1 / M);
}

/** The canned perplexity of a fusion setting. */
export function fusionPpl(s: Setting): number {
  const M = s.temperatures.length;
  const temp = s.temperatures.reduce((acc, t, m) => acc + (t - bestTemperature(m)) ** 2, 0);
  const b = normalizedShares(s);
  const d = b ? b.reduce((acc, x) => acc + (x - 1 / M) ** 2, 0) : 0;
  return BASE_PPL[s.type] * (1 + temp) * (1 + d);
}

/** The canned per-token weights α of a fusion setting (they sum to 1). */
export function fusionWeights(s: Setting): number[] {
  const M = s.temperatures.length;
  if (s.type === "average") return s.temperatures.map(() => 1 / M);
  if (s.type === "poe" || s.type === "mix") return normalizedShares(s) ?? s.temperatures.map(() => 1 / M);
  const inv = s.temperatures.map((t) => 1 / t);
  const total = inv.reduce((a, b) => a + b, 0);
  return inv.map((x) => x / total);
}

export function zeroSums(nModels: number, nSettings: number): Sums {
  return {
    windows_done: 0, scored_tokens: 0, model_nll: Array(nModels).fill(0), fusion_nll: Array(nSettings).fill(0),
    fusion_weights: Array.from({ length: nSettings }, () => Array(nModels).fill(0)),
    window_first: 0, window_targets: [], window_bytes: [],
    window_model_nll: Array.from({ length: nModels }, () => []), window_fusion_nll: Array.from({ length: nSettings }, () => []),
  };
}

/** The bytes of window i of `windows` over a stream of nTokens byte-tokens (see the header). */
export function windowBytes(windows: Window[], i: number, nTokens: number): number {
  const from = i === 0 ? 0 : windows[i - 1].end;
  const to = i === windows.length - 1 ? nTokens : windows[i].end;
  return to - from;
}

/** Per-token rates of one request: ν per model and per setting, α per setting. */
export function rates(nModels: number, settings: Setting[]) {
  return {
    model: Array.from({ length: nModels }, (_, m) => Math.log(modelPpl(m))),
    fusion: settings.map((s) => Math.log(fusionPpl(s))),
    weights: settings.map(fusionWeights),
  };
}

/** Adds window w (of `bytes` bytes) to the sums (in place), as the fake's evaluation loop does. */
export function addWindow(sums: Sums, w: Window, r: ReturnType<typeof rates>, bytes: number): void {
  const n = w.end - w.firstScored;
  sums.scored_tokens += n;
  sums.window_targets.push(n);
  sums.window_bytes.push(bytes);
  for (let m = 0; m < r.model.length; m++) {
    sums.model_nll[m] += n * r.model[m];
    sums.window_model_nll[m].push(n * r.model[m]);
  }
  for (let k = 0; k < r.fusion.length; k++) {
    sums.fusion_nll[k] += n * r.fusion[k];
    sums.window_fusion_nll[k].push(n * r.fusion[k]);
    for (let m = 0; m < r.weights[k].length; m++) sums.fusion_weights[k][m] += n * r.weights[k][m];
  }
}

/** A progress message's share of the sums: the totals, and the windows from `since` on. */
export function sumsSince(sums: Sums, since: number): Sums {
  return {
    ...structuredClone(sums), window_first: since, window_targets: sums.window_targets.slice(since), window_bytes: sums.window_bytes.slice(since),
    window_model_nll: sums.window_model_nll.map((r) => r.slice(since)), window_fusion_nll: sums.window_fusion_nll.map((r) => r.slice(since)),
  };
}

/** The whole evaluation's sums, computed at once (what a result of the fake carries). */
export function expectedSums(nTokens: number, dataset: { max_length: number; stride: number; bos_per_window: boolean },
  nModels: number, settings: Setting[]): Sums {
  const windows = planWindows(nTokens, dataset.max_length, dataset.stride, dataset.bos_per_window);
  const sums = zeroSums(nModels, settings.length);
  const r = rates(nModels, settings);
  windows.forEach((w, i) => addWindow(sums, w, r, windowBytes(windows, i, nTokens)));
  sums.windows_done = windows.length;
  return sums;
}

/** The offset of the first byte that is not UTF-8 (as Python's UnicodeDecodeError.start), or -1. */
export function firstBadUtf8(bytes: Buffer): number {
  const again = Buffer.from(bytes.toString("utf8"), "utf8"); // bad sequences become U+FFFD (EF BF BD)
  let d = 0;
  while (d < bytes.length && d < again.length && bytes[d] === again[d]) d++;
  if (d === bytes.length && d === again.length) return -1;
  // bytes and `again` agree up to d: if d falls inside a character of `again`, that character
  // (a U+FFFD the decoder put in place of a bad sequence) starts where the bad bytes do.
  let k = d;
  while (k > 0 && (again[k] & 0xc0) === 0x80) k--;
  return k;
}

/** The per-position numbers of a request's token view (see the header). */
export function positionsOf(text: Buffer, windows: Window[], asked: PositionsRequest, r: ReturnType<typeof rates>): Positions {
  let cut = Math.min(asked.bytes, text.length);
  while (cut > 0 && cut < text.length && (text[cut] & 0xc0) === 0x80) cut--;
  const stream = windows.flatMap((w) => Array.from({ length: w.end - w.firstScored }, (_, j) => w.firstScored + j)).filter((t) => t < cut);
  return {
    settings: [...asked.settings], bytes: cut, start: stream, end: stream.map((t) => t + 1),
    model_nll: r.model.map((nu) => stream.map(() => nu)),
    fusion_nll: asked.settings.map((k) => stream.map(() => r.fusion[k])),
    weights: asked.settings.map((k) => r.weights[k].map((a) => stream.map(() => a))),
  };
}

/** What the worker's log-linear fit keeps: models × scored positions × vocabulary × 4 bytes (fit.py). */
export const keptLogitsBytes = (nModels: number, positions: number, vocab: number): number => nModels * positions * vocab * 4;

/**
 * The fake's fits, in options.fits order (closed forms of its canned surface):
 *   loglinear → fitted-poe: temperatures 1, betas c_m = 1 / (M · τ_m) (the weights 1/M at the
 *               temperatures τ_m its surface favours), Newton 3 iterations, 7 passes, |∇| 0;
 *   mix       → fitted-mix: weights 1/M, each temperature the grid value (mix_temperatures and 1)
 *               nearest τ_m (the first of equals), EM 1 iteration per grid value.
 * Their NLLs are fusionPpl's, as for any setting.
 */
export function fittedSettings(nModels: number, options: FitOptions): FitResult[] {
  const M = nModels;
  const grid = [...new Set([...options.mix_temperatures, 1])].sort((a, b) => a - b);
  const nearest = (t: number) => grid.reduce((best, x) => (Math.abs(x - t) < Math.abs(best - t) ? x : best), grid[0]);
  return options.fits.map((kind): FitResult => {
    if (kind === "loglinear") {
      const c = Array.from({ length: M }, (_, m) => 1 / (M * bestTemperature(m)));
      const setting: Setting = { id: "fitted-poe", type: "poe", temperatures: Array(M).fill(1), betas: c, weights: null };
      const nu = Math.log(fusionPpl(setting));
      return { kind, setting, iterations: 3, evaluations: 7, converged: true, gradient_norm: 0, history: [Math.log(BASE_PPL.average), nu],
        coefficients: c, at_bound: Array(M).fill(false), note: null };
    }
    const weights = Array(M).fill(1 / M);
    const setting: Setting = { id: "fitted-mix", type: "mix", temperatures: Array.from({ length: M }, (_, m) => nearest(bestTemperature(m))), betas: null, weights };
    return { kind, setting, iterations: grid.length, evaluations: grid.length, converged: true, gradient_norm: 0,
      history: [Math.log(fusionPpl(setting))], coefficients: weights, at_bound: Array(M).fill(false), note: null };
  });
}
