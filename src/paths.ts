// Paths in a config: how `dataset.path`, `output.metrics`, `runtime.python` and model
// or tokenizer refs resolve. Relative ones resolve against the config file's directory;
// `~` is the home directory. A model ref is a local directory when it starts with ".",
// "/" or "~", or when that path exists; otherwise it is a Hugging Face Hub id.
import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import path from "node:path";

function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? path.join(homedir(), p.slice(2)) : p;
}

/** A path from the config, absolute: `~` expanded, relative ones against `baseDir`. */
export function resolvePath(p: string, baseDir: string): string {
  return path.resolve(baseDir, expandHome(p));
}

/** A program: a bare name (`python3`) is looked up on PATH later; a path resolves. */
export function resolveCommand(p: string, baseDir: string): string {
  return p.includes("/") || p.includes(path.sep) || p.startsWith("~") ? resolvePath(p, baseDir) : p;
}

/**
 * A model or tokenizer ref: a local directory when it starts with ".", "/" or "~",
 * or when that path exists relative to `baseDir`; otherwise a Hub id, kept as is.
 */
export function resolveRef(ref: string, baseDir: string): { local: boolean; value: string } {
  if (/^[./~]/.test(ref) || path.isAbsolute(ref)) return { local: true, value: resolvePath(ref, baseDir) };
  const candidate = path.resolve(baseDir, ref);
  if (existsSync(candidate)) return { local: true, value: candidate };
  return { local: false, value: ref };
}

export function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
