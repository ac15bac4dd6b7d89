// Where fusion strategies are DECLARED: one zod schema per type with its parameters
// and their defaults, an explicit registry, and the rules that turn the entries of a
// config's `strategies:` list into fully resolved wire `Setting`s (protocol.ts).
// Where they RUN: python/kotara_worker/fusion.py (SPEC §3).
//
// A config entry is either a bare name, meaning all defaults:
//     - entropy
// or a mapping:
//     - { id: sharp-gap, type: gap, temperatures: [0.7, 0.7] }
//     - { type: poe, temperatures: [1, 1], betas: [0.8, 0.2] }
//
// The bottom of this file holds the small validation helpers (zod issues → "path:
// message" lines) that config.ts and sweep.ts share.
import { z } from "zod";
import { ConfigError } from "./errors.js";
import { Setting, StrategyType } from "./protocol.js";

// ---- parameters -------------------------------------------------------------------

/** One model's temperature: logits are divided by it before the fusion. */
export const Temperature = z.number().gt(0, { error: (iss) => `a temperature must be > 0, got ${show(iss.input)}` });

/** One model's PoE exponent β_m (f = Σ β_m log p_m). */
export const Beta = z.number().min(0, { error: (iss) => `a beta must be ≥ 0, got ${show(iss.input)}` });

/** An explicit setting id, as it appears in reports and metrics. */
export const SettingIdSchema = z
  .string()
  .min(1, { error: "must not be empty" })
  .max(120, { error: "must be at most 120 characters" })
  .refine((s) => s.trim() === s && !/[\u0000-\u001f\u007f]/.test(s), {
    error: "must not contain control characters or leading/trailing spaces",
  });

const TemperatureList = z.array(Temperature).min(1, { error: "must list one temperature per model" });
const BetaList = z.array(Beta).min(1, { error: "must list one beta per model" });

// ---- one schema per type ----------------------------------------------------------

export const AverageStrategy = strictObject({
  id: SettingIdSchema.optional(),
  type: z.literal("average"),
  temperatures: TemperatureList.optional(),
});
export const PoeStrategy = strictObject({
  id: SettingIdSchema.optional(),
  type: z.literal("poe"),
  temperatures: TemperatureList.optional(),
  betas: BetaList.optional(),
});
export const EntropyStrategy = strictObject({
  id: SettingIdSchema.optional(),
  type: z.literal("entropy"),
  temperatures: TemperatureList.optional(),
});
export const GapStrategy = strictObject({
  id: SettingIdSchema.optional(),
  type: z.literal("gap"),
  temperatures: TemperatureList.optional(),
});

/** The mapping form of a `strategies:` entry (the bare-name form is just a known name). */
export const StrategyEntryObject = z.discriminatedUnion("type", [AverageStrategy, PoeStrategy, EntropyStrategy, GapStrategy]);
export type StrategyEntryObject = z.infer<typeof StrategyEntryObject>;
/** An entry of the config's `strategies:` list. */
export type StrategyEntry = StrategyType | StrategyEntryObject;

// ---- the registry -----------------------------------------------------------------

export interface StrategyDeclaration {
  readonly type: StrategyType;
  /** One line for help texts and docs: what the fused logits f are. */
  readonly summary: string;
  /** The schema of the mapping form. */
  readonly schema: z.ZodType;
  /** Betas the type takes when none are given, or null for types without betas. */
  readonly defaultBetas: (nModels: number) => number[] | null;
}

const noBetas = (_nModels: number): null => null;

