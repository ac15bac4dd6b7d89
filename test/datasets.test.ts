// Datasets of documents (.jsonl, .parquet, Hugging Face) and documents mode: the config's
// `path: message` lines, the controller's counts, and the CLI end to end on the tiny models.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path, { join } from "node:path";
import { before, describe, test } from "node:test";
import { lmEvalWords, readJsonl, scanDocuments } from "../src/dataset.js";
import { exportPath } from "../src/dataset-export.js";
import { ConfigError } from "../src/errors.js";
import { parseConfig } from "../src/plan.js";
import { PYTHON, kotara, tempDir, tinyModels, writeFile } from "./helpers.js";

const models2 = [{ ref: "gpt2" }, { ref: "distilgpt2" }];

function problems(dataset: unknown, extra: Record<string, unknown> = {}, baseDir = tempDir()): string[] {
  try {
    parseConfig({ models: models2, dataset, strategies: ["entropy"], ...extra }, baseDir);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    return e.lines;
  }
  assert.fail("the config was accepted");
}

describe("config: where the text comes from, and how it is scored", () => {
  test("neither path nor hf, both, and hf-only keys without hf", () => {
    assert.deepEqual(problems({ max_length: 8 }), ["dataset: give path (a text, .jsonl or .parquet file) or hf (a Hugging Face dataset)"]);
    const dir = tempDir();
    writeFile(dir, "t.txt", "some words here\n");
    assert.deepEqual(problems({ path: "t.txt", hf: "wikitext", field: "text" }, {}, dir), ["dataset.hf: give path or hf, not both"]);
    assert.deepEqual(problems({ path: "t.txt", split: "test", name: "x" }, {}, dir), [
      "dataset.name: only for a Hugging Face dataset (hf)", "dataset.split: only for a Hugging Face dataset (hf)",
    ]);
  });

  test("field: needed by .jsonl, .parquet and hf; refused for a plain text file", () => {
    const dir = tempDir();
    writeFile(dir, "t.txt", "some words here\n");
    writeFile(dir, "d.jsonl", '{"text": "a b"}\n');
    writeFile(dir, "d.parquet", "PAR1");
    assert.deepEqual(problems({ path: "d.jsonl" }, {}, dir), ["dataset.field: a .jsonl file needs field: the key that holds each document's text (e.g. text)"]);
    assert.deepEqual(problems({ path: "d.parquet" }, {}, dir), ["dataset.field: a .parquet file needs field: the key that holds each document's text (e.g. text)"]);
    assert.deepEqual(problems({ hf: "wikitext", name: "wikitext-2-raw-v1" }, {}, dir), ["dataset.field: an hf dataset needs field: the column that holds each document's text (e.g. text)"]);
    assert.deepEqual(problems({ path: "t.txt", field: "text" }, {}, dir), ["dataset.field: only for .jsonl, .parquet and hf datasets; t.txt is read as plain text"]);
  });

  test("mode: unknown, and what documents mode refuses", () => {
    const dir = tempDir();
    writeFile(dir, "t.txt", "some words here\n");
    assert.deepEqual(problems({ path: "t.txt", mode: "docs" }, {}, dir), ['dataset.mode: must be one of: stream, documents, got "docs"']);
    assert.deepEqual(problems({ path: "t.txt", mode: "documents", bos_per_window: true }, {}, dir), [
      "dataset.bos_per_window: does not apply to mode documents (every document starts with the start token, as in lm-eval)",
    ]);
    assert.deepEqual(problems({ path: "t.txt", mode: "documents", max_length: 64, stride: 32 }, {}, dir), [
      "dataset.stride: mode documents has no stride (lm-eval's rolling windows are disjoint windows of max_length); leave it out, got 32",
    ]);
    assert.deepEqual(problems({ path: "t.txt", mode: "documents" }, { space: "bytes" }, dir), [
      "dataset.mode: documents is for token space (lm-eval's windows count tokens); space is bytes",
    ]);
  });

  test("a bad .jsonl line is named; a missing hf directory too", () => {
    const dir = tempDir();
    writeFile(dir, "d.jsonl", '{"text": "a b"}\n\n{"body": "c"}\n');
    const lines = problems({ path: "d.jsonl", field: "text" }, {}, dir);
    assert.deepEqual(lines, [`dataset.path: ${join(dir, "d.jsonl")}:3: no field "text" (fields: body)`]);
    assert.deepEqual(problems({ hf: "./nowhere", field: "text" }, {}, dir), [`dataset.hf: local dataset directory not found: ${join(dir, "nowhere")}`]);
  });

  test("a parquet file or an hf dataset plans an export to Kotara's cache; a .jsonl is read as it is", () => {
    const dir = tempDir();
    writeFile(dir, "d.parquet", "PAR1");
    writeFile(dir, "d.jsonl", '{"text": "one two"}\n{"text": " three "}\n');
    const pq = parseConfig({ models: models2, dataset: { path: "d.parquet", field: "body" }, strategies: ["entropy"] }, dir);
    assert.deepEqual(pq.source, { path: join(dir, "d.parquet"), field: "body" });
    assert.equal(pq.dataset.path, exportPath(pq.source!));
    assert.equal(pq.dataset.field, "text");
    assert.equal(pq.text, null, "counted after the export");
    const hf = parseConfig({ models: models2, dataset: { hf: "wikitext", name: "wikitext-2-raw-v1", field: "text" }, strategies: ["entropy"] }, dir);
    assert.deepEqual(hf.source, { hf: "wikitext", name: "wikitext-2-raw-v1", split: "test", revision: null, field: "text" });
    const js = parseConfig({ models: models2, dataset: { path: "d.jsonl", field: "text", mode: "documents", max_length: 16 }, strategies: ["entropy"] }, dir);
    assert.equal(js.source, null);
    assert.deepEqual(js.dataset, { path: join(dir, "d.jsonl"), max_length: 16, stride: 16, bos_per_window: false, field: "text", mode: "documents", separator: "\n\n" });
    writeFile(dir, "t.txt", "plain words\n");
    const plain = parseConfig({ models: models2, dataset: { path: "t.txt", max_length: 16 }, strategies: ["entropy"] }, dir);
    assert.deepEqual(plain.dataset, { path: join(dir, "t.txt"), max_length: 16, stride: 16, bos_per_window: false }, "a plain text file: the spec of v5");
    assert.deepEqual({ ...js.text, sha256: undefined }, { bytes: 14, words: 2 + 3, sha256: undefined, documents: 2 });
  });
});

