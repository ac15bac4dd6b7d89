// Where fusion strategies are DECLARED: each strategy names the per-model lists it
// takes and their defaults, in one explicit registry; the config schema of every
// `strategies:` entry, the sweep grids, the ids, the wire Setting (protocol.ts) and
// the CSV columns are all derived from it. Where they RUN:
// python/kotara_worker/fusion.py (SPEC §3), whose registry names the same lists.
//
// Adding a strategy whose parameters are of kinds already declared below (a
// temperature per model, a beta per model, a mixture weight per model, …) is one
// entry in STRATEGIES here and one in fusion.py's registry; a new KIND of per-model
// list is one entry in LIST_PARAMS (and one in fusion.py's LIST_CHECKS).
//
// A config entry is either a bare name, meaning all defaults:
//     - entropy
// or a mapping:
//     - { id: sharp-gap, type: gap, temperatures: [0.7, 0.7] }
//     - { type: poe, temperatures: [1, 1], betas: [0.8, 0.2] }
//     - { type: mix, weights: [0.7, 0.3] }
import { z } from "zod";
import { ConfigError } from "./errors.js";
import type { Setting } from "./protocol.js";
import { type Checked, errorMap, isPlainObject, issueLines, show, strictObject } from "./validation.js";

// ---- the kinds of parameter -----------------------------------------------------------

/** One model's temperature: logits are divided by it before the fusion. Every strategy takes one per model. */
export const Temperature = z.number().gt(0, { error: (iss) => `a temperature must be > 0, got ${show(iss.input)}` });

/**
 * The per-model lists a strategy may take besides its temperatures. Each is a field of
 * the wire Setting (null for the types that do not take it), a column of the CSV, and
 * a grid a sweep may span. `letter` names it in ids (`poe@t=1,1;b=0.8,0.2`); `problem`
 * rejects a list that is valid value by value but not as a whole (sweeps skip those
 * combinations); `normalized`: the worker scales the list to sum 1, so lists that are
 * multiples of each other ([1, 3] and [0.25, 0.75]) are the same setting, evaluated once.
 * Betas are not normalized: poe's Σ β_m log p_m with betas [1, 1] is sharper than with
 * [0.5, 0.5].
 */
export const LIST_PARAMS = {
  betas: {
    item: z.number().min(0, { error: (iss) => `a beta must be ≥ 0, got ${show(iss.input)}` }),
    noun: "beta",
    letter: "b",
    problem: (xs: readonly number[]): string | null => (xs.every((b) => b === 0) ? "at least one beta must be > 0" : null),
    normalized: false,
  },
  weights: {
    item: z.number().min(0, { error: (iss) => `a weight must be ≥ 0, got ${show(iss.input)}` }),
    noun: "weight",
    letter: "w",
    problem: (xs: readonly number[]): string | null =>
      xs.every((w) => w === 0) ? "at least one weight must be > 0"
        : !Number.isFinite(xs.reduce((a, b) => a + b, 0)) ? "the weights must have a finite sum (they are normalized to sum 1)" : null,
    normalized: true,
  },
} as const;
export type ListParam = keyof typeof LIST_PARAMS;
export const LIST_PARAM_NAMES = Object.keys(LIST_PARAMS) as [ListParam, ...ListParam[]];

const equalShares = (n: number): number[] => Array.from({ length: n }, () => 1 / n);

// ---- the registry -----------------------------------------------------------------

export interface StrategyDeclaration {
  /** One line for help texts and docs: what the fused logits f are. */
  readonly summary: string;
  /** The per-model lists it takes besides temperatures, each with its default for N models. */
  readonly params: { readonly [P in ListParam]?: (nModels: number) => number[] };
}

