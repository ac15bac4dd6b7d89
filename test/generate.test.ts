// `kotara generate` and session.generate. On the fake worker (test/fake-worker/: prompt i
// writes the letters from "a" + i on, one per step, log-probability −(1 + step mod 3)/4,
// equal weights) for the controller's own logic — streaming in prompt order, --json,
// stop strings, the flags' errors, Ctrl-C — and on the real worker for the end-to-end
// path (the numbers themselves are checked in python/tests/test_generate.py).
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import { execa } from "execa";
import { Interrupted } from "../src/errors.js";
import { openSession } from "../src/index.js";
import { FAKE_PYTHON, KOTARA, alive, childPids, kotara, tempDir, tinyModels, waitFor, writeFile } from "./helpers.js";

let work: string;
let cfg: string;
const fake = { KOTARA_PYTHON: FAKE_PYTHON };
/** The fake's text for prompt i after n steps, and its log-probabilities. */
const letters = (i: number, n: number) => Array.from({ length: n }, (_, s) => String.fromCharCode(97 + ((i + s) % 26))).join("");
const logprobs = (n: number) => Array.from({ length: n }, (_, s) => -(1 + (s % 3)) / 4);

before(() => {
  work = tempDir("kotara-generate-");
  for (const m of ["a", "b"]) {
    mkdirSync(join(work, m));
    writeFileSync(join(work, m, "config.json"), JSON.stringify({ vocab_size: 400, n_positions: 128, bos_token_id: 0 }));
  }
  cfg = writeFile(work, "c.yaml", [
    "models: [{ ref: a }, { ref: b }]", "dataset: { path: never-read.txt }",
    "strategies: [entropy, { id: sharp, type: average, temperatures: [0.7, 0.7] }]",
  ].join("\n"));
});

describe("kotara generate on the fake worker", () => {
  test("one prompt streams its text to stdout; the summary goes to stderr", async () => {
    const r = await kotara(["generate", cfg, "--prompt", "hi", "--max-new-tokens", "7"], { env: fake });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, letters(0, 7)); // (execa drops the last newline)
    assert.match(r.stderr, /kotara: entropy · 7 tokens in \d+\.\d\d s \(\d+\.\d tokens\/s, first token \d+\.\d\d s\) · mean weights a 0\.50 \/ b 0\.50/);
  });

  test("several prompts decode together and print in prompt order; --strategy picks by id", async () => {
    const file = writeFile(work, "p.jsonl", ['{"prompt": "x"}', "", '{"prompt": ""}', '{"prompt": "z"}'].join("\n"));
    const r = await kotara(["generate", cfg, "--prompts", file, "--max-new-tokens", "4", "--strategy", "sharp", "--quiet"], { env: fake });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, `${letters(0, 4)}\n--- prompt 2 ---\n${letters(1, 4)}\n--- prompt 3 ---\n${letters(2, 4)}`);
    assert.equal(r.stderr, "");
  });

  test("--json: one object per prompt with the tokens, per-step log-probabilities and weights, timings", async () => {
    const r = await kotara(["generate", cfg, "--prompt", "hi", "--max-new-tokens", "5", "--json", "--stop", "de", "--quiet"], { env: fake });
    assert.equal(r.exitCode, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(lines.length, 1);
    const o = lines[0];
    assert.deepEqual([o.prompt, o.text, o.finish, o.strategy], ["hi", "abc", "stop", "entropy"]);
    assert.deepEqual(o.tokens, [..."abcde"].map((c) => c.charCodeAt(0)));
    assert.deepEqual(o.logprobs, logprobs(5));
    assert.deepEqual(o.weights, Array(5).fill([0.5, 0.5]));
    assert.ok(o.timings.seconds >= 0 && o.timings.tokens_per_second >= 0);
  });

  test("bad flags exit 2 and say why; an unknown strategy lists the config's ids", async () => {
    const cases: [string[], RegExp][] = [
      [["--prompt", "x", "--strategy", "nope"], /no strategy "nope" in the config; its strategies: entropy, sharp/],
      [[], /give exactly one of --prompt, --prompt-file, --prompts/],
      [["--prompt", "x", "--prompt-file", cfg], /give exactly one of/],
      [["--prompt", "x", "--greedy", "--temperature", "0.7"], /--greedy takes no --temperature/],
      [["--prompt", "x", "--top-p", "1.5"], /top-p must be in \(0, 1\], got 1\.5/],
      [["--prompt", "x", "--max-new-tokens", "0"], /--max-new-tokens must be a positive integer/],
      [["--prompt", "x", "--max-new-bytes", "5"], /--max-new-bytes is for byte space/],
      [["--prompts", writeFile(work, "bad.jsonl", '{"text": "x"}\n')], /bad\.jsonl:1: needs \{"prompt": "…"\}/],
    ];
    for (const [args, want] of cases) {
      const r = await kotara(["generate", cfg, ...args], { env: fake });
      assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, want);
      assert.doesNotMatch(r.stderr, /\n\s+at /, "a user error prints no stack");
    }
  });

  test("Ctrl-C keeps what was printed, exits 130 and leaves no worker", async () => {
    const child = execa(process.execPath, [KOTARA, "generate", cfg, "--prompt", "x", "--max-new-tokens", "500"], {
      reject: false, env: { ...fake, KOTARA_FAKE_DELAY_MS: "20" },
    });
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    await waitFor(() => out.length >= 5, 60_000, "some streamed text");
    const [workerPid] = childPids(child.pid!);
    assert.ok(workerPid, "the worker is a child of the controller");
    child.kill("SIGINT");
    const r = await child;
    assert.equal(r.exitCode, 130, r.stderr);
    assert.ok(!alive(workerPid), "no worker left behind");
    assert.ok(letters(0, 500).startsWith(out.trimEnd()), "what was printed is the text so far");
    assert.match(r.stderr, /interrupted/);
  });
});

