// The generation part of `npm run bench` (issue 12, item 7): fused generation in token
// space against each model's own Hugging Face `model.generate`, same models, same
// prompts, same CPU, one run.
//
//   - Kotara through the library API: openSession → session.generate (greedy, the
//     `entropy` strategy, a fixed number of new tokens), its chunks read as they stream;
//     batch 1 = one prompt, batch 8 = eight prompts decoded together (left padding);
//   - the reference: bench/hf_generate.py (imports nothing from the worker), each model's
//     own model.generate(do_sample=False, use_cache=True, max_new_tokens=N,
//     min_new_tokens=N) at the same batches, left-padded, from the same ids (the start
//     token, then the prompt: what Kotara's generation decodes; the bench checks that both
//     sides count the same prompt tokens);
//   - the figure: Kotara's fused step ÷ (model A's own step + model B's own step), a
//     step being (generation time − time to first token) ÷ (steps − 1), the decode steps
//     after the prefill; Kotara's times are the worker's (GeneratedMsg.seconds and
//     first_token_seconds), the reference's the wall of its generate() call in its own
//     process; target ≤ 1.15 (the fusion adds ≤ 15 %) at batch 1 and at batch 8.
//     Tokens/s (new tokens of every row ÷ generation time) and time to first token are
//     reported beside it, and session.generate()'s wall (the messages to the controller
//     included);
//   - the same ratio in CPU time (every thread of the process; on Linux): on a machine
//     other jobs share, a wall-clock step also counts the waits for a core, and the CPU
//     time does not. The worker's is read from /proc/<pid>/stat (10 ms ticks) before the
//     call, when its first chunk arrives, and at the end; the reference's from
//     time.process_time() inside its process.
//
// Rounds interleave the two sides (Kotara at batch 1, then model A's and model B's own
// generate at batch 1, then the same at batch 8; the reference runs as one process with
// its models loaded, `hf_generate.py --serve`) so a change in the machine's load falls on
// both; each figure is the median of the rounds' ratios. Every row must make N tokens on both sides (min_new_tokens
// there; on Kotara's side the random models could pick the end token: the bench says so
// and times per step actually run).
import { spawn, type ChildProcessByStdio } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { GeneratedOutput } from "../src/protocol.js";
import { openSession, resolvePython, type GenerationSummary, type Session } from "../src/session.js";

type Status = "PASS" | "MISS" | "FAIL" | "info" | "skipped";

export interface GenerationBenchOptions {
  root: string;
  work: string;
  /** The two models (directories). */
  models: string[];
  /** Text the prompts are cut from. */
  source: string;
  /** New tokens per prompt. */
  newTokens: number;
  batches: number[];
  rounds: number;
  log: (msg: string) => void;
  row: (figure: string, value: string, target?: string, status?: Status) => void;
}

export const STEP_TARGET = 1.15;
const STRATEGY = "entropy";
/** Words of each prompt: different lengths, so batch 8 pads. */
const PROMPT_WORDS = [16, 10, 24, 12, 20, 8, 14, 18];

const fmt = (x: number, d = 2) => x.toFixed(d);
const ms = (s: number) => `${(1000 * s).toFixed(1)} ms`;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Eight prompts of PROMPT_WORDS words from the text's running prose (headings skipped). */
export function cutPrompts(text: string, n = PROMPT_WORDS.length): string[] {
  const words = text.split("\n").filter((l) => l.trim() && !/^\s*=/.test(l)).join(" ").split(/\s+/).filter(Boolean);
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const w = PROMPT_WORDS[i % PROMPT_WORDS.length];
    const at = 40 + i * 120;
    if (at + w > words.length) throw new Error(`the prompt text has ${words.length} words, too few for ${n} prompts`);
    out.push(words.slice(at, at + w).join(" "));
  }
  return out;
}

/** One timed call of either side: what the figures use. */
interface Timing {
  seconds: number;
  first_token_seconds: number;
  step_seconds: number;
  steps: number;
  /** CPU time of the process (all threads); null where it cannot be read. */
  cpu_seconds: number | null;
  first_token_cpu_seconds: number | null;
  step_cpu_seconds: number | null;
}

