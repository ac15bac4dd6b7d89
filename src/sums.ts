// The worker's sums (protocol.ts Sums) on the controller's side. A progress message
// carries the totals so far and only the windows finished since the previous one;
// appendWindows puts those after the windows before them, so that what a progress hook
// or a checkpoint sees lists every window so far (window_first 0), as a result does.
import type { Sums } from "./protocol.js";

/** The sums before any window: every total 0, no window listed. */
export function emptySums(nModels: number, nSettings: number): Sums {
  return {
    windows_done: 0, scored_tokens: 0, model_nll: Array(nModels).fill(0), fusion_nll: Array(nSettings).fill(0),
    fusion_weights: Array.from({ length: nSettings }, () => Array(nModels).fill(0)),
    window_first: 0, window_targets: [], window_bytes: [],
    window_model_nll: Array.from({ length: nModels }, () => []), window_fusion_nll: Array.from({ length: nSettings }, () => []),
  };
}

/**
 * The sums of `next` (a progress message's: its totals, its newest windows) with the
 * windows of `prev` (every window before them; null: none) in front. New arrays: `prev`
 * is not changed, so a checkpoint being written keeps what it was given.
 * @throws Error when `next` does not continue `prev` (its window_first is not where they end).
 */
export function appendWindows(prev: Sums | null, next: Sums): Sums {
  const before = prev?.window_targets.length ?? 0;
  if (prev && prev.window_first !== 0) throw new Error("appendWindows: the earlier sums must list every window (window_first 0)");
  if (next.window_first !== before || next.windows_done !== before + next.window_targets.length) {
    throw new Error(`the worker's sums list windows ${next.window_first}..${next.windows_done - 1} after ${before} windows`);
  }
  if (!prev) return next;
  const join = (a: number[][], b: number[][]) => {
    if (a.length !== b.length) throw new Error(`the worker's sums have ${b.length} per-window lists after ${a.length}`);
    return a.map((x, i) => x.concat(b[i]));
  };
  return {
    ...next,
    window_first: 0,
    window_targets: prev.window_targets.concat(next.window_targets),
    window_bytes: prev.window_bytes.concat(next.window_bytes),
    window_model_nll: join(prev.window_model_nll, next.window_model_nll),
    window_fusion_nll: join(prev.window_fusion_nll, next.window_fusion_nll),
  };
}

/** Σ in order, in float64: how the worker forms a total from its per-window values. */
export function sumInOrder(values: readonly number[]): number {
  let total = 0;
  for (const x of values) total += x;
  return total;
}

/**
 * What is wrong with the per-window lists of a whole run's sums, or null: one entry per
 * window for every model and setting, and every total exactly the in-order sum of its
 * window values (the worker adds them that way), the scored count the sum of the windows'.
 */
export function windowProblem(sums: Sums, nModels: number, nSettings: number): string | null {
  const n = sums.windows_done;
  if (sums.window_first !== 0) return `the result's sums list windows from ${sums.window_first}, not from 0`;
  if (sums.window_model_nll.length !== nModels || sums.window_fusion_nll.length !== nSettings) {
    return `the result has per-window sums for ${sums.window_model_nll.length} models and ${sums.window_fusion_nll.length} settings`;
  }
  const lists = [sums.window_targets, sums.window_bytes, ...sums.window_model_nll, ...sums.window_fusion_nll];
  if (lists.some((l) => l.length !== n)) return `the result's per-window lists do not all have ${n} entries (one per window)`;
  if (sumInOrder(sums.window_targets) !== sums.scored_tokens) return "the windows' scored counts do not add up to scored_tokens";
  const bad = sums.model_nll.findIndex((t, m) => sumInOrder(sums.window_model_nll[m]) !== t);
  if (bad >= 0) return `model ${bad + 1}'s per-window NLL does not add up to its total`;
  const badK = sums.fusion_nll.findIndex((t, k) => sumInOrder(sums.window_fusion_nll[k]) !== t);
  if (badK >= 0) return `setting ${badK + 1}'s per-window NLL does not add up to its total`;
  return null;
}

/**
 * The sums of every window so far (`prev`; null: none yet) followed by a pool's share
 * (its windows right after them, its totals its own): the lists concatenated, each NLL
 * total grown by the share's window values one at a time and the weights by the share's
 * total, in float64, as one worker adds them (evaluate.py Sums: add_window per window,
 * add_weights per group of batch_size windows, a share being one group). So the shares
 * joined in window order give one worker's sums bit for bit. New arrays, as appendWindows.
 * @throws Error when the share does not start where `prev` ends.
 */
export function addShare(prev: Sums | null, share: Sums): Sums {
  const before = prev?.windows_done ?? 0;
  const n = share.window_targets.length;
  if (share.window_first !== before || share.windows_done !== before + n) {
    throw new Error(`a share lists windows ${share.window_first}..${share.windows_done - 1} after ${before} windows`);
  }
  if (prev && prev.window_first !== 0) throw new Error("addShare: the earlier sums must list every window (window_first 0)");
  const base = prev ?? emptySums(share.model_nll.length, share.fusion_nll.length);
  const grow = (total: number, values: readonly number[]) => {
    for (const x of values) total += x;
    return total;
  };
  const join = (a: number[][], b: number[][]) => {
    if (a.length !== b.length) throw new Error(`a share has ${b.length} per-window lists after ${a.length}`);
    return a.map((x, i) => x.concat(b[i]));
  };
  return {
    windows_done: share.windows_done,
    scored_tokens: grow(base.scored_tokens, share.window_targets),
    model_nll: base.model_nll.map((t, m) => grow(t, share.window_model_nll[m])),
    fusion_nll: base.fusion_nll.map((t, k) => grow(t, share.window_fusion_nll[k])),
    fusion_weights: base.fusion_weights.map((row, k) => row.map((t, m) => t + share.fusion_weights[k][m])),
    window_first: 0,
    window_targets: base.window_targets.concat(share.window_targets),
    window_bytes: base.window_bytes.concat(share.window_bytes),
    window_model_nll: join(base.window_model_nll, share.window_model_nll),
    window_fusion_nll: join(base.window_fusion_nll, share.window_fusion_nll),
  };
}
