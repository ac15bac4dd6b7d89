// The byte-space part of `npm run bench` (SPEC §7, issue "Fuse models whose tokenizers differ"):
//
//   1. cost: byte-space evaluation of a same-tokenizer pair ÷ token-space evaluation of the
//      same pair, same text, same CPU, one run, at K = 1 and at the default K;
//   2. memory: the worker's peak per request on a 2× and an 8× longer text in byte space
//      (K = 1, batch 2: the same batch shapes), three requests each, interleaved, medians.
//
// The pair is the demo's twin-a (GPT-2) + sibling (Llama): trained models (the beam's cost
// depends on how much mass sits off the canonical tokenization, and random weights spread
// it everywhere) with one byte-level BPE (the bench's GPT-2-small pair has a word-level
// tokenizer, which byte space refuses). The text is the head of the held-out docs that
// scripts/demo_text.py writes (the set-up runs it), cut at a line end.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { DEFAULTS } from "../src/defaults.js";
import { openSession, type Evaluation } from "../src/session.js";
import { KNOWN_STRATEGIES, resolveStrategies } from "../src/strategies.js";

export interface ByteBenchOptions {
  root: string;
  work: string;
  /** Bytes of text for the cost figure (the memory check: one window repeated, 2× and 8× a quarter of it). */
  bytes: number;
  batchSize: number;
  log: (msg: string) => void;
  row: (figure: string, value: string, target?: string, status?: "PASS" | "MISS" | "FAIL" | "info" | "skipped") => void;
}

const PAIR = ["models/demo/twin-a", "models/demo/sibling"];
const TOKEN_WINDOW = 256;    // the demo models' context: every token scored once, stride = length
const BYTE_WINDOW = 512;     // bytes: ≈ 160 tokens of these models, inside their 256 positions
const MEMORY_ROUNDS = 3;
const MEMORY_BAND = 0.02;    // of the 2× peak, as the token-space check (bench/run.ts)
const RATIO_TARGET = 3;

const fmt = (x: number, d = 2) => x.toFixed(d);
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];

/** The first whole lines of `src`, at most `n` bytes, written to `dst`. */
function cutLines(src: string, n: number, dst: string): number {
  const buf = readFileSync(src);
  let end = Math.min(n, buf.length);
  if (end < buf.length) {
    const nl = buf.lastIndexOf(0x0a, end - 1);
    if (nl > 0) end = nl + 1;
  }
  writeFileSync(dst, buf.subarray(0, end));
  return end;
}

/** The first whole lines of src that fit n bytes, padded with spaces to exactly n (one window). */
function oneWindow(src: string, n: number): string {
  const head = readFileSync(src).subarray(0, n);
  const lines = head.subarray(0, head.lastIndexOf(0x0a) + 1).toString("utf8");
  return lines.slice(0, -1) + " ".repeat(n - Buffer.byteLength(lines)) + "\n";
}

interface Run {
  label: string;
  wall: number;
  compute: number;
  peak: number;
  evaluation: Evaluation;
}

