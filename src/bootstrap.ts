// Paired confidence intervals over windows (issue 13): is a fusion really better than
// the best single model, or is the difference within what the text's windows vary by?
//
// The unit of resampling is the window (the worker sends each window's Σ NLL per model
// and per setting, its scored positions and its bytes). Neighbouring windows are
// correlated (a passage about one topic, a table, a code block span several), so
// windows are resampled in blocks of consecutive ones: the circular block bootstrap
// (Politis & Romano 1992, "A circular block-resampling procedure for stationary data"):
// a resample is ⌈n/ℓ⌉ blocks of ℓ consecutive windows, each starting at a uniformly
// drawn window and wrapping around the end of the text, cut to n windows. Every window
// is then equally likely to be drawn, so the resampled statistic is centred on the
// sample's own value (the moving-block bootstrap's blocks under-draw the ends).
//
// Paired: a resample draws whole windows, with the fusion's NLL and the best model's
// NLL of the same windows, so what the interval measures is the variation of their
// difference, not of either alone (which is far larger: some passages are hard for
// every model). The statistics are ratios of sums over the resampled windows:
//   Δ bits per byte = (Σ fused NLL − Σ best NLL) / (ln 2 · Σ bytes)
//   PPL ratio       = exp((Σ fused NLL − Σ best NLL) / Σ scored positions)
// and the 95% interval is the percentile interval (the 2.5% and 97.5% quantiles of the
// resampled statistic, linear interpolation between order statistics as R's type 7 and
// numpy's default do). Both statistics have the sign of the resampled Σ difference, so
// one interval excludes 0 exactly when the other excludes 1.
//
// Block length ℓ = ⌈n^(1/3)⌉ for n windows: n^(1/3) is the order of the block length
// that minimizes the mean squared error of the block bootstrap's variance estimate
// (Hall, Horowitz & Jing 1995, "On blocking rules for the bootstrap with dependent
// data", Biometrika 82(3):561–574; Lahiri 2003, "Resampling Methods for Dependent
// Data", ch. 7). It is at most ⌊n/2⌋, so that a resample has two blocks or more (with
// one block of all n windows every resample would be the text itself); with one window
// there is no interval. `report.bootstrap.block_length` sets ℓ instead (the same cap).
// With positive correlation between windows a block bootstrap's variance is biased low
// by O(1/ℓ) (its blocks cut the correlation at their edges), so its intervals then cover
// a little less than 95% — test/bootstrap.test.ts measures how much on a known AR(1).
//
// Cost: the block starts are drawn once per run and shared by every setting of a sweep;
// with prefix sums a block's sum is one subtraction, so a setting costs resamples ×
// blocks (2,000 × ⌈n^(2/3)⌉) additions, whatever the text's length.

/** How the intervals are drawn (the config's `report.bootstrap`). */
export interface BootstrapOptions {
  /** Resamples; 0: no intervals. */
  resamples: number;
  /** The seed of the resampling (mulberry32): the same seed gives the same intervals. */
  seed: number;
  /** Windows per block; null: ⌈n^(1/3)⌉. */
  block_length: number | null;
}

/** The coverage the intervals are for. */
export const LEVEL = 0.95;

/**
 * mulberry32 (Tommy Ettinger's 32-bit generator: a Weyl sequence through a
 * multiply-xorshift mix): uniform numbers in [0, 1), the same on every machine for a seed.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** ℓ for n ≥ 2 windows: the override or ⌈n^(1/3)⌉, at most ⌊n/2⌋ (see the header). */
export function blockLength(n: number, override: number | null = null): number {
  return blockChoice(n, override).length;
}

