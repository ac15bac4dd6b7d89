// Sweeps (src/sweep.ts): expansion sizes and ids, dedupe, bad grids, the TS builder.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import { parseConfig } from "../src/plan.js";
import { ConfigError } from "../src/errors.js";
import { Setting } from "../src/protocol.js";
import { KNOWN_STRATEGIES, dedupeSettings, settingKey } from "../src/strategies.js";
import { MAX_SWEEP_SETTINGS, checkSweep, expandSweep, sweepSize, temperatureGrid } from "../src/sweep.js";

const GRID = [0.7, 0.85, 1.0, 1.15, 1.3];

function sweepErrors(sweep: unknown, nModels = 2): string[] {
  try {
    expandSweep(sweep, nModels);
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.lines;
  }
  assert.fail("accepted");
}

describe("expansion", () => {
  test("every strategy × 5 × 5 temperatures, ids that say the settings", () => {
    const settings = expandSweep({ strategies: [...KNOWN_STRATEGIES], temperatures: [GRID, GRID] }, 2);
    const size = KNOWN_STRATEGIES.length * 5 * 5;
    assert.equal(settings.length, size);
    assert.equal(new Set(settings.map((s) => s.id)).size, size, "ids are unique");
    assert.equal(new Set(settings.map(settingKey)).size, size, "settings are distinct");
    for (const s of settings) assert.ok(Setting.safeParse(s).success, s.id);
    assert.deepEqual(settings[0], { id: "average@t=0.7,0.7", type: "average", temperatures: [0.7, 0.7], betas: null, weights: null });
    assert.deepEqual(settings[1].temperatures, [0.7, 0.85], "the last model's temperature varies fastest");
    assert.equal(settings[12].id, "average@t=1,1", "default temperatures still say t= in a sweep");
    const poe = settings.filter((s) => s.type === "poe");
    assert.equal(poe.length, 25);
    assert.ok(poe.every((s) => s.betas![0] === 0.5 && s.betas![1] === 0.5), "poe uses its default betas");
    assert.equal(poe[0].id, "poe@t=0.7,0.7");
    const mix = settings.filter((s) => s.type === "mix");
    assert.equal(mix.length, 25);
    assert.ok(mix.every((s) => s.weights![0] === 0.5 && s.weights![1] === 0.5 && s.betas === null), "mix uses its default weights");
    assert.equal(mix[0].id, "mix@t=0.7,0.7");
    assert.ok(settings.some((s) => s.id === "entropy@t=0.85,1.15"));
    assert.deepEqual([...new Set(settings.map((s) => s.type))], [...KNOWN_STRATEGIES], "strategies in the order listed");
  });

  test("the number of settings is the product of the list lengths", () => {
    const sweep = { strategies: ["entropy", "gap"], temperatures: [[0.9, 1], [0.8, 1, 1.2], [1]] };
    assert.equal(expandSweep(sweep, 3).length, 2 * 2 * 3 * 1);
    const checked = checkSweep(sweep, 3);
    assert.equal(sweepSize(checked.value!), 12);
  });

  test("betas (one list per model) multiply poe only", () => {
    const settings = expandSweep(
      { strategies: ["poe", "entropy"], temperatures: [[0.9, 1], [1, 1.1]], betas: [[0.3, 0.7], [0.3, 0.7]] },
      2,
    );
    const poe = settings.filter((s) => s.type === "poe");
    assert.equal(poe.length, 4 * 4);
    assert.equal(settings.length - poe.length, 4);
    assert.ok(poe.some((s) => s.id === "poe@t=0.9,1.1;b=0.3,0.7"));
    assert.ok(settings.filter((s) => s.type === "entropy").every((s) => s.betas === null && !s.id.includes("b=")));
  });

  test("weights (one list per model) multiply mix only; ids say them", () => {
    const settings = expandSweep(
      { strategies: ["average", "mix"], temperatures: [[1], [0.9, 1]], weights: [[0.7, 0.3], [0.3, 0.7]] },
      2,
    );
    const mix = settings.filter((s) => s.type === "mix");
    assert.equal(mix.length, 2 * 2 * 2);
    assert.equal(settings.length - mix.length, 2);
    assert.deepEqual(mix.slice(0, 4).map((s) => s.id), ["mix@t=1,0.9;w=0.7,0.3", "mix@t=1,0.9;w=0.7,0.7", "mix@t=1,0.9;w=0.3,0.3", "mix@t=1,0.9;w=0.3,0.7"]);
    assert.ok(settings.filter((s) => s.type === "average").every((s) => s.weights === null && !s.id.includes("w=")));
    for (const s of settings) assert.ok(Setting.safeParse(s).success, s.id);
    assert.equal(sweepSize(checkSweep({ strategies: ["average", "mix"], temperatures: [[1], [0.9, 1]], weights: [[0.7, 0.3], [0.3, 0.7]] }, 2).value!), settings.length);
  });

  test("betas and weights in one sweep: each multiplies its own strategy", () => {
    const settings = expandSweep(
      { strategies: ["poe", "mix"], temperatures: [[1], [1]], betas: [[1, 0.5], [1]], weights: [[1], [0, 1, 2]] },
      2,
    );
    assert.deepEqual(settings.map((s) => s.id), [
      "poe@t=1,1;b=1,1", "poe@t=1,1;b=0.5,1", "mix@t=1,1;w=1,0", "mix@t=1,1;w=1,1", "mix@t=1,1;w=1,2",
    ]);
  });

  test("all-zero weight combinations are skipped", () => {
    const settings = expandSweep({ strategies: ["mix"], temperatures: [[1], [1]], weights: [[0, 1], [0, 1]] }, 2);
    assert.deepEqual(settings.map((s) => s.weights), [[0, 1], [1, 0], [1, 1]]);
  });

  test("all-zero beta combinations are skipped", () => {
    const settings = expandSweep({ strategies: ["poe"], temperatures: [[1], [1]], betas: [[0, 1], [0, 1]] }, 2);
    assert.deepEqual(
      settings.map((s) => s.betas),
      [
        [0, 1],
        [1, 0],
        [1, 1],
      ],
    );
  });
});

