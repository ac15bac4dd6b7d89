// The JSON Schema view of src/protocol.ts and the golden messages both suites decode.
import { z } from "zod";
import { FromWorker, PROTOCOL_VERSION, ToWorker, type FromWorker as From, type Setting, type ToWorker as To } from "./protocol.js";
import { LIST_PARAM_NAMES } from "./strategies.js";

export function protocolJsonSchema(): Record<string, unknown> {
  const schema = (s: z.ZodType) => z.toJSONSchema(s, { target: "draft-2020-12" }) as Record<string, unknown>;
  return {
    $comment: "GENERATED from src/protocol.ts by `npm run protocol:gen`; do not edit.",
    protocol_version: PROTOCOL_VERSION,
    to_worker: schema(ToWorker),
    from_worker: schema(FromWorker),
  };
}

// Every total is the sum of its per-window values in window order (exactly: these are
// binary fractions), as the worker sends them.
const sums = {
  windows_done: 3,
  scored_tokens: 1021,
  model_nll: [4211.5, 3977.25],
  fusion_nll: [3890.125, 3901.0],
  fusion_weights: [[510.5, 510.5], [498.25, 522.75]],
  window_first: 0,
  window_targets: [340, 341, 340],
  window_bytes: [1502, 1490, 1511],
  window_model_nll: [[1400.5, 1411.0, 1400.0], [1320.25, 1330.5, 1326.5]],
  window_fusion_nll: [[1290.125, 1300.0, 1300.0], [1300.5, 1301.0, 1299.5]],
};

/** In byte space a window's bytes are its scored bytes. */
const byteSums = { ...sums, window_bytes: sums.window_targets };

/** A progress message's sums: the totals so far, and the one window finished since the previous message. */
const progressSums = {
  windows_done: 2,
  scored_tokens: 681,
  model_nll: [2811.5, 2650.75],
  fusion_nll: [2590.125, 2601.5],
  fusion_weights: [[340.5, 340.5], [332.25, 348.75]],
  window_first: 1,
  window_targets: [341],
  window_bytes: [1490],
  window_model_nll: [[1411.0], [1330.5]],
  window_fusion_nll: [[1300.0], [1301.0]],
};

