// The wire protocol: the committed schema and golden messages are what src/protocol.ts
// generates, every golden message decodes and validates, bad messages are refused.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import { GOLDEN_MESSAGES, protocolJsonSchema } from "../src/protocol-schema.js";
import { FromWorker, ToWorker, type Sums } from "../src/protocol.js";
import { appendWindows, windowProblem } from "../src/sums.js";
import { PACKAGE_ROOT } from "../src/worker.js";

const dir = join(PACKAGE_ROOT, "protocol");

test("protocol/schema.json is generated from src/protocol.ts (run npm run protocol:gen)", () => {
  const committed = JSON.parse(readFileSync(join(dir, "schema.json"), "utf8"));
  assert.deepEqual(committed, JSON.parse(JSON.stringify(protocolJsonSchema())));
});

test("every golden message decodes to its JSON and validates", () => {
  const names = readdirSync(join(dir, "golden")).filter((f) => f.endsWith(".msgpack")).map((f) => f.slice(0, -8));
  assert.deepEqual(names.sort(), Object.keys(GOLDEN_MESSAGES).sort());
  for (const name of names) {
    const bytes = readFileSync(join(dir, "golden", `${name}.msgpack`));
    const expected = JSON.parse(readFileSync(join(dir, "golden", `${name}.json`), "utf8"));
    const decoded = decode(bytes);
    assert.deepEqual(decoded, expected, name);
    assert.deepEqual(Buffer.from(encode(expected)), bytes, `${name} re-encodes to the same bytes`);
    const schema = ["load", "evaluate", "evaluate_resume", "evaluate_positions", "evaluate_share", "generate", "fit", "cancel", "shutdown"].includes(name) ? ToWorker : FromWorker;
    assert.ok(schema.safeParse(decoded).success, `${name} validates`);
  }
});

test("bad messages are refused with the field named", () => {
  const evaluate = structuredClone(GOLDEN_MESSAGES.evaluate) as any;
  const cases: [string, (m: any) => void, string][] = [
    ["temperature 0", (m) => (m.settings[0].temperatures = [0, 1]), "settings.0.temperatures.0"],
    ["temperature NaN", (m) => (m.settings[0].temperatures = [NaN, 1]), "settings.0.temperatures.0"],
    ["unknown strategy", (m) => (m.settings[0].type = "median"), "settings.0.type"],
    ["extra key", (m) => (m.surprise = 1), ""],
    ["stride 0", (m) => (m.dataset.stride = 0), "dataset.stride"],
    ["no seq", (m) => delete m.seq, "seq"],
  ];
  for (const [what, mutate, path] of cases) {
    const m = structuredClone(evaluate);
    mutate(m);
    const r = ToWorker.safeParse(m);
    assert.equal(r.success, false, what);
    assert.ok(r.error!.issues.some((i) => i.path.join(".") === path), `${what}: ${JSON.stringify(r.error!.issues)}`);
  }
});

test("per-window sums: a progress message's windows append to those before them; a result's add up to its totals", () => {
  const full = (GOLDEN_MESSAGES.result as { sums: Sums }).sums;
  const progress = (GOLDEN_MESSAGES.progress as { sums: Sums }).sums; // windows 1..1, the totals after 2
  assert.equal(windowProblem(full, 2, 2), null);
  const first: Sums = {
    ...full, windows_done: 1, scored_tokens: full.window_targets[0], window_targets: full.window_targets.slice(0, 1), window_bytes: full.window_bytes.slice(0, 1),
    model_nll: full.window_model_nll.map((r) => r[0]), fusion_nll: full.window_fusion_nll.map((r) => r[0]),
    window_model_nll: full.window_model_nll.map((r) => r.slice(0, 1)), window_fusion_nll: full.window_fusion_nll.map((r) => r.slice(0, 1)),
  };
  const two = appendWindows(first, progress);
  assert.deepEqual(two.window_model_nll, full.window_model_nll.map((r) => r.slice(0, 2)));
  assert.deepEqual([two.window_first, two.windows_done, two.model_nll], [0, 2, progress.model_nll]);
  assert.equal(windowProblem(two, 2, 2), null);
  assert.equal(appendWindows(null, first), first);
  assert.equal(first.window_targets.length, 1, "the earlier sums are not changed");
  assert.throws(() => appendWindows(null, progress), /list windows 1\.\.1 after 0 windows/);
  assert.throws(() => appendWindows(two, progress), /list windows 1\.\.1 after 2 windows/);
  assert.match(windowProblem({ ...full, fusion_nll: [full.fusion_nll[0] + 1e-9, full.fusion_nll[1]] }, 2, 2)!, /setting 1's per-window NLL does not add up/);
  assert.match(windowProblem(progress, 2, 2)!, /list windows from 1/);
});
