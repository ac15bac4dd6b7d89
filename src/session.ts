// The library API behind the CLI: open a session (spawns the worker, loads the models
// once), evaluate datasets with any list of strategies as often as you like, close it.
//
//   const session = await openSession({ models: ["models/demo/twin-a", "models/demo/sibling"] });
//   const { metrics } = await session.evaluate({ dataset: { path: "text.txt", max_length: 256, stride: 128 },
//                                                strategies: ["entropy", { type: "poe", betas: [0.7, 0.3] }] });
//   await session.close();
import type { BootstrapOptions } from "./bootstrap.js";
import { BootstrapConfig } from "./config-schema.js";
import { datasetStats, documentFields, documentOptions } from "./dataset.js";
import { DEFAULTS } from "./defaults.js";
import { ConfigError, Interrupted, UserError } from "./errors.js";
import { buildMetrics, type EvaluationRequest, type Metrics } from "./metrics.js";
import {
  ByteOptions, MAX_VIEW_BYTES, MAX_VIEW_SETTINGS, type FitOptions, type FitResult, type FittedMsg, type LoadedMsg, type ModelSpec, type PositionsRequest,
  type ProgressMsg, type ResultMsg, type Setting, type Sums,
} from "./protocol.js";
import { defaultViewSettings, resolveViewSettings } from "./token-view.js";
import { FITTED_IDS, resolveFitOptions, type FitInput } from "./fit.js";
import { errorMap, issueLines } from "./validation.js";
import { resolvePython, withSetupHint } from "./python-env.js";
import { resolveStrategies, type StrategyEntry } from "./strategies.js";
import { appendWindows } from "./sums.js";
import type { Sweep } from "./sweep.js";
import { Worker, type WorkerOptions } from "./worker.js";
import { isRemote, reportOf, runShares, type Member, type WorkerReport, type WorkerSpec } from "./pool.js";
import { chunkStream, generateRequest, type GenerateOptions, type Generation } from "./generation.js";

export { resolvePython } from "./python-env.js";
export type { GenerateOptions, Generation, GenerationChunk, GenerationSummary } from "./generation.js";

export const VERSION = "0.1.0";

export type ModelInput = string | ({ ref: string } & Partial<Omit<ModelSpec, "ref">>);

export interface SessionOptions {
  models: ModelInput[];
  tokenizer?: string | null;
  /** The worker's Python: KOTARA_PYTHON wins, then this, then the rest of python-env.ts's order. */
  python?: string | null;
  /** Checked against every model's context at load time. */
  maxLength?: number | null;
  bosPerWindow?: boolean;
  /** tokens | bytes | auto (default: auto, tokens when every vocabulary agrees; SPEC §7). */
  space?: "tokens" | "bytes" | "auto";
  /** Byte space: the beam width K and the relative pruning threshold of each model's byte LM. */
  bytes?: Partial<ByteOptions>;
  onStatus?: (message: string) => void;
  onStderr?: (line: string) => void;
  onDropped?: (reason: string) => void;
  startTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  env?: Record<string, string>;
  /**
   * A pool (runtime.workers; docs/workers.md): local workers (`{ device: "cuda:1" }`,
   * `{ device: "cpu", threads: 1 }`), each spawned holding every model, and remote ones
   * (`{ connect: "tcp://host:5555", key_file: "lab.key" }`). Evaluations are then handed
   * out a group of batch_size windows at a time; fit and generate run on the first worker.
   * Absent or null: one local worker, as the models' devices say.
   */
  workers?: WorkerSpec[] | null;
}

/** The text and its windows; the defaults are those of a config (defaults.ts). */
export interface DatasetInput {
  path: string;
  max_length?: number;
  stride?: number;
  bos_per_window?: boolean;
  /** A .jsonl file: the key of each line's document (docs/datasets.md). */
  field?: string | null;
  /** stream (default) or documents (each document alone, lm-eval's rolling windows). */
  mode?: "stream" | "documents";
  /** Stream mode over a .jsonl: what joins the documents (default "\n\n"). */
  separator?: string;
}

