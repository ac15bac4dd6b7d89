// The pool part of `npm run bench` (issue 14, "Past one device"): one evaluation on a
// pool of two CPU workers of one thread each ÷ the same evaluation on one worker of one
// thread, and beside it one worker with a thread per core (what a user gets without a
// pool). Same models, text, windows and settings; sessions opened once, a warm-up request
// each, then ROUNDS rounds alternating the three, evaluate() wall time, medians. The
// two one-thread runs must agree bit for bit (the pool's promise): the part FAILs if not.
//
// The pair is the demo's twin-a + sibling (≈ 1M parameters each: a forward is short,
// so this also shows what handing out one group of windows per request costs) on the
// held-out docs (scripts/demo_text.py), L 256, S 128, the four strategies.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { availableParallelism } from "node:os";
import { deepStrictEqual } from "node:assert/strict";
import { openSession, type EvaluateOptions, type Session } from "../src/session.js";

export interface PoolBenchOptions {
  root: string;
  batchSize: number;
  rounds: number;
  log: (msg: string) => void;
  row: (figure: string, value: string, target?: string, status?: "PASS" | "MISS" | "FAIL" | "info" | "skipped") => void;
}

const PAIR = ["models/demo/twin-a", "models/demo/sibling"];
const SPEEDUP_TARGET = 1; // two one-thread workers faster than one: > 1
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];

export async function poolBench(o: PoolBenchOptions): Promise<unknown> {
  const text = join(o.root, "data", "demo", "docs-heldout.txt");
  if (!existsSync(text)) {
    o.row("pool: two 1-thread CPU workers ÷ one", "skipped (no data/demo/docs-heldout.txt: run scripts/setup.sh)", `> ${SPEEDUP_TARGET}`, "skipped");
    return null;
  }
  const models = PAIR.map((p) => ({ ref: join(o.root, p), device: "cpu" }));
  const cores = availableParallelism();
  const kinds = {
    one: { workers: [{ device: "cpu", threads: 1 }] },
    two: { workers: [{ device: "cpu", threads: 1 }, { device: "cpu", threads: 1 }] },
    wide: { workers: [{ device: "cpu", threads: cores }] },
  } as const;
  const sessions: Record<keyof typeof kinds, Session | null> = { one: null, two: null, wide: null };
  const request: EvaluateOptions = { dataset: { path: text, max_length: 256, stride: 128 }, strategies: ["average", "poe", "entropy", "gap"], batchSize: o.batchSize };
  const walls: Record<keyof typeof kinds, number[]> = { one: [], two: [], wide: [] };
  let windows = 0;
  try {
    for (const k of Object.keys(kinds) as (keyof typeof kinds)[]) {
      o.log(`pool: opening ${k === "two" ? "two workers" : "one worker"} of ${kinds[k].workers[0].threads} thread(s)`);
      sessions[k] = await openSession({ models, workers: [...kinds[k].workers] });
      await sessions[k]!.evaluate(request); // warm-up: first tokenizing, allocator
    }
    const sums: Record<string, unknown> = {};
    for (let r = 1; r <= o.rounds; r++) {
      o.log(`pool: round ${r}/${o.rounds}`);
      for (const k of Object.keys(kinds) as (keyof typeof kinds)[]) {
        const t0 = performance.now();
        const e = await sessions[k]!.evaluate(request);
        walls[k].push((performance.now() - t0) / 1000);
        windows = e.result.windows;
        sums[k] = e.result.sums;
      }
    }
    let same = true;
    try {
      deepStrictEqual(sums.two, sums.one);
    } catch {
      same = false;
    }
    const [one, two, wide] = [median(walls.one), median(walls.two), median(walls.wide)];
    const label = `${windows} windows of 256, 4 settings, medians of ${o.rounds}`;
    o.row(`pool: one 1-thread worker ÷ two 1-thread workers (${label})`, `${(one / two).toFixed(2)}×  (${one.toFixed(2)}s / ${two.toFixed(2)}s)`,
      `> ${SPEEDUP_TARGET}`, one / two > SPEEDUP_TARGET ? "PASS" : "MISS");
    o.row(`  one ${cores}-thread worker ÷ two 1-thread workers`, `${(wide / two).toFixed(2)}×  (${wide.toFixed(2)}s / ${two.toFixed(2)}s)`, "", "info");
    o.row("  two workers' sums = one worker's, bit for bit", same ? "yes" : "NO", "yes", same ? "PASS" : "FAIL");
    return { windows, rounds: o.rounds, cores, walls, speedup: one / two, vs_wide: wide / two, identical: same };
  } finally {
    await Promise.all(Object.values(sessions).map((s) => s?.close()));
  }
}
