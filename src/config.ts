// The run configuration (SPEC §4): YAML → zod → a fully resolved RunPlan.
//
// Everything a run needs is checked here, before any worker starts, and every
// problem is reported at once as a `path: message` line (ConfigError):
//
//   invalid config configs/x.yaml:
//     dataset.stride: must be ≤ max_length (1024), got 2048
//     strategies[1]: unknown strategy "foo"; known: average, poe, entropy, gap
//
// Relative paths (dataset.path, output.metrics, runtime.python when it names a
// file, model and tokenizer refs that are local directories) resolve against the
// directory of the config file. A model ref is a local directory when it starts with
// ".", "/" or "~", or when that path exists next to the config; otherwise it is a
// Hugging Face Hub id.
import { existsSync, readFileSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import path from "node:path";
import YAML from "yaml";
import { z } from "zod";
import { ConfigError } from "./errors.js";
import type { ModelSpec, Setting } from "./protocol.js";
import {
  type Checked,
  KNOWN_STRATEGIES,
  checkStrategies,
  errorMap,
  formatPath,
  isPlainObject,
  issueLines,
  show,
  strictObject,
} from "./strategies.js";
import { type Sweep, checkSweep, dedupeSettings, expandValidSweep } from "./sweep.js";

// ---- schema -----------------------------------------------------------------------

const positiveInt = z
  .number()
  .int()
  .positive({ error: (iss) => `must be a positive integer, got ${show(iss.input)}` });
const nonNegativeInt = z
  .number()
  .int()
  .min(0, { error: (iss) => `must be 0 or a positive integer, got ${show(iss.input)}` });
const nonEmpty = z.string().min(1, { error: "must not be empty" });

export const ModelConfig = strictObject({
  ref: nonEmpty,
  revision: nonEmpty.nullish(),
  trust_remote_code: z.boolean().default(false),
  dtype: z.enum(["auto", "float32", "float16", "bfloat16"]).default("auto"),
  device: z
    .string()
    .regex(/^(auto|cpu|cuda|cuda:\d+|mps)$/, {
      error: (iss) => `must be auto, cpu, cuda, cuda:N or mps, got ${show(iss.input)}`,
    })
    .default("auto"),
});

export const DatasetConfig = strictObject({
  path: nonEmpty,
  max_length: positiveInt.default(1024),
  /** Default: max_length (non-overlapping windows). */
  stride: positiveInt.nullish(),
  bos_per_window: z.boolean().default(false),
});

export const RuntimeConfig = strictObject({
  batch_size: positiveInt.default(8),
  python: nonEmpty.nullish(),
  /** Write a resumable checkpoint every this many windows; 0: never. */
  checkpoint_every: nonNegativeInt.default(0),
});

export const OutputConfig = strictObject({
  metrics: nonEmpty.nullish(),
});

/** The YAML document. `strategies` and `sweep` are checked by strategies.ts / sweep.ts. */
export const ConfigSchema = strictObject({
  models: z.array(ModelConfig).min(2, { error: (iss) => `at least 2 models are needed for a fusion, got ${Array.isArray(iss.input) ? iss.input.length : 0}` }),
  tokenizer: nonEmpty.nullish(),
  dataset: DatasetConfig,
  strategies: z.unknown().optional(),
  sweep: z.unknown().optional(),
  runtime: RuntimeConfig.nullish(),
  output: OutputConfig.nullish(),
});
export type ConfigInput = z.input<typeof ConfigSchema>;

// ---- the plan ---------------------------------------------------------------------

export interface RunPlan {
  /** Absolute path of the config file; null when the plan was built from flags. */
  configPath: string | null;
  models: ModelSpec[];
  tokenizer: string | null;
  dataset: { path: string; max_length: number; stride: number; bos_per_window: boolean };
  /** Explicit strategies, then the sweep; each distinct setting once. */
  settings: Setting[];
  sweep: Sweep | null;
  runtime: { batch_size: number; python: string | null; checkpoint_every: number };
  output: { metrics: string | null };
  /** Things worth telling the user that are not errors (e.g. settings evaluated once). */
  notes: string[];
  /** The config as parsed from YAML, for the metrics file. */
  raw: unknown;
}

export interface ParseOptions {
  /** Environment for KOTARA_PYTHON (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** The config file, for messages and RunPlan.configPath. */
  configPath?: string | null;
  /** Check that the dataset and local model directories exist (default true). */
  checkFiles?: boolean;
}

// The order of the top-level keys, for listing problems as they appear in a file.
const KEY_ORDER = ["(root)", "models", "tokenizer", "dataset", "strategies", "sweep", "runtime", "output"];

/** Parses one section; its problems go to `lines` under `key`. */
function section<S extends z.ZodType>(schema: S, value: unknown, key: string, lines: string[]): z.output<S> | null {
  const r = schema.safeParse(value, { error: errorMap });
  if (r.success) return r.data;
  lines.push(...issueLines(r.error, key));
  return null;
}

/**
 * Validates a parsed config object (from YAML, or built by the `eval` command) and
 * resolves it into a RunPlan. Relative paths resolve against `baseDir`. Each section
 * is checked on its own, so one bad section does not hide the problems of another.
 * @throws ConfigError with every problem as a `path: message` line.
 */
export function parseConfig(obj: unknown, baseDir: string, opts: ParseOptions = {}): RunPlan {
  const env = opts.env ?? process.env;
  const checkFiles = opts.checkFiles ?? true;
  const configPath = opts.configPath ? path.resolve(opts.configPath) : null;
  baseDir = path.resolve(baseDir);

  if (!isPlainObject(obj)) {
    const got = obj === null || obj === undefined ? "an empty document" : show(obj);
    throw new ConfigError([`(root): expected a mapping with models, dataset and strategies, got ${got}`], configPath ?? undefined);
  }

  const lines: string[] = [];
  const shape = ConfigSchema.shape;
  const allowed = Object.keys(shape);
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) lines.push(`${formatPath("", [key])}: unknown key; allowed: ${allowed.join(", ")}`);
  }

  // models
  const modelsIn = section(shape.models, obj.models, "models", lines);
  const nModels = Array.isArray(obj.models) ? obj.models.length : null;
  const models: ModelSpec[] = [];
  for (const [i, m] of (modelsIn ?? []).entries()) {
    const ref = resolveRef(m.ref, baseDir);
    if (checkFiles && ref.local && !isDirectory(ref.value)) {
      lines.push(`models[${i}].ref: local model directory not found: ${ref.value} (a Hub id has no leading ".", "/" or "~")`);
    }
    models.push({ ref: ref.value, revision: m.revision ?? null, trust_remote_code: m.trust_remote_code, dtype: m.dtype, device: m.device });
  }
  if (!modelsIn && Array.isArray(obj.models)) {
    // still check the refs of the entries, whatever else is wrong with them
    obj.models.forEach((m, i) => {
      if (!isPlainObject(m) || typeof m.ref !== "string" || !m.ref) return;
      const ref = resolveRef(m.ref, baseDir);
      if (checkFiles && ref.local && !isDirectory(ref.value)) lines.push(`models[${i}].ref: local model directory not found: ${ref.value}`);
    });
  }

  // tokenizer
  const tokenizerIn = section(shape.tokenizer, obj.tokenizer, "tokenizer", lines);
  let tokenizer: string | null = null;
  if (tokenizerIn) {
    const ref = resolveRef(tokenizerIn, baseDir);
    if (checkFiles && ref.local && !isDirectory(ref.value)) lines.push(`tokenizer: local tokenizer directory not found: ${ref.value}`);
    tokenizer = ref.value;
  }

  // dataset
  const datasetIn = section(shape.dataset, obj.dataset, "dataset", lines);
  let dataset: RunPlan["dataset"] | null = null;
  if (datasetIn) {
    const stride = datasetIn.stride ?? datasetIn.max_length;
    if (stride > datasetIn.max_length) lines.push(`dataset.stride: must be ≤ max_length (${datasetIn.max_length}), got ${stride}`);
    const datasetPath = resolvePath(datasetIn.path, baseDir);
    if (checkFiles) lines.push(...checkDataset(datasetPath).lines.map((m) => `dataset.path: ${m}`));
    dataset = { path: datasetPath, max_length: datasetIn.max_length, stride, bos_per_window: datasetIn.bos_per_window };
  } else if (isPlainObject(obj.dataset)) {
    // still check what can be checked
    const d = obj.dataset;
    const isPos = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) > 0;
    const maxLength = d.max_length === undefined ? 1024 : d.max_length;
    if (isPos(maxLength) && isPos(d.stride) && d.stride > maxLength) {
      lines.push(`dataset.stride: must be ≤ max_length (${maxLength}), got ${d.stride}`);
    }
    if (checkFiles && typeof d.path === "string" && d.path) {
      lines.push(...checkDataset(resolvePath(d.path, baseDir)).lines.map((m) => `dataset.path: ${m}`));
    }
  }

  // strategies and sweep
  const strategies = checkStrategies(obj.strategies, nModels);
  lines.push(...strategies.lines);
  const sweep = checkSweep(obj.sweep, nModels);
  lines.push(...sweep.lines);
  const noStrategies = obj.strategies === undefined || obj.strategies === null || (Array.isArray(obj.strategies) && obj.strategies.length === 0);
  if (noStrategies && (obj.sweep === undefined || obj.sweep === null)) {
    lines.push(`strategies: nothing to evaluate: list at least one strategy (${KNOWN_STRATEGIES.join(", ")}) or add a sweep`);
  }
  const notes: string[] = [];
  const explicit = strategies.value.map((e) => e.setting);
  const swept = sweep.value ? expandValidSweep(sweep.value) : [];
  const settings = dedupeSettings([...explicit, ...swept], (dropped, kept) => {
    if (dropped.id !== kept.id) notes.push(`"${dropped.id}" is the same setting as "${kept.id}"; evaluated once, as "${kept.id}"`);
  });
  // A sweep id that names a different explicit setting would make results ambiguous.
  const explicitIds = new Map(explicit.map((s, i) => [s.id, i]));
  const fromSweep = new Set(swept);
  for (const s of settings) {
    const i = explicitIds.get(s.id);
    if (fromSweep.has(s) && i !== undefined) {
      lines.push(`strategies[${i}]: its id "${s.id}" is also the id of a different setting of the sweep; rename it`);
    }
  }

  // runtime
  const runtimeIn = section(shape.runtime, obj.runtime, "runtime", lines);
  let python: string | null = null;
  if (env.KOTARA_PYTHON) {
    python = resolveCommand(env.KOTARA_PYTHON, process.cwd());
  } else if (runtimeIn?.python) {
    python = resolveCommand(runtimeIn.python, baseDir);
    if (checkFiles && path.isAbsolute(python) && !existsSync(python)) lines.push(`runtime.python: not found: ${python}`);
  }

  // output
  const outputIn = section(shape.output, obj.output, "output", lines);
  let metrics: string | null = null;
  if (outputIn?.metrics) {
    metrics = resolvePath(outputIn.metrics, baseDir);
    if (isDirectory(metrics)) lines.push(`output.metrics: is a directory, expected a file name like results/run.json: ${metrics}`);
  }

  if (lines.length > 0 || !modelsIn || !dataset) {
    throw new ConfigError(sortLines(lines), configPath ?? undefined);
  }
  return {
    configPath,
    models,
    tokenizer,
    dataset,
    settings,
    sweep: sweep.value,
    runtime: {
      batch_size: runtimeIn?.batch_size ?? 8,
      python,
      checkpoint_every: runtimeIn?.checkpoint_every ?? 0,
    },
    output: { metrics },
    notes,
    raw: obj,
  };
}

