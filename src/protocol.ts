// The wire protocol between the controller and the Python worker: the ONE definition.
//
// Every message is a msgpack map with `type` and `seq`, sent as two ZeroMQ frames:
//   [ body = msgpack(message), mac = HMAC-SHA256(session key, body) ]
// `seq` rises by one per message in each direction; a receiver drops a message whose
// mac does not verify or whose seq is not above the last one it accepted (replay).
//
// protocol/schema.json is generated from the schemas below (`npm run protocol:gen`)
// and the worker validates what it receives against it; protocol/golden/*.msgpack are
// encoded messages that both test suites decode.
import { z } from "zod";
import { KNOWN_STRATEGIES, LIST_PARAM_NAMES, type ListParam } from "./strategies.js";

export const PROTOCOL_VERSION = 8;

// zod 4 numbers are finite (NaN and ±Infinity fail); these also map onto JSON Schema.
const finite = z.number();
const positive = z.number().positive();

// The strategy names and their per-model lists come from the registry in strategies.ts
// (where strategies are declared); the wire carries every setting fully resolved.
export const StrategyType = z.enum(KNOWN_STRATEGIES);
export type StrategyType = z.infer<typeof StrategyType>;

const perModel = z.array(finite).min(2);
/** Every declared list is a field: the values, one per model, or null for a type that takes none. */
const listFields = Object.fromEntries(LIST_PARAM_NAMES.map((p) => [p, perModel.nullable()])) as {
  [P in ListParam]: z.ZodNullable<typeof perModel>;
};

/** One fully resolved fusion setting: every parameter explicit, one per model. */
export const Setting = z.strictObject({
  id: z.string().min(1),
  type: StrategyType,
  temperatures: z.array(positive).min(2),
  ...listFields,
});
export type Setting = z.infer<typeof Setting>;

/** How accelerate splits a model over its devices (transformers' "auto" is "balanced"). */
export const DeviceMap = z.enum(["auto", "balanced", "sequential"]);
/** A max_memory key: a GPU index ("0", "1", …) or "cpu". */
export const MemoryKey = z.string().regex(/^(\d+|cpu)$/);
/** A size: KB/MB/GB/TB count powers of 1000, KiB/MiB/GiB/TiB powers of 1024 (as accelerate reads them). */
export const SIZE_PATTERN = /^\s*\d+(\.\d+)?\s*([KkMmGgTt][Ii]?[Bb]|[Bb])\s*$/;
/** A max_memory value: bytes, or a size such as "20GiB". */
export const MemorySize = z.union([z.number().int().nonnegative(), z.string().regex(SIZE_PATTERN)]);

export const ModelSpec = z.strictObject({
  ref: z.string().min(1),
  revision: z.string().nullable(),
  trust_remote_code: z.boolean(),
  dtype: z.enum(["auto", "float32", "float16", "bfloat16"]),
  device: z.string().regex(/^(auto|cpu|cuda|cuda:\d+|mps)$/),
  // v8 (absent or null: one device, or accelerate's "auto" when device is auto on several GPUs):
  // shard the model over its devices with accelerate (docs/scale.md)
  device_map: DeviceMap.nullable().optional(),
  // v8: a sharded load's budget per device, in bytes or as "20GiB" / "500MB"; keys: a GPU index or "cpu"
  max_memory: z.record(MemoryKey, MemorySize).nullable().optional(),
});
export type ModelSpec = z.infer<typeof ModelSpec>;

const count = z.number().int().nonnegative();

/**
 * Running sums of one evaluation: all a result (or a checkpoint) needs. Besides the
 * totals, the per-window sums (protocol v3) that the paired bootstrap resamples
 * (src/bootstrap.ts): for every window, its scored positions, its bytes, and the Σ NLL
 * of every model and every setting over it. A total is the float64 sum of its
 * per-window values, added in window order (so a controller can check one against the
 * other exactly). A window's bytes are those of the stream positions it adds (from the
 * previous window's end to its own end; the first window from the text's start, the
 * last to the text's end): they add up to the text's bytes. In byte space they are its
 * scored bytes.
 *
 * The window_* lists hold windows window_first .. windows_done − 1. In a result, in a
 * resume and in a checkpoint window_first is 0: every window. A progress message carries
 * only the windows finished since the previous progress message of its request (the
 * controller appends them), so that what crosses the bridge stays linear in the text.
 */
