// Sharded models (docs/scale.md): device_map / max_memory on the wire, and a checkpoint
// that stays valid when only where a model's parts lie changes.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fingerprint } from "../src/checkpoint.js";
import { ModelSpec } from "../src/protocol.js";
import { toModelSpec } from "../src/session.js";

const key = (models: ModelSpec[]) => ({
  space: "tokens", bytes: { beam: 8, prune: 0 }, models, tokenizer: null,
  dataset: { path: "t.txt", max_length: 64, stride: 64, bos_per_window: false }, text: { sha256: "0" }, settings: [], batch_size: 8,
});

describe("sharding fields", () => {
  test("toModelSpec sends them only when set, and the wire schema takes them", () => {
    const plain = toModelSpec("gpt2");
    assert.deepEqual(plain, { ref: "gpt2", revision: null, trust_remote_code: false, dtype: "auto", device: "auto" });
    const sharded = toModelSpec({ ref: "gpt2", device_map: "sequential", max_memory: { "0": "20GiB", cpu: 1_000_000 } });
    assert.equal(sharded.device_map, "sequential");
    assert.deepEqual(sharded.max_memory, { "0": "20GiB", cpu: 1_000_000 });
    assert.ok(ModelSpec.safeParse(sharded).success);
    assert.ok(ModelSpec.safeParse({ ...plain, device_map: null, max_memory: null }).success);
    assert.equal(ModelSpec.safeParse({ ...plain, max_memory: { gpu: "1GiB" } }).success, false);
    assert.equal(ModelSpec.safeParse({ ...plain, max_memory: { cpu: "lots" } }).success, false);
    assert.equal(ModelSpec.safeParse({ ...plain, device_map: "pipeline" }).success, false);
  });
  test("the checkpoint fingerprint ignores device_map and max_memory (not the device)", async () => {
    const plain = [toModelSpec("gpt2"), toModelSpec("distilgpt2")];
    const sharded = [toModelSpec({ ref: "gpt2", device_map: "auto", max_memory: { cpu: "1GiB" } }), toModelSpec("distilgpt2")];
    assert.equal((await fingerprint(key(plain))).config, (await fingerprint(key(sharded))).config);
    const moved = [toModelSpec({ ref: "gpt2", device: "cpu" }), toModelSpec("distilgpt2")];
    assert.notEqual((await fingerprint(key(plain))).config, (await fingerprint(key(moved))).config);
  });
});
