// `kotara generate CONFIG --prompt TEXT`: the fused model writes, streaming to stdout.
// The config gives the models and the strategies; --strategy picks one by id (default:
// the first). With several prompts they decode together in one batch; stdout shows
// them in order (each one's text as soon as the ones before it are done).
import { catchInterrupts } from "./run.js";
import { readFile } from "node:fs/promises";
import { loadConfig } from "../config.js";
import { Interrupted, UserError } from "../errors.js";
import { shortName } from "../format.js";
import type { GenerationChunk, GenerationSummary } from "../generation.js";
import type { Setting } from "../protocol.js";
import { Session } from "../session.js";

export interface GenerateFlags {
  prompt?: string;
  promptFile?: string;
  prompts?: string;
  strategy?: string;
  maxNewTokens?: number;
  maxNewBytes?: number;
  greedy?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  json?: boolean;
  truncate: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

/** The prompts the flags name: exactly one of --prompt, --prompt-file, --prompts (JSONL of {"prompt": …}). */
export async function readPrompts(f: GenerateFlags): Promise<string[]> {
  const given = [f.prompt !== undefined, f.promptFile !== undefined, f.prompts !== undefined].filter(Boolean).length;
  if (given !== 1) throw new UserError("generate: give exactly one of --prompt, --prompt-file, --prompts", 2);
  if (f.prompt !== undefined) return [f.prompt];
  const file = (f.promptFile ?? f.prompts)!;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new UserError(`generate: cannot read ${file}: ${(e as Error).message}`, 2);
  }
  if (f.promptFile !== undefined) return [text];
  const out: string[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new UserError(`generate: ${file}:${i + 1}: not JSON: ${line.slice(0, 60)}`, 2);
    }
    const p = (v as { prompt?: unknown })?.prompt;
    if (typeof p !== "string") throw new UserError(`generate: ${file}:${i + 1}: needs {"prompt": "…"} (a string)`, 2);
    out.push(p);
  });
  if (out.length === 0) throw new UserError(`generate: ${file} has no prompts`, 2);
  return out;
}

/** The config's setting with this id (default: the first); an unknown id lists the known ones. */
export function pickSetting(settings: readonly Setting[], id: string | undefined): Setting {
  if (id === undefined) return settings[0];
  const s = settings.find((x) => x.id === id);
  if (!s) throw new UserError(`generate: no strategy "${id}" in the config; its strategies: ${settings.map((x) => x.id).join(", ")}`, 2);
  return s;
}

export async function generateCommand(configPath: string, f: GenerateFlags): Promise<void> {
  const plan = await loadConfig(configPath, { checkFiles: false });
  const prompts = await readPrompts(f);
  const setting = pickSetting(plan.settings, f.strategy);
  if (f.maxNewTokens !== undefined && f.maxNewBytes !== undefined) throw new UserError("generate: --max-new-tokens and --max-new-bytes exclude each other", 2);
  if (f.greedy && (f.temperature !== undefined || f.topK !== undefined || f.topP !== undefined || f.seed !== undefined)) {
    throw new UserError("generate: --greedy takes no --temperature, --top-k, --top-p or --seed", 2);
  }
  const say = (m: string) => f.quiet || process.stderr.write(`kotara: ${m}\n`);
  const abort = catchInterrupts(null);      // what was printed stays; the top-level handler says "interrupted"
  let session: Session | null = null;
  try {
    say(`loading ${plan.models.map((m) => m.ref).join(", ")}`);
    session = await Session.open({
      models: plan.models, tokenizer: plan.tokenizer, python: plan.runtime.python, space: plan.space, bytes: plan.bytes,
      onStatus: (m) => (m.startsWith("warning: ") ? process.stderr.write(`kotara: ${m}\n`) : f.verbose && say(m)),
      onStderr: f.verbose ? (l) => process.stderr.write(`[worker] ${l}\n`) : undefined,
    });
    const bytes = session.space === "bytes";
    if (!bytes && f.maxNewBytes !== undefined) throw new UserError("generate: --max-new-bytes is for byte space; these models share a vocabulary: use --max-new-tokens", 2);
    if (bytes && f.maxNewTokens !== undefined) throw new UserError(`generate: byte space (${session.loaded.space_reason}) writes bytes: use --max-new-bytes`, 2);
    if (bytes) say(`byte space: ${session.loaded.space_reason} (beam ${plan.bytes.beam})`);
    const gen = session.generate({
      prompts, strategy: setting, maxNewTokens: bytes ? f.maxNewBytes : f.maxNewTokens, stop: f.stop, truncate: f.truncate, signal: abort.signal,
      sampling: { greedy: f.greedy, temperature: f.temperature, topK: f.topK, topP: f.topP, seed: f.seed },
    });
    const out = new OrderedText(prompts.length, !f.json);
    const steps: GenerationChunk[][] = prompts.map(() => []);
    for await (const c of gen) {
      steps[c.prompt].push(c);
      out.add(c);
    }
    const summary = await gen.summary;
    out.end();
    if (f.json) for (const o of summary.outputs) process.stdout.write(JSON.stringify(jsonLine(prompts, o.prompt, summary, steps[o.prompt])) + "\n");
    if (!f.quiet) process.stderr.write(summaryLine(summary, plan.models.map((m) => shortName(m.ref))) + "\n");
  } catch (e) {
    if (abort.signal.aborted) {
      process.stdout.write("\n");
      throw new Interrupted();
    }
    throw e;
  } finally {
    abort.dispose();
    await session?.close();
  }
}