export const Sums = z.strictObject({
  windows_done: count,
  scored_tokens: count,
  model_nll: z.array(finite), // per model: Σ NLL (nats) over scored tokens
  fusion_nll: z.array(finite), // per setting, in request order
  fusion_weights: z.array(z.array(finite)), // per setting: Σ α_m over scored tokens
  window_first: count, // the index of the first window in the window_* lists
  window_targets: z.array(count), // per window: scored positions (tokens; bytes in byte space)
  window_bytes: z.array(count), // per window: UTF-8 bytes of the text it covers
  window_model_nll: z.array(z.array(finite)), // per model, per window: Σ NLL (nats)
  window_fusion_nll: z.array(z.array(finite)), // per setting, per window: Σ NLL (nats)
});
export type Sums = z.infer<typeof Sums>;

/** One model's beam over a byte-space evaluation: pruned = 0 means its byte NLL is exact. */
export const ByteStats = z.strictObject({
  pruned: z.number().int().nonnegative(), // hypotheses dropped (beam full, or under prune × the best)
  pruned_positions: z.number().int().nonnegative(), // bytes at which anything was dropped (context bytes of a window included)
  max_pruned_share: finite, // the largest share of a position's mass that was dropped
  max_hypotheses: z.number().int().nonnegative(), // the most hypotheses alive at once
});
export type ByteStats = z.infer<typeof ByteStats>;

const base = { seq: z.number().int().nonnegative() };

/** The text and its windows (SPEC §2). */
export const DatasetSpec = z.strictObject({
  path: z.string().min(1), // a UTF-8 text file, or (with field) a .jsonl of documents
  max_length: z.number().int().positive(),
  stride: z.number().int().positive(),
  bos_per_window: z.boolean(),
  // protocol v6 (absent: a plain text file, stream mode):
  field: z.string().min(1).nullable().optional(), // path is a .jsonl: each line's document is obj[field]
  mode: z.enum(["stream", "documents"]).optional(), // documents: each scored alone, lm-eval's rolling windows (stride unused)
  separator: z.string().optional(), // stream mode over documents: what joins them (default "\n\n")
});
export type DatasetSpec = z.infer<typeof DatasetSpec>;

// ---- controller → worker ------------------------------------------------------
/** Where the fusion happens (SPEC §7): over a shared token vocabulary, or over bytes. */
export const Space = z.enum(["tokens", "bytes"]);
export type Space = z.infer<typeof Space>;

/** How each model is read as a byte LM (SPEC §7): a beam of K token prefixes, relative pruning. */
export const ByteOptions = z.strictObject({
  beam: z.number().int().positive(),
  prune: z.number().min(0).lt(1),
});
export type ByteOptions = z.infer<typeof ByteOptions>;

export const LoadMsg = z.strictObject({
  ...base,
  type: z.literal("load"),
  models: z.array(ModelSpec).min(2),
  tokenizer: z.string().nullable(), // token space: the shared tokenizer (null: the first model's); byte space: unused
  max_length: z.number().int().positive().nullable(), // checked against each model's context (tokens; bytes in byte space)
  bos_per_window: z.boolean(),
  space: z.union([Space, z.literal("auto")]), // auto: tokens when every vocabulary agrees, bytes otherwise
  bytes: ByteOptions,
});
/** The most settings, and the most bytes of the text's start, one request's per-position data may cover. */
export const MAX_VIEW_SETTINGS = 4;
export const MAX_VIEW_BYTES = 65536;
/**
 * Protocol v6: per-position numbers for the HTML report's token view, asked for a few
 * settings over the first `bytes` bytes of the text (the worker keeps only those).
 */
