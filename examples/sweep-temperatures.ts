// Sweep a temperature grid from TypeScript: one session (models loaded once), one
// pass over the text for all 100 settings, then a second evaluation on another text
// with the best setting, without reloading anything.
//
//   npx tsx examples/sweep-temperatures.ts [model-a] [model-b] [text]
import { openSession, temperatureGrid } from "kotara";

const [modelA = "models/demo/twin-a", modelB = "models/demo/sibling", text = "data/demo/docs-heldout.txt"] = process.argv.slice(2);

const session = await openSession({ models: [modelA, modelB], onStatus: (m) => console.error(m) });
try {
  // 4 strategies × 5 temperatures for model A × 5 for model B = 100 settings.
  const grid = temperatureGrid({ strategies: ["average", "poe", "entropy", "gap"], temperatures: [0.7, 0.85, 1.0, 1.15, 1.3] }, 2);
  const { metrics, result } = await session.evaluate({
    dataset: { path: text, max_length: 256, stride: 128 },
    strategies: grid,
    onProgress: (p) => process.stderr.write(`\r${p.sums.windows_done}/${p.windows_total} windows`),
  });
  process.stderr.write("\n");
  console.log(`${grid.length} settings fused from one pass in ${result.seconds.toFixed(1)} s`);
  for (const m of metrics.models) console.log(`  ${m.ref.padEnd(24)} PPL ${m.ppl.toFixed(3)}`);
  console.log("best five settings:");
  for (const f of [...metrics.fusions].sort((a, b) => a.ppl - b.ppl).slice(0, 5)) {
    console.log(`  ${f.id.padEnd(28)} PPL ${f.ppl.toFixed(3)}  weights ${f.weights_mean.map((w) => w.toFixed(2)).join(" / ")}`);
  }

  // The same session again, on the other domain, with the winner: no reload.
  const best = grid.find((s) => s.id === metrics.best!.id)!;
  const other = await session.evaluate({ dataset: { path: "data/demo/code-heldout.txt", max_length: 256, stride: 128 }, strategies: [best] });
  console.log(`${best.id} on held-out code: PPL ${other.metrics.fusions[0].ppl.toFixed(3)} ` +
    `(models alone: ${other.metrics.models.map((m) => m.ppl.toFixed(3)).join(", ")})`);
} finally {
  await session.close();
}