/** One example of every message type; the worker's tests decode and validate them. */
export const GOLDEN_MESSAGES: Record<string, To | From> = {
  load: {
    seq: 1, type: "load", tokenizer: null, max_length: 1024, bos_per_window: false, space: "auto", bytes: { beam: 8, prune: 0 },
    models: [
      { ref: "gpt2", revision: "main", trust_remote_code: false, dtype: "auto", device: "auto" },
      { ref: "/models/distilgpt2", revision: null, trust_remote_code: false, dtype: "bfloat16", device: "cuda:1" },
    ],
  },
  evaluate: {
    seq: 2, type: "evaluate", request_id: "r1", batch_size: 8, progress_every: 4, resume: null,
    dataset: { path: "/data/wiki.txt", max_length: 1024, stride: 512, bos_per_window: false },
    settings: [
      { id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null },
      { id: "poe@t=0.85,1.1;b=0.8,0.2", type: "poe", temperatures: [0.85, 1.1], betas: [0.8, 0.2], weights: null },
      { id: "mix@t=1,0.9;w=0.7,0.3", type: "mix", temperatures: [1, 0.9], betas: null, weights: [0.7, 0.3] },
    ],
  },
  evaluate_resume: {
    seq: 3, type: "evaluate", request_id: "r2", batch_size: 2, progress_every: 1, resume: sums,
    dataset: { path: "/data/wiki.txt", max_length: 256, stride: 256, bos_per_window: true },
    settings: [{ id: "gap", type: "gap", temperatures: [1, 1, 1], betas: null, weights: null }],
  },
  evaluate_positions: {
    seq: 3, type: "evaluate", request_id: "r4", batch_size: 8, progress_every: 1, resume: null,
    dataset: { path: "/data/wiki.txt", max_length: 1024, stride: 512, bos_per_window: false },
    settings: [
      { id: "average", type: "average", temperatures: [1, 1], betas: null, weights: null },
      { id: "entropy@t=0.85,1.1", type: "entropy", temperatures: [0.85, 1.1], betas: null, weights: null },
    ],
    positions: { settings: [1, 0], bytes: 4096 },
  },
  evaluate_share: {
    seq: 6, type: "evaluate", request_id: "r5", batch_size: 8, progress_every: 1, resume: null,
    dataset: { path: "/data/wiki.txt", max_length: 1024, stride: 512, bos_per_window: false },
    settings: [{ id: "average", type: "average", temperatures: [1, 1], betas: null, weights: null }],
    share: { first: 16, stop: 24 },
  },
  cancel: { seq: 4, type: "cancel", request_id: "r1" },
  shutdown: { seq: 5, type: "shutdown" },
  hello: {
    seq: 0, type: "hello", protocol_version: PROTOCOL_VERSION, worker_version: "0.1.0", pid: 4242,
    python: "3.11.7", torch: "2.13.0+cpu", transformers: "5.24.0", cuda_devices: 0,
  },
  loaded: {
    seq: 1, type: "loaded", seconds: 2.5, space: "tokens", space_reason: "every vocabulary agrees",
    tokenizer: { ref: "gpt2", vocab_size: 50257, bos_token_id: 50256 },
    models: [
      { ref: "gpt2", device: "cpu", dtype: "float32", parameters: 124439808, vocab_size: 50257, max_positions: 1024, head_path: "scored", tokenizer: "gpt2" },
      { ref: "distilgpt2", device: "cpu", dtype: "float32", parameters: 81912576, vocab_size: 50304, max_positions: 1024, head_path: "scored", tokenizer: "gpt2" },
    ],
  },
  status: { seq: 2, type: "status", message: "loading gpt2" },
  heartbeat: { seq: 3, type: "heartbeat" },
  progress: {
    seq: 4, type: "progress", request_id: "r1", windows_total: 10, tokens_total: 5000, seconds: 1.25, sums: progressSums,
  },
  result: {
    seq: 5, type: "result", request_id: "r1", space: "tokens", tokens: 5000, windows: 10, sums, byte_stats: null,
    seconds: 4.5, tokenize_seconds: 0.25, peak_memory_bytes: 123456789, device: "cpu", dtype: "float32",
  },
  result_bytes: {
    seq: 6, type: "result", request_id: "r3", space: "bytes", tokens: 22000, windows: 11, sums: byteSums,
    byte_stats: [
      { pruned: 0, pruned_positions: 0, max_pruned_share: 0, max_hypotheses: 5 },
      { pruned: 1204, pruned_positions: 310, max_pruned_share: 2.5e-7, max_hypotheses: 8 },
    ],
    seconds: 30.5, tokenize_seconds: 0.5, peak_memory_bytes: 223456789, device: "cpu", dtype: "float32",
  },
  result_positions: {
    seq: 7, type: "result", request_id: "r4", space: "tokens", tokens: 5000, windows: 10, sums, byte_stats: null,
    seconds: 4.5, tokenize_seconds: 0.25, peak_memory_bytes: 123456789, device: "cpu", dtype: "float32",
    // tokens 1..3 of "Hello, wörld": ",", " w", "örld" (token 0, "Hello", has no context and is not scored)
    positions: {
      settings: [1, 0], bytes: 13,
      start: [5, 6, 8], end: [6, 8, 13],
      model_nll: [[2.5, 4.25, 7.125], [2.75, 3.5, 6.0]],
      fusion_nll: [[2.5, 3.75, 6.25], [2.5, 3.875, 6.5]],
      weights: [[[0.625, 0.5, 0.25], [0.375, 0.5, 0.75]], [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]],
    },
  },
  error: {
    seq: 6, type: "error", request_id: null, code: "not_found",
    message: "model 'gpt3' not found: not a local directory, and not in the Hugging Face cache (offline)", detail: null,
  },
  bye: { seq: 7, type: "bye" },
  generate: {
    seq: 4, type: "generate", request_id: "g1", prompts: ["The list", ""], max_new: 32, stop: ["\n\n"], truncate: true,
    setting: { id: "entropy", type: "entropy", temperatures: [1, 1], ...Object.fromEntries(LIST_PARAM_NAMES.map((p) => [p, null])) } as Setting,
    sampling: { greedy: false, temperature: 0.8, top_k: 40, top_p: 0.95, seed: 7 },
  },
  fit: {
    seq: 5, type: "fit", request_id: "f1", batch_size: 8, progress_every: 4,
    dataset: { path: "/data/dev.txt", max_length: 256, stride: 128, bos_per_window: false },
    settings: [{ id: "average", type: "average", temperatures: [1, 1], betas: null, weights: null }],
    options: {
      fits: ["loglinear", "mix"], mix_temperatures: [0.8, 1, 1.25], memory_budget_bytes: 1073741824,
      max_iterations: 50, tolerance: 1e-6, em_max_iterations: 20000, em_tolerance: 1e-9,
    },
  },
  fitted: {
    seq: 10, type: "fitted", request_id: "f1", space: "tokens", tokens: 5000, windows: 3, byte_stats: null,
    // the request's one setting, then fitted-poe and fitted-mix (each total the window-order sum of its windows)
    sums: {
      ...sums,
      fusion_nll: [3890.125, 3850.25, 3880.5],
      fusion_weights: [[510.5, 510.5], [357.25, 663.5], [255.25, 765.75]],
      window_fusion_nll: [[1290.125, 1300.0, 1300.0], [1280.25, 1286.0, 1284.0], [1290.0, 1296.0, 1294.5]],
    },
    fits: [
      {
        kind: "loglinear", setting: { id: "fitted-poe", type: "poe", temperatures: [1, 1], betas: [0.34375, 0.625], weights: null },
        iterations: 3, evaluations: 7, converged: true, gradient_norm: 1.5e-9, history: [4.625, 4.5, 4.375, 4.25],
        coefficients: [0.34375, 0.625], at_bound: [false, false], note: null,
      },
      {
        kind: "mix", setting: { id: "fitted-mix", type: "mix", temperatures: [1.25, 1], betas: null, weights: [0.25, 0.75] },
        iterations: 412, evaluations: 9, converged: true, gradient_norm: 6.5e-10, history: [4.625, 4.5], coefficients: [0.25, 0.75],
        at_bound: [false, false], note: null,
      },
    ],
    positions: 1021, kept_bytes: 16777216, seconds: 5.5, fit_seconds: 2.25, tokenize_seconds: 0.25,
    peak_memory_bytes: 750000000, device: "cpu", dtype: "float32",
  },
  chunk: {
    seq: 8, type: "chunk", request_id: "g1", step: 0,
    chunks: [
      { prompt: 0, token: 262, text: " of", logprob: -1.25, weights: [0.625, 0.375], done: false },
      { prompt: 1, token: 464, text: "The", logprob: -2.5, weights: [0.5, 0.5], done: true },
    ],
  },
  generated: {
    seq: 9, type: "generated", request_id: "g1", space: "tokens", steps: 2, seconds: 0.5, first_token_seconds: 0.25,
    outputs: [
      { prompt: 0, text: " of", tokens: [262, 198], logprobs: [-1.25, -0.5], weights_mean: [0.5625, 0.4375], finish: "stop", prompt_tokens: 3, truncated: 0 },
      { prompt: 1, text: "The list", tokens: [464, 1351], logprobs: [-2.5, -3.0], weights_mean: [0.5, 0.5], finish: "length", prompt_tokens: 1, truncated: 0 },
    ],
  },
};
