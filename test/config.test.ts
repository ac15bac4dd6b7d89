// Config validation (src/config.ts): one test per bad input, each asserting the
// `path: message` line; path resolution; defaults; the dataset file checks.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { createHash } from "node:crypto";
import { loadConfig, parseYaml } from "../src/config.js";
import { countWords, datasetStats, firstInvalidUtf8, scanDataset } from "../src/dataset.js";
import { parseConfig } from "../src/plan.js";
import { resolvePython } from "../src/python-env.js";
import { ConfigError } from "../src/errors.js";
import { Setting } from "../src/protocol.js";

const root = mkdtempSync(path.join(tmpdir(), "kotara-config-"));
after(() => import("node:fs").then((fs) => fs.rmSync(root, { recursive: true, force: true })));

let n = 0;
/** A fresh directory with a valid dataset `text.txt`. */
function workdir(): string {
  const dir = path.join(root, `case${++n}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "text.txt"), "The quick brown fox jumps over the lazy dog.\n");
  return dir;
}

const BASE = `models:
  - ref: gpt2
  - ref: distilgpt2
dataset:
  path: text.txt
strategies:
  - entropy
`;

/** Writes a config into a fresh workdir and returns its path. */
function configFile(yaml: string, dir = workdir()): string {
  const file = path.join(dir, "run.yaml");
  writeFileSync(file, yaml);
  return file;
}

/** Loads the config; it must fail with a ConfigError; returns its lines. */
async function problems(yaml: string, dir?: string): Promise<string[]> {
  const file = configFile(yaml, dir);
  try {
    await loadConfig(file);
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${e}`);
    assert.equal(e.exitCode, 2);
    assert.ok(e.message.includes(file), "the message names the config file");
    return e.lines;
  }
  assert.fail("the config was accepted");
}

/** Asserts that one of the lines is exactly `line`, or matches it. */
function hasLine(lines: string[], line: string | RegExp): void {
  const ok = lines.some((l) => (typeof line === "string" ? l === line : line.test(l)));
  assert.ok(ok, `expected a line ${line}\n got:\n  ${lines.join("\n  ")}`);
}

describe("a valid config", () => {
  test("fills the defaults", async () => {
    const plan = await loadConfig(configFile(BASE));
    assert.deepEqual(plan.models[0], { ref: "gpt2", revision: null, trust_remote_code: false, dtype: "auto", device: "auto" });
    assert.equal(plan.models[1].ref, "distilgpt2");
    assert.equal(plan.tokenizer, null);
    assert.equal(plan.dataset.max_length, 1024);
    assert.equal(plan.dataset.stride, 1024, "stride defaults to max_length");
    assert.equal(plan.dataset.bos_per_window, false);
    assert.deepEqual(plan.runtime, { batch_size: 8, python: null, checkpoint_every: 0, workers: null });
    assert.deepEqual(plan.output, { metrics: null });
    assert.equal(plan.sweep, null);
    assert.deepEqual(plan.settings, [{ id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null }]);
    for (const s of plan.settings) assert.ok(Setting.safeParse(s).success);
    assert.ok(path.isAbsolute(plan.configPath!));
    assert.deepEqual((plan.raw as { strategies: unknown }).strategies, ["entropy"]);
  });

  test("stride defaults to a given max_length", async () => {
    const plan = await loadConfig(configFile(BASE.replace("path: text.txt", "path: text.txt\n  max_length: 256")));
    assert.equal(plan.dataset.stride, 256);
  });

  test("accepts every documented field", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "tok"));
    const plan = await loadConfig(
      configFile(
        `models:
  - { ref: gpt2, revision: main, trust_remote_code: true, dtype: bfloat16, device: "cuda:1" }
  - { ref: distilgpt2, dtype: float16, device: cpu }
tokenizer: ./tok
dataset: { path: text.txt, max_length: 512, stride: 256, bos_per_window: true }
strategies:
  - entropy
  - { type: entropy, temperatures: [0.85, 1.1] }
  - { type: poe, betas: [0.5, 0.5] }
  - { id: sharp-gap, type: gap, temperatures: [0.7, 0.7] }
  - { type: mix, temperatures: [0.9, 1], weights: [0.7, 0.3] }
runtime: { batch_size: 4, python: python3, checkpoint_every: 50, workers: [{ device: cpu, threads: 1 }, { device: "cuda:1" }] }
output: { metrics: results/out.json }
`,
        dir,
      ),
    );
    assert.deepEqual(plan.models[0], { ref: "gpt2", revision: "main", trust_remote_code: true, dtype: "bfloat16", device: "cuda:1" });
    assert.equal(plan.tokenizer, path.join(dir, "tok"));
    assert.deepEqual(plan.dataset, { path: path.join(dir, "text.txt"), max_length: 512, stride: 256, bos_per_window: true });
    assert.deepEqual(
      plan.settings.map((s) => s.id),
      ["entropy", "entropy@t=0.85,1.1", "poe", "sharp-gap", "mix@t=0.9,1;w=0.7,0.3"],
    );
    assert.deepEqual(plan.settings[4], { id: "mix@t=0.9,1;w=0.7,0.3", type: "mix", temperatures: [0.9, 1], betas: null, weights: [0.7, 0.3] });
    for (const s of plan.settings) assert.ok(Setting.safeParse(s).success, s.id);
    assert.deepEqual(plan.runtime, { batch_size: 4, python: "python3", checkpoint_every: 50, workers: [{ device: "cpu", threads: 1 }, { device: "cuda:1" }] });
    assert.equal(plan.output.metrics, path.join(dir, "results", "out.json"));
  });
});

