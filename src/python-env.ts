// The one home of "which Python runs the worker", and of what that Python needs.
//
// The worker's Python, first match wins:
//   1. env KOTARA_PYTHON
//   2. the config's runtime.python
//   3. the checkout's .venv (PACKAGE_ROOT/.venv: a git checkout set up by scripts/setup.sh)
//   4. the environment `kotara setup` makes in the per-user cache
//      ($XDG_CACHE_HOME or ~/.cache, then kotara/venv; ~/Library/Caches/kotara/venv on macOS)
//   5. python3 on PATH
// `kotara setup` fills the Python that rules 1, 3 and 4 pick (it does not read a config;
// `--python PATH` names any other), `kotara doctor` reports on it.
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { delimiter, isAbsolute, join, resolve } from "node:path";
import { execa } from "execa";
import { UserError } from "./errors.js";
import { resolveCommand } from "./paths.js";
import { PACKAGE_ROOT, PYTHON_DIR } from "./worker.js";

/** What the worker needs, besides torch (installed first, and never replaced). */
export const REQUIREMENTS = join(PACKAGE_ROOT, "requirements.txt");
/** The torch `kotara setup` installs where there is none: a pinned release, because a range
 * would pull the newest CUDA wheels even where there is no GPU (this one is the CPU wheel
 * on a machine without CUDA, PyPI's CUDA build on a CUDA Linux box). */
export const TORCH_PIN = "torch==2.13.0";
/** The oldest Python the worker supports. */
export const MIN_PYTHON: [number, number] = [3, 10];

export type PythonRule = "KOTARA_PYTHON" | "runtime.python" | "checkout" | "setup" | "PATH";

export interface PythonChoice {
  python: string;
  rule: PythonRule;
  /** The rule in words, for `kotara doctor`. */
  why: string;
}

export interface ChooseOptions {
  /** The config's runtime.python. */
  fromConfig?: string | null;
  env?: NodeJS.ProcessEnv;
  /** The package root whose .venv counts as the checkout's (default: this package). */
  root?: string;
  platform?: NodeJS.Platform;
  home?: string;
}

export function venvPython(dir: string, platform: NodeJS.Platform = process.platform): string {
  return join(dir, platform === "win32" ? "Scripts/python.exe" : "bin/python");
}

/** Kotara's per-user cache directory. */
export function userCacheDir(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform, home = homedir()): string {
  if (env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME)) return join(env.XDG_CACHE_HOME, "kotara");
  if (platform === "darwin") return join(home, "Library", "Caches", "kotara");
  if (platform === "win32" && env.LOCALAPPDATA) return join(env.LOCALAPPDATA, "kotara", "Cache");
  return join(home, ".cache", "kotara");
}

/** Where `kotara setup` makes the worker's environment. */
export function userVenvDir(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform, home = homedir()): string {
  return join(userCacheDir(env, platform, home), "venv");
}

export function checkoutVenvDir(root: string = PACKAGE_ROOT): string {
  return join(root, ".venv");
}

/** Which Python runs the worker, and which rule picked it. */
export function choosePython(opts: ChooseOptions = {}): PythonChoice {
  const env = opts.env ?? process.env;
  const platform = opts.platform ?? process.platform;
  // a relative KOTARA_PYTHON means the user's directory (the worker runs elsewhere)
  if (env.KOTARA_PYTHON) return { python: resolveCommand(env.KOTARA_PYTHON, process.cwd()), rule: "KOTARA_PYTHON", why: "env KOTARA_PYTHON is set" };
  if (opts.fromConfig) return { python: opts.fromConfig, rule: "runtime.python", why: "the config's runtime.python" };
  const checkout = venvPython(checkoutVenvDir(opts.root), platform);
  if (existsSync(checkout)) return { python: checkout, rule: "checkout", why: "the checkout's .venv (no KOTARA_PYTHON)" };
  const dir = userVenvDir(env, platform, opts.home);
  const user = venvPython(dir, platform);
  if (existsSync(user)) return { python: user, rule: "setup", why: "the environment `kotara setup` made (no KOTARA_PYTHON)" };
  const path = platform === "win32" ? "python" : "python3";
  return { python: path, rule: "PATH", why: `${path} on PATH (no KOTARA_PYTHON, and no environment made by \`kotara setup\` in ${dir})` };
}

/** The worker's Python: KOTARA_PYTHON, the config's runtime.python, the checkout's .venv,
 * `kotara setup`'s environment, python3. */
export function resolvePython(fromConfig?: string | null, env: NodeJS.ProcessEnv = process.env): string {
  return choosePython({ fromConfig, env }).python;
}

export interface SetupTarget {
  python: string;
  /** "venv": Kotara's own per-user environment (created when absent); otherwise an existing Python. */
  kind: "given" | "KOTARA_PYTHON" | "checkout" | "venv";
  venvDir?: string;
}

/** The Python `kotara setup` fills: --python, else what the worker would run without a config,
 * where that is Kotara's per-user environment (made when absent) rather than python3 on PATH. */