/** Problems in the order of the file: by top-level key, then by list index. */
function sortLines(lines: string[]): string[] {
  const rank = (line: string): [number, number] => {
    const key = /^[^.[:]*/.exec(line)?.[0] ?? "";
    const i = KEY_ORDER.indexOf(key);
    const index = /^[^.[:]*\[(\d+)\]/.exec(line);
    return [i < 0 ? -1 : i, index ? Number(index[1]) : -1];
  };
  return lines
    .map((l, i) => ({ l, i, r: rank(l) }))
    .sort((a, b) => a.r[0] - b.r[0] || a.r[1] - b.r[1] || a.i - b.i)
    .map((x) => x.l);
}

/**
 * Reads, parses (YAML core schema: no custom tags) and validates a config file.
 * @throws ConfigError: YAML problems as `line:column: message`, then schema problems.
 */
export async function loadConfig(file: string, opts: { env?: NodeJS.ProcessEnv; checkFiles?: boolean } = {}): Promise<RunPlan> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = await readFile(abs, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (err as Error).message;
    throw new ConfigError([`(file): cannot read the config: ${why}: ${abs}`], file);
  }
  const obj = parseYaml(text, file);
  return parseConfig(obj, path.dirname(abs), { ...opts, configPath: abs });
}

/** YAML text → plain data, rejecting syntax errors and any tag the core schema lacks. */
export function parseYaml(text: string, file?: string): unknown {
  const doc = YAML.parseDocument(text, { schema: "core", merge: false, uniqueKeys: true, prettyErrors: true });
  const problems = [...doc.errors, ...doc.warnings.filter((w) => w.code === "TAG_RESOLVE_FAILED")];
  if (problems.length > 0) {
    throw new ConfigError(
      problems.map((e) => {
        const pos = e.linePos?.[0];
        const where = pos ? `${pos.line}:${pos.col}` : "(yaml)";
        let msg = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
        if (e.code === "TAG_RESOLVE_FAILED") msg += " (custom YAML tags are not allowed)";
        return `${where}: ${msg}`;
      }),
      file,
    );
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError([`(yaml): ${(err as Error).message}`], file);
  }
}

// ---- paths ------------------------------------------------------------------------

function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? path.join(homedir(), p.slice(2)) : p;
}