/** Every strategy Kotara knows, in the order reports and help list them. */
export const STRATEGIES = {
  average: {
    summary: "f = Σ y_m / N: the plain mean of the tempered logits",
    params: {},
  },
  poe: {
    summary: "f = Σ β_m log p_m: product of experts (β default 1/N each; normalized by the softmax)",
    params: { betas: equalShares },
  },
  entropy: {
    summary: "f = Σ α_m y_m, α_m ∝ 1 / H(p_m): confident (low-entropy) models weigh more",
    params: {},
  },
  gap: {
    summary: "f = Σ α_m y_m, α_m ∝ p_m(top-1) − p_m(top-2): decisive models weigh more",
    params: {},
  },
  mix: {
    summary: "f = log Σ w_m p_m: a mixture of the probabilities, not of the logits (w default 1/N each; normalized to sum 1)",
    params: { weights: equalShares },
  },
} as const satisfies Record<string, StrategyDeclaration>;

export type StrategyType = keyof typeof STRATEGIES;
export const KNOWN_STRATEGIES = Object.keys(STRATEGIES) as [StrategyType, ...StrategyType[]];

/** The lists `type` takes besides temperatures, in LIST_PARAMS order. */
export function paramsOf(type: StrategyType): ListParam[] {
  const declared: StrategyDeclaration["params"] = STRATEGIES[type].params;
  return LIST_PARAM_NAMES.filter((p) => declared[p] !== undefined);
}

/** The default list of `param` for `type` and N models, or null when `type` does not take it. */
export function defaultParam(type: StrategyType, param: ListParam, nModels: number): number[] | null {
  const declared: StrategyDeclaration["params"] = STRATEGIES[type].params;
  return declared[param]?.(nModels) ?? null;
}

/** The strategies that take `param`, for messages ("only poe takes betas"). */
export function takersOf(param: ListParam): StrategyType[] {
  return KNOWN_STRATEGIES.filter((t) => paramsOf(t).includes(param));
}

export function isKnownStrategy(name: unknown): name is StrategyType {
  return typeof name === "string" && Object.hasOwn(STRATEGIES, name);
}

/** `unknown strategy "foo"; known: average, poe, entropy, gap, mix` */
export function unknownStrategyMessage(name: unknown): string {
  return `unknown strategy ${show(name)}; known: ${KNOWN_STRATEGIES.join(", ")}`;
}

// ---- the schema of a `strategies:` entry, derived from the registry --------------------

/** An explicit setting id, as it appears in reports and metrics. */
export const SettingIdSchema = z
  .string()
  .min(1, { error: "must not be empty" })
  .max(120, { error: "must be at most 120 characters" })
  .refine((s) => s.trim() === s && !/[\u0000-\u001f\u007f]/.test(s), {
    error: "must not contain control characters or leading/trailing spaces",
  });

const TemperatureList = z.array(Temperature).min(1, { error: "must list one temperature per model" });
export const paramList = (p: ListParam) =>
  z.array(LIST_PARAMS[p].item).min(1, { error: `must list one ${LIST_PARAMS[p].noun} per model` });

function entrySchema(type: StrategyType) {
  const shape: Record<string, z.ZodType> = { id: SettingIdSchema.optional(), type: z.literal(type), temperatures: TemperatureList.optional() };
  for (const p of paramsOf(type)) shape[p] = paramList(p).optional();
  return strictObject(shape);
}
const ENTRY_SCHEMAS = Object.fromEntries(KNOWN_STRATEGIES.map((t) => [t, entrySchema(t)])) as unknown as Record<StrategyType, z.ZodType>;

type ParamsOfType<T extends StrategyType> = keyof (typeof STRATEGIES)[T]["params"];
/** The mapping form of a `strategies:` entry: `{ type: "poe", betas: [0.8, 0.2] }`. */
export type StrategyEntryObject = {
  [T in StrategyType]: { id?: string; type: T; temperatures?: number[] } & { [P in ParamsOfType<T> & ListParam]?: number[] };
}[StrategyType];
/** An entry of the config's `strategies:` list (the bare-name form is just a known name). */
export type StrategyEntry = StrategyType | StrategyEntryObject;

// ---- ids --------------------------------------------------------------------------

