// `kotara setup`: make the worker's Python ready. With KOTARA_PYTHON (or --python, or a
// checkout's .venv) it installs what requirements.txt lists and that Python lacks, never
// replacing its torch; otherwise it creates (or updates) Kotara's own environment in the
// per-user cache. Safe to run again: it asks the Python what it has first (package
// metadata, milliseconds) and installs only what is missing. Progress on stderr.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { execa } from "execa";
import { UserError } from "../errors.js";
import {
  MIN_PYTHON, NoPython, probePython, setupTarget, tooOld, TORCH_PIN, choosePython, missingSummary,
  venvPython, type Probe, type SetupTarget,
} from "../python-env.js";

export interface SetupOptions {
  /** Fill this interpreter instead (like KOTARA_PYTHON=PATH). */
  python?: string;
  /** Delete Kotara's own environment and make it again. */
  recreate?: boolean;
  /** Only errors (and pip's errors). */
  quiet?: boolean;
}

export async function setupCommand(opts: SetupOptions = {}): Promise<void> {
  const say = (m: string) => {
    if (!opts.quiet) process.stderr.write(`[setup] ${m}\n`);
  };
  const target = setupTarget(opts.python);
  if (opts.recreate && target.kind !== "venv") {
    throw new UserError(`--recreate applies to Kotara's own environment only, not to ${target.python} (${describe(target)})`, 2);
  }
  if (target.kind === "venv") await ensureVenv(target.venvDir!, { recreate: opts.recreate ?? false, say });
  say(`checking ${target.python} (${describe(target)})`);
  let p = await probeTarget(target);
  refuseUnusable(p, target);
  if (!p.missing.includes("torch") && unmetOf(p).length === 0 && p.missing.length === 0) {
    say(`nothing to install: ${target.python} has torch ${p.versions.torch}, transformers ${p.versions.transformers}, ` +
      `pyzmq ${p.versions.pyzmq}, msgpack ${p.versions.msgpack}, jsonschema ${p.versions.jsonschema}`);
    hint(target, say);
    return;
  }
  if (!p.pip) {
    throw new UserError(`${target.python} has no pip to install Kotara's requirements with. ` +
      `Add it (\`${target.python} -m ensurepip --upgrade\`)${target.kind === "venv" ? ", or run `kotara setup --recreate`" : ", or unset KOTARA_PYTHON to let `kotara setup` make Kotara's own environment"}.`);
  }
  p = await installTorch(p, target, opts.quiet ?? false, say);
  const torch = p.versions.torch!;
  p = await installRequirements(p, target, torch, opts.quiet ?? false, say);
  const left = missingSummary(p);
  if (left) throw new UserError(`${target.python} still lacks ${left} after installing; \`kotara doctor\` shows what it has`);
  if (p.versions.torch !== torch) throw new UserError(`pip replaced torch ${torch} with ${p.versions.torch} in ${target.python} (a bug: please report it)`);
  say(`ready: ${target.python} has torch ${p.versions.torch}, transformers ${p.versions.transformers}`);
  hint(target, say);
}

const unmetOf = (p: Probe) => (p.requirements ?? []).filter((r) => !r.satisfied);

/** A Python pip cannot or must not install into, or too old to run the worker. */
function refuseUnusable(p: Probe, target: SetupTarget): void {
  if (tooOld(p.version)) {
    throw new UserError(`${target.python} is Python ${p.version}; Kotara's worker needs Python ≥ ${MIN_PYTHON.join(".")}` +
      (target.kind === "venv" ? " (run `kotara setup --recreate` with PYTHON=/path/to/a newer python)" : ""));
  }
  if (p.externally_managed) {
    throw new UserError(`${target.python} is the system's Python, managed by its package manager (PEP 668): pip will not install into it. ` +
      "Unset KOTARA_PYTHON (then `kotara setup` makes Kotara's own environment), or point it at a venv or conda environment.");
  }
}

/** 1. torch, when none is there (a torch that is there is never replaced, only checked). */
async function installTorch(p: Probe, target: SetupTarget, quiet: boolean, say: (m: string) => void): Promise<Probe> {
  if (p.missing.includes("torch")) {
    say(`installing ${TORCH_PIN} into ${target.python} (it has no torch; this downloads a large wheel)`);
    await pip(target.python, [TORCH_PIN], quiet, `could not install ${TORCH_PIN} into ${target.python}`);
    p = await probeTarget(target);
  }
  const torch = p.versions.torch;
  if (!torch) throw new UserError(`torch is still not importable in ${target.python} after installing it; \`kotara doctor\` shows what it has`);
  const oldTorch = unmetOf(p).find((r) => r.name === "torch");
  if (oldTorch) {
    throw new UserError(`${target.python} has torch ${torch}, Kotara needs ${oldTorch.line}. \`kotara setup\` never replaces a torch ` +
      `(it is often a CUDA build chosen with care): upgrade it yourself, or unset KOTARA_PYTHON to use Kotara's own environment.`);
  }
  return p;
}