describe("relative paths", () => {
  test("dataset.path and output.metrics resolve against the config's directory, not the cwd", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "data"));
    writeFileSync(path.join(dir, "data", "t.txt"), "some words here\n");
    const plan = await loadConfig(
      configFile(BASE.replace("path: text.txt", "path: data/t.txt") + "output:\n  metrics: ../out/m.json\n", dir),
    );
    assert.equal(plan.dataset.path, path.join(dir, "data", "t.txt"));
    assert.equal(plan.output.metrics, path.join(path.dirname(dir), "out", "m.json"));
  });

  test("a model ref starting with . is a local directory next to the config", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "models", "a"), { recursive: true });
    const plan = await loadConfig(configFile(BASE.replace("ref: gpt2", "ref: ./models/a"), dir));
    assert.equal(plan.models[0].ref, path.join(dir, "models", "a"));
    assert.equal(plan.models[1].ref, "distilgpt2", "a Hub id is kept as is");
  });

  test("a model ref without ./ that exists next to the config is local; org/name that does not is a Hub id", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "mymodel"));
    const plan = await loadConfig(
      configFile(BASE.replace("ref: gpt2", "ref: mymodel").replace("ref: distilgpt2", "ref: openai-community/gpt2"), dir),
    );
    assert.equal(plan.models[0].ref, path.join(dir, "mymodel"));
    assert.equal(plan.models[1].ref, "openai-community/gpt2");
  });

  test("~ expands to the home directory", () => {
    const plan = parseConfig(
      { models: [{ ref: "~/some/model" }, { ref: "gpt2" }], dataset: { path: "~/t.txt" }, strategies: ["entropy"] },
      "/anywhere",
      { checkFiles: false },
    );
    assert.equal(plan.models[0].ref, path.join(homedir(), "some", "model"));
    assert.equal(plan.dataset.path, path.join(homedir(), "t.txt"));
  });

  test("runtime.python: a path resolves against the config; a bare name stays a command; KOTARA_PYTHON wins", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "venv", "bin"), { recursive: true });
    writeFileSync(path.join(dir, "venv", "bin", "python"), "");
    const file = configFile(BASE + "runtime:\n  python: venv/bin/python\n", dir);
    const plan = await loadConfig(file);
    assert.equal(plan.runtime.python, path.join(dir, "venv", "bin", "python"));
    assert.equal(resolvePython(plan.runtime.python, {}), path.join(dir, "venv", "bin", "python"));
    assert.equal(resolvePython(plan.runtime.python, { KOTARA_PYTHON: "/opt/py/bin/python" }), "/opt/py/bin/python");
    assert.equal(resolvePython(null, { KOTARA_PYTHON: "rel/bin/python" }), path.resolve("rel/bin/python"), "relative to the user's directory");
    const bare = configFile(BASE + "runtime:\n  python: python3\n");
    assert.equal((await loadConfig(bare)).runtime.python, "python3");
  });
});

