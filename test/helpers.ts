// Shared by the end-to-end tests: tiny models built offline once (by the same
// builder the Python tests use), temp dirs, and running the real CLI.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execa } from "execa";
import type { Sums } from "../src/protocol.js";
import { resolvePython } from "../src/session.js";
import { PACKAGE_ROOT } from "../src/worker.js";

export const PYTHON = resolvePython();
export const KOTARA = join(PACKAGE_ROOT, "bin", "kotara");
/** The fake worker (test/fake-worker/): the controller's "python" for tests of controller logic, no torch. */
export const FAKE_PYTHON = join(PACKAGE_ROOT, "test", "fake-worker", "python");

/** OUT/{gpt2-a,gpt2-b,llama,gpt2-padded,gpt2-othertok}, OUT/text.txt — built once per builder version. */
export function tinyModels(): string {
  const builder = join(PACKAGE_ROOT, "python", "tests", "tiny_models.py");
  const tag = createHash("sha256").update(readFileSync(builder)).digest("hex").slice(0, 12);
  const out = join(tmpdir(), `kotara-tiny-${tag}`);
  if (!existsSync(join(out, "text.txt"))) {
    const staging = `${out}.${process.pid}`;
    execFileSync(PYTHON, [builder, staging], { stdio: ["ignore", "ignore", "inherit"] });
    try {
      renameSync(staging, out);
    } catch {
      rmSync(staging, { recursive: true, force: true }); // another test file won the race
    }
  }
  return out;
}

export function tempDir(prefix = "kotara-test-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function writeFile(dir: string, name: string, content: string | Buffer): string {
  const p = join(dir, name);
  mkdirSync(join(p, ".."), { recursive: true });
  writeFileSync(p, content);
  return p;
}

export function kotara(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeout?: number } = {}) {
  return execa(process.execPath, [KOTARA, ...args], {
    reject: false, all: false, cwd: opts.cwd ?? PACKAGE_ROOT, env: { ...opts.env }, timeout: opts.timeout ?? 120_000,
  });
}

/** Perplexity by the Hugging Face fixed-length method, computed by plain transformers code (no Kotara). */
export function referencePpl(model: string, text: string, maxLength: number, stride: number): number {
  const script = `
import math, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, text_path, L, S = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
ids = torch.tensor([tok(open(text_path, encoding="utf-8").read())["input_ids"]])
n = ids.size(1); nll = 0.0; count = 0; prev_end = 0
for begin in range(0, n, S):
    end = min(begin + L, n); trg = end - prev_end
    inp = ids[:, begin:end]; labels = inp.clone(); labels[:, :-trg] = -100
    with torch.no_grad():
        logits = model(inp).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1); tgt = labels[:, 1:]
    mask = tgt != -100
    nll -= lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].sum().item(); count += int(mask.sum())
    prev_end = end
    if end == n: break
print(math.exp(nll / count))
`;
  const out = execFileSync(PYTHON, ["-c", script, model, text, String(maxLength), String(stride)], { encoding: "utf8" });
  return Number(out.trim().split("\n").pop());
}

/** Is a process alive? */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** PIDs of the children of `pid` (Linux /proc). */
export function childPids(pid: number): number[] {
  try {
    return execFileSync("pgrep", ["-P", String(pid)], { encoding: "utf8" }).trim().split("\n").filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A deterministic PRNG (mulberry32): the same numbers on every machine. */
export function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Sums as the worker sends them (protocol v3), from per-position NLLs: the positions cut
 * into consecutive windows of `sizes` scored positions, each window's value the in-order
 * sum of its positions, each total the in-order sum of its windows (as the worker adds them).
 * modelNll[m][p], fusionNll[k][p]; fusionWeights: the totals Σ α, per setting and model.
 */
export function windowedSums(o: { modelNll: number[][]; fusionNll: number[][]; fusionWeights: number[][]; sizes: number[]; bytes: number[] }): Sums {
  const cuts = o.sizes.reduce<number[]>((acc, s) => [...acc, acc[acc.length - 1] + s], [0]);
  const perWindow = (row: number[]) => o.sizes.map((_, w) => row.slice(cuts[w], cuts[w + 1]).reduce((a, x) => a + x, 0));
  const inOrder = (xs: number[]) => xs.reduce((a, x) => a + x, 0);
  const wm = o.modelNll.map(perWindow);
  const wf = o.fusionNll.map(perWindow);
  return {
    windows_done: o.sizes.length, scored_tokens: inOrder(o.sizes), model_nll: wm.map(inOrder), fusion_nll: wf.map(inOrder),
    fusion_weights: o.fusionWeights, window_first: 0, window_targets: [...o.sizes], window_bytes: [...o.bytes],
    window_model_nll: wm, window_fusion_nll: wf,
  };
}

/** The tiny models' text three times, in `work`: with stride 8, ~700 windows of 64 tokens, long enough to interrupt a run. */
export function longText(models: string, work: string): string {
  return writeFile(work, "long.txt", readFileSync(join(models, "text.txt"), "utf8").repeat(3));
}

/**
 * `kotara run CONFIG` in the background, returned once its progress shows (its workers are
 * evaluating): the child, its worker processes (the controller's children) and its output so far.
 */
export async function startRun(cfg: string, env: Record<string, string>, deadlineMs: number) {
  const child = execa(process.execPath, [KOTARA, "run", cfg], { reject: false, env, all: true });
  let out = "";
  child.all!.on("data", (d: Buffer) => (out += d.toString()));
  await waitFor(() => /windows \d+\/\d+/.test(out), deadlineMs, `progress of ${cfg}`);
  return { child, pids: childPids(child.pid!), output: () => out };
}