/** Every strategy Kotara knows, in the order reports and help list them. */
export const STRATEGIES = {
  average: {
    type: "average",
    summary: "f = Σ y_m / N: the plain mean of the tempered logits",
    schema: AverageStrategy,
    defaultBetas: noBetas,
  },
  poe: {
    type: "poe",
    summary: "f = Σ β_m log p_m: product of experts (β default 1/N each; normalized by the softmax)",
    schema: PoeStrategy,
    defaultBetas: (n) => Array.from({ length: n }, () => 1 / n),
  },
  entropy: {
    type: "entropy",
    summary: "f = Σ α_m y_m, α_m ∝ 1 / H(p_m): confident (low-entropy) models weigh more",
    schema: EntropyStrategy,
    defaultBetas: noBetas,
  },
  gap: {
    type: "gap",
    summary: "f = Σ α_m y_m, α_m ∝ p_m(top-1) − p_m(top-2): decisive models weigh more",
    schema: GapStrategy,
    defaultBetas: noBetas,
  },
} as const satisfies { readonly [K in StrategyType]: StrategyDeclaration & { readonly type: K } };

export const KNOWN_STRATEGIES: readonly StrategyType[] = Object.keys(STRATEGIES) as StrategyType[];

export function isKnownStrategy(name: unknown): name is StrategyType {
  return typeof name === "string" && Object.hasOwn(STRATEGIES, name);
}

/** `unknown strategy "foo"; known: average, poe, entropy, gap` */
export function unknownStrategyMessage(name: unknown): string {
  return `unknown strategy ${show(name)}; known: ${KNOWN_STRATEGIES.join(", ")}`;
}

// ---- ids --------------------------------------------------------------------------

/** Shortest round-trip decimal, no trailing zeros: 1 → "1", 0.85 → "0.85". */
export function formatNumber(x: number): string {
  return Object.is(x, -0) ? "0" : String(x);
}

export function defaultTemperatures(nModels: number): number[] {
  return Array.from({ length: nModels }, () => 1);
}

