// The YAML config, as zod schemas (SPEC §4): one per section, each default from
// defaults.ts. `strategies:` and `sweep:` are checked by strategies.ts and sweep.ts,
// which derive their schemas from the strategy registry. plan.ts turns a document
// that passes into a RunPlan.
import { z } from "zod";
import { DEFAULTS } from "./defaults.js";
import { MAX_VIEW_BYTES, MAX_VIEW_SETTINGS, SIZE_PATTERN } from "./protocol.js";
import { errorMap, isPlainObject, show, strictObject } from "./validation.js";

const positiveInt = z
  .number()
  .int()
  .positive({ error: (iss) => `must be a positive integer, got ${show(iss.input)}` });
const nonNegativeInt = z
  .number()
  .int()
  .min(0, { error: (iss) => `must be 0 or a positive integer, got ${show(iss.input)}` });
const nonEmpty = z.string().min(1, { error: "must not be empty" });

const device = z
  .string()
  .regex(/^(auto|cpu|cuda|cuda:\d+|mps)$/, {
    error: (iss) => `must be auto, cpu, cuda, cuda:N or mps, got ${show(iss.input)}`,
  });

/** A max_memory value: an integer of bytes, or a size such as 20GiB / 500MB (protocol.ts SIZE_PATTERN). */
const memorySize = z.custom<number | string>(
  (v) => (typeof v === "number" && Number.isInteger(v) && v >= 0) || (typeof v === "string" && SIZE_PATTERN.test(v)),
  { error: (iss) => `must be an integer of bytes or a size such as 20GiB or 500MB, got ${show(iss.input)}` },
);

export const ModelConfig = strictObject({
  ref: nonEmpty,
  revision: nonEmpty.nullish(),
  trust_remote_code: z.boolean().default(DEFAULTS.trust_remote_code),
  dtype: z.enum(["auto", "float32", "float16", "bfloat16"]).default(DEFAULTS.dtype),
  device: device.default(DEFAULTS.device),
  /** Shard the model over its devices with accelerate (docs/scale.md); default: only when device is auto on several GPUs. */
  device_map: z
    .enum(["auto", "balanced", "sequential"], {
      error: (iss) => `must be auto, balanced or sequential, got ${show(iss.input)}`,
    })
    .nullish(),
  /** A sharded load's budget per device: { "0": 20GiB, "1": 20GiB, cpu: 64GiB }; implies device_map auto. */
  max_memory: z
    .record(z.string().regex(/^(\d+|cpu)$/), memorySize, {
      error: (iss) =>
        iss.code === "invalid_key"
          ? `unknown device; the keys are GPU indices ("0", "1", …) or cpu`
          : `must be a mapping of device to size ({ "0": 20GiB, cpu: 64GiB }), got ${show(iss.input)}`,
    })
    .nullish(),
});

/** Where the text comes from (one of path, hf), and how it is scored (docs/datasets.md). */
export const DatasetConfig = strictObject({
  /** A UTF-8 text file, or a .jsonl / .parquet file of documents (with field). */
  path: nonEmpty.nullish(),
  /** A Hugging Face dataset (a Hub id, or a directory of save_to_disk), loaded through `datasets`. */
  hf: nonEmpty.nullish(),
  /** hf: the configuration (e.g. wikitext-2-raw-v1). */
  name: nonEmpty.nullish(),
  /** hf: the split (default test). */
  split: nonEmpty.nullish(),
  /** hf: the dataset's revision. */
  revision: nonEmpty.nullish(),
  /** .jsonl / .parquet / hf: the column (key) that holds each document's text. */
  field: nonEmpty.nullish(),
  /** stream: one text, SPEC §2's windows; documents: each document alone, lm-eval's rolling windows. */
  mode: z.enum(["stream", "documents"]).default("stream"),
  /** stream mode over documents: what joins them into one text. */
  separator: z.string().default("\n\n"),
  max_length: positiveInt.default(DEFAULTS.max_length),
  /** Default: max_length (non-overlapping windows). */
  stride: positiveInt.nullish(),
  bos_per_window: z.boolean().default(DEFAULTS.bos_per_window),
});

/** A worker spawned here, holding every model (on `device` when given, else the models' own). */
export const LocalWorkerConfig = strictObject({
  device: device.nullish(),
  /** torch's intra-op threads (OMP_NUM_THREADS); a CPU worker per core wants 1. */
  threads: positiveInt.nullish(),
});

/** A worker started by hand elsewhere (`kotara worker --listen`), reached over TCP with CURVE. */
export const RemoteWorkerConfig = strictObject({
  connect: z.string().regex(/^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d{1,5}$/, {
    error: (iss) => `must be tcp://HOST:PORT, got ${show(iss.input)}`,
  }),
  /** The key file of `kotara keygen`, the same one the worker was started with. */
  key_file: nonEmpty,
});

/** runtime.workers[i]: remote when it names `connect`, else local (each entry checked as that kind). */
const WorkerConfig = z.unknown().transform((value, ctx) => {
  const schema = isPlainObject(value) && "connect" in value ? RemoteWorkerConfig : LocalWorkerConfig;
  const parsed = schema.safeParse(value, { error: errorMap });
  if (parsed.success) return parsed.data as z.infer<typeof LocalWorkerConfig> | z.infer<typeof RemoteWorkerConfig>;
  for (const issue of parsed.error.issues) {
    const keys = issue.code === "unrecognized_keys" ? issue.keys : [null];
    for (const key of keys) ctx.addIssue({ code: "custom", message: issue.message, path: [...issue.path, ...(key === null ? [] : [key])] as PropertyKey[] });
  }
  return z.NEVER;
});

