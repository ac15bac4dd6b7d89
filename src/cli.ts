#!/usr/bin/env node
// commander wiring only: every command is a plain async function in src/commands/.
// One top-level handler: user errors print without a stack trace and exit with their
// code (2 usage/config, 1 failed run, 130 interrupted); anything else is a bug and
// prints its stack.
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { doctorCommand } from "./commands/doctor.js";
import { evalCommand } from "./commands/eval.js";
import { fitCommand } from "./commands/fit.js";
import { generateCommand } from "./commands/generate.js";
import { keygenCommand } from "./commands/keygen.js";
import { runCommand } from "./commands/run.js";
import { setupCommand } from "./commands/setup.js";
import { workerCommand } from "./commands/worker.js";
import { DEFAULTS } from "./defaults.js";
import { UserError } from "./errors.js";
import { VERSION } from "./session.js";
import { FitKind } from "./protocol.js";
import { KNOWN_STRATEGIES } from "./strategies.js";

function number(name: string) {
  return (value: string) => {
    const x = Number(value);
    if (value.trim() === "" || !Number.isFinite(x)) throw new InvalidArgumentError(`${name} must be a number, got "${value}"`);
    return x;
  };
}

function integer(name: string) {
  return (value: string) => {
    const x = Number(value);
    if (!Number.isInteger(x)) throw new InvalidArgumentError(`${name} must be an integer, got "${value}"`);
    return x;
  };
}

function positive(name: string) {
  const asInteger = integer(name);
  return (value: string) => {
    const x = asInteger(value);
    if (x <= 0) throw new InvalidArgumentError(`${name} must be a positive integer, got "${value}"`);
    return x;
  };
}

function fitKinds(value: string): FitKind[] {
  const kinds = value.split(",").map((k) => k.trim()).filter(Boolean);
  const bad = kinds.filter((k) => !(FitKind.options as readonly string[]).includes(k));
  if (kinds.length === 0 || bad.length) throw new InvalidArgumentError(`--fits takes loglinear, mix or both (comma-separated), got "${value}"`);
  return kinds as FitKind[];
}

function positiveNumber(name: string) {
  const asNumber = number(name);
  return (value: string) => {
    const x = asNumber(value);
    if (!(x > 0)) throw new InvalidArgumentError(`${name} must be > 0, got "${value}"`);
    return x;
  };
}