/** 2. what requirements.txt lists and this Python lacks, with its torch pinned in place. */
async function installRequirements(p: Probe, target: SetupTarget, torch: string, quiet: boolean, say: (m: string) => void): Promise<Probe> {
  const lines = unmetOf(p).map((r) => r.line);
  if (lines.length === 0) return p;
  say(`installing ${lines.join(", ")} into ${target.python} (keeping torch ${torch})`);
  const dir = mkdtempSync(join(tmpdir(), "kotara-setup-"));
  try {
    const constraints = join(dir, "constraints.txt");
    writeFileSync(constraints, `torch==${torch}\n`);
    await pip(target.python, ["-c", constraints, ...lines], quiet, `could not install Kotara's requirements into ${target.python}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return probeTarget(target);
}

function describe(t: SetupTarget): string {
  switch (t.kind) {
    case "given": return "--python";
    case "KOTARA_PYTHON": return "KOTARA_PYTHON";
    case "checkout": return "the checkout's .venv";
    case "venv": return "Kotara's own environment";
  }
}

/** When what was filled is not what `kotara run` picks, say how to use it. */
function hint(t: SetupTarget, say: (m: string) => void) {
  if (t.kind === "given" && choosePython().python !== t.python) say(`kotara run uses it with KOTARA_PYTHON=${t.python}`);
}

async function probeTarget(t: SetupTarget): Promise<Probe> {
  try {
    return await probePython(t.python, { requirements: true });
  } catch (e) {
    if (e instanceof NoPython) {
      throw new UserError(t.kind === "KOTARA_PYTHON" ? `KOTARA_PYTHON names no Python: ${t.python} does not exist`
        : t.kind === "given" ? `--python names no Python: ${t.python} does not exist` : `no Python at ${t.python}`);
    }
    throw e;
  }
}

/** `python -m pip install ARGS`, its output on our stderr (stdout stays clean). */
async function pip(python: string, args: string[], quiet: boolean, what: string): Promise<void> {
  const r = await execa(python, ["-m", "pip", "install", "--disable-pip-version-check", "--no-input", ...(quiet ? ["-q"] : []), ...args], {
    reject: false, stdin: "ignore", stdout: 2, stderr: 2, env: { PIP_DISABLE_PIP_VERSION_CHECK: "1" },
  });
  if (r.exitCode !== 0) throw new UserError(`${what}: pip exited with ${r.exitCode ?? r.signal ?? "an error"} (its output is above)`);
}

/** Kotara's own environment: a venv in the per-user cache, made when absent (or broken, or --recreate). */
async function ensureVenv(dir: string, o: { recreate: boolean; say: (m: string) => void }): Promise<void> {
  const python = venvPython(dir);
  if (o.recreate) {
    o.say(`removing ${dir} (--recreate)`);
    rmSync(dir, { recursive: true, force: true });
  } else {
    const r = await execa(python, ["-c", "import sys"], { reject: false });
    if (r.exitCode === 0) return;
    if (r.exitCode !== undefined || !/ENOENT/.test(String(r.cause ?? r.message))) {
      o.say(`the environment in ${dir} does not start (${(r.shortMessage ?? "").split("\n")[0]}); making it again`);
    }
    rmSync(dir, { recursive: true, force: true });
  }
  const base = process.env.PYTHON || (process.platform === "win32" ? "python" : "python3");
  const v = await execa(base, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], { reject: false });
  if (v.exitCode !== 0) {
    throw new UserError(`no ${base} to make Kotara's environment from (${(v.shortMessage ?? "").split("\n")[0]}). ` +
      `Install Python ≥ ${MIN_PYTHON.join(".")}, or set PYTHON=/path/to/python (or KOTARA_PYTHON to use an environment you have).`);
  }
  if (tooOld(v.stdout.trim())) {
    throw new UserError(`${base} is Python ${v.stdout.trim()}; Kotara's worker needs Python ≥ ${MIN_PYTHON.join(".")}. Set PYTHON=/path/to/a newer python.`);
  }
  o.say(`creating Kotara's environment in ${dir} (Python ${v.stdout.trim()}, from ${base})`);
  mkdirSync(dirname(dir), { recursive: true });
  const r = await execa(base, ["-m", "venv", dir], { reject: false, all: true });
  if (r.exitCode !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const out = (r.all ?? "").trim().split("\n").slice(-6).join("\n");
    throw new UserError(`could not create a venv in ${dir} with ${base} -m venv${out ? `:\n${out}` : ""}`);
  }
}