describe("counts", () => {
  test("lmEvalWords is Python's len(re.split(r'\\s+', doc))", () => {
    const cases = ["", " ", "a", " a", "a b ", "  a\n\nb\tc  ", "x\x1cy", "a\u3000b", "a\ufeffb", "a\x85b"];
    const py = JSON.parse(execFileSync(PYTHON, ["-c", "import json,re,sys; print(json.dumps([len(re.split(r'\\s+', d)) for d in json.load(sys.stdin)]))"], { input: JSON.stringify(cases), encoding: "utf8" }));
    assert.deepEqual(cases.map(lmEvalWords), py);
  });

  test("stream mode over a .jsonl: the documents joined with the separator", () => {
    const dir = tempDir();
    const f = writeFile(dir, "d.jsonl", '{"text": "one two"}\n{"text": "three"}\n');
    const s = scanDocuments(f, { field: "text", mode: "stream", separator: " | " }).value!;
    assert.equal(s.bytes, Buffer.byteLength("one two | three"));
    assert.equal(s.words, 4);
    assert.equal(s.documents, 2);
    assert.deepEqual(readJsonl('{"t": "x"}\n', "t", "f").value, ["x"]);
  });
});

describe("the CLI on the tiny models", () => {
  let models: string;
  let work: string;
  let docs: string[];
  before(() => {
    models = tinyModels();
    work = tempDir();
    const text = readFileSync(join(models, "text.txt"), "utf8");
    docs = [text.slice(0, 400), ` ${text.slice(400, 460)} `, text.slice(460, 1500)];
    writeFile(work, "docs.jsonl", docs.map((d) => JSON.stringify({ text: d })).join("\n") + "\n");
  });

  const config = (dataset: string) =>
    `models:\n  - { ref: ${join(models, "gpt2-a")}, device: cpu }\n  - { ref: ${join(models, "llama")}, device: cpu }\n` +
    `dataset: ${dataset}\nstrategies: [average, entropy]\n`;

  test("documents mode: lm-eval's denominators, byte_perplexity, the same windows for every row", async () => {
    const cfg = writeFile(work, "docs.yaml", config(`{ path: docs.jsonl, field: text, mode: documents, max_length: 16 }`));
    const out = join(work, "docs.json");
    const r = await kotara(["run", cfg, "--metrics", out, "--quiet"]);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = JSON.parse(readFileSync(out, "utf8"));
    assert.equal(m.dataset.mode, "documents");
    assert.equal(m.dataset.documents, 3);
    assert.equal(m.dataset.bytes, docs.reduce((a, d) => a + Buffer.byteLength(d), 0));
    assert.equal(m.dataset.words, docs.reduce((a, d) => a + d.split(/\s+/).length, 0));
    for (const row of [...m.models, ...m.fusions]) {
      const total = row.nll * m.dataset.scored_tokens;
      assert.ok(Math.abs(row.byte_perplexity - Math.exp(total / m.dataset.bytes)) / row.byte_perplexity < 1e-9);
      assert.ok(Math.abs(row.bits_per_byte - total / (Math.LN2 * m.dataset.bytes)) < 1e-9);
      assert.ok(Math.abs(row.word_perplexity - Math.exp(total / m.dataset.words)) / row.word_perplexity < 1e-9);
    }
  });

  test("a parquet file: exported by the worker's Python, or a message naming what to install", async () => {
    const hasArrow = (() => {
      try {
        execFileSync(PYTHON, ["-c", "import pyarrow"], { stdio: "ignore" });
        return true;
      } catch {
        return false;
      }
    })();
    const parquet = join(work, "docs.parquet");
    if (hasArrow) {
      execFileSync(PYTHON, ["-c", "import json,sys,pyarrow as pa,pyarrow.parquet as pq; pq.write_table(pa.table({'body': json.load(sys.stdin)}), sys.argv[1])", parquet], { input: JSON.stringify(docs) });
    } else writeFile(work, "docs.parquet", "PAR1");
    const cache = tempDir();
    const cfg = writeFile(work, "pq.yaml", config(`{ path: docs.parquet, field: body, max_length: 16 }`));
    const out = join(work, "pq.json");
    const r = await kotara(["run", cfg, "--metrics", out, "--quiet"], { env: { XDG_CACHE_HOME: cache } });
    if (!hasArrow) {
      assert.equal(r.exitCode, 2, r.stderr);
      assert.match(r.stderr, /needs the Python package 'pyarrow'.*pip install pyarrow/);
      return;
    }
    assert.equal(r.exitCode, 0, r.stderr);
    const m = JSON.parse(readFileSync(out, "utf8"));
    assert.equal(m.dataset.documents, 3);
    assert.equal(m.dataset.bytes, Buffer.byteLength(docs.join("\n\n")));
    assert.ok(m.dataset.path.startsWith(join(cache, "kotara", "datasets")));
    assert.ok(existsSync(m.dataset.path));
  });
});
