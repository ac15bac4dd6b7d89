// The CLI end to end through the real worker, on tiny models built offline
// (GPT-2 and Llama architectures), checked against independent computations.
// "progress goes to stderr" checks only the controller, on the fake worker (test/fake-worker/).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, test } from "node:test";
import { FAKE_PYTHON, PYTHON, kotara, referencePpl, tempDir, tinyModels, writeFile } from "./helpers.js";

let models: string;
let work: string;
let text: string;

before(() => {
  models = tinyModels();
  work = tempDir();
  text = join(models, "text.txt");
});

function config(extra: string, refs = ["gpt2-a", "llama"]) {
  return `models:\n${refs.map((r) => `  - ref: ${join(models, r)}\n    device: cpu\n`).join("")}` +
    `dataset:\n  path: ${text}\n  max_length: 64\n  stride: 32\n` + extra;
}

test("run: every model and every strategy, numbers that agree with an independent computation", async () => {
  const cfg = writeFile(work, "all.yaml", config(`strategies: [average, poe, entropy, gap, { type: entropy, temperatures: [0.8, 1.2] }]\nruntime:\n  batch_size: 3\n`));
  const out = join(work, "all.json");
  const r = await kotara(["run", cfg, "--metrics", out, "--quiet"]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stderr, "", "--quiet: nothing on stderr");
  const m = JSON.parse(readFileSync(out, "utf8"));
  const bytes = Buffer.byteLength(readFileSync(text, "utf8"));
  const words = readFileSync(text, "utf8").split(/\s+/).filter(Boolean).length;
  assert.equal(m.dataset.bytes, bytes);
  assert.equal(m.dataset.words, words);
  assert.equal(m.models.length, 2);
  assert.equal(m.fusions.length, 5);
  // Base PPLs: the plain Hugging Face loop, written in the helper, with no Kotara code.
  for (const [i, name] of ["gpt2-a", "llama"].entries()) {
    const ref = referencePpl(join(models, name), text, 64, 32);
    assert.ok(Math.abs(m.models[i].ppl - ref) / ref < 1e-5, `${name}: ${m.models[i].ppl} vs ${ref}`);
  }
  for (const row of [...m.models, ...m.fusions]) {
    const total = row.nll * m.dataset.scored_tokens;
    assert.ok(Math.abs(row.ppl - Math.exp(row.nll)) / row.ppl < 1e-9);
    assert.ok(Math.abs(row.bits_per_byte - total / (Math.LN2 * bytes)) < 1e-9);
    assert.ok(Math.abs(row.word_perplexity - Math.exp(total / words)) / row.word_perplexity < 1e-9);
  }
  // average and poe with default betas are the same fusion (SPEC §3): same numbers.
  const byId = Object.fromEntries(m.fusions.map((f: any) => [f.id, f]));
  assert.ok(Math.abs(byId.average.ppl - byId.poe.ppl) / byId.average.ppl < 1e-5);
  assert.deepEqual(byId.average.weights_mean, [0.5, 0.5]);
  const best = m.fusions.reduce((a: any, b: any) => (b.ppl < a.ppl ? b : a));
  assert.equal(m.best.id, best.id);
  assert.equal(m.baseline_ppl_a, m.models[0].ppl);
  assert.equal(m.fused_ppl, m.fusions[0].ppl);
  // the report on stdout names every model and fusion
  for (const id of Object.keys(byId)) assert.ok(r.stdout.includes(id), `report mentions ${id}`);
});

test("eval: the original script's flags give the same numbers as the equivalent YAML", async () => {
  const out = join(work, "eval.json");
  const r = await kotara(["eval", "--model_a", join(models, "gpt2-a"), "--model_b", join(models, "gpt2-b"), "--dataset_path", text,
    "--max_length", "64", "--stride", "64", "--strategy", "poe", "--temp_a", "0.9", "--poe_beta_a", "0.7", "--poe_beta_b", "0.3",
    "--device", "cpu", "--save_metrics", out, "--quiet"]);
  assert.equal(r.exitCode, 0, r.stderr);
  const cfg = writeFile(work, "eval.yaml", config(`strategies:\n  - { type: poe, temperatures: [0.9, 1], betas: [0.7, 0.3] }\n`, ["gpt2-a", "gpt2-b"])
    .replace("stride: 32", "stride: 64"));
  const out2 = join(work, "eval-yaml.json");
  const r2 = await kotara(["run", cfg, "--metrics", out2, "--quiet"]);
  assert.equal(r2.exitCode, 0, r2.stderr);
  const a = JSON.parse(readFileSync(out, "utf8"));
  const b = JSON.parse(readFileSync(out2, "utf8"));
  assert.equal(a.fused_ppl, b.fused_ppl);
  assert.equal(a.strategy, "poe");
  assert.deepEqual(a.temps, { a: 0.9, b: 1 });
  assert.deepEqual(a.poe_betas, { a: 0.7, b: 0.3 });
  assert.ok(Math.abs(a.models[0].ppl - referencePpl(join(models, "gpt2-a"), text, 64, 64)) / a.models[0].ppl < 1e-5);
});

