// The `sweep:` block (SPEC §4): a grid of settings appended to `strategies:`.
//
//   sweep:
//     strategies: [average, poe, entropy, gap]
//     temperatures:                 # one list per model
//       - [0.7, 0.85, 1.0, 1.15, 1.3]
//       - [0.7, 0.85, 1.0, 1.15, 1.3]
//     betas:                        # optional, for poe (the strategies that take betas)
//       - [0.3, 0.5, 0.7]
//       - [0.3, 0.5, 0.7]
//     weights:                      # optional, for mix (the strategies that take weights)
//       - [1]
//       - [0.5, 1, 2]
//
// expands to every strategy × every combination of one temperature per model (× for
// poe, every combination of one beta per model; without `betas`, poe uses its
// default 1/N each; likewise mix and its weights). The example above is 4 × 5 × 5 =
// 100 settings without betas. Ids say the settings: `entropy@t=0.85,1.1`,
// `poe@t=1,1;b=0.3,0.7`, `mix@t=1,1;w=1,2`. Combinations that are all zero are skipped
// (betas: they fuse into a uniform guess; weights: no mixture).
import { z } from "zod";
import { ConfigError } from "./errors.js";
import type { Setting } from "./protocol.js";
import {
  KNOWN_STRATEGIES,
  LIST_PARAMS,
  LIST_PARAM_NAMES,
  type ListParam,
  type StrategyType,
  Temperature,
  dedupeSettings,
  defaultParam,
  isKnownStrategy,
  makeSetting,
  paramsOf,
  settingId,
  takersOf,
  unknownStrategyMessage,
} from "./strategies.js";
import { type Checked, errorMap, issueLines, strictObject } from "./validation.js";

/** The most settings one sweep may expand to (each is a fusion per scored token). */
export const MAX_SWEEP_SETTINGS = 10_000;

const grid = (noun: string) =>
  z.array(z.array(noun === "temperature" ? Temperature : LIST_PARAMS[noun as ListParam].item)
    .min(1, { error: `must not be empty (list the ${noun}s to try for this model)` }))
    .min(1, { error: `must have one list of ${noun}s per model` });

export const SweepSchema = strictObject({
  strategies: z.array(z.string()).min(1, { error: "must name at least one strategy" }),
  temperatures: grid("temperature"),
  // a grid per declared list (betas: …), spanned by the strategies that take it
  ...Object.fromEntries(LIST_PARAM_NAMES.map((p) => [p, grid(p).nullish()])),
});
/** The sweep block as written in YAML (or built in a script). */
export type SweepInput = { strategies: string[]; temperatures: number[][] } & { [P in ListParam]?: number[][] | null };

/** A validated sweep, as it appears in the RunPlan and in the metrics file. */
export type Sweep = {
  strategies: StrategyType[];
  /** One list per model. */
  temperatures: number[][];
} & {
  /** One list per model, spanned by the strategies that take it; null: they use their defaults. */
  [P in ListParam]: number[][] | null;
};

/**
 * Validates a sweep block against the number of models (null when the models list is
 * itself invalid: the per-model checks are skipped). Collects every problem.
 */
export function checkSweep(raw: unknown, nModels: number | null, path = "sweep"): Checked<Sweep | null> {
  if (raw === undefined || raw === null) return { value: null, lines: [] };
  const parsed = SweepSchema.safeParse(raw, { error: errorMap });
  if (!parsed.success) {
    // Still report unknown strategy names next to the shape problems.
    const lines = issueLines(parsed.error, path);
    const names = (raw as { strategies?: unknown }).strategies;
    if (Array.isArray(names)) lines.push(...nameLines(names, path));
    return { value: null, lines };
  }
  const data = parsed.data as SweepInput;
  const lines = nameLines(data.strategies, path);
  const grids = { temperatures: data.temperatures, ...Object.fromEntries(LIST_PARAM_NAMES.map((p) => [p, data[p] ?? null])) };
  for (const [key, g] of Object.entries(grids)) {
    if (nModels !== null && g && g.length !== nModels) lines.push(`${path}.${key}: expected ${nModels} lists (one per model), got ${g.length}`);
  }
  for (const p of LIST_PARAM_NAMES) {
    const takers = takersOf(p);
    if (data[p] && !data.strategies.some((s) => (takers as string[]).includes(s))) {
      lines.push(`${path}.${p}: only ${takers.join(", ")} take${takers.length === 1 ? "s" : ""} ${p}, and ${path}.strategies does not list ${takers.length === 1 ? takers[0] : "any of them"}`);
    }
  }
  if (lines.length > 0) return { value: null, lines };

  const sweep = { strategies: data.strategies as StrategyType[], ...grids } as Sweep;
  const size = sweepSize(sweep);
  if (size > MAX_SWEEP_SETTINGS) {
    return {
      value: null,
      lines: [`${path}: expands to ${size} settings; at most ${MAX_SWEEP_SETTINGS} are allowed (use fewer values)`],
    };
  }
  return { value: sweep, lines: [] };
}