const USER_HZ = 100; // Linux's clock ticks of /proc/<pid>/stat (sysconf(_SC_CLK_TCK) is 100 on every Linux build)

/** utime + stime of a process, seconds (all its threads), or null off Linux. */
function processCpu(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // fields 3.. (the name may hold spaces)
    return (Number(f[11]) + Number(f[12])) / USER_HZ;
  } catch {
    return null;
  }
}

interface KotaraRun extends Timing {
  wall_seconds: number;
  chunks: number;
  tokens: number;
  finishes: Record<string, number>;
  prompt_tokens: number[];
}

type HfRun = Timing & { new_tokens: number[] };
type HfProc = ChildProcessByStdio<Writable, Readable, null>;

/** bench/hf_generate.py --serve: the models loaded once; each ask() runs every model once at a batch. */
class HfServer {
  private lines: AsyncIterator<string>;
  private constructor(private proc: HfProc, public ready: { threads: number; prompt_tokens: Record<string, number[]> }, lines: AsyncIterator<string>) {
    this.lines = lines;
  }

  static async start(o: GenerationBenchOptions, promptsFile: string): Promise<HfServer> {
    const proc = spawn(resolvePython(), [join(o.root, "bench", "hf_generate.py"), "--models", ...o.models, "--prompts", promptsFile,
      "--new", String(o.newTokens), "--batches", ...o.batches.map(String), "--serve"], {
      cwd: o.root, stdio: ["pipe", "pipe", "inherit"],
      // the same threading environment the worker gets (src/worker.ts), so both sides compare fairly
      env: { ...process.env, TOKENIZERS_PARALLELISM: "false", OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "PASSIVE" },
    });
    const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
    const first = await HfServer.next(lines, proc);
    return new HfServer(proc, first, lines);
  }

  private static async next(lines: AsyncIterator<string>, proc: HfProc): Promise<any> {
    const r = await lines.next();
    if (r.done) throw new Error(`bench/hf_generate.py --serve ended (exit ${proc.exitCode ?? proc.signalCode ?? "?"})`);
    return JSON.parse(r.value);
  }

  async ask(batch: number): Promise<HfRun[]> {
    this.proc.stdin.write(`${batch}\n`);
    const out = await HfServer.next(this.lines, this.proc);
    if (out.batch !== batch) throw new Error(`hf_generate.py answered batch ${out.batch}, asked ${batch}`);
    return out.runs;
  }

  async close(): Promise<void> {
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.stdin.end();
    if (this.proc.exitCode === null && this.proc.signalCode === null) await exited;
  }
}

const perStep = (seconds: number, first: number, steps: number) => (steps > 1 ? (seconds - first) / (steps - 1) : 0);

async function kotaraGenerate(session: Session, prompts: string[], n: number): Promise<KotaraRun> {
  const pid = session.hello.pid;
  const c0 = processCpu(pid);
  let cFirst: number | null = null;
  const t0 = performance.now();
  const g = session.generate({ prompts, strategy: STRATEGY, maxNewTokens: n, sampling: { greedy: true } });
  let chunks = 0;
  for await (const _ of g) if (chunks++ === 0) cFirst = processCpu(pid);
  const s: GenerationSummary = await g.summary;
  const wall = (performance.now() - t0) / 1000;
  const cEnd = processCpu(pid);
  const cpu = c0 !== null && cEnd !== null ? cEnd - c0 : null;
  const firstCpu = c0 !== null && cFirst !== null ? cFirst - c0 : null;
  const finishes: Record<string, number> = {};
  for (const o of s.outputs as GeneratedOutput[]) finishes[o.finish] = (finishes[o.finish] ?? 0) + 1;
  return {
    seconds: s.seconds, first_token_seconds: s.firstTokenSeconds, steps: s.steps,
    step_seconds: perStep(s.seconds, s.firstTokenSeconds, s.steps), wall_seconds: wall, chunks,
    cpu_seconds: cpu, first_token_cpu_seconds: firstCpu,
    step_cpu_seconds: cpu !== null && firstCpu !== null ? perStep(cpu, firstCpu, s.steps) : null,
    tokens: s.outputs.reduce((a, o) => a + o.tokens.length, 0), finishes,
    prompt_tokens: s.outputs.map((o) => o.prompt_tokens),
  };
}