function sameNumbers(a: readonly number[] | null, b: readonly number[] | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** True when the betas are the type's defaults for this many models (or both absent). */
export function hasDefaultBetas(setting: Pick<Setting, "type" | "temperatures" | "betas">): boolean {
  return sameNumbers(setting.betas, STRATEGIES[setting.type].defaultBetas(setting.temperatures.length));
}

export interface SettingIdOptions {
  /** Always say the temperatures (sweeps do: `entropy@t=1,1`). */
  temperatures?: boolean;
  /** Always say the betas when the type has them (sweeps over betas do). */
  betas?: boolean;
}

/**
 * The default id of a setting: the bare type when every parameter is a default
 * (`entropy`), else the type and its parameters: `entropy@t=0.85,1.1`,
 * `poe@t=1,1;b=0.8,0.2`. Distinct settings get distinct default ids.
 */
export function settingId(setting: Pick<Setting, "type" | "temperatures" | "betas">, opts: SettingIdOptions = {}): string {
  const defaultT = setting.temperatures.every((t) => t === 1);
  const defaultB = hasDefaultBetas(setting);
  const showB = setting.betas !== null && (!defaultB || opts.betas === true);
  if (defaultT && !showB && opts.temperatures !== true) return setting.type;
  const parts = [`t=${setting.temperatures.map(formatNumber).join(",")}`];
  if (showB) parts.push(`b=${setting.betas!.map(formatNumber).join(",")}`);
  return `${setting.type}@${parts.join(";")}`;
}

/** What makes two settings the same computation, whatever their ids. */
export function settingKey(setting: Pick<Setting, "type" | "temperatures" | "betas">): string {
  const t = setting.temperatures.map(formatNumber).join(",");
  const b = setting.betas === null ? "-" : setting.betas.map(formatNumber).join(",");
  return `${setting.type}|${t}|${b}`;
}

// ---- resolution -------------------------------------------------------------------

export interface Checked<T> {
  value: T;
  /** `path: message` lines; empty when the input is valid. */
  lines: string[];
}

/** A setting resolved from the entry at `path`, with whether its id was given. */
export interface ResolvedEntry {
  setting: Setting;
  path: string;
  explicitId: boolean;
}

/**
 * Validates one `strategies:` entry and fills its defaults. `nModels` null: the
 * number of models is unknown (the models list itself is invalid), so the
 * one-value-per-model checks are skipped.
 */
export function checkStrategyEntry(entry: unknown, nModels: number | null, path: string): Checked<ResolvedEntry | null> {
  let obj: Record<string, unknown>;
  if (typeof entry === "string") {
    if (!isKnownStrategy(entry)) return fail(`${path}: ${unknownStrategyMessage(entry)}`);
    obj = { type: entry };
  } else if (isPlainObject(entry)) {
    obj = entry;
    if (!("type" in obj) || obj.type === null || obj.type === undefined) {
      return fail(`${path}.type: required; one of: ${KNOWN_STRATEGIES.join(", ")}`);
    }
    if (typeof obj.type !== "string") {
      return fail(`${path}.type: expected a strategy name (${KNOWN_STRATEGIES.join(", ")}), got ${show(obj.type)}`);
    }
    if (!isKnownStrategy(obj.type)) return fail(`${path}: ${unknownStrategyMessage(obj.type)}`);
  } else {
    return fail(`${path}: expected a strategy name or a mapping like { type: entropy, temperatures: [1, 1] }, got ${show(entry)}`);
  }

  const decl = STRATEGIES[obj.type as StrategyType];
  const parsed = decl.schema.safeParse(obj, { error: errorMap });
  if (!parsed.success) return { value: null, lines: issueLines(parsed.error, path) };
  const data = parsed.data as { id?: string; type: StrategyType; temperatures?: number[]; betas?: number[] };

  const lines: string[] = [];
  const n = nModels ?? data.temperatures?.length ?? data.betas?.length ?? 2;
  if (nModels !== null) {
    for (const key of ["temperatures", "betas"] as const) {
      const list = data[key];
      if (list && list.length !== nModels) {
        lines.push(`${path}.${key}: expected ${nModels} values (one per model), got ${list.length}`);
      }
    }
  }
  if (data.betas && data.betas.length > 0 && data.betas.every((b) => b === 0)) {
    lines.push(`${path}.betas: at least one beta must be > 0`);
  }
  if (lines.length > 0) return { value: null, lines };

  const temperatures = data.temperatures ?? defaultTemperatures(n);
  const betas = data.betas ?? decl.defaultBetas(n);
  const setting: Setting = { id: "", type: data.type, temperatures, betas };
  setting.id = data.id ?? settingId(setting);
  return { value: { setting, path, explicitId: data.id !== undefined }, lines: [] };
}

/**
 * Validates a whole `strategies:` list: every entry (all problems, not the first),
 * then the ids, which must be unique among the listed strategies.
 */
export function checkStrategies(entries: unknown, nModels: number | null, path = "strategies"): Checked<ResolvedEntry[]> {
  if (entries === undefined || entries === null) return { value: [], lines: [] };
  if (!Array.isArray(entries)) {
    return { value: [], lines: [`${path}: expected a list of strategies (e.g. [entropy, poe]), got ${show(entries)}`] };
  }
  const lines: string[] = [];
  const resolved: ResolvedEntry[] = [];
  entries.forEach((entry, i) => {
    const r = checkStrategyEntry(entry, nModels, `${path}[${i}]`);
    lines.push(...r.lines);
    if (r.value) resolved.push(r.value);
  });
  const seen = new Map<string, ResolvedEntry>();
  for (const r of resolved) {
    const first = seen.get(r.setting.id);
    if (!first) {
      seen.set(r.setting.id, r);
      continue;
    }
    const same = settingKey(first.setting) === settingKey(r.setting);
    const where = r.explicitId ? `${r.path}.id` : r.path;
    lines.push(
      `${where}: duplicate id "${r.setting.id}" (also ${first.path})` +
        (same ? "; the two entries are the same setting, list it once" : "; give each an explicit, distinct id"),
    );
  }
  return { value: resolved, lines };
}

/**
 * Resolves a `strategies:` list into wire settings, filling the defaults:
 * temperatures 1 for every model; poe betas 1/N each, other types null.
 * @throws ConfigError with one `strategies[i]…: message` line per problem.
 */
export function resolveStrategies(entries: readonly unknown[], nModels: number): Setting[] {
  const r = checkStrategies(entries, nModels);
  if (r.lines.length > 0) throw new ConfigError(r.lines);
  return r.value.map((e) => e.setting);
}

// ---- validation helpers shared with config.ts and sweep.ts --------------------------

/**
 * `z.strictObject` whose unknown-key issue lists the keys allowed there; the
 * issue lines then read `dataset.srtide: unknown key; allowed: path, max_length, …`.
 */
export function strictObject<T extends z.core.$ZodLooseShape>(shape: T) {
  const allowed = Object.keys(shape).join(", ");
  return z.strictObject(shape, {
    error: (iss) => (iss.code === "unrecognized_keys" ? `unknown key; allowed: ${allowed}` : undefined),
  });
}

/** A short, quoted rendering of a user's value for messages. */
export function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? value.slice(0, 57) + "..." : value);
  if (typeof value === "number") return Number.isNaN(value) ? "NaN" : String(value);
  if (typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (Array.isArray(value)) return `a list (${value.length} item${value.length === 1 ? "" : "s"})`;
  if (typeof value === "object") return "a mapping";
  return typeof value;
}

