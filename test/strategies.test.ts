// Strategy declarations (src/strategies.ts): defaults, ids, errors with paths.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConfigError } from "../src/errors.js";
import { CSV_COLUMNS } from "../src/outputs.js";
import { Setting, StrategyType } from "../src/protocol.js";
import {
  KNOWN_STRATEGIES,
  LIST_PARAMS,
  LIST_PARAM_NAMES,
  STRATEGIES,
  checkStrategies,
  defaultParam,
  paramsOf,
  takersOf,
  formatNumber,
  resolveStrategies,
  settingId,
  settingKey,
} from "../src/strategies.js";

/** resolveStrategies must throw a ConfigError; returns its lines. */
function errors(entries: unknown[], nModels = 2): string[] {
  try {
    resolveStrategies(entries, nModels);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.lines;
  }
  assert.fail("accepted");
}

describe("the registry", () => {
  test("declares exactly the wire protocol's strategy types, in a stable order", () => {
    assert.deepEqual([...KNOWN_STRATEGIES], ["average", "poe", "entropy", "gap", "mix"]);
    assert.deepEqual([...KNOWN_STRATEGIES].sort(), [...StrategyType.options].sort());
    for (const name of KNOWN_STRATEGIES) assert.ok(STRATEGIES[name].summary.length > 0);
  });

  test("only poe takes betas and only mix takes weights, by default 1/N each", () => {
    assert.deepEqual(takersOf("betas"), ["poe"]);
    assert.deepEqual(takersOf("weights"), ["mix"]);
    assert.deepEqual(paramsOf("poe"), ["betas"]);
    assert.deepEqual(paramsOf("mix"), ["weights"]);
    for (const n of [2, 3, 5]) {
      assert.deepEqual(defaultParam("poe", "betas", n), Array.from({ length: n }, () => 1 / n));
      assert.deepEqual(defaultParam("mix", "weights", n), Array.from({ length: n }, () => 1 / n));
      assert.equal(defaultParam("poe", "weights", n), null);
      assert.equal(defaultParam("mix", "betas", n), null);
      for (const t of ["average", "entropy", "gap"] as const) {
        assert.deepEqual(paramsOf(t), []);
        for (const p of LIST_PARAM_NAMES) assert.equal(defaultParam(t, p, n), null);
      }
    }
  });

  test("every declared list is a field of the wire Setting, and a CSV column", () => {
    for (const p of LIST_PARAM_NAMES) {
      assert.ok(p in Setting.shape, p);
      assert.ok((CSV_COLUMNS as readonly string[]).includes(p), p);
    }
  });
});

describe("defaults", () => {
  test("a bare name: temperatures 1 for every model; betas null except poe, weights null except mix", () => {
    const settings = resolveStrategies(["average", "poe", "entropy", "gap", "mix"], 2);
    assert.deepEqual(settings, [
      { id: "average", type: "average", temperatures: [1, 1], betas: null, weights: null },
      { id: "poe", type: "poe", temperatures: [1, 1], betas: [0.5, 0.5], weights: null },
      { id: "entropy", type: "entropy", temperatures: [1, 1], betas: null, weights: null },
      { id: "gap", type: "gap", temperatures: [1, 1], betas: null, weights: null },
      { id: "mix", type: "mix", temperatures: [1, 1], betas: null, weights: [0.5, 0.5] },
    ]);
    for (const s of settings) assert.ok(Setting.safeParse(s).success, s.id);
  });

  test("three models: poe betas and mix weights 1/3 each", () => {
    const [s, m] = resolveStrategies([{ type: "poe", temperatures: [1, 0.9, 1.2] }, { type: "mix", temperatures: [1, 0.9, 1.2] }], 3);
    assert.deepEqual(s.betas, [1 / 3, 1 / 3, 1 / 3]);
    assert.equal(s.id, "poe@t=1,0.9,1.2");
    assert.deepEqual(m.weights, [1 / 3, 1 / 3, 1 / 3]);
    assert.equal(m.betas, null);
    assert.equal(m.id, "mix@t=1,0.9,1.2");
  });

  test("mix weights are sent as written (the worker normalizes them to sum 1)", () => {
    const [s] = resolveStrategies([{ type: "mix", weights: [3, 1] }], 2);
    assert.deepEqual(s, { id: "mix@t=1,1;w=3,1", type: "mix", temperatures: [1, 1], betas: null, weights: [3, 1] });
    assert.ok(Setting.safeParse(s).success);
  });

  test("a mapping with only type is the bare name", () => {
    assert.deepEqual(resolveStrategies([{ type: "gap" }], 2), resolveStrategies(["gap"], 2));
  });
});