describe("rejected: unknown keys", () => {
  test("at the top level", async () => {
    hasLine(await problems(BASE + "modles: []\n"), "modles: unknown key; allowed: space, bytes, models, tokenizer, dataset, strategies, sweep, runtime, output, report");
  });
  test("in a model", async () => {
    hasLine(
      await problems(BASE.replace("ref: distilgpt2", "ref: distilgpt2\n    precision: fp16")),
      "models[1].precision: unknown key; allowed: ref, revision, trust_remote_code, dtype, device, device_map, max_memory",
    );
  });
  test("in dataset", async () => {
    hasLine(
      await problems(BASE.replace("path: text.txt", "path: text.txt\n  srtide: 512")),
      "dataset.srtide: unknown key; allowed: path, hf, name, split, revision, field, mode, separator, max_length, stride, bos_per_window",
    );
  });
  test("in runtime", async () => {
    hasLine(await problems(BASE + "runtime:\n  batchsize: 4\n"), "runtime.batchsize: unknown key; allowed: batch_size, python, checkpoint_every, workers");
  });
  test("in output", async () => {
    hasLine(await problems(BASE + "output:\n  csv: x.csv\n"), "output.csv: unknown key; allowed: metrics");
  });
  test("in a strategy (betas on a type without them)", async () => {
    hasLine(
      await problems(BASE + "  - { type: entropy, betas: [0.5, 0.5] }\n"),
      "strategies[1].betas: unknown key; allowed: id, type, temperatures",
    );
  });
  test("in sweep", async () => {
    hasLine(
      await problems(BASE + "sweep:\n  strategies: [entropy]\n  temperatures: [[1], [1]]\n  temps: [1]\n"),
      "sweep.temps: unknown key; allowed: strategies, temperatures, betas, weights",
    );
  });
});

describe("rejected: wrong types", () => {
  test("max_length as a string", async () => {
    hasLine(await problems(BASE.replace("path: text.txt", "path: text.txt\n  max_length: big")), 'dataset.max_length: expected a number, got "big"');
  });
  test("trust_remote_code as a string", async () => {
    hasLine(
      await problems(BASE.replace("ref: gpt2", "ref: gpt2\n    trust_remote_code: \"yes\"")),
      'models[0].trust_remote_code: expected true or false, got "yes"',
    );
  });
  test("models as a mapping", async () => {
    hasLine(await problems(BASE.replace(/models:\n(  - .*\n)+/, "models: { a: gpt2 }\n")), "models: expected a list, got a mapping");
  });
  test("a missing required field", async () => {
    hasLine(await problems(BASE.replace("  path: text.txt", "  max_length: 64")), "dataset: give path (a text, .jsonl or .parquet file) or hf (a Hugging Face dataset)");
  });
  test("an unknown dtype", async () => {
    hasLine(
      await problems(BASE.replace("ref: gpt2", "ref: gpt2\n    dtype: float64")),
      'models[0].dtype: must be one of: auto, float32, float16, bfloat16, got "float64"',
    );
  });
  test("a bad device", async () => {
    hasLine(await problems(BASE.replace("ref: gpt2", "ref: gpt2\n    device: gpu")), 'models[0].device: must be auto, cpu, cuda, cuda:N or mps, got "gpu"');
  });
  test("sharding: device_map and max_memory reach the plan (and only when set)", async () => {
    const plan = await loadConfig(configFile(BASE.replace("ref: gpt2", 'ref: gpt2\n    device_map: balanced\n    max_memory: { "0": 20GiB, "1": 500MB, cpu: 1000000 }')));
    assert.deepEqual(plan.models[0], {
      ref: "gpt2", revision: null, trust_remote_code: false, dtype: "auto", device: "auto",
      device_map: "balanced", max_memory: { "0": "20GiB", "1": "500MB", cpu: 1000000 },
    });
    assert.equal("device_map" in plan.models[1], false);
    assert.equal("max_memory" in plan.models[1], false);
  });
  test("bad max_memory and device_map values", async () => {
    const lines = await problems(BASE.replace("ref: gpt2", 'ref: gpt2\n    device_map: pipeline\n    max_memory: { gpu0: 20GiB, cpu: 20 gigs, "1": -5, "2": 1.5 }'));
    hasLine(lines, 'models[0].device_map: must be auto, balanced or sequential, got "pipeline"');
    hasLine(lines, 'models[0].max_memory.gpu0: unknown device; the keys are GPU indices ("0", "1", …) or cpu');
    hasLine(lines, 'models[0].max_memory.cpu: must be an integer of bytes or a size such as 20GiB or 500MB, got "20 gigs"');
    hasLine(lines, 'models[0].max_memory["1"]: must be an integer of bytes or a size such as 20GiB or 500MB, got -5');
    hasLine(lines, 'models[0].max_memory["2"]: must be an integer of bytes or a size such as 20GiB or 500MB, got 1.5');
    hasLine(await problems(BASE.replace("ref: gpt2", "ref: gpt2\n    max_memory: 20GiB")),
      'models[0].max_memory: must be a mapping of device to size ({ "0": 20GiB, cpu: 64GiB }), got "20GiB"');
  });
  test("a strategy that is a number", async () => {
    hasLine(await problems(BASE + "  - 42\n"), /^strategies\[1\]: expected a strategy name or a mapping .*, got 42$/);
  });
  test("batch_size not an integer", async () => {
    hasLine(await problems(BASE + "runtime:\n  batch_size: 2.5\n"), "runtime.batch_size: must be an integer, got 2.5");
  });
});

