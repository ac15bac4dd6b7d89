// `kotara eval`: the original research script's flags, mapped onto a config.
import { resolve } from "node:path";
import { parseConfig } from "../plan.js";
import { isKnownStrategy, paramsOf } from "../strategies.js";
import { execute } from "./run.js";

export interface EvalFlags {
  model_a: string; model_b: string; tokenizer?: string; dataset_path: string;
  max_length: number; stride: number; strategy: string;
  temp_a: number; temp_b: number; poe_beta_a: number; poe_beta_b: number;
  device: string; dtype: string; trust_remote_code: boolean; batch_size: number; space: string; beam: number; prune: number;
  save_metrics?: string; quiet?: boolean; verbose?: boolean;
  /** A pool: local workers' devices, comma-separated (`cuda:0,cuda:1`, `cpu,cpu`); threads each. */
  workers?: string; threads?: number;
}

/** The config the flags stand for (validated like any YAML config). */
export function flagsToConfig(f: EvalFlags): Record<string, unknown> {
  const model = (ref: string) => ({ ref, device: f.device, dtype: f.dtype, trust_remote_code: f.trust_remote_code });
  const strategy: Record<string, unknown> = { type: f.strategy, temperatures: [f.temp_a, f.temp_b] };
  // the script's --poe_beta_* flags are the betas of whichever strategy takes betas
  if (isKnownStrategy(f.strategy) && paramsOf(f.strategy).includes("betas")) strategy.betas = [f.poe_beta_a, f.poe_beta_b];
  return {
    space: f.space,
    bytes: { beam: f.beam, prune: f.prune },
    models: [model(f.model_a), model(f.model_b)],
    ...(f.tokenizer ? { tokenizer: f.tokenizer } : {}),
    dataset: { path: f.dataset_path, max_length: f.max_length, stride: f.stride },
    strategies: [strategy],
    runtime: {
      batch_size: f.batch_size,
      ...(f.workers ? { workers: f.workers.split(",").map((d) => ({ device: d.trim(), ...(f.threads ? { threads: f.threads } : {}) })) } : {}),
    },
    ...(f.save_metrics ? { output: { metrics: f.save_metrics } } : {}),
  };
}

export async function evalCommand(f: EvalFlags): Promise<void> {
  const plan = parseConfig(flagsToConfig(f), process.cwd());
  await execute(plan, { quiet: f.quiet, verbose: f.verbose, metricsPath: f.save_metrics ? resolve(f.save_metrics) : null });
}