describe("session.generate on the fake worker", () => {
  test("an async iterable of chunks, then a summary; an abort stops it between steps", async () => {
    const s = await openSession({ models: [join(work, "a"), join(work, "b")], python: FAKE_PYTHON });
    try {
      const gen = s.generate({ prompts: ["p", "q"], strategy: "gap", maxNewTokens: 3 });
      const chunks = [];
      for await (const c of gen) chunks.push(c);
      assert.deepEqual(chunks.map((c) => [c.prompt, c.step, c.text, c.done]), [
        [0, 0, "a", false], [1, 0, "b", false], [0, 1, "b", false], [1, 1, "c", false], [0, 2, "c", true], [1, 2, "d", true],
      ]);
      const summary = await gen.summary;
      assert.equal(summary.setting.id, "gap");
      assert.deepEqual(summary.outputs.map((o) => o.text), [letters(0, 3), letters(1, 3)]);

      const abort = new AbortController();
      const long = s.generate({ prompt: "", maxNewTokens: 100_000, signal: abort.signal });
      let n = 0;
      await assert.rejects(async () => {
        for await (const _ of long) if (++n === 3) abort.abort();
      }, Interrupted);
      // the session keeps serving after a cancelled generation
      const again = s.generate({ prompt: "", maxNewTokens: 2 });
      for await (const _ of again);
      assert.equal((await again.summary).outputs[0].text, "ab");
      assert.throws(() => s.generate({ prompt: "x", sampling: { topK: -1 } }), /top-k must be an integer >= 0/);
    } finally {
      await s.close();
    }
  });
});

describe("kotara generate on the real worker", () => {
  test("greedy is deterministic, a seed reproduces a sample, and a batch row is its prompt alone", async () => {
    const models = tinyModels();
    const real = writeFile(work, "real.yaml", [
      "models:", `  - { ref: ${join(models, "gpt2-a")}, device: cpu }`, `  - { ref: ${join(models, "llama")}, device: cpu }`,
      `dataset: { path: ${join(models, "text.txt")} }`, "strategies: [entropy, mix]",
    ].join("\n"));
    const gen = async (...args: string[]) => {
      const r = await kotara(["generate", real, "--max-new-tokens", "8", "--json", "--quiet", ...args]);
      assert.equal(r.exitCode, 0, r.stderr);
      return r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    };
    const [g1] = await gen("--prompt", "the cat");
    const [g2] = await gen("--prompt", "the cat");
    assert.deepEqual(g1.tokens, g2.tokens);
    assert.equal(g1.tokens.length, 8);
    const [s1] = await gen("--prompt", "the cat", "--temperature", "1.5", "--seed", "3", "--strategy", "mix");
    const [s2] = await gen("--prompt", "the cat", "--temperature", "1.5", "--seed", "3", "--strategy", "mix");
    assert.deepEqual(s1.tokens, s2.tokens);
    const file = writeFile(work, "real.jsonl", ['{"prompt": "a dog"}', '{"prompt": "the cat"}'].join("\n"));
    const batch = await gen("--prompts", file);
    assert.deepEqual(batch[1].tokens, g1.tokens, "left padding does not change a row");
    // Tolerance: a row of a left-padded batch vs the prompt alone differ only by float32
    // kernel rounding of the same logits (≲ 1e-6 here); 1e-5 per token.
    batch[1].logprobs.forEach((x: number, i: number) => assert.ok(Math.abs(x - g1.logprobs[i]) <= 1e-5, `token ${i}: ${x} vs ${g1.logprobs[i]}`));
  });

  test("byte space: models whose tokenizers differ write bytes; --max-new-tokens is refused there", async () => {
    const models = tinyModels();
    const cross = writeFile(work, "cross.yaml", [
      "bytes: { beam: 4 }", "models:", `  - { ref: ${join(models, "gpt2-a")}, device: cpu }`, `  - { ref: ${join(models, "gpt2-othertok")}, device: cpu }`,
      `dataset: { path: ${join(models, "text.txt")} }`, "strategies: [average]",
    ].join("\n"));
    const r = await kotara(["generate", cross, "--prompt", "The c", "--max-new-bytes", "12", "--json"]);
    assert.equal(r.exitCode, 0, r.stderr);
    const [o] = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(o.space, "bytes");
    assert.ok(o.tokens.every((b: number) => Number.isInteger(b) && b >= 0 && b <= 256), "bytes (and 256 for the end)");
    const written = o.tokens.filter((b: number) => b < 256);
    assert.equal(o.text, Buffer.from(written).toString("utf8"), "the text is the bytes, decoded");
    assert.match(r.stderr, /byte space: the vocabularies of .* differ/);
    assert.match(r.stderr, /average · \d+ bytes in .* bytes\/s, first byte/);
    const bad = await kotara(["generate", cross, "--prompt", "x", "--max-new-tokens", "5"]);
    assert.equal(bad.exitCode, 2);
    assert.match(bad.stderr, /writes bytes: use --max-new-bytes/);
  });
});