describe("rejected: impossible values", () => {
  test("temperature 0", async () => {
    hasLine(await problems(BASE + "  - { type: gap, temperatures: [0, 1] }\n"), "strategies[1].temperatures[0]: a temperature must be > 0, got 0");
  });
  test("negative temperature", async () => {
    hasLine(await problems(BASE + "  - { type: gap, temperatures: [1, -0.5] }\n"), "strategies[1].temperatures[1]: a temperature must be > 0, got -0.5");
  });
  test("temperature NaN", async () => {
    hasLine(await problems(BASE + "  - { type: gap, temperatures: [.nan, 1] }\n"), "strategies[1].temperatures[0]: must be a finite number, got NaN");
  });
  test("temperature Infinity", async () => {
    hasLine(await problems(BASE + "  - { type: gap, temperatures: [1, .inf] }\n"), "strategies[1].temperatures[1]: must be a finite number, got Infinity");
  });
  test("mix weights: negative, all zero, the wrong length, not numbers", async () => {
    hasLine(await problems(BASE + "  - { type: mix, weights: [1, -0.25] }\n"), "strategies[1].weights[1]: a weight must be ≥ 0, got -0.25");
    hasLine(await problems(BASE + "  - { type: mix, weights: [0, 0] }\n"), "strategies[1].weights: at least one weight must be > 0");
    hasLine(await problems(BASE + "  - { type: mix, weights: [0.2, 0.3, 0.5] }\n"), "strategies[1].weights: expected 2 values (one per model), got 3");
    hasLine(await problems(BASE + "  - { type: mix, weights: [a, 1] }\n"), 'strategies[1].weights[0]: expected a number, got "a"');
    hasLine(await problems(BASE + "  - { type: gap, weights: [0.5, 0.5] }\n"), "strategies[1].weights: unknown key; allowed: id, type, temperatures");
  });
  test("a sweep over mix weights: a negative weight, a grid without mix", async () => {
    const sweep = (g: string, strategies = "[mix]") => BASE + `sweep:\n  strategies: ${strategies}\n  temperatures: [[1], [1]]\n  weights: ${g}\n`;
    hasLine(await problems(sweep("[[0.5, -1], [1]]")), "sweep.weights[0][1]: a weight must be ≥ 0, got -1");
    hasLine(await problems(sweep("[[0.5], [1], [1]]")), "sweep.weights: expected 2 lists (one per model), got 3");
    hasLine(await problems(sweep("[[0.5], [1]]", "[poe]")), "sweep.weights: only mix takes weights, and sweep.strategies does not list mix");
  });
  test("a negative beta", async () => {
    hasLine(await problems(BASE + "  - { type: poe, betas: [1, -1] }\n"), "strategies[1].betas[1]: a beta must be ≥ 0, got -1");
  });
  test("stride > max_length", async () => {
    hasLine(
      await problems(BASE.replace("path: text.txt", "path: text.txt\n  stride: 2048")),
      "dataset.stride: must be ≤ max_length (1024), got 2048",
    );
  });
  test("stride 0", async () => {
    hasLine(await problems(BASE.replace("path: text.txt", "path: text.txt\n  stride: 0")), "dataset.stride: must be a positive integer, got 0");
  });
  test("negative stride", async () => {
    hasLine(await problems(BASE.replace("path: text.txt", "path: text.txt\n  stride: -128")), "dataset.stride: must be a positive integer, got -128");
  });
  test("max_length 0", async () => {
    hasLine(await problems(BASE.replace("path: text.txt", "path: text.txt\n  max_length: 0")), "dataset.max_length: must be a positive integer, got 0");
  });
  test("a temperatures list of the wrong length", async () => {
    hasLine(
      await problems(BASE + "  - { type: entropy, temperatures: [0.85, 1.1, 1.0] }\n"),
      "strategies[1].temperatures: expected 2 values (one per model), got 3",
    );
  });
  test("a betas list of the wrong length", async () => {
    hasLine(await problems(BASE + "  - { type: poe, betas: [1] }\n"), "strategies[1].betas: expected 2 values (one per model), got 1");
  });
  test("an unknown strategy lists the known ones", async () => {
    hasLine(await problems(BASE + "  - foo\n"), 'strategies[1]: unknown strategy "foo"; known: average, poe, entropy, gap, mix');
  });
  test("an unknown strategy type in a mapping", async () => {
    hasLine(await problems(BASE + "  - { type: mixture }\n"), 'strategies[1]: unknown strategy "mixture"; known: average, poe, entropy, gap, mix');
  });
  test("fewer than 2 models", async () => {
    hasLine(await problems(BASE.replace("  - ref: distilgpt2\n", "")), "models: at least 2 models are needed for a fusion, got 1");
  });
  test("duplicate ids", async () => {
    hasLine(
      await problems(BASE + "  - { id: mine, type: gap }\n  - { id: mine, type: poe }\n"),
      'strategies[2].id: duplicate id "mine" (also strategies[1]); give each an explicit, distinct id',
    );
  });
  test("the same strategy twice", async () => {
    hasLine(
      await problems(BASE + "  - entropy\n"),
      'strategies[1]: duplicate id "entropy" (also strategies[0]); the two entries are the same setting, list it once',
    );
  });
  test("nothing to evaluate", async () => {
    hasLine(
      await problems(BASE.replace("strategies:\n  - entropy\n", "")),
      "strategies: nothing to evaluate: list at least one strategy (average, poe, entropy, gap, mix) or add a sweep",
    );
  });
  test("a local model directory that does not exist", async () => {
    const dir = workdir();
    hasLine(await problems(BASE.replace("ref: gpt2", "ref: ./nope"), dir), new RegExp(`^models\\[0\\]\\.ref: local model directory not found: ${escape(path.join(dir, "nope"))}`));
  });
  test("all problems are reported at once, in the order of the file", async () => {
    const lines = await problems(
      BASE.replace("ref: gpt2", "ref: gpt2\n    dtype: float64").replace("path: text.txt", "path: text.txt\n  stride: 0") +
        "  - foo\nruntime:\n  batch_size: 0\n",
    );
    assert.deepEqual(
      lines.map((l) => l.split(":")[0]),
      ["models[0].dtype", "dataset.stride", "strategies[1]", "runtime.batch_size"],
    );
  });
});