/** A path from the config, absolute: `~` expanded, relative ones against `baseDir`. */
export function resolvePath(p: string, baseDir: string): string {
  return path.resolve(baseDir, expandHome(p));
}

/** A program: a bare name (`python3`) is looked up on PATH later; a path resolves. */
function resolveCommand(p: string, baseDir: string): string {
  return p.includes("/") || p.includes(path.sep) || p.startsWith("~") ? resolvePath(p, baseDir) : p;
}

/**
 * A model or tokenizer ref: a local directory when it starts with ".", "/" or "~",
 * or when that path exists relative to `baseDir`; otherwise a Hub id, kept as is.
 */
export function resolveRef(ref: string, baseDir: string): { local: boolean; value: string } {
  if (/^[./~]/.test(ref) || path.isAbsolute(ref)) return { local: true, value: resolvePath(ref, baseDir) };
  const candidate = path.resolve(baseDir, ref);
  if (existsSync(candidate)) return { local: true, value: candidate };
  return { local: false, value: ref };
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

// ---- the dataset file ---------------------------------------------------------------

export interface DatasetStats {
  /** UTF-8 bytes of the text (the file's size). */
  bytes: number;
  /** Whitespace-separated pieces of the text, as lm-evaluation-harness counts them. */
  words: number;
}

/** Words as lm-evaluation-harness counts them: the non-empty pieces of text.split(/\s+/). */
export function countWords(text: string): number {
  let n = 0;
  for (const piece of text.split(/\s+/)) if (piece.length > 0) n++;
  return n;
}

/**
 * Offset of the first byte of the first ill-formed UTF-8 sequence, or -1 when the
 * bytes are valid UTF-8 (the WHATWG decoder's rules: no overlongs, no surrogates,
 * nothing above U+10FFFF). TextDecoder says *whether*; this says *where*.
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return -1;
  } catch {
    // locate it below
  }
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined) return i; // truncated at the end of the file
      if (k === 1 ? c < lo || c > hi : c < 0x80 || c > 0xbf) return i;
    }
    i += need + 1;
  }
  return -1;
}

/**
 * Checks that a dataset file can be scored: exists, is a file, not empty, text (no
 * NUL bytes), valid UTF-8, at least two words. `lines` are messages without a path.
 */
export function checkDataset(file: string): Checked<DatasetStats | null> {
  let st;
  try {
    st = statSync(file);
  } catch {
    return { value: null, lines: [`file not found: ${file}`] };
  }
  if (st.isDirectory()) return { value: null, lines: [`is a directory, expected a UTF-8 text file: ${file}`] };
  if (!st.isFile()) return { value: null, lines: [`not a regular file: ${file}`] };
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    return { value: null, lines: [`cannot read ${file}: ${(err as Error).message}`] };
  }
  if (bytes.length === 0) return { value: null, lines: [`file is empty: ${file}`] };
  const nul = bytes.indexOf(0);
  if (nul >= 0) return { value: null, lines: [`looks like a binary file (NUL byte at offset ${nul}), expected UTF-8 text: ${file}`] };
  const bad = firstInvalidUtf8(bytes);
  if (bad >= 0) {
    const hex = bytes[bad].toString(16).padStart(2, "0");
    return { value: null, lines: [`not valid UTF-8: first bad byte 0x${hex} at offset ${bad}: ${file}`] };
  }
  const words = countWords(new TextDecoder("utf-8").decode(bytes));
  if (words < 2) {
    return { value: null, lines: [`too short to score: ${words} word${words === 1 ? "" : "s"}; at least 2 are needed: ${file}`] };
  }
  return { value: { bytes: bytes.length, words }, lines: [] };
}

/**
 * Bytes and words of a dataset file (the denominators of bits per byte and word
 * perplexity). @throws ConfigError (`dataset.path: …`) when the file cannot be scored.
 */
export function datasetStats(file: string): DatasetStats {
  const r = checkDataset(file);
  if (!r.value) throw new ConfigError(r.lines.map((m) => `dataset.path: ${m}`));
  return r.value;
}