export const PositionsRequest = z.strictObject({
  settings: z.array(count).min(1).max(MAX_VIEW_SETTINGS), // indices into the request's settings, distinct
  bytes: z.number().int().positive().max(MAX_VIEW_BYTES), // the view: positions whose text ends within these bytes
});
export type PositionsRequest = z.infer<typeof PositionsRequest>;
export const EvaluateMsg = z.strictObject({
  ...base,
  type: z.literal("evaluate"),
  request_id: z.string().min(1),
  dataset: DatasetSpec,
  settings: z.array(Setting),
  batch_size: z.number().int().positive(),
  progress_every: z.number().int().positive(), // windows between progress messages (which carry sums)
  resume: Sums.nullable(), // continue from these sums (a checkpoint; every window so far: window_first 0)
  positions: PositionsRequest.nullable().optional(), // v6: per-position data for the token view; absent or null: none
  // v8: a pool's batch: only windows first .. stop − 1, their sums alone (window_first = first); no progress messages
  share: z.strictObject({ first: count, stop: z.number().int().positive() }).nullable().optional(),
});
/** How generation picks each token from the fused distribution (it does not change what is reported). */
export const Sampling = z.strictObject({
  greedy: z.boolean(), // argmax; the rest is then unused
  temperature: positive, // sampling temperature on the fused distribution (not the models' T_m)
  top_k: z.number().int().nonnegative(), // 0: no cut
  top_p: z.number().gt(0).lte(1), // 1: no cut
  seed: z.number().int().nonnegative(),
});
export type Sampling = z.infer<typeof Sampling>;
export const GenerateMsg = z.strictObject({
  ...base,
  type: z.literal("generate"),
  request_id: z.string().min(1),
  prompts: z.array(z.string()).min(1), // decoded together (left padding); "" starts from the start token alone
  setting: Setting, // the one fusion that generates
  max_new: z.number().int().positive(), // new tokens per prompt (bytes in byte space)
  sampling: Sampling,
  stop: z.array(z.string().min(1)), // a prompt's text ends before the first of these it writes
  truncate: z.boolean(), // a prompt too long for the context: cut from the left (true, with a warning) or refused
});
/** What a fit fits (python/kotara_worker/fit.py; docs/fitting.md). */
export const FitKind = z.enum(["mix", "loglinear"]);
export type FitKind = z.infer<typeof FitKind>;
/** How a fit runs: which rules, the mix's temperature grid, the memory the log-linear fit may keep, when to stop. */
export const FitOptions = z.strictObject({
  fits: z.array(FitKind).min(1).max(2), // each at most once; fitted in this order
  mix_temperatures: z.array(positive).min(1), // the grid the mix's temperatures are searched over (1 is always added)
  memory_budget_bytes: count, // the log-linear fit keeps N × positions × vocab float32 logits: refused above this
  max_iterations: z.number().int().positive(), // Newton iterations (log-linear)
  tolerance: positive, // Newton stops at this ∞-norm of the projected gradient of the mean NLL per position
  em_max_iterations: z.number().int().positive(), // per EM run (mix)
  em_tolerance: positive, // an EM run stops at this Frank-Wolfe gap (mean nats per position above its optimum over the weights)
});
export type FitOptions = z.infer<typeof FitOptions>;
/**
 * Fit fusion rules on a text (the dev text): one evaluation pass with `settings`, which
 * also keeps what the fits need; then the fits; the reply (fitted) carries the dev sums
 * of the settings and of the fitted rules, and each fit. Progress messages as for evaluate.
 */
export const FitMsg = z.strictObject({
  ...base,
  type: z.literal("fit"),
  request_id: z.string().min(1),
  dataset: DatasetSpec,
  settings: z.array(Setting), // evaluated on the dev text in the same pass (may be empty)
  batch_size: z.number().int().positive(),
  progress_every: z.number().int().positive(),
  options: FitOptions,
});
export const CancelMsg = z.strictObject({ ...base, type: z.literal("cancel"), request_id: z.string() });
export const ShutdownMsg = z.strictObject({ ...base, type: z.literal("shutdown") });

