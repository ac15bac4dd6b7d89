// A config document → a RunPlan: everything a run needs, checked and resolved once,
// before any worker starts; every problem is reported at once as a `path: message`
// line (ConfigError):
//
//   invalid config configs/x.yaml:
//     dataset.stride: must be ≤ max_length (1024), got 2048
//     strategies[1]: unknown strategy "foo"; known: average, poe, entropy, gap
//
// The plan then flows one way: commands/run.ts hands its settings, sweep and text
// statistics to the session, the session to the worker and to the metrics.
import type { WorkerSpec } from "./pool.js";
import { existsSync } from "node:fs";
import path from "node:path";
import type { z } from "zod";
import { ConfigSchema, KEY_ORDER } from "./config-schema.js";
import { datasetStats, documentFields, documentOptions, scanDocuments, type DatasetStats } from "./dataset.js";
import { type DatasetSource, exportPath } from "./dataset-export.js";
import { DEFAULTS } from "./defaults.js";
import { ConfigError } from "./errors.js";
import type { EvaluationRequest } from "./metrics.js";
import { isDirectory, resolveCommand, resolvePath, resolveRef } from "./paths.js";
import type { BootstrapOptions } from "./bootstrap.js";
import type { ByteOptions, DatasetSpec, ModelSpec, PositionsRequest, Setting } from "./protocol.js";
import { KNOWN_STRATEGIES, checkStrategies, dedupeSettings } from "./strategies.js";
import { defaultViewSettings, resolveViewSettings } from "./token-view.js";
import { type Sweep, checkSweep, expandValidSweep } from "./sweep.js";
import { errorMap, formatPath, isPlainObject, issueLines, show } from "./validation.js";

export interface RunPlan {
  /** Absolute path of the config file; null when the plan was built from flags. */
  configPath: string | null;
  /** tokens | bytes | auto (the worker resolves auto: tokens when every vocabulary agrees). */
  space: "tokens" | "bytes" | "auto";
  /** Byte space: beam width and relative pruning of each model's byte LM. */
  bytes: ByteOptions;
  models: ModelSpec[];
  tokenizer: string | null;
  /** In byte space max_length and stride count bytes. With a source, path is its export (not written yet). */
  dataset: DatasetSpec;
  /** A parquet file or a Hugging Face dataset that the worker's Python exports to dataset.path
   * (dataset.ts exportDataset) before the run; null for a text or .jsonl file, read as it is. */
  source: DatasetSource | null;
  /** Bytes, words and hash of dataset.path; null when the plan was made without checking files
   * (or before a source is exported). */
  text: DatasetStats | null;
  /** Explicit strategies, then the sweep; each distinct setting once. */
  settings: Setting[];
  sweep: Sweep | null;
  /** `python`: the config's runtime.python, resolved; python-env.ts decides what runs. */
  runtime: { batch_size: number; python: string | null; checkpoint_every: number; workers: WorkerSpec[] | null };
  output: { metrics: string | null };
  /**
   * How the report's paired intervals are drawn (report.bootstrap); whether to write the
   * HTML report, and what its token view asks of the worker (null: no token view).
   */
  report: { bootstrap: BootstrapOptions; html: boolean; token_view: PositionsRequest | null };
  /** Things worth telling the user that are not errors (e.g. settings evaluated once). */
  notes: string[];
  /** The config as parsed from YAML, for the metrics file. */
  raw: unknown;
}

export interface ParseOptions {
  /** The config file, for messages and RunPlan.configPath. */
  configPath?: string | null;
  /** Check that the dataset and local model directories exist (default true). */
  checkFiles?: boolean;
}

/** What every step reads, and where it puts its problems. */
interface Ctx {
  baseDir: string;
  checkFiles: boolean;
  lines: string[];
}

/**
 * Validates a parsed config object (from YAML, or built by the `eval` command) and
 * resolves it into a RunPlan. Relative paths resolve against `baseDir`. Each section
 * is checked on its own, so one bad section does not hide the problems of another.
 * @throws ConfigError with every problem as a `path: message` line.
 */