/** How a request is watched and steered while it runs. */
export interface RunHooks {
  /** Windows between progress callbacks (each carries the running sums, every window so far listed). */
  progressEvery?: number;
  onProgress?: (progress: ProgressMsg) => void;
  /** Continue from these sums (a checkpoint of the same evaluation). */
  resume?: Sums | null;
  signal?: AbortSignal;
  /** After an abort, how long to wait for the worker to stop at a batch boundary. */
  cancelGraceMs?: number;
}

export interface EvaluateOptions extends RunHooks {
  dataset: DatasetInput;
  /** Strategy entries as in YAML (`"entropy"`, `{ type: "poe", betas: [...] }`) or resolved Settings (a temperatureGrid). */
  strategies: (StrategyEntry | Setting)[];
  /** The grid the settings came from, for the heatmap (optional). */
  sweep?: Sweep | null;
  batchSize?: number;
  /** The raw config, echoed into the metrics. */
  config?: unknown;
  /** How fusions[].vs_best_model's paired intervals are drawn (as the config's report.bootstrap). */
  bootstrap?: Partial<BootstrapOptions> | null;
  /**
   * Per-position numbers for an HTML report's token view (result.positions; tokenViewOf
   * and writeRunOutputs' html take them): the fusions by id (default: up to 4 at T = 1)
   * and the bytes of the text's start it covers (default 4096). Absent or null: none.
   */
  tokenView?: { settings?: string[] | null; bytes?: number } | null;
}

export interface Evaluation {
  metrics: Metrics;
  result: ResultMsg;
  settings: readonly Setting[];
}

/** session.fit: the dev text, what to evaluate on it next to the fits, and how to fit (src/fit.ts FitInput). */
export interface FitSessionOptions extends Omit<RunHooks, "resume">, FitInput {
  /** The dev text (the windows as for evaluate). */
  dataset: DatasetInput;
  /** Evaluated on the dev text in the same pass (default: none). */
  strategies?: (StrategyEntry | Setting)[];
  batchSize?: number;
  config?: unknown;
  bootstrap?: Partial<BootstrapOptions> | null;
}

export interface FitEvaluation {
  /** The dev text's metrics: every model, the strategies, then the fitted settings (fusions, in fit order). */
  metrics: Metrics;
  /** Each fit: its setting (what `kotara run` evaluates), iterations, convergence. */
  fits: FitResult[];
  /** The fitted settings (fits[i].setting). */
  settings: Setting[];
  result: FittedMsg;
}

export function toModelSpec(m: ModelInput): ModelSpec {
  const o = typeof m === "string" ? { ref: m } : m;
  return {
    ref: o.ref,
    revision: o.revision ?? null,
    trust_remote_code: o.trust_remote_code ?? DEFAULTS.trust_remote_code,
    dtype: o.dtype ?? DEFAULTS.dtype,
    device: o.device ?? DEFAULTS.device,
    // sent only when set (absent = null on the wire), so a config without them fingerprints as before
    ...(o.device_map != null ? { device_map: o.device_map } : {}),
    ...(o.max_memory != null ? { max_memory: o.max_memory } : {}),
  };
}

export class Session {
  private requests = 0;

  private constructor(
    /** Every worker; one unless SessionOptions.workers lists more. */
    readonly members: Member[],
    /** Evaluations go out in shares (SessionOptions.workers was given). */
    readonly pooled: boolean,
    readonly loaded: LoadedMsg,
    readonly models: ModelSpec[],
    readonly tokenizer: string | null,
    /** The byte options the models were loaded with (used in byte space). */
    readonly bytes: ByteOptions,
    private onStatus?: (message: string) => void,
  ) {}

  /** The space this session's evaluations run in (the worker resolved `auto`). */
  get space() {
    return this.loaded.space;
  }

  get hello() {
    return this.worker.hello;
  }

  /** The first worker: fit and generate run there (and everything, without a pool). */
  get worker(): Worker {
    const m = this.members.find((x) => !x.lost) ?? this.members[0];
    return m.worker;
  }