// ---- worker → controller ------------------------------------------------------
export const HelloMsg = z.strictObject({
  ...base,
  type: z.literal("hello"),
  protocol_version: z.number().int(),
  worker_version: z.string(),
  pid: z.number().int(),
  python: z.string(),
  torch: z.string(),
  transformers: z.string(),
  cuda_devices: z.number().int().nonnegative(),
});
export const LoadedModel = z.strictObject({
  ref: z.string(),
  device: z.string(),
  dtype: z.string(),
  parameters: z.number().int().nonnegative(),
  vocab_size: z.number().int().positive(), // rows of the output layer
  max_positions: z.number().int().positive().nullable(),
  head_path: z.enum(["scored", "full"]), // "scored": only scored positions go through the output layer
  tokenizer: z.string(), // the tokenizer this model reads with (its own in byte space)
  // v8: a sharded model: the devices its parts lie on ("cuda:0", "cuda:1", "cpu", "disk"); absent: one device
  devices: z.array(z.string()).optional(),
});
export const LoadedMsg = z.strictObject({
  ...base,
  type: z.literal("loaded"),
  models: z.array(LoadedModel),
  tokenizer: z.strictObject({ ref: z.string(), vocab_size: z.number().int().positive(), bos_token_id: z.number().int().nullable() }),
  space: Space, // the space the evaluations run in (auto resolved)
  space_reason: z.string(), // why, in words: "every vocabulary agrees", "the vocabularies of A and B differ", "asked for"
  seconds: finite,
});
export const StatusMsg = z.strictObject({ ...base, type: z.literal("status"), message: z.string() });
export const HeartbeatMsg = z.strictObject({ ...base, type: z.literal("heartbeat") });
export const ProgressMsg = z.strictObject({
  ...base,
  type: z.literal("progress"),
  request_id: z.string(),
  windows_total: z.number().int().nonnegative(),
  tokens_total: z.number().int().nonnegative(), // positions of the whole stream: tokens, or bytes in byte space
  seconds: finite, // compute seconds so far in this request
  sums: Sums, // the totals so far; window_*: the windows finished since the previous progress message
});
/**
 * The per-position numbers a PositionsRequest asked for: every scored position (a token;
 * a byte in byte space) whose text lies in the first `bytes` bytes of the text, in stream
 * order, with the byte span [start, end) of the text it stands for (a token's span runs
 * from where the previous token's text ended to where its own ends, so the spans of
 * consecutive tokens tile the text; in byte space [i, i + 1)), each model's NLL (T = 1)
 * and each asked setting's fused NLL and per-model weights α there. Summed over the
 * positions of a window they are that window's per-window sums.
 */
export const Positions = z.strictObject({
  settings: z.array(count), // the settings asked for (indices into the request's settings), in that order
  bytes: count, // the text the view covers: bytes 0 .. bytes − 1 (≤ the bytes asked; the text may be shorter)
  start: z.array(count), // per position: the first byte of its text
  end: z.array(count), // per position: one past the last byte (start = end: a position with no text of its own)
  model_nll: z.array(z.array(finite)), // [model][position], nats
  fusion_nll: z.array(z.array(finite)), // [asked setting][position], nats
  weights: z.array(z.array(z.array(finite))), // [asked setting][model][position]: α
});
export type Positions = z.infer<typeof Positions>;
export const ResultMsg = z.strictObject({
  ...base,
  type: z.literal("result"),
  request_id: z.string(),
  space: Space,
  tokens: z.number().int().nonnegative(), // positions of the stream: tokens, or bytes in byte space
  windows: z.number().int().nonnegative(),
  sums: Sums, // scored_tokens: scored positions (bytes in byte space); window_first 0: every window (a share: its windows alone, from share.first)
  byte_stats: z.array(ByteStats).nullable(), // byte space: per model, how much its beam pruned; null in token space
  seconds: finite, // compute loop only
  tokenize_seconds: finite, // reading and tokenizing the text
  peak_memory_bytes: z.number().int().nonnegative(), // this request (tokenizing + pass): Linux VmHWM, or the CUDA allocator peak
  device: z.string(),
  dtype: z.string(),
  positions: Positions.nullable().optional(), // v6: when the request asked for them; null: not available (the status said why)
});
export const ErrorMsg = z.strictObject({
  ...base,
  type: z.literal("error"),
  request_id: z.string().nullable(),
  code: z.enum(["bad_request", "not_found", "tokenizer_mismatch", "remote_code", "context", "numerical", "cancelled", "internal"]),
  message: z.string(),
  detail: z.string().nullable(), // e.g. a traceback, for --verbose and bug reports
});
export const ByeMsg = z.strictObject({ ...base, type: z.literal("bye") });
/** One prompt's step of a generation: what it chose and what the fused model thought of it. */
export const GenChunk = z.strictObject({
  prompt: z.number().int().nonnegative(), // index into GenerateMsg.prompts
  token: z.number().int().nonnegative(), // the chosen token id (a byte value 0-255, or 256 for "end", in byte space)
  text: z.string(), // newly printable text (held back: a partial UTF-8 character, the start of a stop string)
  logprob: finite, // log p of the chosen token under the fused distribution
  weights: z.array(finite), // the per-model weights α of this step
  done: z.boolean(), // this prompt's last token (its GeneratedOutput says why)
});
export const ChunkMsg = z.strictObject({
  ...base,
  type: z.literal("chunk"),
  request_id: z.string(),
  step: z.number().int().nonnegative(),
  chunks: z.array(GenChunk), // one per prompt still generating
});
export const GeneratedOutput = z.strictObject({
  prompt: z.number().int().nonnegative(),
  text: z.string(), // the whole output (without the prompt; cut before a stop string)
  tokens: z.array(z.number().int().nonnegative()),
  logprobs: z.array(finite), // per generated token, fused
  weights_mean: z.array(finite), // per model, over the steps
  finish: z.enum(["length", "stop", "end"]), // max_new reached, a stop string, the model's end token
  prompt_tokens: z.number().int().nonnegative(), // with the start token, after truncation
  truncated: z.number().int().nonnegative(), // prompt tokens cut from the left
});
export const GeneratedMsg = z.strictObject({
  ...base,
  type: z.literal("generated"),
  request_id: z.string(),
  space: Space,
  outputs: z.array(GeneratedOutput),
  steps: z.number().int().nonnegative(),
  seconds: finite, // prefill and every step
  first_token_seconds: finite, // from the start to the first token of every prompt
});

