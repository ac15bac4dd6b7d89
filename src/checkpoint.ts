// Checkpoints of a long run: the running sums every N windows (and on Ctrl-C), so that
// `kotara run CONFIG --resume` continues exactly where it stopped. A checkpoint is only
// used when the config, the models and the text are the ones it was made from, which
// is checked by hashes.
import { createHash } from "node:crypto";
import { existsSync, readdirSync, statSync } from "node:fs";
import { open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { DatasetStats } from "./dataset.js";
import { UserError } from "./errors.js";
import { writeJsonAtomic } from "./outputs.js";
import { Sums, type ByteOptions, type DatasetSpec, type ModelSpec, type Setting } from "./protocol.js";

export interface Fingerprint {
  /** What decides the numbers: space and beam, models, tokenizer, windows, settings, batch size. */
  config: string;
  /** sha256 of the text file. */
  text: string;
  /** Per model: its files (name, size, head and tail hashes) for local dirs; ref@revision for Hub ids. */
  models: string[];
}

export interface Checkpoint {
  kotara_checkpoint: 1;
  fingerprint: Fingerprint;
  windows_total: number;
  sums: Sums;
  written_at: string;
}

export interface EvaluationKey {
  space: string;
  bytes: ByteOptions;
  models: readonly ModelSpec[];
  tokenizer: string | null;
  dataset: DatasetSpec;
  /** The text's hash comes from the one read of it (dataset.ts scanDataset). */
  text: Pick<DatasetStats, "sha256">;
  settings: readonly Setting[];
  batch_size: number;
}

const sha256 = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");

/** Size plus the first and last MiB: cheap for 15 GB of weights, and any re-save changes it. */
async function sampleFile(path: string): Promise<string> {
  const { size } = statSync(path);
  const f = await open(path, "r");
  try {
    const n = Math.min(size, 1 << 20);
    const head = Buffer.alloc(n);
    const tail = Buffer.alloc(n);
    await f.read(head, 0, n, 0);
    await f.read(tail, 0, n, Math.max(0, size - n));
    return `${size}:${sha256(Buffer.concat([head, tail]))}`;
  } finally {
    await f.close();
  }
}

async function modelFingerprint(m: ModelSpec): Promise<string> {
  if (!existsSync(m.ref) || !statSync(m.ref).isDirectory()) return `${m.ref}@${m.revision ?? "default"}`;
  const parts: string[] = [];
  for (const name of readdirSync(m.ref).sort()) {
    const p = join(m.ref, name);
    if (statSync(p).isFile()) parts.push(`${name}=${await sampleFile(p)}`);
  }
  return sha256(parts.join("\n"));
}

export async function fingerprint(key: EvaluationKey): Promise<Fingerprint> {
  const config = sha256(JSON.stringify({
    // where a model's parts lie (device_map, max_memory) does not change its numbers (docs/scale.md): a run that
    // ran out of memory may resume with a smaller budget or over more devices
    space: key.space, bytes: key.bytes, models: key.models.map(({ device_map: _m, max_memory: _b, ...m }) => m), tokenizer: key.tokenizer, dataset: { ...key.dataset, path: undefined },
    settings: key.settings, batch_size: key.batch_size,
  }));
  return { config, text: key.text.sha256, models: await Promise.all(key.models.map(modelFingerprint)) };
}

export async function saveCheckpoint(path: string, fp: Fingerprint, windowsTotal: number, sums: Sums): Promise<void> {
  const c: Checkpoint = { kotara_checkpoint: 1, fingerprint: fp, windows_total: windowsTotal, sums, written_at: new Date().toISOString() };
  await writeJsonAtomic(path, c);
}

/** The checkpoint's sums, or a UserError (exit 2) saying why it cannot be used. */
export async function loadCheckpoint(path: string, fp: Fingerprint): Promise<Checkpoint> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "there is none" : `it is unreadable (${(e as Error).message})`;
    throw new UserError(`cannot resume: no usable checkpoint at ${path}: ${why}`, 2);
  }
  const c = raw as Checkpoint;
  const sums = Sums.safeParse(c?.sums);
  if (c?.kotara_checkpoint !== 1 || !sums.success || !c.fingerprint) throw new UserError(`cannot resume: ${path} is not a kotara checkpoint`, 2);
  const reasons: string[] = [];
  if (c.fingerprint.config !== fp.config) reasons.push("the config changed (space, models, tokenizer, windows, strategies or batch size)");
  if (c.fingerprint.text !== fp.text) reasons.push("the text file changed");
  fp.models.forEach((m, i) => {
    if (c.fingerprint.models?.[i] !== m) reasons.push(`model ${i + 1} changed`);
  });
  if (reasons.length) throw new UserError(`cannot resume from ${path}: ${reasons.join("; ")}. Run without --resume to start over.`, 2);
  return { ...c, sums: sums.data };
}

export async function removeCheckpoint(path: string): Promise<void> {
  await rm(path, { force: true });
}

/**
 * The checkpoints of one run: saves the running sums every `every` windows (0: never
 * on schedule) and once more when the run fails or is interrupted, one write at a time.
 */
export class CheckpointKeeper {
  private last: { sums: Sums; total: number } | null = null;
  private lastSaved: number;
  private saving: Promise<void> = Promise.resolve();

  constructor(readonly path: string, private fp: Fingerprint, private every: number, private resumedFrom: number | null) {
    this.lastSaved = resumedFrom ?? 0;
  }

  static async open(path: string, key: EvaluationKey, every: number, resume: boolean): Promise<{ keeper: CheckpointKeeper; resume: Checkpoint | null }> {
    const fp = await fingerprint(key);
    const c = resume ? await loadCheckpoint(path, fp) : null;
    return { keeper: new CheckpointKeeper(path, fp, every, c?.sums.windows_done ?? null), resume: c };
  }

  /** Every progress message: remember the sums; save when `every` windows have passed. */
  progress(sums: Sums, total: number): void {
    this.last = { sums, total };
    if (this.every > 0 && sums.windows_done - this.lastSaved >= this.every && sums.windows_done < total) {
      this.lastSaved = sums.windows_done;
      this.save(sums, total);
    }
  }

  private save(sums: Sums, total: number): void {
    this.saving = this.saving.then(() => saveCheckpoint(this.path, this.fp, total, sums)).catch((e) => {
      process.stderr.write(`kotara: could not write the checkpoint ${this.path}: ${(e as Error).message}\n`);
    });
  }

  /** Waits for the writes in flight. */
  flush(): Promise<void> {
    return this.saving;
  }

  /**
   * After a failure or an interrupt: saves what was finished since the last save, and
   * says so. Returns the line to print, or null when there was nothing new.
   */
  async saveOnStop(interrupted: boolean): Promise<string | null> {
    const p = this.last;
    const newer = interrupted ? (this.resumedFrom ?? -1) : this.lastSaved;
    if (!p || p.sums.windows_done <= newer) return null;
    this.save(p.sums, p.total);
    await this.saving;
    const done = `${p.sums.windows_done}/${p.total} windows`;
    return interrupted
      ? `saved ${done} to ${this.path}; continue with: kotara run <config> --resume`
      : `the run failed after ${done}; they are saved in ${this.path} (continue with --resume once the cause is fixed)`;
  }

  async remove(): Promise<void> {
    await removeCheckpoint(this.path);
  }
}