  /** Each worker as the metrics' runtime.workers[] records it (the last request's windows and seconds). */
  get workerReports(): WorkerReport[] {
    return this.members.map(reportOf);
  }

  static async open(opts: SessionOptions): Promise<Session> {
    if (opts.models.length < 2) throw new UserError("a session needs two or more models", 2);
    const python = resolvePython(opts.python);
    const models = opts.models.map(toModelSpec);
    const workerOpts: WorkerOptions = {
      python, env: opts.env, onStatus: opts.onStatus, onStderr: opts.onStderr, onDropped: opts.onDropped,
      startTimeoutMs: opts.startTimeoutMs, heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
    };
    const bytes = { beam: opts.bytes?.beam ?? DEFAULTS.beam, prune: opts.bytes?.prune ?? DEFAULTS.prune };
    const checked = ByteOptions.safeParse(bytes, { error: errorMap });
    if (!checked.success) throw new ConfigError(issueLines(checked.error, "bytes"));
    const specs: WorkerSpec[] = opts.workers?.length ? opts.workers : [{}];
    // a pool's workers say the same things at the same time: each line says whose it is
    const own = (i: number): WorkerOptions => (specs.length > 1 && opts.onStatus
      ? { ...workerOpts, onStatus: (m) => opts.onStatus!(`[worker ${i + 1}] ${m}`) } : workerOpts);
    const started = await Promise.allSettled(specs.map((spec, i) => startWorker(spec, own(i), python)));
    const workers = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = started.findIndex((r) => r.status === "rejected");
    if (failed >= 0) {
      await Promise.all(workers.map((w) => w.close()));
      const e = (started[failed] as PromiseRejectedResult).reason;
      throw specs.length > 1 && e instanceof UserError ? new UserError(`runtime.workers[${failed}]: ${e.message}`, e.exitCode) : e;
    }
    try {
      const loads = await Promise.all(workers.map((w, i) => {
        const device = isRemote(specs[i]) ? null : (specs[i] as { device?: string | null }).device;
        return w.load({
          models: device ? models.map((m) => ({ ...m, device })) : models, tokenizer: opts.tokenizer ?? null, max_length: opts.maxLength ?? null,
          bos_per_window: opts.bosPerWindow ?? DEFAULTS.bos_per_window, space: opts.space ?? DEFAULTS.space, bytes,
        });
      }));
      const members: Member[] = workers.map((worker, i) => ({
        index: i + 1, spec: specs[i], worker, loaded: loads[i], windows: 0, seconds: 0, lost: null,
        label: `${isRemote(specs[i]) ? (specs[i] as { connect: string }).connect : loads[i].models[0]?.device ?? "?"}#${i + 1}`,
      }));
      const odd = members.find((m) => m.loaded.space !== loads[0].space || m.loaded.tokenizer.vocab_size !== loads[0].tokenizer.vocab_size);
      if (odd) {
        throw new UserError(`runtime.workers: worker ${odd.label} loaded the models in ${odd.loaded.space} space with a vocabulary of ${odd.loaded.tokenizer.vocab_size}, ` +
          `worker ${members[0].label} in ${loads[0].space} space with ${loads[0].tokenizer.vocab_size}: every worker must load the same models`, 2);
      }
      return new Session(members, !!opts.workers?.length, loads[0], models, opts.tokenizer ?? null, bytes, opts.onStatus);
    } catch (e) {
      await Promise.all(workers.map((w) => w.close()));
      throw e;
    }
  }