/** One fitted rule, as a setting `kotara run` evaluates, and how the optimizer got there. */
export const FitResult = z.strictObject({
  kind: FitKind,
  // mix: type mix (temperatures from the grid, weights from EM); loglinear: type poe, temperatures 1, betas = c
  setting: Setting,
  iterations: count, // Newton iterations; mix: the EM iterations of every run
  evaluations: count, // loglinear: objective evaluations (passes over the kept logits); mix: EM runs
  converged: z.boolean(),
  gradient_norm: finite, // loglinear: ∞-norm of the projected gradient of the mean NLL; mix: the last EM run's gap
  history: z.array(finite), // mean dev NLL (nats) per Newton iteration; mix: per round of the temperature search
  coefficients: z.array(finite), // loglinear: c (= betas); mix: the weights
  at_bound: z.array(z.boolean()), // per model: held at its lower bound (c_m), or weight 0
  note: z.string().nullable(), // why it did not converge, if it did not
});
export type FitResult = z.infer<typeof FitResult>;
export const FittedMsg = z.strictObject({
  ...base,
  type: z.literal("fitted"),
  request_id: z.string(),
  space: Space,
  tokens: count, // positions of the dev stream: tokens, or bytes in byte space
  windows: count,
  sums: Sums, // the dev pass: every model; the request's settings, then each fit's setting (in options.fits order)
  byte_stats: z.array(ByteStats).nullable(),
  fits: z.array(FitResult),
  positions: count, // scored dev positions the fits used
  kept_bytes: count, // what the fit kept per position (the log-linear fit's logits, the target log-probabilities)
  seconds: finite, // the pass and the fits
  fit_seconds: finite, // the fits alone
  tokenize_seconds: finite,
  peak_memory_bytes: count,
  device: z.string(),
  dtype: z.string(),
});

export const ToWorker = z.discriminatedUnion("type", [LoadMsg, EvaluateMsg, GenerateMsg, FitMsg, CancelMsg, ShutdownMsg]);
export const FromWorker = z.discriminatedUnion("type", [
  HelloMsg, LoadedMsg, StatusMsg, HeartbeatMsg, ProgressMsg, ResultMsg, ChunkMsg, GeneratedMsg, FittedMsg, ErrorMsg, ByeMsg,
]);
export type ToWorker = z.infer<typeof ToWorker>;
export type FromWorker = z.infer<typeof FromWorker>;
export type ResultMsg = z.infer<typeof ResultMsg>;
export type LoadedMsg = z.infer<typeof LoadedMsg>;
export type HelloMsg = z.infer<typeof HelloMsg>;
export type ProgressMsg = z.infer<typeof ProgressMsg>;
export type ErrorMsg = z.infer<typeof ErrorMsg>;
export type GenerateMsg = z.infer<typeof GenerateMsg>;
export type ChunkMsg = z.infer<typeof ChunkMsg>;
export type GenChunk = z.infer<typeof GenChunk>;
export type GeneratedMsg = z.infer<typeof GeneratedMsg>;
export type GeneratedOutput = z.infer<typeof GeneratedOutput>;
export type FitMsg = z.infer<typeof FitMsg>;
export type FittedMsg = z.infer<typeof FittedMsg>;