test("a padded output layer fuses with an unpadded one: each model over its whole layer, the fusion over the tokenizer's vocabulary", async () => {
  const cfg = writeFile(work, "padded.yaml", config(`strategies: [average, entropy]\n`, ["gpt2-a", "gpt2-padded"]));
  const r = await kotara(["run", cfg, "--metrics", join(work, "padded.json"), "--quiet"]);
  assert.equal(r.exitCode, 0, r.stderr);
  const m = JSON.parse(readFileSync(join(work, "padded.json"), "utf8"));
  // Independent: plain transformers, the HF fixed-length loop; each model's PPL over its
  // whole output layer (as HF computes it), the average fusion over the first V rows.
  const script = `
import math, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
a, b, path = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(a); V = len(tok)
ma, mb = (AutoModelForCausalLM.from_pretrained(x).eval() for x in (a, b))
ids = torch.tensor([tok(open(path, encoding="utf-8").read())["input_ids"]]); n = ids.size(1)
nll = [0.0, 0.0, 0.0]; count = 0; prev = 0
for begin in range(0, n, 32):
    end = min(begin + 64, n); trg = end - prev; inp = ids[:, begin:end]
    with torch.no_grad():
        za, zb = ma(inp).logits[0, :-1].float(), mb(inp).logits[0, :-1].float()
    t = inp[0, 1:]; sel = slice(t.numel() - min(trg, t.numel()), t.numel())
    for k, z in enumerate((za, zb, (za[:, :V] + zb[:, :V]) / 2)):
        nll[k] -= torch.log_softmax(z, -1)[sel].gather(1, t[sel, None]).sum().item()
    count += t[sel].numel(); prev = end
    if end == n: break
print(" ".join(str(math.exp(x / count)) for x in nll), V, mb.get_output_embeddings().weight.shape[0])
`;
  const [pa, pb, avg, vocab, rows] = execFileSync(PYTHON, ["-c", script, join(models, "gpt2-a"), join(models, "gpt2-padded"), text], { encoding: "utf8" })
    .trim().split("\n").pop()!.split(" ").map(Number);
  assert.ok(rows > vocab, `the padded model has more output rows (${rows}) than the tokenizer has tokens (${vocab})`);
  // 1e-5 relative, as the other reference comparisons here: float32 logits by two code paths
  // (Kotara's head on the scored rows vs the full forward) differ by float32 rounding only.
  for (const [got, want, what] of [[m.models[0].ppl, pa, "gpt2-a"], [m.models[1].ppl, pb, "gpt2-padded (whole layer)"], [m.fusions[0].ppl, avg, "average over [:V]"]] as const) {
    assert.ok(Math.abs(got - want) <= 1e-5 * want, `${what}: ${got} vs ${want}`);
  }
  const w = m.fusions[1].weights_mean;
  assert.ok(Math.abs(w[0] + w[1] - 1) < 1e-9 && w.every((x: number) => x > 0 && x < 1), `entropy weights ${w}`);
});

test("space: tokens refuses mismatched tokenizers with both models named (exit 2); auto would fuse them in bytes", async () => {
  const cfg = writeFile(work, "mismatch.yaml", "space: tokens\n" + config(`strategies: [entropy]\n`, ["gpt2-a", "gpt2-othertok"]));
  const r = await kotara(["run", cfg, "--metrics", join(work, "mismatch.json"), "--quiet"]);
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /tokenizer|vocabular/i);
  assert.match(r.stderr, /gpt2-othertok/);
  assert.doesNotMatch(r.stderr, /Traceback/);
});

test("max_length over a model's context is refused (exit 2)", async () => {
  const cfg = writeFile(work, "context.yaml", config(`strategies: [entropy]\n`).replace("max_length: 64", "max_length: 4096").replace("stride: 32", "stride: 4096"));
  const r = await kotara(["run", cfg, "--metrics", join(work, "context.json"), "--quiet"]);
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /context|max_length/);
});

test("a Hub id that is not cached says where it looked (exit 2)", async () => {
  const cfg = writeFile(work, "hub.yaml", config(`strategies: [entropy]\n`).replace(join(models, "llama"), "kotara-test/no-such-model"));
  const r = await kotara(["run", cfg, "--metrics", join(work, "hub.json"), "--quiet"], { env: { HF_HUB_OFFLINE: "1", HF_HOME: join(work, "hf") } });
  assert.equal(r.exitCode, 2, r.stderr);
  assert.match(r.stderr, /kotara-test\/no-such-model/);
  assert.match(r.stderr, /cache|offline/i);
  assert.doesNotMatch(r.stderr, /Traceback/);
});

test("progress goes to stderr, the report to stdout", async () => {
  const cfg = writeFile(work, "progress.yaml", config(`strategies: [gap]\n`));
  const r = await kotara(["run", cfg, "--metrics", join(work, "progress.json")], { env: { KOTARA_PYTHON: FAKE_PYTHON } });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /windows \d+\/\d+ \| \d+ tok\/s \| ETA/);
  assert.doesNotMatch(r.stdout, /windows \d+\/\d+/);
  assert.match(r.stdout, /gap/);
});

test("usage errors exit 2 without a stack trace", async () => {
  for (const args of [["run"], ["frobnicate"], ["eval", "--model_a", "x"], ["eval", "--model_a", "a", "--model_b", "b", "--dataset_path", "t", "--temp_a", "hot"]]) {
    const r = await kotara(args);
    assert.equal(r.exitCode, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /at .*\.js:\d+/);
  }
});