export const RuntimeConfig = strictObject({
  batch_size: positiveInt.default(DEFAULTS.batch_size),
  python: nonEmpty.nullish(),
  /** Write a resumable checkpoint every this many windows; 0: never. */
  checkpoint_every: nonNegativeInt.default(DEFAULTS.checkpoint_every),
  /** A pool (docs/workers.md): the windows go out a group of batch_size at a time to whichever worker is free. */
  workers: z.array(WorkerConfig).min(1, { error: "must list at least one worker (or leave runtime.workers out)" }).nullish(),
});

/** Byte space (SPEC §7): each model read as a byte LM through a beam of K token prefixes. */
export const BytesConfig = strictObject({
  beam: positiveInt.default(DEFAULTS.beam),
  prune: z
    .number()
    .min(0, { error: (iss) => `must be in [0, 1), got ${show(iss.input)}` })
    .lt(1, { error: (iss) => `must be in [0, 1), got ${show(iss.input)} (1 would prune everything but the best)` })
    .default(DEFAULTS.prune),
});

export const OutputConfig = strictObject({
  metrics: nonEmpty.nullish(),
});

/** The most resamples report.bootstrap takes (each costs ~⌈n^(2/3)⌉ additions per setting). */
export const MAX_RESAMPLES = 1_000_000;
/** Fewer resamples than this put the 2.5% and 97.5% quantiles on a handful of values. */
export const MIN_RESAMPLES = 100;

/** The paired intervals of fusions[].vs_best_model (src/bootstrap.ts). */
export const BootstrapConfig = strictObject({
  resamples: z
    .number()
    .int({ error: (iss) => `must be an integer, got ${show(iss.input)}` })
    .refine((n) => n === 0 || (n >= MIN_RESAMPLES && n <= MAX_RESAMPLES), {
      error: (iss) => `must be 0 (no intervals) or from ${MIN_RESAMPLES} to ${MAX_RESAMPLES}, got ${show(iss.input)}`,
    })
    .default(DEFAULTS.bootstrap.resamples),
  seed: z
    .number()
    .int({ error: (iss) => `must be an integer, got ${show(iss.input)}` })
    .min(0, { error: (iss) => `must be an integer from 0 to 4294967295, got ${show(iss.input)}` })
    .max(0xffffffff, { error: (iss) => `must be an integer from 0 to 4294967295, got ${show(iss.input)}` })
    .default(DEFAULTS.bootstrap.seed),
  /** Windows per block; null: ⌈n^(1/3)⌉ for n windows. */
  block_length: positiveInt.nullish(),
});

export const ReportConfig = strictObject({
  bootstrap: BootstrapConfig.nullish(),
  /** Write `<metrics>.html` (src/html-report.ts). */
  html: z.boolean().default(DEFAULTS.report_html),
  /** The token view: the first this many bytes of the text; 0: no token view. */
  token_view_bytes: z
    .number()
    .int({ error: (iss) => `must be an integer, got ${show(iss.input)}` })
    .min(0, { error: (iss) => `must be from 0 (no token view) to ${MAX_VIEW_BYTES}, got ${show(iss.input)}` })
    .max(MAX_VIEW_BYTES, { error: (iss) => `must be from 0 (no token view) to ${MAX_VIEW_BYTES}, got ${show(iss.input)}` })
    .default(DEFAULTS.token_view_bytes),
  /** The fusions the token view shows, by id; null: up to MAX_VIEW_SETTINGS at T = 1 (plan.ts). */
  token_view_settings: z
    .array(nonEmpty)
    .min(1, { error: "must list at least one fusion id (or leave it out for the default)" })
    .max(MAX_VIEW_SETTINGS, { error: (iss) => `at most ${MAX_VIEW_SETTINGS} fusions, got ${Array.isArray(iss.input) ? iss.input.length : show(iss.input)}` })
    .nullish(),
});

/** The YAML document. */
export const ConfigSchema = strictObject({
  /** tokens | bytes | auto: tokens when every vocabulary agrees, bytes otherwise. */
  space: z.enum(["tokens", "bytes", "auto"]).default(DEFAULTS.space),
  bytes: BytesConfig.nullish(),
  models: z.array(ModelConfig).min(2, {
    error: (iss) => `at least 2 models are needed for a fusion, got ${Array.isArray(iss.input) ? iss.input.length : 0}`,
  }),
  tokenizer: nonEmpty.nullish(),
  dataset: DatasetConfig,
  strategies: z.unknown().optional(),
  sweep: z.unknown().optional(),
  runtime: RuntimeConfig.nullish(),
  output: OutputConfig.nullish(),
  report: ReportConfig.nullish(),
});
export type ConfigInput = z.input<typeof ConfigSchema>;

/** The order of the top-level keys, for listing problems as they appear in a file. */
export const KEY_ORDER = ["(root)", ...Object.keys(ConfigSchema.shape)];