describe("dedupe", () => {
  test("same type + temperatures + betas, whatever the id: the first is kept", () => {
    const a: Setting = { id: "mine", type: "entropy", temperatures: [1, 1], betas: null, weights: null };
    const b: Setting = { id: "entropy@t=1,1", type: "entropy", temperatures: [1, 1], betas: null, weights: null };
    const c: Setting = { id: "gap@t=1,1", type: "gap", temperatures: [1, 1], betas: null, weights: null };
    const dropped: string[] = [];
    assert.deepEqual(
      dedupeSettings([a, c, b], (d, k) => dropped.push(`${d.id}->${k.id}`)),
      [a, c],
    );
    assert.deepEqual(dropped, ["entropy@t=1,1->mine"]);
  });

  test("different betas are different settings", () => {
    const p = (b: number[]): Setting => ({ id: String(b), type: "poe", temperatures: [1, 1], betas: b, weights: null });
    assert.equal(dedupeSettings([p([0.5, 0.5]), p([0.4, 0.6]), p([0.5, 0.5])]).length, 2);
    const m = (w: number[]): Setting => ({ id: String(w), type: "mix", temperatures: [1, 1], betas: null, weights: w });
    assert.equal(dedupeSettings([m([0.5, 0.5]), m([0.4, 0.6]), m([0.5, 0.5])]).length, 2);
  });

  test("in a config, the sweep is appended to the strategies and repeats are evaluated once", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "kotara-sweep-"));
    after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(path.join(dir, "t.txt"), "some text to score\n");
    const plan = parseConfig(
      {
        models: [{ ref: "gpt2" }, { ref: "distilgpt2" }],
        dataset: { path: "t.txt" },
        strategies: ["entropy", { id: "cool", type: "gap", temperatures: [0.7, 0.85] }],
        sweep: { strategies: [...KNOWN_STRATEGIES], temperatures: [GRID, GRID] },
      },
      dir,
    );
    assert.equal(plan.settings.length, KNOWN_STRATEGIES.length * 25, "2 explicit + the swept − 2 repeats");
    assert.deepEqual(plan.settings.slice(0, 2).map((s) => s.id), ["entropy", "cool"]);
    assert.ok(!plan.settings.some((s) => s.id === "entropy@t=1,1" || s.id === "gap@t=0.7,0.85"));
    assert.equal(plan.notes.length, 2);
    assert.deepEqual(plan.sweep, { strategies: [...KNOWN_STRATEGIES], temperatures: [GRID, GRID], betas: null, weights: null });
  });
});