/** Shortest round-trip decimal, no trailing zeros: 1 → "1", 0.85 → "0.85". */
export function formatNumber(x: number): string {
  return Object.is(x, -0) ? "0" : String(x);
}

export function defaultTemperatures(nModels: number): number[] {
  return Array.from({ length: nModels }, () => 1);
}

type SettingParams = Omit<Setting, "id">;

function sameNumbers(a: readonly number[] | null, b: readonly number[] | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** True when the setting's `param` is the type's default for this many models (or both absent). */
export function hasDefaultParam(setting: SettingParams, param: ListParam): boolean {
  return sameNumbers(setting[param], defaultParam(setting.type, param, setting.temperatures.length));
}

export interface SettingIdOptions {
  /** Always say the temperatures (sweeps do: `entropy@t=1,1`). */
  temperatures?: boolean;
  /** Always say these lists when the type takes them (a sweep over betas does). */
  params?: readonly ListParam[];
}

/**
 * The default id of a setting: the bare type when every parameter is a default
 * (`entropy`), else the type and its parameters: `entropy@t=0.85,1.1`,
 * `poe@t=1,1;b=0.8,0.2`. Distinct settings get distinct default ids.
 */
export function settingId(setting: SettingParams, opts: SettingIdOptions = {}): string {
  const defaultT = setting.temperatures.every((t) => t === 1);
  const shown = paramsOf(setting.type).filter((p) => setting[p] !== null && (!hasDefaultParam(setting, p) || opts.params?.includes(p)));
  if (defaultT && shown.length === 0 && opts.temperatures !== true) return setting.type;
  const parts = [`t=${setting.temperatures.map(formatNumber).join(",")}`];
  for (const p of shown) parts.push(`${LIST_PARAMS[p].letter}=${setting[p]!.map(formatNumber).join(",")}`);
  return `${setting.type}@${parts.join(";")}`;
}

/** The list as the worker uses it: scaled to sum 1 where its kind is `normalized`. */
function asComputed(p: ListParam, xs: readonly number[]): readonly number[] {
  if (!LIST_PARAMS[p].normalized) return xs;
  const total = xs.reduce((a, b) => a + b, 0);
  return total > 0 ? xs.map((x) => x / total) : xs;
}

/** What makes two settings the same computation, whatever their ids. */
export function settingKey(setting: SettingParams): string {
  const lists = LIST_PARAM_NAMES.map((p) => {
    const xs = setting[p];
    return xs ? asComputed(p, xs).map(formatNumber).join(",") : "-";
  });
  return [setting.type, setting.temperatures.map(formatNumber).join(","), ...lists].join("|");
}

/** A setting from its parts, every list present (null where the type takes none). */
export function makeSetting(type: StrategyType, temperatures: number[], lists: Partial<Record<ListParam, number[] | null>>, id?: string): Setting {
  const params = Object.fromEntries(LIST_PARAM_NAMES.map((p) => [p, lists[p] ?? null])) as Record<ListParam, number[] | null>;
  const s = { type, temperatures, ...params };
  return { id: id ?? settingId(s), ...s };
}

// ---- resolution -------------------------------------------------------------------

/** A setting resolved from the entry at `path`, with whether its id was given. */
export interface ResolvedEntry {
  setting: Setting;
  path: string;
  explicitId: boolean;
}

function fail(line: string): Checked<null> {
  return { value: null, lines: [line] };
}

/** The entry as a mapping with a known type, or the line that says why it is not one. */
function entryObject(entry: unknown, path: string): Checked<Record<string, unknown> | null> {
  if (typeof entry === "string") {
    return isKnownStrategy(entry) ? { value: { type: entry }, lines: [] } : fail(`${path}: ${unknownStrategyMessage(entry)}`);
  }
  if (!isPlainObject(entry)) {
    return fail(`${path}: expected a strategy name or a mapping like { type: entropy, temperatures: [1, 1] }, got ${show(entry)}`);
  }
  if (entry.type === null || entry.type === undefined) return fail(`${path}.type: required; one of: ${KNOWN_STRATEGIES.join(", ")}`);
  if (typeof entry.type !== "string") {
    return fail(`${path}.type: expected a strategy name (${KNOWN_STRATEGIES.join(", ")}), got ${show(entry.type)}`);
  }
  if (!isKnownStrategy(entry.type)) return fail(`${path}: ${unknownStrategyMessage(entry.type)}`);
  return { value: entry, lines: [] };
}

/**
 * Validates one `strategies:` entry and fills its defaults. `nModels` null: the
 * number of models is unknown (the models list itself is invalid), so the
 * one-value-per-model checks are skipped.
 */
export function checkStrategyEntry(entry: unknown, nModels: number | null, path: string): Checked<ResolvedEntry | null> {
  const obj = entryObject(entry, path);
  if (!obj.value) return obj as Checked<null>;
  const type = obj.value.type as StrategyType;
  const parsed = ENTRY_SCHEMAS[type].safeParse(obj.value, { error: errorMap });
  if (!parsed.success) return { value: null, lines: issueLines(parsed.error, path) };
  const data = parsed.data as { id?: string; temperatures?: number[] } & Partial<Record<ListParam, number[]>>;

  const lines: string[] = [];
  const lists = { temperatures: data.temperatures, ...Object.fromEntries(paramsOf(type).map((p) => [p, data[p]])) };
  for (const [key, list] of Object.entries(lists)) {
    if (nModels !== null && list && list.length !== nModels) lines.push(`${path}.${key}: expected ${nModels} values (one per model), got ${list.length}`);
  }
  for (const p of paramsOf(type)) {
    const problem = data[p] && data[p].length > 0 ? LIST_PARAMS[p].problem(data[p]) : null;
    if (problem) lines.push(`${path}.${p}: ${problem}`);
  }
  if (lines.length > 0) return { value: null, lines };

  const n = nModels ?? Object.values(lists).find((l) => l)?.length ?? 2;
  const params = Object.fromEntries(paramsOf(type).map((p) => [p, data[p] ?? defaultParam(type, p, n)]));
  const setting = makeSetting(type, data.temperatures ?? defaultTemperatures(n), params, data.id);
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
 * Drops settings that repeat an earlier one (same type and parameters, whatever the
 * ids): each is evaluated once, under the first one's id. `onDuplicate` hears about
 * every dropped setting.
 */
export function dedupeSettings(settings: readonly Setting[], onDuplicate?: (dropped: Setting, kept: Setting) => void): Setting[] {
  const first = new Map<string, Setting>();
  const out: Setting[] = [];
  for (const s of settings) {
    const key = settingKey(s);
    const kept = first.get(key);
    if (kept) {
      onDuplicate?.(s, kept);
      continue;
    }
    first.set(key, s);
    out.push(s);
  }
  return out;
}

/**
 * Resolves a list of strategies into distinct wire settings, once: entries as in YAML
 * (`"entropy"`, `{ type: "poe", betas: [0.7, 0.3] }`) get their defaults; settings
 * already resolved (a temperatureGrid) are checked like the entry they spell.
 * @throws ConfigError with one `strategies[i]…: message` line per problem.
 */
export function resolveStrategies(entries: readonly (StrategyEntry | Setting | unknown)[], nModels: number): Setting[] {
  const r = checkStrategies(entries.map((e) => (isResolvedSetting(e) ? asEntry(e) : e)), nModels);
  if (r.lines.length > 0) throw new ConfigError(r.lines);
  return dedupeSettings(r.value.map((e) => e.setting));
}

/** A resolved Setting has an id and every list key (null or not); an entry never has both. */
function isResolvedSetting(x: unknown): x is Setting {
  return isPlainObject(x) && typeof x.id === "string" && Array.isArray(x.temperatures) && LIST_PARAM_NAMES.every((p) => p in x);
}

/** The entry a resolved setting spells: its lists without the nulls of the ones its type does not take. */
function asEntry(s: Setting): Record<string, unknown> {
  return Object.fromEntries(Object.entries(s).filter(([, v]) => v !== null));
}
