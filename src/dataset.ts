// The text file of an evaluation, read ONCE on the controller's side, as a stream:
// one pass checks that it can be scored (a regular file, not empty, no NUL bytes,
// valid UTF-8, two words or more), counts its UTF-8 bytes and its words (the
// denominators of bits per byte and word perplexity) and hashes it (a checkpoint's
// fingerprint). The worker reads it once more, to tokenize it.
import { createHash } from "node:crypto";
import { closeSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { ConfigError } from "./errors.js";
import type { Checked } from "./validation.js";

export interface DatasetStats {
  /** UTF-8 bytes of the text (the file's size). */
  bytes: number;
  /** Whitespace-separated pieces of the text, as lm-evaluation-harness counts them. */
  words: number;
  /** sha256 of the file, hex. */
  sha256: string;
  /** Documents mode, or a .jsonl: the documents (a plain text file is one). */
  documents?: number;
}

/** Python's str `\s` (str.isspace()), spelled out: lm-evaluation-harness splits words with re.split(r"\s+"). */
const PY_SPACE = /[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

/** lm-evaluation-harness's word count of one document: len(re.split(r"\s+", doc)) (leading and
 * trailing whitespace each add an empty piece; "" counts 1). Documents mode sums it over documents. */
export function lmEvalWords(doc: string): number {
  return doc.split(PY_SPACE).length;
}

/** How the documents of a dataset become what is scored (DatasetSpec's v6 fields). */
export interface DocumentOptions {
  /** .jsonl: the key of each line's document; null: a plain text file (one document). */
  field: string | null;
  mode: "stream" | "documents";
  /** Stream mode over a .jsonl: what joins the documents. */
  separator: string;
}

/** The documents of a .jsonl file (as python/kotara_worker/datasets.py read_jsonl reads them). */
export function readJsonl(text: string, field: string, file: string): Checked<string[] | null> {
  const docs: string[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^[ \t\r\n]*$/.test(line)) continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      return { value: null, lines: [`${file}:${i + 1}: not a JSON object (${(err as Error).message})`] };
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      return { value: null, lines: [`${file}:${i + 1}: expected a JSON object with a "${field}" field`] };
    }
    const rec = obj as Record<string, unknown>;
    if (!(field in rec)) return { value: null, lines: [`${file}:${i + 1}: no field "${field}" (fields: ${Object.keys(rec).join(", ") || "none"})`] };
    if (typeof rec[field] !== "string") return { value: null, lines: [`${file}:${i + 1}: field "${field}" is not a string`] };
    docs.push(rec[field] as string);
  }
  return { value: docs, lines: [] };
}

/**
 * The stats of a dataset as it is scored: a plain text file in stream mode is
 * scanDataset's; a .jsonl is read whole (its documents joined in stream mode); in
 * documents mode bytes and words are summed over documents, words counted as
 * lm-evaluation-harness counts them (lmEvalWords). sha256 is the file's.
 */
export function scanDocuments(file: string, opts: DocumentOptions): Checked<DatasetStats | null> {
  if (opts.field === null && opts.mode === "stream") return scanDataset(file);
  const fail = (line: string) => ({ value: null, lines: [line] });
  let docs: string[];
  let sha256: string;
  if (opts.field === null) {
    const scan = scanDataset(file);
    if (!scan.value) return scan;
    docs = [readFileSync(file, "utf8")];
    sha256 = scan.value.sha256;
  } else {
    let st;
    try {
      st = statSync(file);
    } catch {
      return fail(`file not found: ${file}`);
    }
    if (!st.isFile()) return fail(`not a regular file: ${file}`);
    const raw = readFileSync(file);
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    } catch {
      const bad = firstInvalidUtf8(raw);
      return fail(`not valid UTF-8: first bad byte at offset ${bad}: ${file}`);
    }
    const r = readJsonl(text, opts.field, file);
    if (!r.value) return { value: null, lines: r.lines };
    docs = r.value;
    sha256 = createHash("sha256").update(raw).digest("hex");
  }
  if (docs.length === 0) return fail(`no documents: ${file}`);
  if (opts.mode === "documents") {
    const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d, "utf8"), 0);
    if (bytes === 0) return fail(`every document is empty: ${file}`);
    return { value: { bytes, words: docs.reduce((a, d) => a + lmEvalWords(d), 0), sha256, documents: docs.length }, lines: [] };
  }
  const text = docs.join(opts.separator);
  const words = countWords(text);
  if (words < 2) return fail(`too short to score: ${words} word${words === 1 ? "" : "s"}; at least 2 are needed: ${file}`);
  return { value: { bytes: Buffer.byteLength(text, "utf8"), words, sha256, documents: docs.length }, lines: [] };
}