  /**
   * One pass over a text: every model once per window, every setting fused from the
   * same logits. The library's entry: resolves the strategies and reads the text once,
   * then runs the request.
   */
  async evaluate(opts: EvaluateOptions): Promise<Evaluation> {
    const settings = resolveStrategies(opts.strategies, this.models.length);
    if (settings.length === 0) throw new UserError("evaluate needs at least one strategy", 2);
    const max_length = opts.dataset.max_length ?? DEFAULTS.max_length;
    const dataset = {
      path: opts.dataset.path,
      max_length,
      stride: opts.dataset.stride ?? max_length,
      bos_per_window: opts.dataset.bos_per_window ?? DEFAULTS.bos_per_window,
      ...documentFields(documentOptions(opts.dataset)),
    };
    const boot = BootstrapConfig.safeParse(opts.bootstrap ?? {}, { error: errorMap });
    if (!boot.success) throw new ConfigError(issueLines(boot.error, "bootstrap"));
    const request: EvaluationRequest = {
      dataset, text: datasetStats(dataset.path, documentOptions(dataset)), settings, sweep: opts.sweep ?? null,
      batchSize: opts.batchSize ?? DEFAULTS.batch_size, config: opts.config ?? null,
      bootstrap: { resamples: boot.data.resamples, seed: boot.data.seed, block_length: boot.data.block_length ?? null },
      positions: opts.tokenView ? positionsRequest(opts.tokenView, settings) : null,
    };
    return this.run(request, opts);
  }

  /**
   * Fits `mix` (EM) and the log-linear rule f = Σ c_m z_m (Newton; written as poe with
   * temperatures 1 and betas = c) on a dev text, in the worker, from one pass over its
   * windows (docs/fitting.md). Returns the dev metrics (models, strategies, fitted) and the fits.
   */
  async fit(opts: FitSessionOptions): Promise<FitEvaluation> {
    const settings = opts.strategies?.length ? resolveStrategies(opts.strategies, this.models.length) : [];
    const max_length = opts.dataset.max_length ?? DEFAULTS.max_length;
    const dataset = {
      path: opts.dataset.path, max_length, stride: opts.dataset.stride ?? max_length,
      bos_per_window: opts.dataset.bos_per_window ?? DEFAULTS.bos_per_window,
    };
    const boot = BootstrapConfig.safeParse(opts.bootstrap ?? {}, { error: errorMap });
    if (!boot.success) throw new ConfigError(issueLines(boot.error, "bootstrap"));
    const request: EvaluationRequest = {
      dataset, text: datasetStats(dataset.path), settings, sweep: null, batchSize: opts.batchSize ?? DEFAULTS.batch_size,
      config: opts.config ?? null, bootstrap: { resamples: boot.data.resamples, seed: boot.data.seed, block_length: boot.data.block_length ?? null },
    };
    return this.runFit(request, resolveFitOptions(opts), opts);
  }

  /** A fit of a request that is already resolved (the dev text and the settings evaluated on it). */
  async runFit(request: EvaluationRequest, options: FitOptions, hooks: Omit<RunHooks, "resume"> = {}): Promise<FitEvaluation> {
    const taken = request.settings.filter((s) => (Object.values(FITTED_IDS) as string[]).includes(s.id));
    if (taken.length) throw new UserError(`fit: the id${taken.length > 1 ? "s" : ""} ${taken.map((s) => `"${s.id}"`).join(", ")} name the fitted settings; rename or drop ${taken.length > 1 ? "them" : "it"}`, 2);
    const request_id = `f${++this.requests}`;
    const started = performance.now();
    const { aborted, detach } = this.cancelOnAbort(request_id, hooks);
    try {
      const fitted = await Promise.race([
        this.worker.fit(
          {
            request_id, dataset: request.dataset, settings: [...request.settings], batch_size: request.batchSize,
            progress_every: hooks.progressEvery ?? DEFAULTS.progress_every, options,
          },
          hooks.onProgress && progressWithEveryWindow(null, hooks.onProgress),
        ),
        aborted,
      ]);
      const seconds = (performance.now() - started) / 1000;
      const settings = fitted.fits.map((f) => f.setting);
      const result: ResultMsg = {
        seq: fitted.seq, type: "result", request_id: fitted.request_id, space: fitted.space, tokens: fitted.tokens, windows: fitted.windows,
        sums: fitted.sums, byte_stats: fitted.byte_stats, seconds: fitted.seconds, tokenize_seconds: fitted.tokenize_seconds,
        peak_memory_bytes: fitted.peak_memory_bytes, device: fitted.device, dtype: fitted.dtype,
      };
      const metrics = buildMetrics({
        models: this.models, request: { ...request, settings: [...request.settings, ...settings] }, result, loaded: this.loaded,
        hello: this.worker.hello, seconds, version: VERSION, bytes: this.bytes,
        workers: [{ ...reportOf(this.members.find((m) => m.worker === this.worker)!), windows: fitted.windows, seconds: fitted.seconds }],
      });
      return { metrics, fits: fitted.fits, settings, result: fitted };
    } finally {
      detach();
    }
  }