describe("ids", () => {
  test("the bare type when every parameter is a default", () => {
    assert.equal(resolveStrategies(["entropy"], 2)[0].id, "entropy");
    assert.equal(resolveStrategies([{ type: "entropy", temperatures: [1, 1] }], 2)[0].id, "entropy");
    assert.equal(resolveStrategies([{ type: "poe", betas: [0.5, 0.5] }], 2)[0].id, "poe");
    assert.equal(resolveStrategies([{ type: "mix", weights: [0.5, 0.5] }], 2)[0].id, "mix");
  });

  test("else the type and its parameters", () => {
    const ids = resolveStrategies(
      [
        { type: "entropy", temperatures: [0.85, 1.1] },
        { type: "poe", betas: [0.8, 0.2] },
        { type: "poe", temperatures: [0.7, 1.0], betas: [1, 1] },
        { type: "gap", temperatures: [1.0, 1.30] },
        { type: "mix", weights: [0.7, 0.3] },
        { type: "mix", temperatures: [1, 0.85], weights: [0.7, 0.3] },
        { type: "mix", temperatures: [0.9, 1.1] },
      ],
      2,
    ).map((s) => s.id);
    assert.deepEqual(ids, [
      "entropy@t=0.85,1.1", "poe@t=1,1;b=0.8,0.2", "poe@t=0.7,1;b=1,1", "gap@t=1,1.3",
      "mix@t=1,1;w=0.7,0.3", "mix@t=1,0.85;w=0.7,0.3", "mix@t=0.9,1.1",
    ]);
  });

  test("an explicit id wins", () => {
    const [s] = resolveStrategies([{ id: "sharp-gap", type: "gap", temperatures: [0.7, 0.7] }], 2);
    assert.deepEqual(s, { id: "sharp-gap", type: "gap", temperatures: [0.7, 0.7], betas: null, weights: null });
  });

  test("numbers: shortest round-trip, no trailing zeros", () => {
    assert.equal(formatNumber(1.0), "1");
    assert.equal(formatNumber(0.850), "0.85");
    assert.equal(formatNumber(-0), "0");
    const x = 0.1 + 0.2;
    assert.equal(Number(formatNumber(x)), x, "round-trips");
    assert.equal(formatNumber(1e-7), "1e-7");
  });

  test("settingId options force the parameters (as sweeps do)", () => {
    const s = { type: "poe" as const, temperatures: [1, 1], betas: [0.5, 0.5], weights: null };
    assert.equal(settingId(s), "poe");
    assert.equal(settingId(s, { temperatures: true }), "poe@t=1,1");
    assert.equal(settingId(s, { temperatures: true, params: ["betas"] }), "poe@t=1,1;b=0.5,0.5");
    assert.equal(settingId({ type: "entropy", temperatures: [1, 1], betas: null, weights: null }, { params: ["betas"] }), "entropy");
    const m = { type: "mix" as const, temperatures: [1, 1], betas: null, weights: [0.5, 0.5] };
    assert.equal(settingId(m, { temperatures: true, params: ["weights"] }), "mix@t=1,1;w=0.5,0.5");
    assert.equal(settingId(m, { temperatures: true, params: ["betas"] }), "mix@t=1,1");
  });

  test("distinct settings get distinct default ids, and keys ignore ids", () => {
    const settings = resolveStrategies(
      [
        "entropy",
        { type: "entropy", temperatures: [1, 2] },
        { type: "entropy", temperatures: [2, 1] },
        { type: "poe", temperatures: [1, 2] },
        { type: "poe", temperatures: [1, 2], betas: [0.3, 0.7] },
        { type: "mix", temperatures: [1, 2] },
        { type: "mix", temperatures: [1, 2], weights: [0.3, 0.7] },
      ],
      2,
    );
    assert.equal(new Set(settings.map((s) => s.id)).size, settings.length);
    assert.equal(settingKey({ ...settings[1], id: "other" } as Setting), settingKey(settings[1]));
  });

  test("mix weights that are multiples of each other are one setting (the worker normalizes them); betas are not", () => {
    const mixes = resolveStrategies([{ type: "mix", weights: [1, 3] }, { type: "mix", weights: [0.25, 0.75] }, "mix", { type: "mix", weights: [2, 2] }], 2);
    assert.deepEqual(mixes.map((s) => s.id), ["mix@t=1,1;w=1,3", "mix"], "each kept under the first one's id");
    const poes = resolveStrategies(["poe", { type: "poe", betas: [1, 1] }], 2);
    assert.deepEqual(poes.map((s) => s.id), ["poe", "poe@t=1,1;b=1,1"], "poe with betas [1, 1] is sharper than [0.5, 0.5]");
    assert.ok(LIST_PARAMS.weights.normalized && !LIST_PARAMS.betas.normalized);
  });
});