describe("rejected: YAML", () => {
  test("a syntax error names line and column", async () => {
    const lines = await problems(BASE + "sweep:\n  strategies: [entropy\n  temperatures: [[1], [1]]\n");
    assert.equal(lines.length >= 1, true);
    assert.match(lines[0], /^\d+:\d+: /);
    const [line] = lines[0].split(":").map(Number);
    assert.ok(line >= 10 && line <= 12, `line ${line} points into the sweep block`);
  });
  test("a duplicate key", async () => {
    hasLine(await problems(BASE + "strategies: [poe]\n"), /^8:1: Map keys must be unique/);
  });
  test("a custom tag like !!js/function is rejected", async () => {
    hasLine(
      await problems(BASE.replace("path: text.txt", "path: !!js/function 'function () { return 1 }'")),
      /^5:9: Unresolved tag: tag:yaml\.org,2002:js\/function \(custom YAML tags are not allowed\)$/,
    );
  });
  test("a local tag is rejected", async () => {
    hasLine(await problems(BASE.replace("path: text.txt", "path: !file text.txt")), /^5:9: Unresolved tag: !file/);
  });
  test("an empty document", async () => {
    hasLine(await problems(""), "(root): expected a mapping with models, dataset and strategies, got an empty document");
  });
  test("a missing config file", async () => {
    await assert.rejects(loadConfig(path.join(root, "absent.yaml")), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.lines[0], /cannot read the config: no such file/);
      return true;
    });
  });
});