export async function generationBench(o: GenerationBenchOptions): Promise<unknown> {
  const loadStart = loadavg();
  const prompts = cutPrompts(readFileSync(o.source, "utf8"), Math.max(...o.batches));
  const promptsFile = join(o.work, "gen-prompts.json");
  writeFileSync(promptsFile, JSON.stringify(prompts));
  o.log(`generation: ${o.newTokens} new tokens, batches ${o.batches.join(" and ")}, ${o.rounds} round(s), greedy, ${STRATEGY}; ` +
    `prompts of ${prompts.slice(0, Math.max(...o.batches)).map((p) => p.split(" ").length).join("/")} words`);
  const session = await openSession({ models: o.models.map((ref) => ({ ref, device: "cpu", dtype: "float32" as const })),
    onStatus: (m) => o.log(`worker: ${m}`) });
  const kotara: Record<string, KotaraRun[]> = Object.fromEntries(o.batches.map((b) => [String(b), []]));
  const hfRuns: Record<string, HfRun[][]> = Object.fromEntries(o.batches.map((b) => [String(b), []])); // [round][model]
  let hf: HfServer | null = null;
  try {
    for (const b of o.batches) await kotaraGenerate(session, prompts.slice(0, b), Math.min(4, o.newTokens)); // warm-up
    o.log("generation: starting bench/hf_generate.py --serve (loads the models, warms up)");
    hf = await HfServer.start(o, promptsFile);
    // each round: Kotara at a batch, then each model's own generate at the same batch, back to back
    for (let r = 1; r <= o.rounds; r++) {
      for (const b of o.batches) {
        const k = await kotaraGenerate(session, prompts.slice(0, b), o.newTokens);
        kotara[String(b)].push(k);
        o.log(`generation: round ${r}/${o.rounds} kotara batch ${b}: ${fmt(k.seconds)}s, first token ${ms(k.first_token_seconds)}, ` +
          `${ms(k.step_seconds)}/step, ${k.steps} steps`);
        hfRuns[String(b)].push(await hf.ask(b));
      }
    }
  } finally {
    await hf?.close();
    await session.close();
  }
  const hfInfo = hf!.ready;

  const out: Record<string, unknown> = {};
  let allSteps = true;
  let sameIds = true;
  for (const b of o.batches) {
    const key = String(b);
    const ks = kotara[key];
    const hA = hfRuns[key].map((round) => round[0]);
    const hB = hfRuns[key].map((round) => round[1]);
    const ratios = ks.map((k, i) => k.step_seconds / (hA[i].step_seconds + hB[i].step_seconds));
    const ratio = median(ratios);
    const kStep = median(ks.map((k) => k.step_seconds));
    const aStep = median(hA.map((x) => x.step_seconds));
    const bStep = median(hB.map((x) => x.step_seconds));
    const tokens = b * o.newTokens;
    const kTps = median(ks.map((k) => k.tokens / k.seconds));
    const aTps = median(hA.map((x) => tokens / x.seconds));
    const bTps = median(hB.map((x) => tokens / x.seconds));
    const sumTps = median(hA.map((x, i) => tokens / (x.seconds + hB[i].seconds)));
    const kFirst = median(ks.map((k) => k.first_token_seconds));
    const aFirst = median(hA.map((x) => x.first_token_seconds));
    const bFirst = median(hB.map((x) => x.first_token_seconds));
    const kWall = median(ks.map((k) => k.wall_seconds));
    const haveCpu = [...ks, ...hA, ...hB].every((x) => x.step_cpu_seconds !== null);
    const cpuRatios = haveCpu ? ks.map((k, i) => k.step_cpu_seconds! / (hA[i].step_cpu_seconds! + hB[i].step_cpu_seconds!)) : [];
    const cpuSteps = haveCpu ? [ks, hA, hB].map((xs) => median(xs.map((x) => x.step_cpu_seconds!))) : [];
    const kSec = median(ks.map((k) => k.seconds));
    const fullRuns = ks.every((k) => k.steps === o.newTokens && k.tokens === tokens && (k.finishes["length"] ?? 0) === b);
    allSteps &&= fullRuns && [...hA, ...hB].every((x) => x.steps === o.newTokens && x.new_tokens.every((t) => t === o.newTokens));
    const ids = JSON.stringify(hfInfo.prompt_tokens[key]) === JSON.stringify(ks[0].prompt_tokens);
    sameIds &&= ids;
    const rounds = ratios.length > 1 ? `; rounds ${ratios.map((x) => fmt(x)).join(" / ")}` : "";
    o.row(`generation b=${b}: fused step ÷ (A + B own steps), median of ${ratios.length}`,
      `${fmt(ratio)}×  (${ms(kStep)} / ${ms(aStep)} + ${ms(bStep)}${rounds})`, `<= ${STEP_TARGET}`, ratio <= STEP_TARGET ? "PASS" : "MISS");
    if (haveCpu) {
      const cr = median(cpuRatios);
      o.row(`  b=${b} the same in CPU time (all threads), median of ${cpuRatios.length}`,
        `${fmt(cr)}×  (${ms(cpuSteps[0])} / ${ms(cpuSteps[1])} + ${ms(cpuSteps[2])}` +
        `${cpuRatios.length > 1 ? `; rounds ${cpuRatios.map((x) => fmt(x)).join(" / ")}` : ""})`,
        `<= ${STEP_TARGET}`, cr <= STEP_TARGET ? "PASS" : "MISS");
    } else o.row(`  b=${b} the same in CPU time`, "skipped: no /proc/<pid>/stat (not Linux)", "", "skipped");
    o.row(`  b=${b} tokens/s: Kotara fused / HF A / HF B / A then B`, `${fmt(kTps, 1)} / ${fmt(aTps, 1)} / ${fmt(bTps, 1)} / ${fmt(sumTps, 1)}`, "", "info");
    o.row(`  b=${b} time to first token: Kotara / HF A + HF B`, `${ms(kFirst)} / ${ms(aFirst)} + ${ms(bFirst)} = ${ms(aFirst + bFirst)}`,
      "", "info");
    o.row(`  b=${b} Kotara: session.generate() wall / worker seconds`, `${fmt(kWall)} s / ${fmt(kSec)} s`, "", "info");
    out[key] = {
      prompts: b, new_tokens: o.newTokens, ratio_median: ratio, ratio_rounds: ratios,
      cpu_ratio_median: haveCpu ? median(cpuRatios) : null, cpu_ratio_rounds: cpuRatios, step_cpu_seconds_medians: cpuSteps,
      kotara: { runs: ks, step_seconds_median: kStep, tokens_per_s_median: kTps, first_token_seconds_median: kFirst,
        wall_seconds_median: kWall, seconds_median: kSec },
      hf: { a: hA, b: hB, step_seconds_median: [aStep, bStep], tokens_per_s_median: [aTps, bTps], tokens_per_s_a_then_b: sumTps,
        first_token_seconds_median: [aFirst, bFirst] },
      prompt_tokens: { kotara: ks[0].prompt_tokens, hf: hfInfo.prompt_tokens[key] },
    };
  }
  o.row(`generation: every row made ${o.newTokens} tokens on both sides (no early end token)`, allSteps ? "yes" : "no: see the JSON",
    "", allSteps ? "info" : "FAIL");
  o.row("generation: the same prompt ids on both sides (start token + prompt)", sameIds ? "yes" : "no: see the JSON", "",
    sameIds ? "info" : "FAIL");
  return {
    strategy: STRATEGY, new_tokens: o.newTokens, batches: o.batches, rounds: o.rounds, target: STEP_TARGET, prompts,
    compared: "step = (seconds − first_token_seconds) / (steps − 1); Kotara: the worker's GeneratedMsg times; " +
      "HF: the wall of model.generate() in bench/hf_generate.py; ratio = Kotara step / (A step + B step), median of the rounds' ratios; " +
      "cpu_ratio: the same in process CPU time (Kotara: the worker's /proc/<pid>/stat; HF: time.process_time())",
    hf_threads: hfInfo.threads, all_rows_full: allSteps, same_prompt_ids: sameIds, batch: out,
    loadavg_start: loadStart.map((x) => Math.round(x * 100) / 100), loadavg_end: loadavg().map((x) => Math.round(x * 100) / 100),
  };
}