function nameLines(names: readonly unknown[], path: string): string[] {
  const lines: string[] = [];
  names.forEach((name, i) => {
    if (typeof name === "string" && !isKnownStrategy(name)) lines.push(`${path}.strategies[${i}]: ${unknownStrategyMessage(name)}`);
  });
  return lines;
}

/** How many settings a valid sweep expands to (before dedupe), without expanding it. */
export function sweepSize(sweep: Sweep): number {
  const combos = (g: number[][] | null) => (g ? g.reduce((acc, list) => acc * list.length, 1) : 1);
  const tCombos = combos(sweep.temperatures);
  return sweep.strategies.reduce((acc, s) => acc + tCombos * paramsOf(s).reduce((k, p) => k * combos(sweep[p]), 1), 0);
}

/** Every combination of one value from each list, the first list varying slowest. */
export function cartesian(lists: readonly (readonly number[])[]): number[][] {
  let out: number[][] = [[]];
  for (const list of lists) out = out.flatMap((prefix) => list.map((x) => [...prefix, x]));
  return out;
}

/**
 * Expands a validated sweep: strategies (in order) × temperature combinations × the
 * combinations of every list the strategy takes (its default where the sweep has no
 * grid for it; combinations the list's kind rejects, like all-zero betas, skipped).
 */
export function expandValidSweep(sweep: Sweep): Setting[] {
  const n = sweep.temperatures.length;
  const swept = LIST_PARAM_NAMES.filter((p) => sweep[p] !== null);
  const out: Setting[] = [];
  for (const type of sweep.strategies) {
    // every combination of one choice per list the type takes: [{ betas: [...] }, …]
    let lists: Partial<Record<ListParam, number[]>>[] = [{}];
    for (const p of paramsOf(type)) {
      const choices = sweep[p] ? cartesian(sweep[p]!).filter((xs) => LIST_PARAMS[p].problem(xs) === null) : [defaultParam(type, p, n)!];
      lists = lists.flatMap((l) => choices.map((xs) => ({ ...l, [p]: xs })));
    }
    for (const temperatures of cartesian(sweep.temperatures)) {
      for (const l of lists) {
        const s = makeSetting(type, temperatures, l, "-");
        out.push({ ...s, id: settingId(s, { temperatures: true, params: swept }) });
      }
    }
  }
  return out;
}

/**
 * Expands a `sweep:` block into settings (not deduped; see dedupeSettings).
 * @throws ConfigError with `sweep…: message` lines for a bad grid.
 */
export function expandSweep(sweep: unknown, nModels: number): Setting[] {
  const r = checkSweep(sweep, nModels);
  if (r.lines.length > 0 || !r.value) throw new ConfigError(r.lines.length ? r.lines : ["sweep: missing"]);
  return expandValidSweep(r.value);
}

/** One list per model, or one list that every model sweeps. */
type GridValues = readonly number[] | readonly (readonly number[])[];

export type TemperatureGridSpec = {
  /** Default: every known strategy. */
  strategies?: readonly StrategyType[];
  temperatures: GridValues;
} & {
  /** A grid for the strategies that take this list (betas: poe). */
  [P in ListParam]?: GridValues;
};

/**
 * Builds a sweep from TypeScript (scripts, benchmarks): the same expansion and the
 * same checks as a config's `sweep:`, deduped.
 *
 *   temperatureGrid({ strategies: ["entropy", "gap"], temperatures: [0.8, 1, 1.2] }, 2) // 2 × 3 × 3
 *
 * @throws ConfigError for a bad grid.
 */
export function temperatureGrid(spec: TemperatureGridSpec, nModels: number): Setting[] {
  const perModel = (v: GridValues): number[][] =>
    v.length > 0 && v.every((x) => typeof x === "number")
      ? Array.from({ length: nModels }, () => [...(v as readonly number[])])
      : (v as readonly (readonly number[])[]).map((l) => [...l]);
  const sweep: SweepInput = {
    strategies: [...(spec.strategies ?? KNOWN_STRATEGIES)],
    temperatures: perModel(spec.temperatures),
    ...Object.fromEntries(LIST_PARAM_NAMES.filter((p) => spec[p]).map((p) => [p, perModel(spec[p]!)])),
  };
  return dedupeSettings(expandSweep(sweep, nModels));
}