describe("errors carry the path", () => {
  test("temperatures of the wrong length", () => {
    assert.deepEqual(errors(["entropy", "gap", { type: "entropy", temperatures: [0.85, 1.1, 1] }]), [
      "strategies[2].temperatures: expected 2 values (one per model), got 3",
    ]);
  });
  test("an unknown name", () => {
    assert.deepEqual(errors(["entropy", "foo"]), ['strategies[1]: unknown strategy "foo"; known: average, poe, entropy, gap, mix']);
  });
  test("an unknown type in a mapping", () => {
    assert.deepEqual(errors([{ type: "Entropy" }]), ['strategies[0]: unknown strategy "Entropy"; known: average, poe, entropy, gap, mix']);
  });
  test("a mapping without a type", () => {
    assert.deepEqual(errors([{ temperatures: [1, 1] }]), ["strategies[0].type: required; one of: average, poe, entropy, gap, mix"]);
  });
  test("betas on a type without betas", () => {
    assert.deepEqual(errors([{ type: "gap", betas: [0.5, 0.5] }]), ["strategies[0].betas: unknown key; allowed: id, type, temperatures"]);
  });
  test("a temperature ≤ 0", () => {
    assert.deepEqual(errors([{ type: "average", temperatures: [1, 0] }]), ["strategies[0].temperatures[1]: a temperature must be > 0, got 0"]);
  });
  test("a non-finite temperature", () => {
    assert.deepEqual(errors([{ type: "average", temperatures: [Infinity, 1] }]), [
      "strategies[0].temperatures[0]: must be a finite number, got Infinity",
    ]);
  });
  test("a temperature that is a string", () => {
    assert.deepEqual(errors([{ type: "average", temperatures: ["1", 1] }]), ['strategies[0].temperatures[0]: expected a number, got "1"']);
  });
  test("a negative or non-finite beta", () => {
    assert.deepEqual(errors([{ type: "poe", betas: [-0.1, NaN] }]), [
      "strategies[0].betas[0]: a beta must be ≥ 0, got -0.1",
      "strategies[0].betas[1]: must be a finite number, got NaN",
    ]);
  });
  test("betas all zero", () => {
    assert.deepEqual(errors([{ type: "poe", betas: [0, 0] }]), ["strategies[0].betas: at least one beta must be > 0"]);
  });
  test("a negative or non-finite mix weight", () => {
    assert.deepEqual(errors([{ type: "mix", weights: [-0.5, 1.5] }]), ["strategies[0].weights[0]: a weight must be ≥ 0, got -0.5"]);
    assert.deepEqual(errors([{ type: "mix", weights: [Infinity, 1] }]), ["strategies[0].weights[0]: must be a finite number, got Infinity"]);
  });
  test("mix weights all zero, or too large to sum", () => {
    assert.deepEqual(errors(["gap", { type: "mix", weights: [0, 0] }]), ["strategies[1].weights: at least one weight must be > 0"]);
    assert.deepEqual(errors([{ type: "mix", weights: [1e308, 1e308] }]), [
      "strategies[0].weights: the weights must have a finite sum (they are normalized to sum 1)",
    ]);
  });
  test("mix weights of the wrong length", () => {
    assert.deepEqual(errors([{ type: "mix", weights: [0.2, 0.3, 0.5] }]), ["strategies[0].weights: expected 2 values (one per model), got 3"]);
    assert.deepEqual(errors([{ type: "mix", weights: [] }]), ["strategies[0].weights: must list one weight per model"]);
    assert.deepEqual(errors([{ type: "mix", weights: 0.5 }]), ["strategies[0].weights: expected a list, got 0.5"]);
  });
  test("weights on a type without weights, betas on mix", () => {
    assert.deepEqual(errors([{ type: "poe", weights: [0.5, 0.5] }]), ["strategies[0].weights: unknown key; allowed: id, type, temperatures, betas"]);
    assert.deepEqual(errors([{ type: "mix", betas: [0.5, 0.5] }]), ["strategies[0].betas: unknown key; allowed: id, type, temperatures, weights"]);
  });
  test("an empty id", () => {
    assert.deepEqual(errors([{ id: "", type: "poe" }]), ["strategies[0].id: must not be empty"]);
  });
  test("duplicate explicit ids", () => {
    assert.deepEqual(errors([{ id: "x", type: "poe" }, "gap", { id: "x", type: "gap", temperatures: [2, 2] }]), [
      'strategies[2].id: duplicate id "x" (also strategies[0]); give each an explicit, distinct id',
    ]);
  });
  test("every problem, not the first", () => {
    assert.equal(errors(["foo", { type: "gap", temperatures: [1] }, 3]).length, 3);
  });
  test("checkStrategies skips the per-model checks when the number of models is unknown", () => {
    const r = checkStrategies([{ type: "gap", temperatures: [1, 2, 3] }], null);
    assert.deepEqual(r.lines, []);
    assert.deepEqual(r.value[0].setting.temperatures, [1, 2, 3]);
  });
});
