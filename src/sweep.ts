// The `sweep:` block (SPEC §4): a grid of settings appended to `strategies:`.
//
//   sweep:
//     strategies: [average, poe, entropy, gap]
//     temperatures:                 # one list per model
//       - [0.7, 0.85, 1.0, 1.15, 1.3]
//       - [0.7, 0.85, 1.0, 1.15, 1.3]
//     betas:                        # optional, poe only: one list per model
//       - [0.3, 0.5, 0.7]
//       - [0.3, 0.5, 0.7]
//
// expands to every strategy × every combination of one temperature per model (× for
// poe, every combination of one beta per model; without `betas`, poe uses its
// default 1/N each). The example above is 4 × 5 × 5 = 100 settings without betas.
// Ids say the settings: `entropy@t=0.85,1.1`, `poe@t=1,1;b=0.3,0.7`.
// Beta combinations that are all zero are skipped (they fuse into a uniform guess).
import { z } from "zod";
import { ConfigError } from "./errors.js";
import type { Setting, StrategyType } from "./protocol.js";
import {
  Beta,
  type Checked,
  STRATEGIES,
  Temperature,
  errorMap,
  isKnownStrategy,
  issueLines,
  settingId,
  settingKey,
  strictObject,
  unknownStrategyMessage,
} from "./strategies.js";

/** The most settings one sweep may expand to (each is a fusion per scored token). */
export const MAX_SWEEP_SETTINGS = 10_000;

export const SweepSchema = strictObject({
  strategies: z.array(z.string()).min(1, { error: "must name at least one strategy" }),
  temperatures: z
    .array(z.array(Temperature).min(1, { error: "must not be empty (list the temperatures to try for this model)" }))
    .min(1, { error: "must have one list of temperatures per model" }),
  betas: z
    .array(z.array(Beta).min(1, { error: "must not be empty (list the betas to try for this model)" }))
    .min(1, { error: "must have one list of betas per model" })
    .nullish(),
});
/** The sweep block as written in YAML (or built in a script). */
export type SweepInput = z.input<typeof SweepSchema>;

/** A validated sweep, as it appears in the RunPlan and in the metrics file. */
export interface Sweep {
  strategies: StrategyType[];
  /** One list per model. */
  temperatures: number[][];
  /** One list per model (poe only), or null: poe uses its default betas. */
  betas: number[][] | null;
}

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
  const { strategies, temperatures, betas } = parsed.data;
  const lines = nameLines(strategies, path);
  if (nModels !== null) {
    if (temperatures.length !== nModels) {
      lines.push(`${path}.temperatures: expected ${nModels} lists (one per model), got ${temperatures.length}`);
    }
    if (betas && betas.length !== nModels) {
      lines.push(`${path}.betas: expected ${nModels} lists (one per model), got ${betas.length}`);
    }
  }
  if (betas && !strategies.includes("poe")) {
    lines.push(`${path}.betas: only poe takes betas, and ${path}.strategies does not list poe`);
  }
  if (lines.length > 0) return { value: null, lines };

  const sweep: Sweep = { strategies: strategies as StrategyType[], temperatures, betas: betas ?? null };
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
  const tCombos = sweep.temperatures.reduce((acc, list) => acc * list.length, 1);
  const bCombos = sweep.betas ? sweep.betas.reduce((acc, list) => acc * list.length, 1) : 1;
  return sweep.strategies.reduce((acc, s) => acc + tCombos * (s === "poe" ? bCombos : 1), 0);
}

/** Every combination of one value from each list, the first list varying slowest. */
export function cartesian(lists: readonly (readonly number[])[]): number[][] {
  let out: number[][] = [[]];
  for (const list of lists) out = out.flatMap((prefix) => list.map((x) => [...prefix, x]));
  return out;
}

/** Expands a validated sweep: strategies (in order) × temperature combinations × betas. */
export function expandValidSweep(sweep: Sweep): Setting[] {
  const n = sweep.temperatures.length;
  const tCombos = cartesian(sweep.temperatures);
  const bCombos = sweep.betas ? cartesian(sweep.betas).filter((b) => b.some((x) => x > 0)) : null;
  const out: Setting[] = [];
  for (const type of sweep.strategies) {
    const betaChoices: (number[] | null)[] = type === "poe" ? (bCombos ?? [STRATEGIES.poe.defaultBetas(n)]) : [null];
    for (const temperatures of tCombos) {
      for (const betas of betaChoices) {
        const s = { type, temperatures: [...temperatures], betas: betas && [...betas] };
        out.push({ id: settingId(s, { temperatures: true, betas: bCombos !== null }), ...s });
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

/**
 * Drops settings that repeat an earlier one (same type, temperatures and betas,
 * whatever the ids): each is evaluated once, under the first one's id.
 * `onDuplicate` hears about every dropped setting.
 */
export function dedupeSettings(
  settings: readonly Setting[],
  onDuplicate?: (dropped: Setting, kept: Setting) => void,
): Setting[] {
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

export interface TemperatureGridSpec {
  /** Default: every known strategy. */
  strategies?: readonly StrategyType[];
  /** One list per model, or one list that every model sweeps. */
  temperatures: readonly number[] | readonly (readonly number[])[];
  /** poe only: one list per model, or one list that every model sweeps. */
  betas?: readonly number[] | readonly (readonly number[])[];
}

/**
 * Builds a sweep from TypeScript (scripts, benchmarks): the same expansion and the
 * same checks as a config's `sweep:`, deduped.
 *
 *   temperatureGrid({ strategies: ["entropy", "gap"], temperatures: [0.8, 1, 1.2] }, 2) // 2 × 3 × 3
 *
 * @throws ConfigError for a bad grid.
 */
export function temperatureGrid(spec: TemperatureGridSpec, nModels: number): Setting[] {
  const perModel = (v: readonly number[] | readonly (readonly number[])[]): number[][] =>
    v.length > 0 && v.every((x) => typeof x === "number")
      ? Array.from({ length: nModels }, () => [...(v as readonly number[])])
      : (v as readonly (readonly number[])[]).map((l) => [...l]);
  const sweep: SweepInput = {
    strategies: [...(spec.strategies ?? (Object.keys(STRATEGIES) as StrategyType[]))],
    temperatures: perModel(spec.temperatures),
    ...(spec.betas ? { betas: perModel(spec.betas) } : {}),
  };
  return dedupeSettings(expandSweep(sweep, nModels));
}