/** ℓ for n ≥ 2 windows, and in words how it was chosen (for the metrics file). */
export function blockChoice(n: number, override: number | null = null): { length: number; rule: string } {
  if (!(Number.isInteger(n) && n >= 2)) throw new Error(`blockLength needs two or more windows, got ${n}`);
  // a cube root can come out a hair above the integer it is (guarded for the perfect cubes)
  const wanted = override ?? Math.ceil(Math.cbrt(n) - 1e-9);
  const length = Math.max(1, Math.min(wanted, Math.floor(n / 2)));
  const rule = override === null ? "ceil(n^(1/3))" : `report.bootstrap.block_length (${override})`;
  return { length, rule: length === wanted ? rule : `${rule}, at most n/2` };
}

/** The resampled windows of a run, as block starts: drawn once, shared by every statistic. */
export interface ResamplePlan {
  /** Windows. */
  n: number;
  blockLength: number;
  /** Blocks per resample: ⌈n / blockLength⌉ (the last one cut to fill exactly n windows). */
  blocks: number;
  resamples: number;
  /** resamples × blocks starting windows, resample-major. */
  starts: Int32Array;
}

/** The plan for n windows, or null when there can be no interval (n < 2, or 0 resamples). */
export function resamplePlan(n: number, opts: BootstrapOptions): ResamplePlan | null {
  if (n < 2 || opts.resamples <= 0) return null;
  const ell = blockLength(n, opts.block_length);
  const blocks = Math.ceil(n / ell);
  const rand = mulberry32(opts.seed);
  const starts = new Int32Array(opts.resamples * blocks);
  for (let i = 0; i < starts.length; i++) starts[i] = Math.floor(rand() * n);
  return { n, blockLength: ell, blocks, resamples: opts.resamples, starts };
}

/**
 * Per resample, the sum of x over its windows (circular blocks, the last one cut).
 * x: one value per window. Prefix sums over x and its first ℓ values again (the wrap)
 * make each block one subtraction.
 */
export function resampledSums(plan: ResamplePlan, x: ArrayLike<number>): Float64Array {
  const { n, blockLength: ell, blocks, resamples, starts } = plan;
  if (x.length !== n) throw new Error(`resampledSums: ${x.length} values for ${n} windows`);
  const prefix = new Float64Array(n + ell + 1);
  for (let i = 0; i < n + ell; i++) prefix[i + 1] = prefix[i] + x[i % n];
  const last = n - (blocks - 1) * ell; // the last block's windows, 1..ℓ
  const out = new Float64Array(resamples);
  for (let r = 0, k = 0; r < resamples; r++) {
    let s = 0;
    for (let j = 0; j < blocks - 1; j++, k++) s += prefix[starts[k] + ell] - prefix[starts[k]];
    s += prefix[starts[k] + last] - prefix[starts[k]];
    k++;
    out[r] = s;
  }
  return out;
}

/** The q-quantile of sorted values, interpolating linearly between order statistics (type 7). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
}

/**
 * The central `level` percentile interval of the values: quantile() of them sorted, found
 * by selection rather than a sort (values are reordered in place): a sweep asks for two
 * intervals per setting, and a sort of 2,000 numbers costs ten times a selection.
 */
export function percentileInterval(values: Float64Array, level = LEVEL): [number, number] {
  const tail = (1 - level) / 2;
  const at = (q: number, from: number): number => {
    const h = (values.length - 1) * q;
    const i = Math.floor(h);
    select(values, i, from);
    if (i + 1 >= values.length) return values[i];
    let next = Infinity; // the (i+1)-th smallest: the least of what lies above position i
    for (let j = i + 1; j < values.length; j++) if (values[j] < next) next = values[j];
    return values[i] + (h - i) * (next - values[i]);
  };
  const lo = at(tail, 0);
  const hi = at(1 - tail, Math.floor((values.length - 1) * tail) + 1);
  return [lo, hi];
}

/**
 * Reorders a[from..] so that a[k] is the value the k-th place of the sorted array holds,
 * everything before it no larger, everything after no smaller (Hoare's selection with a
 * median-of-three pivot). Positions before `from` must hold the `from` smallest values already.
 */