  /** Runs a request that is already resolved (a RunPlan's), as it is. */
  async run(request: EvaluationRequest, hooks: RunHooks = {}): Promise<Evaluation> {
    if (this.pooled && request.dataset.mode !== "documents") return this.runPooled(request, hooks);
    const request_id = `r${++this.requests}`;
    const started = performance.now();
    const { aborted, detach } = this.cancelOnAbort(request_id, hooks);
    try {
      const result = await Promise.race([
        this.worker.evaluate(
          {
            request_id, dataset: request.dataset, settings: [...request.settings], batch_size: request.batchSize,
            progress_every: hooks.progressEvery ?? DEFAULTS.progress_every, resume: hooks.resume ?? null,
            ...(request.positions ? { positions: request.positions } : {}),
          },
          hooks.onProgress && progressWithEveryWindow(hooks.resume ?? null, hooks.onProgress),
        ),
        aborted,
      ]);
      const seconds = (performance.now() - started) / 1000;
      const first = this.members[0];
      Object.assign(first, { windows: result.windows - (hooks.resume?.windows_done ?? 0), seconds: result.seconds });
      const metrics = buildMetrics({
        models: this.models, request, result, loaded: this.loaded, hello: this.worker.hello, seconds, version: VERSION, bytes: this.bytes,
        resumedWindows: hooks.resume?.windows_done ?? 0, workers: [reportOf(first)],
      });
      return { metrics, result, settings: request.settings };
    } finally {
      detach();
    }
  }

  /** run() over the pool: the windows in shares, joined in window order (pool.ts). */
  private async runPooled(request: EvaluationRequest, hooks: RunHooks): Promise<Evaluation> {
    const request_id = `r${++this.requests}`;
    const started = performance.now();
    const result = await runShares(this.members, {
      request_id, dataset: request.dataset, settings: [...request.settings], batch_size: request.batchSize,
      positions: request.positions ?? null, resume: hooks.resume ?? null,
    }, {
      onProgress: hooks.onProgress, onStatus: this.onStatus, signal: hooks.signal,
      cancelGraceMs: hooks.cancelGraceMs ?? DEFAULTS.cancel_grace_ms,
    });
    const seconds = (performance.now() - started) / 1000;
    const metrics = buildMetrics({
      models: this.models, request, result, loaded: this.loaded, hello: this.worker.hello, seconds, version: VERSION, bytes: this.bytes,
      resumedWindows: hooks.resume?.windows_done ?? 0, workers: this.workerReports,
    });
    return { metrics, result, settings: request.settings };
  }

  /**
   * Fused generation: `for await (const chunk of session.generate({ prompt, strategy }))`
   * streams each step (the chosen token, its text, its fused log-probability, the
   * per-model weights); `.summary` resolves with every prompt's output and the timings.
   * An abort of `signal` stops it between two steps (the iterator then throws Interrupted).
   */
  generate(opts: GenerateOptions): Generation {
    const fields = generateRequest(opts, this.models.length, this.space);
    const request_id = `g${++this.requests}`;
    return chunkStream(async (push) => {
      if (opts.signal?.aborted) throw new Interrupted();
      const { aborted, detach } = this.cancelOnAbort(request_id, opts);
      try {
        return await Promise.race([this.worker.generate({ request_id, ...fields }, push), aborted]);
      } catch (e) {
        if (opts.signal?.aborted) throw new Interrupted();
        throw e;
      } finally {
        detach();
      }
    }, fields.setting);
  }

