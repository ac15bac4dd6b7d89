// The text read once, as a stream (src/dataset.ts): what a 1 MiB chunk boundary must
// not change. Every expected value comes from the whole file at once (Buffer,
// TextDecoder, a character scan, node:crypto), never from the streaming code.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { scanDataset } from "../src/dataset.js";

const CHUNK = 1 << 20; // dataset.ts reads this many bytes at a time
const dir = mkdtempSync(path.join(tmpdir(), "kotara-dataset-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Words by a plain character scan of the whole text (the definition: runs of non-space). */
function wordsOf(text: string): number {
  let words = 0;
  let inWord = false;
  for (const ch of text) {
    const space = /\s/.test(ch);
    if (!space && !inWord) words++;
    inWord = !space;
  }
  return words;
}

function write(name: string, data: Buffer): string {
  const file = path.join(dir, name);
  writeFileSync(file, data);
  return file;
}

describe("one streamed pass", () => {
  test("a word and a multi-byte character cut by the chunk boundary count once", () => {
    // "a " repeated up to just before the boundary, then a word whose 3-byte "€" and
    // whose letters straddle it, then more text after it
    const head = Buffer.from("a ".repeat((CHUNK - 4) / 2));
    const file = write("straddle.txt", Buffer.concat([head, Buffer.from("wo€rd next\u3000word\n"), Buffer.from("tail ".repeat(1000))]));
    const whole = readFileSync(file);
    const text = new TextDecoder("utf-8", { fatal: true }).decode(whole);
    const r = scanDataset(file);
    assert.deepEqual(r.lines, []);
    assert.equal(r.value!.bytes, whole.length);
    assert.equal(r.value!.words, wordsOf(text));
    assert.equal(r.value!.sha256, createHash("sha256").update(whole).digest("hex"));
  });

  test("a space exactly at the boundary separates two words", () => {
    for (const at of [CHUNK - 1, CHUNK, CHUNK + 1]) {
      const buf = Buffer.alloc(CHUNK + 10, "x");
      buf[at] = 0x20;
      const file = write(`space-${at}.txt`, buf);
      assert.equal(scanDataset(file).value!.words, 2, `space at ${at}`);
    }
  });

  test("a bad byte past the first chunk is found at its offset", () => {
    const buf = Buffer.alloc(CHUNK + 100, "y");
    buf[4] = 0x20;
    buf[CHUNK + 50] = 0xff;
    const r = scanDataset(write("bad.txt", buf));
    assert.deepEqual(r.lines, [`not valid UTF-8: first bad byte 0xff at offset ${CHUNK + 50}: ${path.join(dir, "bad.txt")}`]);
  });

  test("a multi-byte character cut off at the end of the file is not valid UTF-8", () => {
    const buf = Buffer.concat([Buffer.from("two words "), Buffer.from("€").subarray(0, 2)]);
    const r = scanDataset(write("cut.txt", buf));
    assert.match(r.lines[0], /^not valid UTF-8: first bad byte 0xe2 at offset 10:/);
  });

  test("a NUL byte past the first chunk is named with its offset", () => {
    const buf = Buffer.alloc(CHUNK + 10, "z");
    buf[3] = 0x20;
    buf[CHUNK + 7] = 0;
    const r = scanDataset(write("nul.bin", buf));
    assert.match(r.lines[0], new RegExp(`^looks like a binary file \\(NUL byte at offset ${CHUNK + 7}\\)`));
  });
});