export function buildProgram(): Command {
  const program = new Command()
    .name("kotara")
    .description("Fuse causal language models at the level of their next-token distributions, and measure it.")
    .version(VERSION)
    .exitOverride()
    .showHelpAfterError("(run with --help for usage)");

  program
    .command("run")
    .description("evaluate the models and fusions of a YAML config (with its sweep)")
    .argument("<config>", "YAML config file")
    .option("--metrics <file>", "write the metrics JSON here (overrides output.metrics)")
    .option("--quiet", "no progress on stderr")
    .option("--resume", "continue from the checkpoint of an interrupted run of the same config")
    .option("--verbose", "forward the worker's stderr")
    .action((config: string, opts) => runCommand(config, opts));

  program
    .command("fit")
    .description("fit mix (EM) and the log-linear rule (Newton) on a dev text; compare them with the defaults and a grid on a test text; write a fitted config")
    .argument("<config>", "YAML config file (its models, windows, strategies and sweep)")
    .requiredOption("--dev <file>", "the text to fit on (UTF-8)")
    .option("--test <file>", "the text to evaluate on (default: the config's dataset)")
    .option("--out <file>", "write the fitted config here (default: <config dir>/<name>.fitted.yaml)")
    .option("--metrics <file>", "write the fit's JSON here (default: results/<name>.fit.json, or next to output.metrics)")
    .option("--fits <kinds>", "which rules to fit, comma-separated: loglinear, mix (default: both)", fitKinds)
    .option("--memory-budget <MiB>", `the most the log-linear fit may keep (its logits; default ${DEFAULTS.fit.memory_budget_bytes / 2 ** 20} MiB)`, positiveNumber("--memory-budget"))
    .option("--quiet", "no progress on stderr")
    .option("--verbose", "forward the worker's stderr")
    .action((config: string, opts) => fitCommand(config, opts));

  program
    .command("generate")
    .description("the fused model writes: stream text from one of the config's strategies")
    .argument("<config>", "YAML config file (its models and strategies; the dataset is not read)")
    .option("--prompt <text>", "the prompt (\"\" starts from the start token)")
    .option("--prompt-file <file>", "the prompt, from a file")
    .option("--prompts <file.jsonl>", "several prompts, one {\"prompt\": …} per line, decoded together")
    .option("--strategy <id>", "a strategy id of the config (default: its first)")
    .option("--max-new-tokens <n>", `new tokens per prompt (default: ${DEFAULTS.max_new_tokens})`, positive("--max-new-tokens"))
    .option("--max-new-bytes <n>", `byte space: new bytes per prompt (default: ${DEFAULTS.max_new_bytes})`, positive("--max-new-bytes"))
    .option("--greedy", "argmax at every step (the default without sampling options)")
    .option("--temperature <t>", "sample at this temperature (of the fused distribution)", number("--temperature"))
    .option("--top-k <k>", "sample from the k most likely tokens only", integer("--top-k"))
    .option("--top-p <p>", "sample from the smallest set of tokens with probability ≥ p", number("--top-p"))
    .option("--seed <n>", "the sampling seed (same seed, same text)", integer("--seed"))
    .option("--stop <text>", "end a prompt's text before this string (repeatable)", (v: string, acc: string[] = []) => [...acc, v])
    .option("--no-truncate", "refuse a prompt longer than the context instead of cutting it from the left")
    .option("--json", "one JSON object per prompt on stdout (text, tokens, per-step log-probabilities and weights, timings)")
    .option("--quiet", "nothing on stderr but errors and warnings")
    .option("--verbose", "forward the worker's messages and stderr")
    .action((config: string, opts) => generateCommand(config, opts));

  program
    .command("eval")
    .description("the original research script's flags: two models, one strategy")
    .requiredOption("--model_a <ref>", "first model (Hub id or local directory)")
    .requiredOption("--model_b <ref>", "second model")
    .option("--tokenizer <ref>", "tokenizer (default: model_a's)")
    .requiredOption("--dataset_path <file>", "UTF-8 text file")
    .option("--max_length <n>", "tokens per window", integer("--max_length"), DEFAULTS.max_length)
    .option("--stride <n>", "tokens between window starts", integer("--stride"), DEFAULTS.max_length)
    .option("--strategy <name>", KNOWN_STRATEGIES.join(" | "), DEFAULTS.eval_strategy)
    .option("--temp_a <t>", "temperature of model_a", number("--temp_a"), 1)
    .option("--temp_b <t>", "temperature of model_b", number("--temp_b"), 1)
    .option("--poe_beta_a <b>", "PoE weight of model_a", number("--poe_beta_a"), 0.5)
    .option("--poe_beta_b <b>", "PoE weight of model_b", number("--poe_beta_b"), 0.5)
    .option("--device <device>", "auto | cpu | cuda | cuda:N", DEFAULTS.device)
    .option("--dtype <dtype>", "auto | float32 | float16 | bfloat16", DEFAULTS.dtype)
    .option("--trust_remote_code", "allow models that need their own code", DEFAULTS.trust_remote_code)
    .option("--batch_size <n>", "windows per forward", integer("--batch_size"), DEFAULTS.batch_size)
    .option("--space <space>", "tokens | bytes | auto (bytes: models whose tokenizers differ; max_length and stride then count bytes)", DEFAULTS.space)
    .option("--beam <k>", "byte space: token prefixes kept per model", integer("--beam"), DEFAULTS.beam)
    .option("--prune <p>", "byte space: also drop token prefixes lighter than p × the heaviest, in [0, 1)", number("--prune"), DEFAULTS.prune)
    .option("--workers <devices>", "a pool of local workers, one per device, comma-separated: cuda:0,cuda:1 or cpu,cpu (docs/workers.md)")
    .option("--threads <n>", "with --workers: torch threads per worker", positive("--threads"))
    .option("--save_metrics <file>", "write the metrics JSON here")
    .option("--quiet", "no progress on stderr")
    .option("--verbose", "forward the worker's stderr")
    .action((opts) => evalCommand(opts));

  program
    .command("setup")
    .description("make the worker's Python ready: fill KOTARA_PYTHON (keeping its torch), or make Kotara's own environment")
    .option("--python <path>", "fill this interpreter instead (then run with KOTARA_PYTHON=<path>)")
    .option("--recreate", "delete Kotara's own environment and make it again")
    .option("--quiet", "only errors")
    .action((opts) => setupCommand(opts));

  program
    .command("doctor")
    .description("which Python runs the worker and why, what it has, the caches; exit 1 if the worker could not start")
    .argument("[config]", "also consider this config's runtime.python")
    .action((config: string | undefined) => doctorCommand(config));

  program
    .command("keygen")
    .description("write a key file for a remote worker (mode 600): copy it to both machines")
    .argument("<file>", "where to write it")
    .option("--force", "replace an existing file (both machines then need the new one)")
    .action((file: string, opts) => keygenCommand(file, opts));

  program
    .command("worker")
    .description("a worker for controllers on other machines: listen on TCP (CURVE, with the key file) until Ctrl-C")
    .requiredOption("--listen <endpoint>", "tcp://HOST:PORT to listen on (tcp://0.0.0.0:5555: every interface)")
    .option("--key-file <file>", "the key file from `kotara keygen` (required)")
    .option("--python <path>", "the worker's Python (default: as the other commands choose it)")
    .option("--heartbeat <s>", "seconds between the worker's heartbeats (default 1)", positiveNumber("--heartbeat"))
    .action((opts) => workerCommand(opts));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // commander already printed the message; help and version exit 0.
      return e.exitCode === 0 ? 0 : 2;
    }
    if (e instanceof UserError) {
      if (e.message) process.stderr.write(`kotara: ${e.message}\n`);
      return e.exitCode;
    }
    process.stderr.write(`kotara: unexpected error (a bug; please report it with this trace)\n${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
