// A config file → a RunPlan: read it, parse its YAML (the core schema: no custom
// tags, unique keys, no merge keys), and hand the document to plan.ts.
import { readFile } from "node:fs/promises";
import path from "node:path";
import YAML from "yaml";
import { ConfigError } from "./errors.js";
import { parseConfig, type RunPlan } from "./plan.js";

/**
 * Reads, parses (YAML core schema: no custom tags) and validates a config file.
 * @throws ConfigError: YAML problems as `line:column: message`, then schema problems.
 */
export async function loadConfig(file: string, opts: { checkFiles?: boolean } = {}): Promise<RunPlan> {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = await readFile(abs, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (err as Error).message;
    throw new ConfigError([`(file): cannot read the config: ${why}: ${abs}`], file);
  }
  const obj = parseYaml(text, file);
  return parseConfig(obj, path.dirname(abs), { ...opts, configPath: abs });
}

/** YAML text → plain data, rejecting syntax errors and any tag the core schema lacks. */
export function parseYaml(text: string, file?: string): unknown {
  const doc = YAML.parseDocument(text, { schema: "core", merge: false, uniqueKeys: true, prettyErrors: true });
  const problems = [...doc.errors, ...doc.warnings.filter((w) => w.code === "TAG_RESOLVE_FAILED")];
  if (problems.length > 0) {
    throw new ConfigError(
      problems.map((e) => {
        const pos = e.linePos?.[0];
        const where = pos ? `${pos.line}:${pos.col}` : "(yaml)";
        let msg = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
        if (e.code === "TAG_RESOLVE_FAILED") msg += " (custom YAML tags are not allowed)";
        return `${where}: ${msg}`;
      }),
      file,
    );
  }
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError([`(yaml): ${(err as Error).message}`], file);
  }
}
