// `kotara doctor [CONFIG]`: which Python would run the worker and why, what it has
// (torch and its devices, transformers, pyzmq, msgpack, …), where the caches are, and
// a verdict. One probe of that Python (it imports torch: a few seconds). Exit 0 when
// the worker could start, 1 otherwise (with what to run).
import { existsSync } from "node:fs";
import { loadConfig } from "../config.js";
import { UserError } from "../errors.js";
import { choosePython, MIN_PYTHON, missingSummary, NoPython, probePython, setupCommandFor, tooOld, userVenvDir, venvPython, type Probe } from "../python-env.js";
import { VERSION } from "../session.js";
import { PACKAGE_ROOT } from "../worker.js";

export async function doctorCommand(configPath?: string): Promise<void> {
  const fromConfig = configPath ? (await loadConfig(configPath)).runtime.python : null;
  const choice = choosePython({ fromConfig });
  const rows: [string, string][] = [];
  const row = (k: string, v: string) => rows.push([k, v]);
  row("kotara", `${VERSION} (${PACKAGE_ROOT}; node ${process.version})`);
  row("python", choice.python);
  row("  chosen by", choice.why);

  let p: Probe | null = null;
  let problem: string | null = null;
  let noPython = false;
  try {
    p = await probePython(choice.python, { requirements: true, imports: true });
  } catch (e) {
    if (!(e instanceof UserError)) throw e;
    noPython = e instanceof NoPython;
    problem = noPython ? `there is no ${choice.python}` : e.message;
  }
  if (p) {
    if (p.executable !== choice.python) row("  executable", p.executable);
    row("  version", `Python ${p.version}${p.in_venv ? " (a venv)" : ""}${p.externally_managed ? " (managed by the system: pip will not install into it)" : ""}`);
    const v = (d: string) => {
      const err = p!.import_errors?.[d];
      const version = p!.versions[d];
      const req = p!.requirements?.find((r) => r.name === d);
      if (!version) return "missing";
      if (err) return `${version}, but it does not import: ${err}`;
      if (req && !req.satisfied) return `${version} (Kotara needs ${req.line})`;
      return version;
    };
    row("torch", v("torch") + (p.torch ? `, ${devices(p.torch)}` : ""));
    for (const d of ["transformers", "tokenizers", "safetensors", "pyzmq", "msgpack", "jsonschema"]) row(d, v(d));
    const missing = missingSummary(p);
    if (missing) problem = `missing ${missing}`;
    if (tooOld(p.version)) problem = `Python ${p.version} is older than ${MIN_PYTHON.join(".")}, which the worker needs`;
  } else {
    row("  version", "not found");
  }

  cacheRows(p, row);
  row("verdict", problem ? `not ready: ${problem}` : "ok: the worker can start with this Python");
  const width = Math.max(...rows.map(([k]) => k.length)) + 2;
  process.stdout.write(rows.map(([k, val]) => (val ? k.padEnd(width) + val : k)).join("\n") + "\n");
  if (problem) {
    throw new UserError(`the worker cannot start with ${choice.python}: ${fixFor(choice, noPython)}`);
  }
}

/** Where the Hugging Face cache and Kotara's own environment are. */
function cacheRows(p: Probe | null, row: (k: string, v: string) => void): void {
  row("caches", "");
  if (p?.hf) {
    row("  HF_HOME", p.hf.home);
    row("  HF_HUB_CACHE", `${p.hf.hub_cache}${p.hf.offline ? " (offline: HF_HUB_OFFLINE)" : ""}`);
  } else {
    row("  HF_HUB_CACHE", p ? "unknown (huggingface_hub is not installed in this Python)" : "unknown (no Python to ask)");
  }
  const venv = userVenvDir();
  row("  kotara env", `${venv} (${existsSync(venvPython(venv)) ? "made by `kotara setup`" : "not made yet; `kotara setup` makes it"})`);
}

/** What to run when the worker cannot start with the chosen Python. */
function fixFor(choice: ReturnType<typeof choosePython>, noPython: boolean): string {
  if (!noPython) {
    return `run ${setupCommandFor(choice.python)}` +
      (choice.rule === "KOTARA_PYTHON" ? " (it installs what is missing into KOTARA_PYTHON, keeping its torch), or unset KOTARA_PYTHON" : "");
  }
  if (choice.rule === "KOTARA_PYTHON") return "fix KOTARA_PYTHON, or unset it and run `kotara setup` (it makes Kotara's own environment)";
  if (choice.rule === "PATH") return `install Python ≥ ${MIN_PYTHON.join(".")} (or set PYTHON=/path/to/python), then run \`kotara setup\``;
  return "fix runtime.python in the config";
}

function devices(t: NonNullable<Probe["torch"]>): string {
  if (t.cuda_available) return `CUDA ${t.cuda_build}: ${t.devices.length} device${t.devices.length === 1 ? "" : "s"} (${t.devices.join(", ")})`;
  if (t.cuda_build) return `a CUDA ${t.cuda_build} build, but no CUDA device is available`;
  return t.mps_available ? "a CPU build, with Apple MPS" : "a CPU-only build (no CUDA)";
}