describe("bad grids are rejected with the field path", () => {
  test("a sweep id that an explicit strategy uses for a different setting", () => {
    const dir = mkdtempSync(path.join(tmpdir(), "kotara-sweep-"));
    after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(path.join(dir, "t.txt"), "some text to score\n");
    assert.throws(
      () =>
        parseConfig(
          {
            models: [{ ref: "gpt2" }, { ref: "distilgpt2" }],
            dataset: { path: "t.txt" },
            strategies: [{ id: "entropy@t=1,1", type: "gap" }],
            sweep: { strategies: ["entropy"], temperatures: [[1], [1]] },
          },
          dir,
        ),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.lines.includes('strategies[0]: its id "entropy@t=1,1" is also the id of a different setting of the sweep; rename it'),
    );
  });

  test("an empty strategies list", () => {
    assert.deepEqual(sweepErrors({ strategies: [], temperatures: [[1], [1]] }), ["sweep.strategies: must name at least one strategy"]);
  });
  test("an empty temperature list", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy"], temperatures: [[1], []] }), [
      "sweep.temperatures[1]: must not be empty (list the temperatures to try for this model)",
    ]);
  });
  test("the wrong number of temperature lists", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy"], temperatures: [GRID, GRID, GRID] }), [
      "sweep.temperatures: expected 2 lists (one per model), got 3",
    ]);
  });
  test("a flat list instead of one list per model", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy"], temperatures: [0.9, 1] }), [
      "sweep.temperatures[0]: expected a list, got 0.9",
      "sweep.temperatures[1]: expected a list, got 1",
    ]);
  });
  test("a non-positive temperature", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy"], temperatures: [[1, -1], [0, 1]] }), [
      "sweep.temperatures[0][1]: a temperature must be > 0, got -1",
      "sweep.temperatures[1][0]: a temperature must be > 0, got 0",
    ]);
  });
  test("an unknown strategy name", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy", "median"], temperatures: [[1], [1]] }), [
      'sweep.strategies[1]: unknown strategy "median"; known: average, poe, entropy, gap, mix',
    ]);
  });
  test("betas without poe", () => {
    assert.deepEqual(sweepErrors({ strategies: ["entropy"], temperatures: [[1], [1]], betas: [[1], [1]] }), [
      "sweep.betas: only poe takes betas, and sweep.strategies does not list poe",
    ]);
  });
  test("weights without mix", () => {
    assert.deepEqual(sweepErrors({ strategies: ["poe"], temperatures: [[1], [1]], weights: [[1], [1]] }), [
      "sweep.weights: only mix takes weights, and sweep.strategies does not list mix",
    ]);
  });
  test("a negative weight, and the wrong number of weight lists", () => {
    assert.deepEqual(sweepErrors({ strategies: ["mix"], temperatures: [[1], [1]], weights: [[0.5, -1], [1]] }), [
      "sweep.weights[0][1]: a weight must be ≥ 0, got -1",
    ]);
    assert.deepEqual(sweepErrors({ strategies: ["mix"], temperatures: [[1], [1]], weights: [[0.5, 1]] }), [
      "sweep.weights: expected 2 lists (one per model), got 1",
    ]);
  });
  test("the wrong number of beta lists", () => {
    assert.deepEqual(sweepErrors({ strategies: ["poe"], temperatures: [[1], [1]], betas: [[0.5, 1]] }), [
      "sweep.betas: expected 2 lists (one per model), got 1",
    ]);
  });
  test("an unknown key", () => {
    assert.deepEqual(sweepErrors({ strategies: ["poe"], temperatures: [[1], [1]], temperature: [] }), [
      "sweep.temperature: unknown key; allowed: strategies, temperatures, betas, weights",
    ]);
  });
  test("a grid too large to evaluate", () => {
    const big = Array.from({ length: 60 }, (_, i) => 0.5 + i / 100);
    const lines = sweepErrors({ strategies: [...KNOWN_STRATEGIES], temperatures: [big, big] });
    assert.deepEqual(lines, [`sweep: expands to ${KNOWN_STRATEGIES.length * 60 * 60} settings; at most ${MAX_SWEEP_SETTINGS} are allowed (use fewer values)`]);
  });
});

describe("temperatureGrid (the TypeScript builder)", () => {
  test("one list shared by every model", () => {
    const settings = temperatureGrid({ strategies: ["entropy", "gap"], temperatures: [0.8, 1, 1.2] }, 2);
    assert.equal(settings.length, 2 * 3 * 3);
    assert.equal(settings[0].id, "entropy@t=0.8,0.8");
  });
  test("one list per model; every known strategy by default", () => {
    const settings = temperatureGrid({ temperatures: [[0.9, 1.1], [1]] }, 2);
    assert.equal(settings.length, KNOWN_STRATEGIES.length * 2);
  });
  test("betas for poe", () => {
    const settings = temperatureGrid({ strategies: ["poe"], temperatures: [1], betas: [0.25, 0.75] }, 2);
    assert.deepEqual(
      settings.map((s) => s.id),
      ["poe@t=1,1;b=0.25,0.25", "poe@t=1,1;b=0.25,0.75", "poe@t=1,1;b=0.75,0.25", "poe@t=1,1;b=0.75,0.75"],
    );
  });
  test("weights for mix", () => {
    const settings = temperatureGrid({ strategies: ["mix"], temperatures: [1], weights: [[1], [0, 1]] }, 2);
    assert.deepEqual(settings.map((s) => s.id), ["mix@t=1,1;w=1,0", "mix@t=1,1;w=1,1"]);
  });
  test("the same checks as a config", () => {
    assert.throws(() => temperatureGrid({ strategies: ["entropy"], temperatures: [[1], [1], [1]] }, 2), ConfigError);
    assert.throws(() => temperatureGrid({ temperatures: [0] }, 2), ConfigError);
  });
});
