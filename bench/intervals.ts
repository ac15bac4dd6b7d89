// The cost of the paired intervals (issue "Is the gain real?"): evaluate() wall time of
// the sweep with the block bootstrap (report.bootstrap's default: 2,000 resamples) ÷ the
// same evaluation with it off (resamples: 0), same session, same text, alternating
// rounds, medians. The per-window sums the bootstrap reads are always collected (a few
// floats per window and setting): both runs include them; what the ratio isolates is
// everything the intervals add on top (the resampling, the metrics' intervals).
//
// The figure judged: 1 + (controller time with − without) ÷ wall without, the controller
// time being evaluate()'s wall outside the worker's compute and tokenizing (messages,
// metrics and the bootstrap). The plain wall ratio is printed too, but the worker's compute
// varies by more than the intervals cost from one run to the next on a shared machine
// (it swung by ±15% while this was written), so it cannot resolve a few percent.
import type { Setting } from "../src/protocol.js";
import type { Session } from "../src/session.js";

export interface IntervalsOptions {
  session: Session;
  path: string;
  maxLength: number;
  stride: number;
  batchSize: number;
  settings: Setting[];
  rounds: number;
  log: (msg: string) => void;
  row: (figure: string, value: string, target?: string, status?: "PASS" | "MISS" | "FAIL" | "info" | "skipped") => void;
}

export const INTERVALS_TARGET = 1.05;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];

export async function intervalsCost(o: IntervalsOptions): Promise<unknown> {
  const run = async (resamples: number | null) => {
    const t0 = performance.now();
    const e = await o.session.evaluate({
      dataset: { path: o.path, max_length: o.maxLength, stride: o.stride }, strategies: o.settings, batchSize: o.batchSize,
      ...(resamples === null ? {} : { bootstrap: { resamples } }),
    });
    const wall = (performance.now() - t0) / 1000;
    return { wall, outside: wall - e.result.seconds - e.result.tokenize_seconds, windows: e.result.windows };
  };
  const on: { wall: number; outside: number }[] = [];
  const off: { wall: number; outside: number }[] = [];
  let windows = 0;
  for (let r = 1; r <= o.rounds; r++) {
    o.log(`intervals: round ${r}/${o.rounds}, without and with the bootstrap (${o.settings.length} settings)`);
    off.push(await run(0));
    const w = await run(null);
    on.push(w);
    windows = w.windows;
  }
  const wall = (xs: typeof on) => median(xs.map((x) => x.wall));
  const outside = (xs: typeof on) => median(xs.map((x) => x.outside));
  const added = outside(on) - outside(off);
  const ratio = 1 + added / wall(off);
  const label = `${o.settings.length} settings, ${windows} windows, medians of ${o.rounds}`;
  o.row(`intervals: cost ÷ evaluation without them (${label})`, `${ratio.toFixed(4)}  (+${(1000 * added).toFixed(0)} ms on ${wall(off).toFixed(2)}s)`,
    `<= ${INTERVALS_TARGET}`, ratio <= INTERVALS_TARGET ? "PASS" : "MISS");
  o.row("  evaluate() wall with ÷ without (worker compute noise included)", `${(wall(on) / wall(off)).toFixed(3)}  (${wall(on).toFixed(2)}s / ${wall(off).toFixed(2)}s)`, "", "info");
  return { settings: o.settings.length, windows, rounds: o.rounds, with: on, without: off, added_s: added, ratio, wall_ratio: wall(on) / wall(off) };
}
