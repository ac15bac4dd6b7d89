// `kotara fit` and session.fit: on the fake worker (its fits are closed forms,
// test/fake-worker/canned.ts fittedSettings, restated here), the CLI's arguments, its errors
// (exit 2, `path: message`), the report, the metrics file, the default grid and the
// sweep as the grid, and the written config (it parses, and `kotara run` of it gives the
// numbers the fit reported); then once on the real worker and tiny models: `kotara run`
// of the written config on the dev text reproduces the fit's dev NLL.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { loadConfig } from "../src/config.js";
import { defaultGrid } from "../src/fit.js";
import { openSession } from "../src/index.js";
import { FAKE_PYTHON, kotara, tempDir, tinyModels, writeFile } from "./helpers.js";

let work: string;
let a: string;
let b: string;
let dev: string;
let testText: string;
const DEV = "The dev text, for the fake worker: a few lines of prose.\nIt goes on for a while.\n".repeat(6);
const TEST = "The test text is another one — with ünïcödé — and other words.\n".repeat(7);
const fake = { KOTARA_PYTHON: FAKE_PYTHON };

before(() => {
  work = tempDir("kotara-fit-");
  a = join(work, "model-a");
  b = join(work, "model-b");
  for (const m of [a, b]) {
    mkdirSync(m);
    writeFileSync(join(m, "config.json"), JSON.stringify({ vocab_size: 400, n_positions: 128, bos_token_id: 0 }));
  }
  dev = writeFile(work, "dev.txt", DEV);
  testText = writeFile(work, "test.txt", TEST);
});

// ---- the fake's closed forms, restated (canned.ts) ----
const tau = (m: number) => 1 + 0.1 * m;
const BASE: Record<string, number> = { average: 18, poe: 18, entropy: 17, gap: 19, mix: 18.5 };
function fakePpl(type: string, t: number[], list: number[] | null): number {
  const M = t.length;
  const temp = t.reduce((acc, x, m) => acc + (x - tau(m)) ** 2, 0);
  const nb = list ? list.map((x) => x / list.reduce((p, q) => p + q, 0)) : null;
  return BASE[type] * (1 + temp) * (1 + (nb ? nb.reduce((acc, x) => acc + (x - 1 / M) ** 2, 0) : 0));
}
const close = (x: number, y: number, what: string, rel = 1e-12) => assert.ok(Math.abs(x - y) <= rel * Math.abs(y), `${what}: ${x} vs ${y}`);

const config = (extra = "strategies: [average, entropy]\n") =>
  `models:\n  - { ref: ./model-a, device: cpu }\n  - { ref: ./model-b, device: cpu }\n` +
  `dataset: { path: test.txt, max_length: 64, stride: 32 }\n` + extra + "output: { metrics: results/fake.json }\n";

