// The wire protocol: the committed schema and golden messages are what src/protocol.ts
// generates, every golden message decodes and validates, bad messages are refused.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import { GOLDEN_MESSAGES, protocolJsonSchema } from "../src/protocol-schema.js";
import { FromWorker, ToWorker } from "../src/protocol.js";
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
    const schema = ["load", "evaluate", "evaluate_resume", "generate", "cancel", "shutdown"].includes(name) ? ToWorker : FromWorker;
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