export async function byteSpaceBench(o: ByteBenchOptions): Promise<unknown> {
  const source = join(o.root, "data", "demo", "docs-heldout.txt");
  const models = PAIR.map((p) => resolve(o.root, p));
  if (!existsSync(source) || !models.every((m) => existsSync(m))) {
    o.row("byte space ÷ token space", "skipped: run bash scripts/setup.sh first (data/demo/, models/demo/)", "", "skipped");
    return { skipped: "no demo text or models" };
  }
  const text = join(o.work, "bytes-1x.txt");
  const n = cutLines(source, o.bytes, text);
  const settings = resolveStrategies([...KNOWN_STRATEGIES], 2);
  o.log(`bytes: twin-a + sibling (one byte-level BPE), ${n} bytes of the held-out docs; token windows ${TOKEN_WINDOW}, byte windows ${BYTE_WINDOW}`);

  const evaluate = async (space: "tokens" | "bytes", beam: number, path: string, L: number, batchSize: number, label: string): Promise<Run> => {
    const s = await openSession({ models, space, bytes: { beam }, maxLength: space === "tokens" ? L : undefined });
    try {
      o.log(`bytes: ${label}`);
      const t0 = performance.now();
      const evaluation = await s.evaluate({ dataset: { path, max_length: L, stride: L }, strategies: settings, batchSize });
      const wall = (performance.now() - t0) / 1000;
      const r = evaluation.result;
      o.log(`bytes: ${label}: ${fmt(wall)}s wall, ${fmt(r.seconds)}s compute`);
      return { label, wall, compute: r.seconds, peak: r.peak_memory_bytes, evaluation };
    } finally {
      await s.close();
    }
  };
  // a session per run: each pays its own load, outside the timed evaluate(); a warm-up of
  // the token path first (first-call costs of torch are not the space's)
  await evaluate("tokens", 1, text, TOKEN_WINDOW, o.batchSize, "warm-up (not timed)");
  const tokens = await evaluate("tokens", 1, text, TOKEN_WINDOW, o.batchSize, "token space");
  const k1 = await evaluate("bytes", 1, text, BYTE_WINDOW, o.batchSize, "byte space, K = 1");
  const kDef = await evaluate("bytes", DEFAULTS.beam, text, BYTE_WINDOW, o.batchSize, `byte space, K = ${DEFAULTS.beam} (default)`);
  const ratio = (r: Run) => r.wall / tokens.wall;
  const bpb = (r: Run) => r.evaluation.metrics.models.map((m) => fmt(m.bits_per_byte, 4)).join(" / ");
  o.row(`byte ÷ token space, K = 1 (${n} bytes, 2 models, ${settings.length} strategies)`,
    `${fmt(ratio(k1), 1)}×  (${fmt(k1.wall)}s / ${fmt(tokens.wall)}s)`, "reported", "info");
  o.row(`byte ÷ token space, K = ${DEFAULTS.beam} (default)`, `${fmt(ratio(kDef), 1)}×  (${fmt(kDef.wall)}s / ${fmt(tokens.wall)}s)`,
    `<= ${RATIO_TARGET}`, ratio(kDef) <= RATIO_TARGET ? "PASS" : "MISS");
  o.row("  byte space throughput, K = 1 / default", `${fmt(n / k1.wall, 0)} / ${fmt(n / kDef.wall, 0)} bytes/s`, "", "info");
  o.row("  bits/byte twin-a / sibling: tokens, K = 1, default K", `${bpb(tokens)}; ${bpb(k1)}; ${bpb(kDef)}`, "", "info");

  // memory: K = 1, batch 2, a 2× and an 8× text made of one window's text repeated (its
  // first whole lines, padded with spaces to exactly one window): every window of both texts
  // is that same window, so length is the only difference. (Cut from real text instead, the
  // longer text's densest window has more tokens, 205 vs 163 here, and a request's peak is a
  // maximum over its windows: it would grow with the text's worst window, not its length.)
  const unit = oneWindow(source, BYTE_WINDOW);
  const per = Math.max(2, Math.round(o.bytes / 4 / BYTE_WINDOW));           // windows of the 2× text
  const text2 = join(o.work, "bytes-2x.txt");
  const text8 = join(o.work, "bytes-8x.txt");
  writeFileSync(text2, unit.repeat(per));
  writeFileSync(text8, unit.repeat(4 * per));
  const [n2, n8] = [per, 4 * per].map((k) => k * BYTE_WINDOW);
  const s = await openSession({ models, space: "bytes", bytes: { beam: 1 } });
  const x2: number[] = [];
  const x8: number[] = [];
  try {
    const one = async (path: string, label: string) => {
      o.log(`bytes: memory, ${label}`);
      const e = await s.evaluate({ dataset: { path, max_length: BYTE_WINDOW, stride: BYTE_WINDOW }, strategies: settings, batchSize: 2 });
      return e.result.peak_memory_bytes;
    };
    await one(text2, "warm-up (not counted)");
    for (let round = 1; round <= MEMORY_ROUNDS; round++) {
      x2.push(await one(text2, `2× text, ${n2} bytes (round ${round}/${MEMORY_ROUNDS})`));
      x8.push(await one(text8, `8× text, ${n8} bytes (round ${round}/${MEMORY_ROUNDS})`));
    }
  } finally {
    await s.close();
  }
  const p2 = median(x2);
  const p8 = median(x8);
  const band = MEMORY_BAND * p2;
  o.row(`byte space peak memory, ${n2} / ${n8} bytes, medians of ${MEMORY_ROUNDS} (K = 1, batch 2)`,
    `${mib(p2)} / ${mib(p8)}  (${p8 >= p2 ? "+" : "−"}${mib(Math.abs(p8 - p2))})`, `<= 2× + ${100 * MEMORY_BAND}% = ${mib(p2 + band)}`,
    p8 <= p2 + band ? "PASS" : "MISS");
  const brief = (r: Run) => ({ label: r.label, wall_s: r.wall, compute_s: r.compute, peak_memory_bytes: r.peak,
    bits_per_byte: r.evaluation.metrics.models.map((m) => m.bits_per_byte), windows: r.evaluation.result.windows });
  return {
    pair: PAIR, bytes: n, token_window: TOKEN_WINDOW, byte_window: BYTE_WINDOW, default_beam: DEFAULTS.beam,
    token_space: brief(tokens), k1: brief(k1), k_default: brief(kDef),
    ratio_k1: ratio(k1), ratio_default: ratio(kDef),
    memory: { bytes_2x: n2, bytes_8x: n8, peaks_2x: x2, peaks_8x: x8, median_2x: p2, median_8x: p8, band_bytes: band },
  };
}