describe("rejected: the dataset file", () => {
  const withData = (dir: string) => BASE.replace("path: text.txt", "path: data.txt");
  test("missing", async () => {
    const dir = workdir();
    hasLine(await problems(withData(dir), dir), `dataset.path: file not found: ${path.join(dir, "data.txt")}`);
  });
  test("a directory", async () => {
    const dir = workdir();
    mkdirSync(path.join(dir, "data.txt"));
    hasLine(await problems(withData(dir), dir), `dataset.path: is a directory, expected a UTF-8 text file: ${path.join(dir, "data.txt")}`);
  });
  test("empty", async () => {
    const dir = workdir();
    writeFileSync(path.join(dir, "data.txt"), "");
    hasLine(await problems(withData(dir), dir), `dataset.path: file is empty: ${path.join(dir, "data.txt")}`);
  });
  test("binary (NUL bytes)", async () => {
    const dir = workdir();
    writeFileSync(path.join(dir, "data.txt"), Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0x41]));
    hasLine(
      await problems(withData(dir), dir),
      `dataset.path: looks like a binary file (NUL byte at offset 4), expected UTF-8 text: ${path.join(dir, "data.txt")}`,
    );
  });
  test("invalid UTF-8 names the offset of the first bad byte", async () => {
    const dir = workdir();
    // "héllo wörld " in UTF-8 (é, ö are 2 bytes each), then a Latin-1 "é" (0xe9) followed by ASCII
    const good = Buffer.from("héllo wörld ", "utf8");
    writeFileSync(path.join(dir, "data.txt"), Buffer.concat([good, Buffer.from([0xe9, 0x74, 0x65])]));
    hasLine(
      await problems(withData(dir), dir),
      `dataset.path: not valid UTF-8: first bad byte 0xe9 at offset ${good.length}: ${path.join(dir, "data.txt")}`,
    );
  });
  test("too short to score", async () => {
    const dir = workdir();
    writeFileSync(path.join(dir, "data.txt"), "  lonely\n");
    hasLine(await problems(withData(dir), dir), /^dataset\.path: too short to score: 1 word; at least 2 are needed/);
  });
});

