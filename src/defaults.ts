// Every default of a run, in one place: the config schema, the library API and the
// `eval` command's flags all read them from here.
export const DEFAULTS = {
  /** Tokens per window (dataset.max_length); the stride defaults to it. */
  max_length: 1024,
  /** Windows per forward (runtime.batch_size). */
  batch_size: 8,
  /** Windows between checkpoints (runtime.checkpoint_every); 0: only on failure or Ctrl-C. */
  checkpoint_every: 0,
  bos_per_window: false,
  /** tokens when every vocabulary agrees, bytes otherwise (SPEC §7). */
  space: "auto",
  /** Byte space: token prefixes kept per model (K), and the relative pruning threshold. */
  beam: 8,
  prune: 0,
  dtype: "auto",
  device: "auto",
  trust_remote_code: false,
  /**
   * The paired block bootstrap of fusions[].vs_best_model (report.bootstrap): resamples
   * (0: no intervals), the seed, and windows per block (null: ⌈n^(1/3)⌉; src/bootstrap.ts).
   */
  bootstrap: { resamples: 2000, seed: 0, block_length: null },
  /** The HTML report next to the metrics (report.html). */
  report_html: true,
  /** Its token view: the first this many bytes of the text (report.token_view_bytes; 0: none). */
  token_view_bytes: 4096,
  /** The strategy of `kotara eval` (the original research script's default). */
  eval_strategy: "entropy",
  /** Generation: new tokens per prompt (bytes in byte space). */
  max_new_tokens: 64,
  max_new_bytes: 128,
  /**
   * `kotara fit` / session.fit (src/fit.ts, docs/fitting.md): the rules fitted, the grid of
   * the mix's temperatures, the memory the log-linear fit may keep (its logits), Newton's
   * and EM's stopping rules, and the default comparison grid (weights in steps of 1/grid_steps).
   */
  fit: {
    fits: ["loglinear", "mix"],
    mix_temperatures: [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2],
    memory_budget_bytes: 1024 * 1024 * 1024,
    max_iterations: 50,
    tolerance: 1e-6,
    em_max_iterations: 20_000,
    em_tolerance: 1e-9,
    grid_steps: 10,
  },
  /** Windows between the worker's progress messages. */
  progress_every: 1,
  /** After Ctrl-C, how long to wait for the worker to stop at a batch boundary. */
  cancel_grace_ms: 5000,
  /** How long the worker may take to say hello (Python importing torch); env KOTARA_START_TIMEOUT_MS. */
  start_timeout_ms: 180_000,
  /** How long a remote worker (already running, torch imported) may take to answer a connect; env KOTARA_CONNECT_TIMEOUT_MS. */
  connect_timeout_ms: 30_000,
  /** A worker silent this long is stopped; env KOTARA_HEARTBEAT_TIMEOUT_MS. */
  heartbeat_timeout_ms: 60_000,
} as const;
