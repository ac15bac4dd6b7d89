// Every bad input the CLI can check before the worker starts: exit 2, the field's
// path and what is allowed, no stack trace, and no worker started (no "loading" line).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { kotara, tempDir, tinyModels, writeFile } from "./helpers.js";

let dir: string;
let a: string;
let b: string;
let text: string;

before(() => {
  const models = tinyModels();
  a = join(models, "gpt2-a");
  b = join(models, "gpt2-b");
  text = join(models, "text.txt");
  dir = tempDir();
});

const good = () => ({
  models: `models:\n  - ref: ${a}\n  - ref: ${b}\n`,
  dataset: `dataset:\n  path: ${text}\n  max_length: 64\n  stride: 32\n`,
  strategies: "strategies: [entropy]\n",
});

type Case = [name: string, yaml: (g: ReturnType<typeof good>) => string, expected: RegExp];

const cases: Case[] = [
  ["YAML syntax error", (g) => g.models + "dataset: [unclosed\n", /line \d+, column \d+|\d+:\d+/],
  ["unknown top-level key", (g) => g.models + g.dataset + g.strategies + "modles: []\n", /modles/],
  ["unknown key in a model", (g) => g.models.replace(`ref: ${b}`, `ref: ${b}\n    revison: main`) + g.dataset + g.strategies, /models\[1\]\.revison|models\.1\.revison/],
  ["wrong type", (g) => g.models + g.dataset.replace("max_length: 64", "max_length: long") + g.strategies, /dataset\.max_length/],
  ["temperature 0", (g) => g.models + g.dataset + "strategies:\n  - { type: entropy, temperatures: [0, 1] }\n", /strategies\[0\]\.temperatures\[0\].*> 0/],
  ["temperature not finite", (g) => g.models + g.dataset + "strategies:\n  - { type: gap, temperatures: [.inf, 1] }\n", /strategies\[0\]\.temperatures\[0\]/],
  ["stride > max_length", (g) => g.models + g.dataset.replace("stride: 32", "stride: 128") + g.strategies, /dataset\.stride/],
  ["stride 0", (g) => g.models + g.dataset.replace("stride: 32", "stride: 0") + g.strategies, /dataset\.stride/],
  ["temperature list of the wrong length", (g) => g.models + g.dataset + "strategies:\n  - { type: average, temperatures: [1, 1, 1] }\n", /strategies\[0\]\.temperatures.*2/],
  ["unknown strategy", (g) => g.models + g.dataset + "strategies: [median]\n", /unknown strategy "median"; known: average, poe, entropy, gap, mix/],
  ["a model path that does not exist", (g) => g.models.replace(b, join(dir, "missing-model")) + g.dataset + g.strategies, /models\[1\]\.ref.*missing-model/],
  ["dataset missing", (g) => g.models + g.dataset.replace(text, join(dir, "nope.txt")) + g.strategies, /dataset\.path: .*not found/],
  ["dataset a directory", (g) => g.models + g.dataset.replace(text, dir) + g.strategies, /dataset\.path: .*directory/],
  ["dataset empty", (g) => g.models + g.dataset.replace(text, writeFile(dir, "empty.txt", "")) + g.strategies, /dataset\.path: .*empty/],
  ["dataset one word long", (g) => g.models + g.dataset.replace(text, writeFile(dir, "one.txt", "word\n")) + g.strategies, /dataset\.path: .*(short|word)/],
  ["dataset binary", (g) => g.models + g.dataset.replace(text, writeFile(dir, "bin.txt", Buffer.from([104, 105, 0, 1, 2, 32, 104, 105]))) + g.strategies, /dataset\.path: .*binary/],
  ["dataset not UTF-8", (g) => g.models + g.dataset.replace(text, writeFile(dir, "latin1.txt", Buffer.from("caf\xe9 au lait", "latin1"))) + g.strategies, /dataset\.path: .*UTF-8.*(byte|offset) 3/],
  ["fewer than two models", (g) => `models:\n  - ref: ${a}\n` + g.dataset + g.strategies, /models/],
];

for (const [name, yaml, expected] of cases) {
  test(`bad input, exit 2 before the worker starts: ${name}`, async () => {
    mkdirSync(dir, { recursive: true });
    const cfg = writeFile(dir, `${name.replace(/\W+/g, "-")}.yaml`, yaml(good()));
    const r = await kotara(["run", cfg, "--metrics", join(dir, "out.json")]);
    assert.equal(r.exitCode, 2, r.stderr);
    assert.match(r.stderr, expected);
    assert.doesNotMatch(r.stderr, /loading|Traceback|at .*\.js:\d+/);
    assert.equal(r.stdout, "");
  });
}
