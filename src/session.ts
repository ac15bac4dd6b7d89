// The library API behind the CLI: open a session (spawns the worker, loads the models
// once), evaluate datasets with any list of strategies as often as you like, close it.
//
//   const session = await openSession({ models: ["models/demo/twin-a", "models/demo/sibling"] });
//   const { metrics } = await session.evaluate({ dataset: { path: "text.txt", max_length: 256, stride: 128 },
//                                                strategies: ["entropy", { type: "poe", betas: [0.7, 0.3] }] });
//   await session.close();
import { datasetStats } from "./config.js";
import { Interrupted, UserError } from "./errors.js";
import type { LoadedMsg, ModelSpec, ProgressMsg, ResultMsg, Setting, Sums } from "./protocol.js";
import { resolvePython, withSetupHint } from "./python-env.js";
import { buildMetrics, type Metrics } from "./report.js";
import { resolveStrategies, type StrategyEntry } from "./strategies.js";
import { dedupeSettings } from "./sweep.js";
import { Worker, type WorkerOptions } from "./worker.js";

export { resolvePython } from "./python-env.js";

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
  onStatus?: (message: string) => void;
  onStderr?: (line: string) => void;
  startTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  env?: Record<string, string>;
}

export interface DatasetInput {
  path: string;
  max_length?: number;
  stride?: number;
  bos_per_window?: boolean;
}

export interface EvaluateOptions {
  dataset: DatasetInput;
  /** Strategy entries as in YAML (`"entropy"`, `{ type: "poe", betas: [...] }`) or resolved Settings. */
  strategies: (StrategyEntry | Setting)[];
  batchSize?: number;
  /** Windows between progress callbacks (each carries the running sums). */
  progressEvery?: number;
  onProgress?: (progress: ProgressMsg) => void;
  /** Continue from these sums (a checkpoint of the same evaluation). */
  resume?: Sums | null;
  /** The raw config, echoed into the metrics. */
  config?: unknown;
  signal?: AbortSignal;
  /** After an abort, how long to wait for the worker to stop at a batch boundary (default 5 s). */
  cancelGraceMs?: number;
}

export interface Evaluation {
  metrics: Metrics;
  result: ResultMsg;
  settings: Setting[];
}

export function toModelSpec(m: ModelInput): ModelSpec {
  const o = typeof m === "string" ? { ref: m } : m;
  return {
    ref: o.ref,
    revision: o.revision ?? null,
    trust_remote_code: o.trust_remote_code ?? false,
    dtype: o.dtype ?? "auto",
    device: o.device ?? "auto",
  };
}

function isSetting(x: unknown): x is Setting {
  return typeof x === "object" && x !== null && "id" in x && "temperatures" in x && "betas" in x && Array.isArray((x as Setting).temperatures);
}

/** Strategy entries → resolved, de-duplicated settings; errors name `strategies[i]` of the list given. */
export function toSettings(entries: (StrategyEntry | Setting)[], nModels: number): Setting[] {
  const asEntries = entries.map((e) =>
    isSetting(e) ? { id: e.id, type: e.type, temperatures: e.temperatures, ...(e.betas ? { betas: e.betas } : {}) } : e,
  );
  return dedupeSettings(resolveStrategies(asEntries, nModels));
}

export class Session {
  private requests = 0;

  private constructor(
    readonly worker: Worker,
    readonly loaded: LoadedMsg,
    readonly models: ModelSpec[],
    readonly tokenizer: string | null,
  ) {}

  get hello() {
    return this.worker.hello;
  }

  static async open(opts: SessionOptions): Promise<Session> {
    if (opts.models.length < 2) throw new UserError("a session needs two or more models", 2);
    const python = resolvePython(opts.python);
    const models = opts.models.map(toModelSpec);
    const workerOpts: WorkerOptions = {
      python, env: opts.env, onStatus: opts.onStatus, onStderr: opts.onStderr,
      startTimeoutMs: opts.startTimeoutMs, heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
    };
    let worker: Worker;
    try {
      worker = await Worker.start(workerOpts);
    } catch (e) {
      throw withSetupHint(e, python);
    }
    try {
      const loaded = await worker.load({
        models, tokenizer: opts.tokenizer ?? null, max_length: opts.maxLength ?? null, bos_per_window: opts.bosPerWindow ?? false,
      });
      return new Session(worker, loaded, models, opts.tokenizer ?? null);
    } catch (e) {
      await worker.close();
      throw e;
    }
  }

  /** One pass over a text: every model once per window, every setting fused from the same logits. */
  async evaluate(opts: EvaluateOptions): Promise<Evaluation> {
    const n = this.models.length;
    const settings = toSettings(opts.strategies, n);
    if (settings.length === 0) throw new UserError("evaluate needs at least one strategy", 2);
    const max_length = opts.dataset.max_length ?? 1024;
    const dataset = {
      path: opts.dataset.path,
      max_length,
      stride: opts.dataset.stride ?? max_length,
      bos_per_window: opts.dataset.bos_per_window ?? false,
    };
    const { bytes, words } = await datasetStats(dataset.path);
    const request_id = `r${++this.requests}`;
    const started = performance.now();
    // Abort: ask the worker to stop at its next batch; a batch of a large model can take
    // long, so after `cancelGraceMs` give up waiting (the caller then closes the worker).
    let onAbort = () => {};
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => {
        void this.worker.cancel(request_id);
        setTimeout(() => reject(new Interrupted(`the worker did not stop within ${(opts.cancelGraceMs ?? 5000) / 1000}s of the interrupt`)),
          opts.cancelGraceMs ?? 5000).unref();
      };
    });
    aborted.catch(() => {});
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const result = await Promise.race([
        this.worker.evaluate(
          { request_id, dataset, settings, batch_size: opts.batchSize ?? 8, progress_every: opts.progressEvery ?? 1, resume: opts.resume ?? null },
          opts.onProgress,
        ),
        aborted,
      ]);
      const seconds = (performance.now() - started) / 1000;
      const metrics = buildMetrics({
        models: this.models, tokenizer: this.tokenizer, dataset, settings, result, loaded: this.loaded,
        hello: this.worker.hello, bytes, words, seconds, version: VERSION, config: opts.config ?? null,
      });
      return { metrics, result, settings };
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  async close(): Promise<void> {
    await this.worker.close();
  }
}

export const openSession = (opts: SessionOptions) => Session.open(opts);