export function parseConfig(obj: unknown, baseDir: string, opts: ParseOptions = {}): RunPlan {
  const configPath = opts.configPath ? path.resolve(opts.configPath) : null;
  if (!isPlainObject(obj)) {
    const got = obj === null || obj === undefined ? "an empty document" : show(obj);
    throw new ConfigError([`(root): expected a mapping with models, dataset and strategies, got ${got}`], configPath ?? undefined);
  }
  const ctx: Ctx = { baseDir: path.resolve(baseDir), checkFiles: opts.checkFiles ?? true, lines: [] };
  const allowed = Object.keys(ConfigSchema.shape);
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) ctx.lines.push(`${formatPath("", [key])}: unknown key; allowed: ${allowed.join(", ")}`);
  }
  const space = section(ConfigSchema.shape.space, obj.space, "space", ctx) ?? DEFAULTS.space;
  const bytes = section(ConfigSchema.shape.bytes, obj.bytes, "bytes", ctx) ?? { beam: DEFAULTS.beam, prune: DEFAULTS.prune };
  const models = planModels(obj.models, ctx);
  const tokenizer = planTokenizer(obj.tokenizer, ctx);
  const data = planDataset(obj.dataset, ctx, space);
  const nModels = Array.isArray(obj.models) ? obj.models.length : null;
  const before = ctx.lines.length;
  const { settings, sweep, notes, aliases } = planStrategies(obj.strategies, obj.sweep, nModels, ctx);
  const strategiesOk = ctx.lines.length === before;
  const runtime = planRuntime(obj.runtime, ctx);
  const output = planOutput(obj.output, ctx);
  const report = planReport(obj.report, ctx, strategiesOk ? { settings, aliases } : null);
  if (ctx.lines.length > 0 || !models || !data) throw new ConfigError(sortLines(ctx.lines), configPath ?? undefined);
  return {
    configPath, space, bytes, models, tokenizer, dataset: data.dataset, source: data.source, text: data.text, settings, sweep, runtime, output, report, notes, raw: obj,
  };
}

/** Parses one section; its problems go to `ctx.lines` under `key`. */
function section<S extends z.ZodType>(schema: S, value: unknown, key: string, ctx: Ctx): z.output<S> | null {
  const r = schema.safeParse(value, { error: errorMap });
  if (r.success) return r.data;
  ctx.lines.push(...issueLines(r.error, key));
  return null;
}

function localDirMissing(ref: string, ctx: Ctx): string | null {
  const r = resolveRef(ref, ctx.baseDir);
  return ctx.checkFiles && r.local && !isDirectory(r.value) ? r.value : null;
}

function planModels(raw: unknown, ctx: Ctx): ModelSpec[] | null {
  const models = section(ConfigSchema.shape.models, raw, "models", ctx);
  // the refs are checked whatever else is wrong with the entries
  if (Array.isArray(raw)) {
    raw.forEach((m, i) => {
      if (!isPlainObject(m) || typeof m.ref !== "string" || !m.ref) return;
      const missing = localDirMissing(m.ref, ctx);
      if (missing) ctx.lines.push(`models[${i}].ref: local model directory not found: ${missing} (a Hub id has no leading ".", "/" or "~")`);
    });
  }
  return models?.map((m) => ({
    ref: resolveRef(m.ref, ctx.baseDir).value, revision: m.revision ?? null, trust_remote_code: m.trust_remote_code, dtype: m.dtype, device: m.device,
    ...(m.device_map != null ? { device_map: m.device_map } : {}),
    ...(m.max_memory != null ? { max_memory: m.max_memory } : {}),
  })) ?? null;
}

function planTokenizer(raw: unknown, ctx: Ctx): string | null {
  const tokenizer = section(ConfigSchema.shape.tokenizer, raw, "tokenizer", ctx);
  if (!tokenizer) return null;
  const missing = localDirMissing(tokenizer, ctx);
  if (missing) ctx.lines.push(`tokenizer: local tokenizer directory not found: ${missing}`);
  return resolveRef(tokenizer, ctx.baseDir).value;
}