const TYPE_WORDS: Record<string, string> = {
  number: "a number",
  int: "an integer",
  string: "a string",
  boolean: "true or false",
  object: "a mapping",
  array: "a list",
  null: "null",
};

/** Error map passed to every `safeParse` of user input: plain-English messages. */
export const errorMap: z.core.$ZodErrorMap = (iss) => {
  const input = iss.input;
  switch (iss.code) {
    case "invalid_type": {
      if (input === undefined) return `required (${TYPE_WORDS[iss.expected] ?? iss.expected})`;
      if (typeof input === "number" && (iss.expected === "number" || iss.expected === "int")) {
        if (!Number.isFinite(input)) return `must be a finite number, got ${show(input)}`;
        if (iss.expected === "int") return `must be an integer, got ${show(input)}`;
      }
      return `expected ${TYPE_WORDS[iss.expected] ?? iss.expected}, got ${show(input)}`;
    }
    case "too_small": {
      const min = Number(iss.minimum);
      if (iss.origin === "array") return `must have at least ${min} item${min === 1 ? "" : "s"}`;
      if (iss.origin === "string") return "must not be empty";
      return `must be ${iss.inclusive ? "≥" : ">"} ${min}, got ${show(input)}`;
    }
    case "too_big": {
      const max = Number(iss.maximum);
      if (iss.origin === "array") return `must have at most ${max} item${max === 1 ? "" : "s"}`;
      if (iss.origin === "string") return `must be at most ${max} characters`;
      return `must be ${iss.inclusive ? "≤" : "<"} ${max}, got ${show(input)}`;
    }
    case "invalid_value":
      return `must be ${iss.values.length === 1 ? show(iss.values[0]) : `one of: ${iss.values.map((v) => String(v)).join(", ")}`}, got ${show(input)}`;
    case "unrecognized_keys":
      return "unknown key";
    default:
      return undefined;
  }
};

/** `a.b[0].c`; keys that are not plain identifiers are quoted: `a["odd key"]`. */
export function formatPath(base: string, path: readonly PropertyKey[]): string {
  let out = base;
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && /^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out || "(root)";
}

/** zod issues → `path: message` lines (one line per unknown key). */
export function issueLines(error: z.ZodError, base = ""): string[] {
  const lines: string[] = [];
  for (const iss of error.issues) {
    if (iss.code === "unrecognized_keys") {
      for (const key of iss.keys) lines.push(`${formatPath(base, [...iss.path, key])}: ${iss.message}`);
    } else {
      lines.push(`${formatPath(base, iss.path)}: ${iss.message}`);
    }
  }
  return lines;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function fail(line: string): Checked<null> {
  return { value: null, lines: [line] };
}

// The registry and the wire enum must name the same strategies.
const wire = [...StrategyType.options].sort().join();
if ([...KNOWN_STRATEGIES].sort().join() !== wire) {
  throw new Error(`strategies.ts registry (${KNOWN_STRATEGIES.join()}) differs from protocol StrategyType (${wire})`);
}