export function setupTarget(given?: string | null, opts: Omit<ChooseOptions, "fromConfig"> = {}): SetupTarget {
  if (given) {
    const python = given.includes("/") || given.includes("\\") ? resolve(given) : given;
    return { python, kind: "given" };
  }
  const choice = choosePython(opts);
  if (choice.rule === "KOTARA_PYTHON") return { python: choice.python, kind: "KOTARA_PYTHON" };
  if (choice.rule === "checkout") return { python: choice.python, kind: "checkout" };
  const venvDir = userVenvDir(opts.env ?? process.env, opts.platform ?? process.platform, opts.home);
  return { python: venvPython(venvDir, opts.platform), kind: "venv", venvDir };
}

/** What `python -m kotara_worker.probe` says about a Python (python/kotara_worker/probe.py). */
export interface Probe {
  executable: string;
  version: string;
  prefix: string;
  in_venv: boolean;
  externally_managed: boolean;
  pip: string | null;
  /** Installed version of each distribution the worker imports (null: not installed). */
  versions: Record<string, string | null>;
  /** Distributions whose module the worker imports but cannot be found. */
  missing: string[];
  requirements?: { line: string; name: string; installed: string | null; satisfied: boolean }[];
  import_errors?: Record<string, string>;
  torch?: { cuda_build: string | null; cuda_available: boolean; devices: string[]; mps_available: boolean } | null;
  hf?: { home: string; hub_cache: string; offline: boolean } | null;
}

/** Thrown by probePython when the interpreter is not there at all. */
export class NoPython extends UserError {
  constructor(readonly python: string) {
    super(`no Python at ${python}`, 1);
    this.name = "NoPython";
  }
}

/** Ask a Python what it has: one process, stdlib only unless `imports` (then torch is imported: seconds). */
export async function probePython(python: string, opts: { requirements?: boolean; imports?: boolean } = {}): Promise<Probe> {
  const args = ["-m", "kotara_worker.probe"];
  if (opts.requirements) args.push("--requirements", REQUIREMENTS);
  if (opts.imports) args.push("--imports");
  const r = await execa(python, args, {
    reject: false, cwd: PACKAGE_ROOT, timeout: 300_000,
    env: { PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(delimiter), OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "PASSIVE" },
  });
  if ((r as { code?: string }).code === "ENOENT" || /ENOENT/.test(String(r.cause ?? ""))) throw new NoPython(python);
  const last = r.stdout.trim().split("\n").pop() ?? "";
  if (r.exitCode === 0 && last.startsWith("{")) return JSON.parse(last) as Probe;
  const tail = r.stderr.trim().split("\n").slice(-5).join("\n");
  throw new UserError(`${python} could not run Kotara's probe (${(r.shortMessage ?? `exit ${r.exitCode}`).split("\n")[0]})${tail ? `:\n${tail}` : ""}`);
}

/** Is a Python of this version ("3.9.18", "3.11") too old for the worker? */
export function tooOld(version: string): boolean {
  const [major, minor] = version.split(".").map(Number);
  return major < MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor < MIN_PYTHON[1]);
}

/** What is missing for the worker, in words ("" when nothing). */
export function missingSummary(p: Probe): string {
  const unmet = (p.requirements ?? []).filter((r) => !r.satisfied && !p.missing.includes(r.name))
    .map((r) => (r.installed ? `${r.name} ${r.installed} (needs ${r.line})` : r.name));
  const broken = Object.entries(p.import_errors ?? {}).filter(([d]) => !p.missing.includes(d)).map(([d, err]) => `${d} (${err})`);
  return [...p.missing.map((d) => d), ...unmet, ...broken].join(", ");
}

/** The command that fills `python`: `kotara setup` when `python` is what runs without a config
 * (for python3 on PATH, setup makes the environment that then runs instead), else with --python. */
export function setupCommandFor(python: string): string {
  return choosePython().python === python ? "`kotara setup`" : `\`kotara setup --python ${python}\``;
}

/** A worker that could not start: say what to do (`kotara setup`), not a traceback. */
export function withSetupHint(e: unknown, python: string): unknown {
  if (!(e instanceof UserError)) return e;
  const pointAt = "point KOTARA_PYTHON at a Python with torch, transformers, pyzmq, msgpack and jsonschema";
  if (/ENOENT/.test(e.message)) {
    e.message = process.env.KOTARA_PYTHON === python
      ? `KOTARA_PYTHON names no Python: ${python} does not exist. Fix it, or unset it and run \`kotara setup\` (it makes Kotara's own environment).`
      : `no Python at ${python} to run the worker. Run \`kotara setup\`, or ${pointAt}.`;
    return e;
  }
  const lacks = /lacks Kotara's requirements: (.*)/.exec(e.message);
  const noModule = /No module named '([^']+)'/.exec(e.message);
  if (lacks || noModule) {
    const what = lacks ? lacks[1].replace(/^missing /, "missing: ") : `No module named '${noModule![1]}'`;
    e.message = `the worker's Python (${python}) lacks Kotara's requirements (${what}). ` +
      `Run ${setupCommandFor(python)}, or ${pointAt} (\`kotara doctor\` shows which Python runs the worker, and why).`;
  }
  return e;
}
