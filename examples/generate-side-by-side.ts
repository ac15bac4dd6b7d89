// Stream fused generation from TypeScript: two prompts, two strategies, side by side.
// One session (the models load once); each strategy decodes both prompts together in
// one batch, and the chunks arrive step by step as the worker makes them.
//
//   npx tsx examples/generate-side-by-side.ts [model-a] [model-b]
import { openSession } from "kotara";

const [modelA = "models/demo/twin-a", modelB = "models/demo/sibling"] = process.argv.slice(2);
const prompts = ["The list", "A function definition"];
const strategies = ["average", "entropy"] as const;

const session = await openSession({ models: [modelA, modelB] });
try {
  const columns: Record<string, string[]> = {};
  for (const strategy of strategies) {
    const gen = session.generate({ prompts, strategy, maxNewTokens: 24, stop: ["\n\n"] });
    const text = prompts.map(() => "");
    for await (const chunk of gen) {
      text[chunk.prompt] += chunk.text;
      // a live view: strategy, step, and each prompt's text so far on one line
      process.stderr.write(`\r${strategy.padEnd(8)} step ${String(chunk.step).padStart(2)}  ${text.map((t) => JSON.stringify(t.slice(-24))).join("  ")}`.padEnd(100));
    }
    process.stderr.write("\n");
    const { outputs, tokensPerSecond } = await gen.summary;
    columns[strategy] = outputs.map((o) => `${o.text} (${o.tokens.length} tokens, weights ${o.weights_mean.map((w) => w.toFixed(2)).join("/")})`);
    console.log(`${strategy}: ${tokensPerSecond.toFixed(0)} tokens/s`);
  }
  prompts.forEach((p, i) => {
    console.log(`\n${JSON.stringify(p)}`);
    for (const s of strategies) console.log(`  ${s.padEnd(8)} ${JSON.stringify(columns[s][i])}`);
  });
} finally {
  await session.close();
}
