// Fused generation on the controller's side: the options a caller gives, resolved into
// one GenerateMsg (src/protocol.ts), and the stream of chunks it gets back
// (session.generate). The worker does the decoding (python/kotara_worker/generate.py).
import { DEFAULTS } from "./defaults.js";
import { UserError } from "./errors.js";
import type { ChunkMsg, GeneratedMsg, GeneratedOutput, Sampling, Setting } from "./protocol.js";
import { resolveStrategies, type StrategyEntry } from "./strategies.js";

export interface SamplingInput {
  /** Argmax at every step (the default when no other sampling option is given). */
  greedy?: boolean;
  /** Sampling temperature on the fused distribution (the models' own temperatures are the strategy's). */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
}

export interface GenerateOptions {
  /** One prompt, or several decoded together. "" starts from the start token alone. */
  prompt?: string;
  prompts?: string[];
  /** The fusion that generates: a strategy entry as in YAML, or a resolved Setting (default: entropy). */
  strategy?: StrategyEntry | Setting;
  /** New tokens per prompt (bytes in byte space; default 64 tokens, 128 bytes). */
  maxNewTokens?: number;
  sampling?: SamplingInput;
  /** A prompt's text ends before the first of these it writes. */
  stop?: string[];
  /** A prompt longer than the context: cut from the left with a warning (true) or refused (false). */
  truncate?: boolean;
  /** Stops the generation between two steps. */
  signal?: AbortSignal;
  cancelGraceMs?: number;
}

/** One step of one prompt, as it streams. */
export interface GenerationChunk {
  prompt: number;
  step: number;
  token: number;
  /** Newly printable text (a partial UTF-8 character or the start of a stop string is held back). */
  text: string;
  /** log p of the token under the fused distribution. */
  logprob: number;
  /** The per-model weights α of this step. */
  weights: number[];
  /** The prompt's last chunk. */
  done: boolean;
}

export interface GenerationSummary {
  setting: Setting;
  /** tokens, or bytes (models whose tokenizers differ: a chunk's token is then a byte, 256 = "end"). */
  space: "tokens" | "bytes";
  outputs: GeneratedOutput[];
  steps: number;
  /** The worker's decoding time (prefill and steps). */
  seconds: number;
  firstTokenSeconds: number;
  /** New tokens (bytes in byte space) of every prompt per second of decoding. */
  tokensPerSecond: number;
  /** generate() to the last message. */
  wallSeconds: number;
}

/** What generate() returns: iterate it for the chunks; `summary` resolves at the end. */
export interface Generation extends AsyncIterable<GenerationChunk> {
  readonly summary: Promise<GenerationSummary>;
}

export function resolveSampling(s: SamplingInput = {}): Sampling {
  const sampled = s.temperature !== undefined || s.topK !== undefined || s.topP !== undefined || s.seed !== undefined;
  const out: Sampling = {
    greedy: s.greedy ?? !sampled,
    temperature: s.temperature ?? 1,
    top_k: s.topK ?? 0,
    top_p: s.topP ?? 1,
    seed: s.seed ?? 0,
  };
  const problems: string[] = [];
  if (!(out.temperature > 0) || !Number.isFinite(out.temperature)) problems.push(`temperature must be > 0, got ${out.temperature}`);
  if (!Number.isInteger(out.top_k) || out.top_k < 0) problems.push(`top-k must be an integer >= 0, got ${out.top_k}`);
  if (!(out.top_p > 0 && out.top_p <= 1)) problems.push(`top-p must be in (0, 1], got ${out.top_p}`);
  if (!Number.isInteger(out.seed) || out.seed < 0) problems.push(`seed must be an integer >= 0, got ${out.seed}`);
  if (out.greedy && sampled && s.greedy) problems.push("greedy decoding takes no temperature, top-k, top-p or seed");
  if (problems.length) throw new UserError(`generate: ${problems.join("; ")}`, 2);
  return out;
}

/** The request's fields (all but seq and request_id), checked. */
export function generateRequest(opts: GenerateOptions, nModels: number, space: "tokens" | "bytes" = "tokens") {
  const prompts = opts.prompts ?? (opts.prompt !== undefined ? [opts.prompt] : null);
  if (!prompts || prompts.length === 0) throw new UserError("generate: give a prompt (or prompts)", 2);
  const maxNew = opts.maxNewTokens ?? (space === "bytes" ? DEFAULTS.max_new_bytes : DEFAULTS.max_new_tokens);
  if (!Number.isInteger(maxNew) || maxNew <= 0) throw new UserError(`generate: max new tokens must be a positive integer, got ${maxNew}`, 2);
  const stop = opts.stop ?? [];
  if (stop.some((s) => s.length === 0)) throw new UserError("generate: a stop string may not be empty", 2);
  const [setting] = resolveStrategies([opts.strategy ?? DEFAULTS.eval_strategy], nModels);
  return { prompts, setting, max_new: maxNew, sampling: resolveSampling(opts.sampling), stop, truncate: opts.truncate ?? true };
}

/**
 * A push queue read by one async iterator: the worker's chunks go in as they arrive,
 * the iterator yields them, and ends (or throws) when the request settles.
 */
export function chunkStream(run: (push: (m: ChunkMsg) => void) => Promise<GeneratedMsg>, setting: Setting): Generation {
  const queue: GenerationChunk[] = [];
  let wake: (() => void) | null = null;
  let settled = false;
  let failure: unknown = null;
  const started = performance.now();
  const notify = () => {
    wake?.();
    wake = null;
  };
  const summary = run((m) => {
    for (const c of m.chunks) queue.push({ ...c, step: m.step });
    notify();
  }).then(
    (done): GenerationSummary => {
      settled = true;
      notify();
      const tokens = done.outputs.reduce((a, o) => a + o.tokens.length, 0);
      return {
        setting, space: done.space, outputs: done.outputs, steps: done.steps, seconds: done.seconds, firstTokenSeconds: done.first_token_seconds,
        tokensPerSecond: done.seconds > 0 ? tokens / done.seconds : 0, wallSeconds: (performance.now() - started) / 1000,
      };
    },
    (e: unknown) => {
      settled = true;
      failure = e;
      notify();
      throw e;
    },
  );
  summary.catch(() => {}); // the iterator (or the caller's await) reports it
  return {
    summary,
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (settled) {
          if (failure) throw failure;
          return;
        }
        await new Promise<void>((r) => (wake = r));
      }
    },
  };
}