test("fit on the fake worker: the report, the metrics file, the grid, and a fitted config that `kotara run` reproduces", async () => {
  const cfg = writeFile(work, "fake.yaml", config());
  const out = join(work, "fitted", "fake.fitted.yaml");
  const metrics = join(work, "fake.fit.json");
  const r = await kotara(["fit", cfg, "--dev", dev, "--out", out, "--metrics", metrics], { env: fake });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /fitting on .*dev\.txt \(24 settings evaluated next to the fits\)/); // 2 + the 22-point grid
  const m = JSON.parse(readFileSync(metrics, "utf8"));
  // the fits, as the fake computes them: poe at T = 1 with c_m = 1 / (M τ_m); mix at the grid point nearest τ
  const [poe, mix] = m.fits;
  assert.deepEqual([poe.kind, poe.setting.id, mix.kind, mix.setting.id], ["loglinear", "fitted-poe", "mix", "fitted-mix"]);
  assert.deepEqual(poe.setting.temperatures, [1, 1]);
  poe.setting.betas.forEach((c: number, k: number) => close(c, 1 / (2 * tau(k)), `c_${k}`));
  assert.deepEqual(mix.setting.temperatures, [1, 1.1]);
  assert.deepEqual(mix.setting.weights, [0.5, 0.5]);
  // dev and test metrics: models, the config's strategies, the grid, then the fitted settings
  for (const [which, text] of [["dev", DEV], ["test", TEST]] as const) {
    const x = m[which];
    assert.equal(x.dataset.bytes, Buffer.byteLength(text), which);
    assert.equal(x.fusions.length, 2 + 22 + 2, which);
    assert.deepEqual(x.fusions.slice(-2).map((f: any) => f.id), ["fitted-poe", "fitted-mix"]);
    close(x.models[0].ppl, 20, `${which} model a`);
    for (const f of x.fusions) close(f.ppl, fakePpl(f.strategy.type, f.strategy.temperatures, f.strategy.betas ?? f.strategy.weights), `${which} ${f.id}`);
  }
  assert.deepEqual(m.strategies, ["average", "entropy"]);
  // the anchor: the default grid (22 points), its best point on test; every fitted rule against it
  assert.equal(m.anchor.grid.source, "default");
  assert.deepEqual(m.anchor.grid.ids, defaultGrid(2).map((s) => s.id));
  const gridPpl = m.anchor.grid.ids.map((id: string) => m.test.fusions.find((f: any) => f.id === id).ppl);
  close(m.anchor.best_on_test.test, Math.min(...gridPpl), "best grid point on test");
  for (const row of m.anchor.rows) {
    assert.equal(row.beats_or_equals, row.test <= row.grid_best_test, row.id);
    close(row.ppl_ratio, row.test / row.grid_best_test, `${row.id} ratio`, 1e-9);
  }
  // the report: both texts, the fits, dev and test side by side, the anchor
  assert.match(r.stdout, /^dev  .*dev\.txt: /m);
  assert.match(r.stdout, /^test .*test\.txt: /m);
  assert.match(r.stdout, /fitted-poe {2}log-linear f = Σ c_m z_m, c = 0\.5000, 0\.4545 .*Newton, 3 iterations \(7 passes\)/);
  assert.match(r.stdout, /fitted-mix {2}mix, weights 0\.50 \/ 0\.50 at T = 1, 1\.1: EM/);
  assert.match(r.stdout, /dev PPL +test PPL +test Δ vs best model +test 95% CI/);
  assert.match(r.stdout, /grid, best on test: /);
  assert.match(r.stdout, /Against the grid: the default grid \(the config has no sweep\), 22 points/);

  // the written config: it parses, its dataset is the test text, its paths work from its new directory
  const plan = await loadConfig(out);
  assert.equal(plan.dataset.path, testText);
  assert.deepEqual(plan.models.map((x) => x.ref), [a, b]);
  assert.deepEqual(plan.settings.map((s) => s.id), ["average", "entropy", "fitted-poe", "fitted-mix"]);
  assert.deepEqual(plan.settings[2].betas, poe.setting.betas, "the numbers round-trip");
  assert.equal(plan.output.metrics, join(work, "results", "fake.fitted.json"));
  assert.match(readFileSync(out, "utf8"), /^# Written by `kotara fit /);
  // and `kotara run` of it gives the fit's test numbers
  const run = join(work, "run.json");
  const rr = await kotara(["run", out, "--metrics", run, "--quiet"], { env: fake });
  assert.equal(rr.exitCode, 0, rr.stderr);
  const ran = JSON.parse(readFileSync(run, "utf8"));
  for (const id of ["fitted-poe", "fitted-mix", "average"]) {
    assert.equal(ran.fusions.find((f: any) => f.id === id).nll, m.test.fusions.find((f: any) => f.id === id).nll, id);
  }
});

