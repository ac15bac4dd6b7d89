// The TypeScript API end to end: open a session, evaluate twice, close; and the same
// settings give identical results one at a time and inside a sweep.
import assert from "node:assert/strict";
import { join } from "node:path";
import { before, test } from "node:test";
import { openSession, temperatureGrid } from "../src/index.js";
import { alive, tinyModels } from "./helpers.js";

let models: string;
before(() => {
  models = tinyModels();
});

test("open, two evaluations, close: models load once, no worker is left running", async () => {
  const session = await openSession({ models: [join(models, "gpt2-a"), { ref: join(models, "llama"), device: "cpu" }] });
  const pid = session.worker.pid!;
  try {
    const text = join(models, "text.txt");
    const grid = temperatureGrid({ strategies: ["average", "poe", "entropy", "gap"], temperatures: [0.8, 1, 1.25] }, 2);
    assert.equal(grid.length, 4 * 3 * 3);
    const sweep = await session.evaluate({ dataset: { path: text, max_length: 48, stride: 24 }, strategies: grid, batchSize: 4 });
    assert.equal(sweep.metrics.fusions.length, grid.length);

    // One at a time, in the same session (no reload), the same numbers as inside the sweep.
    const picks = [grid[0], grid[13], grid[grid.length - 1], grid.find((s) => s.type === "gap" && s.temperatures[0] === 0.8)!];
    for (const s of picks) {
      const one = await session.evaluate({ dataset: { path: text, max_length: 48, stride: 24 }, strategies: [s], batchSize: 4 });
      const inSweep = sweep.metrics.fusions.find((f) => f.id === s.id)!;
      assert.ok(Math.abs(one.metrics.fusions[0].ppl - inSweep.ppl) / inSweep.ppl < 1e-6, `${s.id}: ${one.metrics.fusions[0].ppl} vs ${inSweep.ppl}`);
      assert.equal(one.metrics.models[0].ppl, sweep.metrics.models[0].ppl);
    }
    assert.equal(session.worker.pid, pid, "one worker for the whole session");
  } finally {
    await session.close();
  }
  assert.equal(alive(pid), false);
});
