// The command lines of the bench (bench/run.ts) and of the experiments script: node:util
// parseArgs, strict (an unknown flag or a stray argument is an error), with --help.
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A bad command line: reported as one line and exit status 2, without a stack. */
export class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;
type Values<O extends Options> = ReturnType<typeof parseArgs<{ options: O; strict: true; allowPositionals: false }>>["values"];

/** The flags' values, or null after `help` has been printed for --help (options must declare `help`). */
export function parseFlags<O extends Options>(argv: string[], options: O, help: string): Values<O> | null {
  let values: Values<O>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new UsageError(`${(e as Error).message} (see --help)`);
  }
  if ((values as { help?: boolean }).help) {
    process.stdout.write(help);
    return null;
  }
  return values;
}