/** Words as lm-evaluation-harness counts them: the non-empty pieces of text.split(/\s+/). */
export function countWords(text: string): number {
  return new WordCounter().add(text).words;
}

/** countWords over a text given in pieces: a word cut by a piece boundary counts once. */
class WordCounter {
  words = 0;
  private inWord = false;

  add(piece: string): this {
    for (const m of piece.matchAll(/\S+/g)) {
      // a word that starts the piece continues the previous piece's last word
      if (!(m.index === 0 && this.inWord)) this.words++;
    }
    if (piece.length > 0) this.inWord = /\S$/.test(piece);
    return this;
  }
}

/**
 * Offset of the first byte of the first ill-formed UTF-8 sequence, or -1 when the
 * bytes are valid UTF-8 (the WHATWG decoder's rules: no overlongs, no surrogates,
 * nothing above U+10FFFF). TextDecoder says *whether*; this says *where*.
 */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined) return i; // truncated at the end of the file
      if (k === 1 ? c < lo || c > hi : c < 0x80 || c > 0xbf) return i;
    }
    i += need + 1;
  }
  return -1;
}

const CHUNK = 1 << 20;

/**
 * Checks, counts and hashes a dataset file in one streamed pass (1 MiB at a time, so
 * memory does not grow with the text). `lines` are messages without a path.
 */
export function scanDataset(file: string): Checked<DatasetStats | null> {
  const fail = (line: string) => ({ value: null, lines: [line] });
  let st;
  try {
    st = statSync(file);
  } catch {
    return fail(`file not found: ${file}`);
  }
  if (st.isDirectory()) return fail(`is a directory, expected a UTF-8 text file: ${file}`);
  if (!st.isFile()) return fail(`not a regular file: ${file}`);
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (err) {
    return fail(`cannot read ${file}: ${(err as Error).message}`);
  }
  const hash = createHash("sha256");
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const counter = new WordCounter();
  const buf = Buffer.alloc(CHUNK);
  let bytes = 0;
  try {
    for (let n; (n = readSync(fd, buf, 0, CHUNK, null)) > 0; bytes += n) {
      const chunk = buf.subarray(0, n);
      const nul = chunk.indexOf(0);
      if (nul >= 0) return fail(`looks like a binary file (NUL byte at offset ${bytes + nul}), expected UTF-8 text: ${file}`);
      hash.update(chunk);
      counter.add(decoder.decode(chunk, { stream: true }));
    }
    counter.add(decoder.decode());
  } catch (err) {
    if (!(err instanceof TypeError)) return fail(`cannot read ${file}: ${(err as Error).message}`);
    // The decoder says whether, not where: only on this error path is the file read
    // whole, to name the offending byte.
    const all = readFileSync(file);
    const bad = firstInvalidUtf8(all);
    const hex = bad >= 0 ? all[bad].toString(16).padStart(2, "0") : "??";
    return fail(`not valid UTF-8: first bad byte 0x${hex} at offset ${bad}: ${file}`);
  } finally {
    closeSync(fd);
  }
  if (bytes === 0) return fail(`file is empty: ${file}`);
  if (counter.words < 2) {
    return fail(`too short to score: ${counter.words} word${counter.words === 1 ? "" : "s"}; at least 2 are needed: ${file}`);
  }
  return { value: { bytes, words: counter.words, sha256: hash.digest("hex") }, lines: [] };
}

/** scanDocuments, or a ConfigError (`dataset.path: …`) when the file cannot be scored. */
export function datasetStats(file: string, opts?: DocumentOptions): DatasetStats {
  const r = opts ? scanDocuments(file, opts) : scanDataset(file);
  if (!r.value) throw new ConfigError(r.lines.map((m) => `dataset.path: ${m}`));
  return r.value;
}

/** The v6 fields of a DatasetSpec, set only where they differ from a plain text file in stream
 * mode (so that such a file's spec, its checkpoint fingerprint and its metrics are as before v6). */
export function documentFields(o: DocumentOptions): { field?: string; mode?: "documents"; separator?: string } {
  return { ...(o.field !== null ? { field: o.field, separator: o.separator } : {}), ...(o.mode === "documents" ? { mode: "documents" as const } : {}) };
}

/** The document options of a wire DatasetSpec (its v6 fields, defaulted). */
export function documentOptions(d: { field?: string | null; mode?: "stream" | "documents"; separator?: string }): DocumentOptions {
  return { field: d.field ?? null, mode: d.mode ?? "stream", separator: d.separator ?? "\n\n" };
}