describe("dataset statistics", () => {
  test("bytes are UTF-8 bytes and words are whitespace-separated pieces", () => {
    const dir = workdir();
    const text = "  Ünïcödé text — with\tmixed\nwhitespace and 日本語 \r\n end ";
    writeFileSync(path.join(dir, "s.txt"), text);
    // independent counts: the byte length from an encoder; words by a character scan
    const bytes = new TextEncoder().encode(text).length;
    let words = 0;
    let inWord = false;
    for (const ch of text) {
      const space = ch.trim() === "";
      if (!space && !inWord) words++;
      inWord = !space;
    }
    const sha256 = createHash("sha256").update(text).digest("hex");
    assert.deepEqual(datasetStats(path.join(dir, "s.txt")), { bytes, words, sha256 });
    assert.equal(countWords(text), words);
    assert.equal(words, 9);
  });

  test("datasetStats throws a dataset.path ConfigError for a bad file", () => {
    assert.throws(() => datasetStats(path.join(root, "nope.txt")), (e: unknown) => e instanceof ConfigError && /^dataset\.path: file not found/.test(e.lines[0]));
  });

  test("firstInvalidUtf8 agrees with TextDecoder and finds the start of the bad sequence", () => {
    const cases: [number[], number][] = [
      [[0x61, 0x62], -1],
      [[0x61, 0xc0, 0x80], 1], // overlong
      [[0x61, 0x62, 0xed, 0xa0, 0x80], 2], // a surrogate
      [[0xf5, 0x80, 0x80, 0x80], 0], // above U+10FFFF
      [[0x61, 0xe2, 0x82], 1], // truncated at the end
      [[0xe2, 0x82, 0xac, 0x80], 3], // a stray continuation byte after "€"
      [[0xf0, 0x9f, 0x98, 0x80, 0x41], -1], // an emoji
    ];
    for (const [bytes, expected] of cases) {
      const u8 = new Uint8Array(bytes);
      assert.equal(firstInvalidUtf8(u8), expected, bytes.map((b) => b.toString(16)).join(" "));
      let valid = true;
      try {
        new TextDecoder("utf-8", { fatal: true }).decode(u8);
      } catch {
        valid = false;
      }
      assert.equal(valid, expected === -1);
    }
  });

  test("scanDataset returns the stats of a good file", () => {
    const dir = workdir();
    const r = scanDataset(path.join(dir, "text.txt"));
    assert.deepEqual(r.lines, []);
    assert.equal(r.value?.words, 9);
  });
});

describe("the shipped configs", () => {
  const configsDir = path.resolve(import.meta.dirname, "..", "configs");
  const load = (name: string) => {
    const file = path.join(configsDir, name);
    return parseConfig(parseYaml(readFileSync(file, "utf8"), file), configsDir, { checkFiles: false, configPath: file });
  };
  for (const name of ["average.yaml", "poe.yaml", "entropy.yaml", "gap.yaml", "mix.yaml", "sweep-temperatures.yaml"]) {
    test(`${name} is valid and uses the demo models`, () => {
      const plan = load(name);
      assert.deepEqual(
        plan.models.map((m) => path.relative(path.resolve(configsDir, ".."), m.ref)),
        [path.join("models", "demo", "twin-a"), path.join("models", "demo", "sibling")],
      );
      assert.equal(plan.dataset.path, path.resolve(configsDir, "..", "data", "demo", "docs-heldout.txt"));
      assert.equal(plan.dataset.max_length, 256);
      assert.equal(plan.dataset.stride, 128);
      assert.ok(plan.settings.length > 0);
    });
  }
  test("sweep-temperatures.yaml expands to 4 × 5 × 5 = 100 settings", () => {
    assert.equal(load("sweep-temperatures.yaml").settings.length, 100);
  });
  test("mix.yaml: its strategies, then mix over 3 × 3 temperatures × 1 × 5 weights", () => {
    const plan = load("mix.yaml");
    assert.deepEqual(plan.settings.slice(0, 4).map((s) => s.id), ["average", "mix", "mix@t=1,1;w=0.3,0.7", "sibling-only"]);
    assert.equal(plan.settings.length, 4 + 3 * 3 * 1 * 5 - 1, "the swept mix@t=1,1;w=1,1 is the listed mix (weights 0.5, 0.5): evaluated once");
    assert.deepEqual(plan.notes, ['"mix@t=1,1;w=1,1" is the same setting as "mix"; evaluated once, as "mix"']);
    assert.deepEqual(plan.sweep!.weights, [[1], [0.25, 0.5, 1, 2, 4]]);
    assert.ok(plan.settings.some((s) => s.id === "mix@t=0.9,1.1;w=1,0.25"));
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