function select(a: Float64Array, k: number, from = 0): void {
  let lo = from;
  let hi = a.length - 1;
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    // median of three as the pivot (sorted into a[lo], a[mid], a[hi])
    if (a[mid] < a[lo]) swap(a, mid, lo);
    if (a[hi] < a[lo]) swap(a, hi, lo);
    if (a[hi] < a[mid]) swap(a, hi, mid);
    const pivot = a[mid];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        swap(a, i, j);
        i++;
        j--;
      }
    }
    // now a[lo..j] ≤ pivot ≤ a[i..hi], and what lies between equals the pivot
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

function swap(a: Float64Array, i: number, j: number): void {
  const t = a[i];
  a[i] = a[j];
  a[j] = t;
}

/** A fusion against the best single model, paired over the windows. */
export interface PairedInterval {
  /** (Σ fused − Σ best) / (ln 2 · bytes): bits per byte; null where the windows have no bytes. */
  delta_bits_per_byte: [number, number] | null;
  /** exp((Σ fused − Σ best) / Σ scored positions). */
  ppl_ratio: [number, number];
  /** Whether the intervals exclude 0 (and 1): decided on the resampled Σ differences' quantiles, before exp. */
  excludes_zero: boolean;
}

/** What every setting of a run shares: the plan, and the resampled bytes and scored positions. */
export interface PairedBootstrap {
  plan: ResamplePlan;
  /** Per resample: Σ bytes, scaled so that the whole text's windows have `textBytes` (see pairedInterval). */
  bytes: Float64Array;
  targets: Float64Array;
}

/**
 * Set up the paired bootstrap of a run. windowBytes and windowTargets: per window.
 * textBytes: the bytes bits per byte divides by (the text's). The worker's window bytes
 * add up to them (they partition the text); where they do not (a tokenizer without an
 * offset mapping counts a window's bytes by decoding it), each resample's bytes are
 * scaled by textBytes / Σ window bytes, so that the interval is about the same bits per
 * byte as the reported one. Null when there can be no interval.
 */
export function pairedBootstrap(windowBytes: readonly number[], windowTargets: readonly number[], textBytes: number,
  opts: BootstrapOptions): PairedBootstrap | null {
  const plan = resamplePlan(windowTargets.length, opts);
  if (!plan) return null;
  const bytes = resampledSums(plan, windowBytes);
  let total = 0;
  for (const b of windowBytes) total += b;
  if (total > 0 && total !== textBytes) for (let r = 0; r < bytes.length; r++) bytes[r] *= textBytes / total;
  return { plan, bytes, targets: resampledSums(plan, windowTargets) };
}

/** The 95% intervals of one fusion (per window fused NLL) against the best model (per window NLL). */
export function pairedInterval(boot: PairedBootstrap, fused: readonly number[], best: readonly number[]): PairedInterval {
  const n = boot.plan.n;
  if (fused.length !== n || best.length !== n) throw new Error(`pairedInterval: ${fused.length} and ${best.length} values for ${n} windows`);
  const d = new Float64Array(n);
  for (let i = 0; i < n; i++) d[i] = fused[i] - best[i];
  const delta = resampledSums(boot.plan, d);
  const bpb = new Float64Array(delta.length);
  const logRatio = new Float64Array(delta.length);
  let noBytes = false;
  for (let r = 0; r < delta.length; r++) {
    if (!(boot.bytes[r] > 0)) noBytes = true;
    bpb[r] = delta[r] / (Math.LN2 * boot.bytes[r]);
    logRatio[r] = delta[r] / boot.targets[r];
  }
  const [lo, hi] = percentileInterval(logRatio);
  return { delta_bits_per_byte: noBytes ? null : percentileInterval(bpb), ppl_ratio: [Math.exp(lo), Math.exp(hi)], excludes_zero: lo > 0 || hi < 0 };
}