  /**
   * On abort, ask the worker to stop at its next batch; a batch of a large model can
   * take long, so after the grace period give up waiting (the caller then closes the
   * worker): `aborted` rejects then.
   */
  private cancelOnAbort(requestId: string, hooks: Pick<RunHooks, "signal" | "cancelGraceMs">): { aborted: Promise<never>; detach: () => void } {
    const grace = hooks.cancelGraceMs ?? DEFAULTS.cancel_grace_ms;
    let onAbort = () => {};
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => {
        void this.worker.cancel(requestId);
        setTimeout(() => reject(new Interrupted(`the worker did not stop within ${grace / 1000}s of the interrupt`)), grace).unref();
      };
    });
    aborted.catch(() => {});
    hooks.signal?.addEventListener("abort", onAbort, { once: true });
    return { aborted, detach: () => hooks.signal?.removeEventListener("abort", onAbort) };
  }

  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.worker.close()));
  }
}

/** A worker of SessionOptions.workers, started (local: spawned; remote: connected). */
async function startWorker(spec: WorkerSpec, opts: WorkerOptions, python: string): Promise<Worker> {
  if (isRemote(spec)) {
    // a worker started by hand elsewhere (`kotara worker --listen`); nothing to spawn
    return Worker.connect({
      endpoint: spec.connect, keyFile: spec.key_file, startTimeoutMs: opts.startTimeoutMs, heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
      onStatus: opts.onStatus, onStderr: opts.onStderr, onDropped: opts.onDropped, onWarning: (m) => opts.onStatus?.(`warning: ${m}`),
    });
  }
  const threads = spec.threads ?? null;
  // intra-op threads: torch reads OMP_NUM_THREADS when it starts (a worker per core wants 1)
  const env = threads ? { ...opts.env, OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) } : opts.env;
  try {
    return await Worker.start({ ...opts, env });
  } catch (e) {
    throw withSetupHint(e, python);
  }
}

export const openSession = (opts: SessionOptions) => Session.open(opts);

/** EvaluateOptions.tokenView → the wire's request, checked as the config's report.token_view_* are. */
function positionsRequest(view: NonNullable<EvaluateOptions["tokenView"]>, settings: readonly Setting[]): PositionsRequest | null {
  const bytes = view.bytes ?? DEFAULTS.token_view_bytes;
  const lines: string[] = [];
  if (!Number.isInteger(bytes) || bytes < 0 || bytes > MAX_VIEW_BYTES) lines.push(`tokenView.bytes: must be an integer from 0 (no token view) to ${MAX_VIEW_BYTES}, got ${bytes}`);
  let chosen = defaultViewSettings(settings);
  if (view.settings) {
    if (view.settings.length > MAX_VIEW_SETTINGS) lines.push(`tokenView.settings: at most ${MAX_VIEW_SETTINGS} fusions, got ${view.settings.length}`);
    const resolved = resolveViewSettings(view.settings, settings);
    lines.push(...resolved.lines.map((l) => `tokenView.settings${l}`));
    chosen = resolved.value;
  }
  if (lines.length) throw new ConfigError(lines);
  return bytes > 0 && chosen.length ? { settings: chosen, bytes } : null;
}

/**
 * A progress message lists only the windows finished since the previous one (protocol
 * v3): the hook gets the sums with every window so far (from the resume on), so that a
 * checkpoint made from them can be resumed. Should a message not continue the ones
 * before it (a worker bug), the hook hears nothing more: its last sums stay a valid
 * checkpoint, and the result (which lists every window) is checked on its own.
 */
function progressWithEveryWindow(resume: Sums | null, hook: (p: ProgressMsg) => void): (p: ProgressMsg) => void {
  let sums = resume;
  let broken = false;
  return (p) => {
    if (broken) return;
    try {
      sums = appendWindows(sums, p.sums);
    } catch {
      broken = true;
      return;
    }
    hook({ ...p, sums });
  };
}