/** Text of several prompts on one stdout, in prompt order: the current one live, the later ones buffered. */
class OrderedText {
  private current = 0;
  private readonly buffered: string[];
  private readonly done: boolean[];

  constructor(private readonly n: number, private readonly enabled: boolean) {
    this.buffered = Array.from({ length: n }, () => "");
    this.done = Array.from({ length: n }, () => false);
  }

  add(c: GenerationChunk): void {
    if (!this.enabled) return;
    if (c.prompt === this.current) this.write(c.text);
    else this.buffered[c.prompt] += c.text;
    if (c.done) this.done[c.prompt] = true;
    while (this.current < this.n && this.done[this.current]) this.next();
  }

  private next(): void {
    this.write("\n");
    this.current++;
    if (this.current < this.n) {
      if (this.n > 1) this.write(`--- prompt ${this.current + 1} ---\n`);
      this.write(this.buffered[this.current]);
      this.buffered[this.current] = "";
    }
  }

  private write(s: string): void {
    if (s) process.stdout.write(s);
  }

  end(): void {
    while (this.enabled && this.current < this.n) this.next();
  }
}

function jsonLine(prompts: string[], i: number, s: GenerationSummary, steps: GenerationChunk[]) {
  const o = s.outputs[i];
  return {
    prompt: prompts[i], text: o.text, strategy: s.setting.id, space: s.space, finish: o.finish, tokens: o.tokens,
    logprobs: o.logprobs, weights: steps.map((c) => c.weights), weights_mean: o.weights_mean,
    prompt_tokens: o.prompt_tokens, truncated: o.truncated,
    timings: { seconds: s.seconds, first_token_seconds: s.firstTokenSeconds, tokens_per_second: s.tokensPerSecond },
  };
}

function summaryLine(s: GenerationSummary, names: string[]): string {
  const tokens = s.outputs.reduce((a, o) => a + o.tokens.length, 0);
  const n = s.outputs.length;
  const unit = s.space === "bytes" ? "bytes" : "tokens";
  const mean = names.map((_, m) => s.outputs.reduce((a, o) => a + (o.weights_mean[m] ?? 0) * o.tokens.length, 0) / Math.max(1, tokens));
  return `kotara: ${s.setting.id} · ${tokens} ${unit}${n > 1 ? ` for ${n} prompts` : ""} in ${s.seconds.toFixed(2)} s ` +
    `(${s.tokensPerSecond.toFixed(1)} ${unit}/s, first ${unit === "bytes" ? "byte" : "token"} ${s.firstTokenSeconds.toFixed(2)} s) · mean weights ` +
    names.map((x, m) => `${x} ${mean[m].toFixed(2)}`).join(" / ");
}