/** The windows, where the text comes from, and the text read once (checked, counted, hashed). */
function planDataset(raw: unknown, ctx: Ctx, space: string): { dataset: DatasetSpec; source: DatasetSource | null; text: DatasetStats | null } | null {
  const d = section(ConfigSchema.shape.dataset, raw, "dataset", ctx);
  // still check what can be checked of a section that failed
  const partial = isPlainObject(raw) ? raw : {};
  const isPos = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) > 0;
  const str = (x: unknown): string | null => (typeof x === "string" && x ? x : null);
  const maxLength = d?.max_length ?? (partial.max_length === undefined ? DEFAULTS.max_length : partial.max_length);
  const stride = d ? (d.stride ?? d.max_length) : partial.stride;
  const mode = d?.mode ?? partial.mode ?? "stream";
  if (isPos(maxLength) && isPos(stride) && stride > maxLength) ctx.lines.push(`dataset.stride: must be ≤ max_length (${maxLength}), got ${stride}`);
  const file = d ? d.path ?? null : str(partial.path);
  const hf = d ? d.hf ?? null : str(partial.hf);
  const field = d ? d.field ?? null : str(partial.field);
  const lines: string[] = [];
  if (isPlainObject(raw)) {
    if (file === null && hf === null && raw.path == null && raw.hf == null) {
      lines.push("dataset: give path (a text, .jsonl or .parquet file) or hf (a Hugging Face dataset)");
    }
    if (file !== null && hf !== null) lines.push("dataset.hf: give path or hf, not both");
    for (const k of ["name", "split", "revision"]) {
      if (hf === null && partial[k] != null) lines.push(`dataset.${k}: only for a Hugging Face dataset (hf)`);
    }
    const ext = file ? path.extname(file).toLowerCase() : "";
    const kind = ext === ".jsonl" ? "a .jsonl file" : ext === ".parquet" ? "a .parquet file" : null;
    if (file !== null && hf === null && kind && field === null) lines.push(`dataset.field: ${kind} needs field: the key that holds each document's text (e.g. text)`);
    if (file !== null && hf === null && !kind && field !== null) lines.push(`dataset.field: only for .jsonl, .parquet and hf datasets; ${file} is read as plain text`);
    if (hf !== null && field === null) lines.push("dataset.field: an hf dataset needs field: the column that holds each document's text (e.g. text)");
    if (mode === "documents") {
      if (partial.bos_per_window === true) lines.push("dataset.bos_per_window: does not apply to mode documents (every document starts with the start token, as in lm-eval)");
      if (partial.stride != null && isPos(maxLength) && partial.stride !== maxLength) {
        lines.push(`dataset.stride: mode documents has no stride (lm-eval's rolling windows are disjoint windows of max_length); leave it out, got ${show(partial.stride)}`);
      }
      if (space === "bytes") lines.push("dataset.mode: documents is for token space (lm-eval's windows count tokens); space is bytes");
    }
  }
  ctx.lines.push(...lines);
  if (!d || lines.length > 0) return null;
  const ext = d.path ? path.extname(d.path).toLowerCase() : "";
  let source: DatasetSource | null = null;
  let dataPath: string;
  if (d.hf) {
    const local = resolveRef(d.hf, ctx.baseDir);
    source = { hf: local.value, name: d.name ?? null, split: d.split ?? "test", revision: d.revision ?? null, field: d.field! };
    if (ctx.checkFiles && local.local && !isDirectory(local.value)) ctx.lines.push(`dataset.hf: local dataset directory not found: ${local.value}`);
  } else if (ext === ".parquet") {
    source = { path: resolvePath(d.path!, ctx.baseDir), field: d.field! };
  }
  if (source) dataPath = exportPath(source);
  else dataPath = resolvePath(d.path!, ctx.baseDir);
  const dataset: DatasetSpec = {
    path: dataPath, max_length: d.max_length, stride: d.mode === "documents" ? d.max_length : d.stride ?? d.max_length, bos_per_window: d.bos_per_window,
    ...documentFields({ field: source ? "text" : ext === ".jsonl" ? d.field! : null, mode: d.mode, separator: d.separator }),
  };
  let text: DatasetStats | null = null;
  if (ctx.checkFiles) {
    if (source && "path" in source && !existsSync(source.path)) ctx.lines.push(`dataset.path: file not found: ${source.path}`);
    if (!source) {
      const scan = scanDocuments(dataPath, documentOptions(dataset));
      ctx.lines.push(...scan.lines.map((m) => `dataset.path: ${m}`));
      text = scan.value;
    }
  }
  return { dataset, source, text };
}

