// Kotara as a new user gets it: `npm pack`, `npm install -g` into a temporary prefix,
// then `kotara run` on a config from an empty directory, `kotara setup`, `kotara
// doctor`, and the failures a Python without the requirements gives.
//
// Needs the npm registry (the package's dependencies) and, for the per-user
// environment, PyPI for one small package (msgpack). The per-user environment is made
// for real by `kotara setup` (a venv, pip); only its torch and friends are not
// downloaded: a .pth file points the fresh venv at a copy of the checkout's
// site-packages without msgpack, so `kotara setup` finds torch (and keeps it) and
// installs msgpack itself. Every kotara process gets an explicit environment (no
// KOTARA_PYTHON from the caller's shell, XDG_CACHE_HOME in a temp dir).
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { execa } from "execa";
import { PACKAGE_ROOT } from "../src/worker.js";
import { PYTHON, tempDir, tinyModels, writeFile } from "./helpers.js";

const MINUTES = 60_000;
let work: string;
let prefix: string;
let kotaraBin: string;
let empty: string;
let torchVersion: string;

/** What a user's shell passes on: PATH, HOME, pip's and proxies' settings; nothing of Kotara's. */
function baseEnv(extra: Record<string, string | null> = {}): Record<string, string> {
  const keep = Object.entries(process.env).filter(([k]) => /^(PATH|HOME|TMPDIR|LANG|OMP_WAIT_POLICY|PIP_.*|(HTTPS?|NO|ALL)_PROXY)$/i.test(k));
  const env = { ...Object.fromEntries(keep) as Record<string, string>, XDG_CACHE_HOME: join(work, "cache") } as Record<string, string>;
  for (const [k, v] of Object.entries(extra)) {
    if (v === null) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** The installed kotara, from the empty directory; `null` removes a variable. */
function kotara(args: string[], env: Record<string, string | null> = {}, timeout = 5 * MINUTES) {
  return execa(kotaraBin, args, { cwd: empty, env: baseEnv(env), extendEnv: false, reject: false, timeout });
}

before(async () => {
  work = tempDir("kotara-pkg-");
  const models = tinyModels();
  await execa("npm", ["pack", "--pack-destination", work, "--silent"], { cwd: PACKAGE_ROOT, timeout: 10 * MINUTES });
  const tarball = readdirSync(work).find((f) => f.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made a tarball");
  prefix = join(work, "prefix");
  await execa("npm", ["install", "-g", "--prefix", prefix, "--no-audit", "--no-fund", "--loglevel=error", join(work, tarball!)],
    { cwd: work, timeout: 10 * MINUTES });
  kotaraBin = join(prefix, "bin", "kotara");
  // An empty directory with what a user writes: a config naming two local model
  // directories, and a text file.
  empty = join(work, "empty");
  mkdirSync(empty);
  writeFileSync(join(empty, "text.txt"), readFileSync(join(models, "text.txt")));
  writeFileSync(join(empty, "my.yaml"), `models:\n  - ref: ${join(models, "gpt2-a")}\n  - ref: ${join(models, "gpt2-b")}\n` +
    `dataset:\n  path: text.txt\n  max_length: 64\n  stride: 32\nstrategies: [entropy, average]\n`);
  torchVersion = (await execa(PYTHON, ["-c", "import torch; print(torch.__version__)"])).stdout.trim();
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true }); // the prefix and a venv: tens of MB
});

test("the package holds what an installed kotara needs, and no tests, maps or caches", () => {
  const root = join(prefix, "lib", "node_modules", "kotara");
  for (const f of ["bin/kotara", "dist/cli.js", "dist/index.d.ts", "python/kotara_worker/__main__.py", "python/kotara_worker/probe.py",
    "protocol/schema.json", "requirements.txt", "README.md"]) {
    assert.ok(existsSync(join(root, f)), `${f} is installed`);
  }
  const all = (d: string): string[] => readdirSync(d, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? (e.name === "node_modules" ? [] : all(join(d, e.name))) : [join(d, e.name)]));
  const files = all(root).map((f) => f.slice(root.length + 1));
  assert.deepEqual(files.filter((f) => /__pycache__|\.map$|^test|^src\/|^python\/tests|golden|setup\.sh|\.venv/.test(f)), []);
  assert.equal(readFileSync(join(root, "requirements.txt"), "utf8").includes("pytest"), false, "the worker's requirements only");
});

test("kotara run from an empty directory, the worker's Python from KOTARA_PYTHON", async () => {
  const r = await kotara(["run", "my.yaml"], { KOTARA_PYTHON: PYTHON });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /^text\.txt: [\d,]+ bytes/m);
  assert.match(r.stdout, new RegExp(`torch ${torchVersion.replace(/[.+]/g, "\\$&")}`));
  assert.match(r.stdout, /^Best: (entropy|average), PPL \d+\.\d\d/m);
  const m = JSON.parse(readFileSync(join(empty, "results", "my.json"), "utf8"));
  assert.equal(m.models.length, 2);
  assert.equal(m.fusions.length, 2);
  for (const row of [...m.models, ...m.fusions]) assert.ok(Number.isFinite(row.ppl) && row.ppl > 1, `${row.id ?? row.ref}: ppl ${row.ppl}`);
});

test("kotara setup with KOTARA_PYTHON: everything is there, nothing is installed", async () => {
  const r = await kotara(["setup"], { KOTARA_PYTHON: PYTHON });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`nothing to install: .* has torch ${torchVersion.replace(/[.+]/g, "\\$&")}`));
  assert.doesNotMatch(r.stderr, /installing|pip/);
  assert.equal(r.stdout, "");
});