test("fit with a sweep: the sweep is the grid; a config's own fitted-* entry is replaced", async () => {
  const cfg = writeFile(work, "sweep.yaml", config(
    "strategies: [average, { id: fitted-poe, type: poe, betas: [0.9, 0.1] }]\n" +
    "sweep: { strategies: [average, gap], temperatures: [[0.9, 1, 1.1], [1, 1.1]] }\n"));
  const metrics = join(work, "sweep.fit.json");
  const out = join(work, "sweep.fitted.yaml");
  const r = await kotara(["fit", cfg, "--dev", dev, "--test", testText, "--out", out, "--metrics", metrics, "--quiet"], { env: fake });
  assert.equal(r.exitCode, 0, r.stderr);
  const m = JSON.parse(readFileSync(metrics, "utf8"));
  assert.equal(m.anchor.grid.source, "sweep");
  assert.equal(m.anchor.grid.ids.length, 2 * 3 * 2);
  assert.ok(m.anchor.grid.ids.includes("average"), "a grid point that is a config strategy keeps its id");
  assert.deepEqual(m.strategies, ["average"]);
  const best = m.test.fusions.filter((f: any) => m.anchor.grid.ids.includes(f.id)).reduce((x: any, y: any) => (y.nll < x.nll ? y : x));
  assert.equal(m.anchor.best_on_test.id, best.id);
  assert.match(r.stdout, /Against the grid: the config's sweep, 12 settings/);
  const plan = await loadConfig(out);
  assert.deepEqual(plan.settings.slice(0, 3).map((s) => s.id), ["average", "fitted-poe", "fitted-mix"], "the old fitted-poe is replaced");
  assert.ok(plan.sweep, "the sweep is kept");
});

test("fit errors: exit 2 with `path: message`, before the worker starts where they can be checked", async () => {
  const cfg = writeFile(work, "errors.yaml", config());
  const cases: [string[], RegExp][] = [
    [["fit", cfg], /required option '--dev <file>'/],
    [["fit", cfg, "--dev", join(work, "nope.txt")], /--dev: file not found: .*nope\.txt/],
    [["fit", cfg, "--dev", dev, "--test", work], /--test: is a directory, expected a UTF-8 text file/],
    [["fit", cfg, "--dev", dev, "--out", work], /--out: is a directory/],
    [["fit", cfg, "--dev", dev, "--memory-budget", "0"], /--memory-budget must be > 0/],
    [["fit", cfg, "--dev", dev, "--memory-budget", "lots"], /--memory-budget must be a number/],
    [["fit", cfg, "--dev", dev, "--fits", "poe"], /--fits takes loglinear, mix or both \(comma-separated\), got "poe"/],
    [["fit", cfg, "--dev", dev, "--fits", "mix,mix"], /fit\.fits: each of mix, loglinear at most once/],
    [["fit", join(work, "missing.yaml"), "--dev", dev], /cannot read the config: no such file/],
  ];
  for (const [args, expected] of cases) {
    const r = await kotara(args, { env: fake });
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, expected, args.join(" "));
    assert.doesNotMatch(r.stderr, /loading|at .*\.js:\d+/, "no worker, no stack trace");
  }
  // over the memory budget: the worker refuses before any window runs (kept logits 2 × P × 400 × 4 bytes)
  const r = await kotara(["fit", cfg, "--dev", dev, "--memory-budget", "0.5", "--metrics", join(work, "budget.json")], { env: fake });
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /kotara: the log-linear fit keeps every model's logits at every dev position: \d+ positions × 2 models × 400 logits × 4 bytes = \d+ bytes, over the memory budget of 524288 bytes/);
  assert.doesNotMatch(r.stderr, /windows \d+\//, "no window ran");
  // mix alone keeps no logits: the same budget passes, and the config gets fitted-mix only
  const out = join(work, "mix-only.fitted.yaml");
  const mixOnly = await kotara(["fit", cfg, "--dev", dev, "--fits", "mix", "--memory-budget", "0.5", "--out", out, "--metrics", join(work, "mix-only.json"), "--quiet"], { env: fake });
  assert.equal(mixOnly.exitCode, 0, mixOnly.stderr);
  assert.doesNotMatch(mixOnly.stdout, /fitted-poe/);
  assert.match(mixOnly.stdout, /fitted-mix .* vs mix@/);
  assert.deepEqual((await loadConfig(out)).settings.map((s) => s.id), ["average", "entropy", "fitted-mix"]);
});

test("session.fit: the dev metrics with the fitted settings; an id that names a fitted setting is refused", async () => {
  const session = await openSession({ models: [a, b], python: FAKE_PYTHON });
  try {
    const fit = await session.fit({ dataset: { path: dev, max_length: 64, stride: 32 }, strategies: ["average"], fits: ["mix"], mixTemperatures: [0.9, 1.15] });
    assert.deepEqual(fit.metrics.fusions.map((f) => f.id), ["average", "fitted-mix"]);
    assert.deepEqual(fit.settings[0].temperatures, [1, 1.15], "the grid points nearest τ = 1, 1.1");
    close(fit.metrics.fusions[1].ppl, fakePpl("mix", fit.settings[0].temperatures, fit.settings[0].weights), "fitted-mix");
    await assert.rejects(session.fit({ dataset: { path: dev, max_length: 64, stride: 32 }, strategies: [{ id: "fitted-mix", type: "mix" }] }),
      (e: any) => e.exitCode === 2 && /"fitted-mix" name the fitted settings/.test(e.message));
    await assert.rejects(session.fit({ dataset: { path: dev, max_length: 64, stride: 32 }, fits: ["mix", "mix"] }),
      (e: any) => e.exitCode === 2 && /fit\.fits: each of mix, loglinear at most once/.test(e.message));
  } finally {
    await session.close();
  }
});

test("fit on the real worker: `kotara run` of the written config on the dev text reproduces the fit's dev NLL", async () => {
  const models = tinyModels();
  const text = readFileSync(join(models, "text.txt"), "utf8");
  const cut = text.indexOf(". ", Math.floor(text.length / 2)) + 2;       // halves, at a sentence
  const devFile = writeFile(work, "tiny-dev.txt", text.slice(0, cut));
  const testFile = writeFile(work, "tiny-test.txt", text.slice(cut));
  const cfg = writeFile(work, "tiny.yaml",
    `models:\n  - { ref: ${join(models, "gpt2-a")}, device: cpu }\n  - { ref: ${join(models, "llama")}, device: cpu }\n` +
    `dataset: { path: ${testFile}, max_length: 64, stride: 32 }\nstrategies: [average]\n`);
  const out = join(work, "tiny.fitted.yaml");
  const metrics = join(work, "tiny.fit.json");
  const r = await kotara(["fit", cfg, "--dev", devFile, "--out", out, "--metrics", metrics, "--quiet"], { timeout: 300_000 });
  assert.equal(r.exitCode, 0, r.stderr);
  const m = JSON.parse(readFileSync(metrics, "utf8"));
  assert.ok(m.fits.every((f: any) => f.converged), JSON.stringify(m.fits));
  const devRun = join(work, "tiny-dev.yaml");
  writeFileSync(devRun, readFileSync(out, "utf8").replace(/^ {2}path: .*$/m, `  path: ${devFile}`));
  const run = join(work, "tiny-dev.json");
  const rr = await kotara(["run", devRun, "--metrics", run, "--quiet"], { timeout: 300_000 });
  assert.equal(rr.exitCode, 0, rr.stderr);
  const ran = JSON.parse(readFileSync(run, "utf8"));
  assert.equal(ran.dataset.scored_tokens, m.dev.dataset.scored_tokens);
  for (const id of ["fitted-poe", "fitted-mix", "average"]) {
    const x = ran.fusions.find((f: any) => f.id === id).nll;
    const y = m.dev.fusions.find((f: any) => f.id === id).nll;
    // the same float32 code on the same logits; fitted-poe through another block layout of
    // the fused bmm/log_softmax: per position within test_fusion.py's bound (1)+(2), here
    // ~1e-6 of an NLL of a few nats at most (V = 400, |f| ≲ 20); a mean over the positions is
    // within that. mix and average: the same blocks, the same numbers.
    assert.ok(Math.abs(x - y) <= 1e-6 * Math.abs(y), `${id}: run ${x} vs fit ${y}`);
  }
  // the fitted log-linear rule is at least as good on dev as average (a point of its family)
  assert.ok(m.dev.fusions.find((f: any) => f.id === "fitted-poe").nll <= m.dev.fusions.find((f: any) => f.id === "average").nll);
});