/** The explicit strategies, then the sweep's grid; each distinct setting once. */
function planStrategies(rawStrategies: unknown, rawSweep: unknown, nModels: number | null, ctx: Ctx) {
  const strategies = checkStrategies(rawStrategies, nModels);
  const sweep = checkSweep(rawSweep, nModels);
  ctx.lines.push(...strategies.lines, ...sweep.lines);
  const none = (x: unknown) => x === undefined || x === null || (Array.isArray(x) && x.length === 0);
  if (none(rawStrategies) && (rawSweep === undefined || rawSweep === null)) {
    ctx.lines.push(`strategies: nothing to evaluate: list at least one strategy (${KNOWN_STRATEGIES.join(", ")}) or add a sweep`);
  }
  const notes: string[] = [];
  const aliases = new Map<string, string>();
  const explicit = strategies.value.map((e) => e.setting);
  const swept = sweep.value ? expandValidSweep(sweep.value) : [];
  const settings = dedupeSettings([...explicit, ...swept], (dropped, kept) => {
    if (dropped.id !== kept.id) {
      notes.push(`"${dropped.id}" is the same setting as "${kept.id}"; evaluated once, as "${kept.id}"`);
      aliases.set(dropped.id, kept.id);
    }
  });
  // A sweep id that names a different explicit setting would make results ambiguous.
  const explicitIds = new Map(explicit.map((s, i) => [s.id, i]));
  const fromSweep = new Set(swept);
  for (const s of settings) {
    const i = explicitIds.get(s.id);
    if (fromSweep.has(s) && i !== undefined) ctx.lines.push(`strategies[${i}]: its id "${s.id}" is also the id of a different setting of the sweep; rename it`);
  }
  return { settings, sweep: sweep.value, notes, aliases };
}

function planRuntime(raw: unknown, ctx: Ctx): RunPlan["runtime"] {
  const r = section(ConfigSchema.shape.runtime, raw, "runtime", ctx);
  let python: string | null = null;
  if (r?.python) {
    python = resolveCommand(r.python, ctx.baseDir);
    if (ctx.checkFiles && path.isAbsolute(python) && !existsSync(python)) ctx.lines.push(`runtime.python: not found: ${python}`);
  }
  // a remote worker's key file, as every path of a config, from the config's folder
  const workers = r?.workers?.map((w) => ("connect" in w ? { ...w, key_file: resolvePath(w.key_file, ctx.baseDir) } : w)) ?? null;
  workers?.forEach((w, i) => {
    if ("connect" in w && ctx.checkFiles && !existsSync(w.key_file)) ctx.lines.push(`runtime.workers[${i}].key_file: not found: ${w.key_file} (make one with kotara keygen)`);
  });
  return { batch_size: r?.batch_size ?? DEFAULTS.batch_size, python, checkpoint_every: r?.checkpoint_every ?? DEFAULTS.checkpoint_every, workers };
}

function planOutput(raw: unknown, ctx: Ctx): RunPlan["output"] {
  const o = section(ConfigSchema.shape.output, raw, "output", ctx);
  if (!o?.metrics) return { metrics: null };
  const metrics = resolvePath(o.metrics, ctx.baseDir);
  if (isDirectory(metrics)) ctx.lines.push(`output.metrics: is a directory, expected a file name like results/run.json: ${metrics}`);
  return { metrics };
}

/**
 * report: the intervals, the HTML report, and its token view: the fusions it shows
 * (checked against the run's settings when those are valid) and the bytes it covers.
 */
function planReport(raw: unknown, ctx: Ctx, run: { settings: readonly Setting[]; aliases: ReadonlyMap<string, string> } | null): RunPlan["report"] {
  const r = section(ConfigSchema.shape.report, raw, "report", ctx);
  const b = r?.bootstrap;
  const bootstrap = { ...DEFAULTS.bootstrap, ...(b ? { resamples: b.resamples, seed: b.seed, block_length: b.block_length ?? null } : {}) };
  const html = r?.html ?? DEFAULTS.report_html;
  const bytes = r?.token_view_bytes ?? DEFAULTS.token_view_bytes;
  let chosen: number[] = [];
  if (run) {
    if (r?.token_view_settings) {
      const resolved = resolveViewSettings(r.token_view_settings, run.settings, run.aliases);
      ctx.lines.push(...resolved.lines.map((l) => `report.token_view_settings${l}`));
      chosen = resolved.value;
    } else {
      chosen = defaultViewSettings(run.settings);
    }
  }
  return { bootstrap, html, token_view: html && bytes > 0 && chosen.length ? { settings: chosen, bytes } : null };
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

/** The evaluation a plan asks for, as the session runs it (the text read now if the plan did not). */
export function planRequest(plan: RunPlan): EvaluationRequest {
  return {
    dataset: plan.dataset,
    text: plan.text ?? datasetStats(plan.dataset.path, documentOptions(plan.dataset)),
    settings: plan.settings,
    sweep: plan.sweep,
    batchSize: plan.runtime.batch_size,
    config: plan.raw,
    bootstrap: plan.report.bootstrap,
    positions: plan.report.token_view,
  };
}