test("kotara doctor: the Python, why, torch and the caches; exit 0", async () => {
  const r = await kotara(["doctor"], { KOTARA_PYTHON: PYTHON });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^python +${PYTHON.replace(/[.+]/g, "\\$&")}$`, "m"));
  assert.match(r.stdout, /chosen by +env KOTARA_PYTHON is set/);
  assert.match(r.stdout, new RegExp(`^torch +${torchVersion.replace(/[.+]/g, "\\$&")}, `, "m"));
  for (const d of ["transformers", "pyzmq", "msgpack", "HF_HUB_CACHE", "kotara env"]) assert.match(r.stdout, new RegExp(`^ *${d} +\\S`, "m"));
  assert.match(r.stdout, /^verdict +ok: the worker can start/m);
});

test("a Python without the requirements: `kotara run` says to run `kotara setup`, with no shutdown dump", async () => {
  const bare = join(work, "bare");
  await execa(PYTHON, ["-m", "venv", "--without-pip", bare]);
  const py = join(bare, "bin", "python");
  // KOTARA_PYTHON names it
  const r = await kotara(["run", "my.yaml"], { KOTARA_PYTHON: py });
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`the worker's Python \\(${py}\\) lacks Kotara's requirements \\(missing: torch, .*pyzmq.*\\)\\. Run \`kotara setup\``));
  assert.doesNotMatch(r.stderr, /Fatal Python error|Traceback|setup\.sh/);
  // The case: no KOTARA_PYTHON, no environment made yet, and python3 on PATH lacks them.
  const bin = join(work, "bin");
  mkdirSync(bin);
  writeFile(bin, "python3", `#!/bin/sh\nexec "${py}" "$@"\n`);
  chmodSync(join(bin, "python3"), 0o755);
  const path = `${bin}:${process.env.PATH}`;
  const plain = await kotara(["run", "my.yaml"], { PATH: path });
  assert.equal(plain.exitCode, 1, plain.stderr);
  assert.match(plain.stderr, /the worker's Python \(python3\) lacks Kotara's requirements \(missing: .*\)\. Run `kotara setup`/);
  assert.doesNotMatch(plain.stderr, /Fatal Python error|Traceback|setup\.sh/);
  const doctor = await kotara(["doctor"], { PATH: path });
  assert.equal(doctor.exitCode, 1);
  assert.match(doctor.stdout, /chosen by +python3 on PATH/);
  assert.match(doctor.stdout, /^pyzmq +missing$/m);
  assert.match(doctor.stdout, /^verdict +not ready: missing torch/m);
  assert.match(doctor.stderr, /run `kotara setup`/);
  // and `kotara setup` into it says what is wrong (no pip), in one line
  const setup = await kotara(["setup"], { KOTARA_PYTHON: py });
  assert.equal(setup.exitCode, 1);
  assert.match(setup.stderr, /has no pip .* ensurepip/);
});

test("kotara setup makes the per-user environment, keeps the torch it finds, installs what is missing; then run and doctor use it", async () => {
  const venv = join(work, "cache", "kotara", "venv");
  // 1. Offline (no index, no links): the venv is made, then torch cannot be installed: a clear error.
  const offline = await kotara(["setup"], { PYTHON, PIP_NO_INDEX: "1", PIP_CONFIG_FILE: "/dev/null", PIP_FIND_LINKS: null, PIP_EXTRA_INDEX_URL: null }, 5 * MINUTES);
  assert.equal(offline.exitCode, 1, offline.stderr);
  assert.match(offline.stderr, new RegExp(`\\[setup\\] creating Kotara's environment in ${venv} `));
  assert.match(offline.stderr, /\[setup\] installing torch==2\.13\.0 into .* \(it has no torch/);
  assert.match(offline.stderr, /kotara: could not install torch==2\.13\.0 into .*: pip exited with 1 \(its output is above\)/);
  assert.ok(existsSync(join(venv, "bin", "python")));

  // 2. Stand-in for the torch download: the checkout's site-packages, without msgpack, on the venv's path.
  const site = (py: string) => execa(py, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).then((r) => r.stdout.trim());
  const from = await site(PYTHON);
  const farm = join(work, "site-without-msgpack");
  mkdirSync(farm);
  for (const e of readdirSync(from)) if (!/^msgpack|\.pth$/.test(e)) symlinkSync(join(from, e), join(farm, e));
  const venvSite = await site(join(venv, "bin", "python"));
  writeFile(venvSite, "zz-kotara-test-farm.pth", `${farm}\n`);

  const filled = await kotara(["setup"], { PYTHON }, 5 * MINUTES);
  assert.equal(filled.exitCode, 0, filled.stderr);
  assert.match(filled.stderr, new RegExp(`installing msgpack>=1\\.0 into .* \\(keeping torch ${torchVersion.replace(/[.+]/g, "\\$&")}\\)`));
  assert.match(filled.stderr, /\[setup\] ready: /);
  assert.ok(readdirSync(venvSite).some((e) => e.startsWith("msgpack")), "msgpack went into the venv");
  assert.ok(!readdirSync(venvSite).some((e) => e.startsWith("torch")), "torch was not installed over the one it found");

  // 3. Again: nothing to do.
  const again = await kotara(["setup"], { PYTHON });
  assert.equal(again.exitCode, 0, again.stderr);
  assert.match(again.stderr, /nothing to install/);

  // 4. Without KOTARA_PYTHON, doctor and run pick that environment.
  const doctor = await kotara(["doctor"]);
  assert.equal(doctor.exitCode, 0, doctor.stderr);
  assert.match(doctor.stdout, new RegExp(`^python +${venv}/bin/python$`, "m"));
  assert.match(doctor.stdout, /chosen by +the environment `kotara setup` made/);
  const run = await kotara(["run", "my.yaml", "--quiet"]);
  assert.equal(run.exitCode, 0, run.stderr);
  assert.match(run.stdout, /^Best: /m);
});
