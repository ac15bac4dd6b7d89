// Which Python runs the worker (src/python-env.ts), rule by rule, and what
// `kotara setup` fills: plain functions on fake roots and homes, no processes.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { UserError } from "../src/errors.js";
import { choosePython, setupTarget, tooOld, userCacheDir, userVenvDir, venvPython, withSetupHint } from "../src/python-env.js";
import { tempDir, writeFile } from "./helpers.js";

const empty = tempDir("kotara-pyenv-");
const noCheckout = join(empty, "no-checkout");

test("the order: KOTARA_PYTHON, runtime.python, the checkout's .venv, kotara setup's environment, python3", () => {
  const root = tempDir("kotara-root-");
  const cache = tempDir("kotara-cache-");
  const env = { XDG_CACHE_HOME: cache };
  const opts = { root, env, platform: "linux" as const, home: empty };
  assert.deepEqual(choosePython(opts), {
    python: "python3", rule: "PATH",
    why: `python3 on PATH (no KOTARA_PYTHON, and no environment made by \`kotara setup\` in ${join(cache, "kotara", "venv")})`,
  });
  const user = writeFile(cache, "kotara/venv/bin/python", "");
  assert.equal(choosePython(opts).python, user);
  assert.equal(choosePython(opts).rule, "setup");
  const checkout = writeFile(root, ".venv/bin/python", "");
  assert.equal(choosePython(opts).python, checkout);
  assert.equal(choosePython(opts).rule, "checkout");
  assert.equal(choosePython({ ...opts, fromConfig: "/cfg/python" }).rule, "runtime.python");
  assert.equal(choosePython({ ...opts, fromConfig: "/cfg/python" }).python, "/cfg/python");
  const withEnv = { ...opts, fromConfig: "/cfg/python", env: { ...env, KOTARA_PYTHON: "/env/python" } };
  assert.deepEqual([choosePython(withEnv).python, choosePython(withEnv).rule], ["/env/python", "KOTARA_PYTHON"]);
});

test("the per-user cache: XDG_CACHE_HOME, else ~/.cache (~/Library/Caches on macOS)", () => {
  assert.equal(userCacheDir({ XDG_CACHE_HOME: "/x/cache" }, "linux", "/home/u"), "/x/cache/kotara");
  assert.equal(userCacheDir({ XDG_CACHE_HOME: "relative/ignored" }, "linux", "/home/u"), "/home/u/.cache/kotara");
  assert.equal(userCacheDir({}, "linux", "/home/u"), "/home/u/.cache/kotara");
  assert.equal(userCacheDir({}, "darwin", "/Users/u"), "/Users/u/Library/Caches/kotara");
  assert.equal(userVenvDir({}, "linux", "/home/u"), "/home/u/.cache/kotara/venv");
  assert.equal(venvPython("/v", "linux"), "/v/bin/python");
  assert.equal(venvPython("/v", "win32"), join("/v", "Scripts/python.exe"));
});

test("kotara setup fills --python, else KOTARA_PYTHON, else the checkout's .venv, else its own environment (not python3)", () => {
  const cache = tempDir("kotara-cache-");
  const env = { XDG_CACHE_HOME: cache };
  const venv = join(cache, "kotara", "venv");
  assert.deepEqual(setupTarget(null, { root: noCheckout, env, platform: "linux" }), { python: join(venv, "bin/python"), kind: "venv", venvDir: venv });
  assert.deepEqual(setupTarget("/opt/py/bin/python", { env }), { python: "/opt/py/bin/python", kind: "given" });
  assert.equal(setupTarget("rel/bin/python", { env }).python, join(process.cwd(), "rel/bin/python"));
  assert.deepEqual(setupTarget(null, { root: noCheckout, env: { ...env, KOTARA_PYTHON: "/e/python" } }), { python: "/e/python", kind: "KOTARA_PYTHON" });
  const root = tempDir("kotara-root-");
  const checkout = writeFile(root, ".venv/bin/python", "");
  assert.deepEqual(setupTarget(null, { root, env, platform: "linux" }), { python: checkout, kind: "checkout" });
});

test("a worker that cannot start: the message names `kotara setup`, not scripts/setup.sh", () => {
  const lacks = withSetupHint(new UserError("the worker died: it exited with code 3 while waiting\n--- last lines of the worker's stderr ---\n" +
    "kotara-worker: /usr/bin/python3 lacks Kotara's requirements: missing torch, pyzmq"), "/usr/bin/python3") as UserError;
  assert.match(lacks.message, /^the worker's Python \(\/usr\/bin\/python3\) lacks Kotara's requirements \(missing: torch, pyzmq\)\. Run `kotara setup/);
  assert.match(lacks.message, /KOTARA_PYTHON/);
  assert.doesNotMatch(lacks.message, /setup\.sh|last lines/);
  const old = withSetupHint(new UserError("... ModuleNotFoundError: No module named 'zmq'"), "python3") as UserError;
  assert.match(old.message, /lacks Kotara's requirements \(No module named 'zmq'\)\. Run `kotara setup/);
  const none = withSetupHint(new UserError("spawn /nope ENOENT"), "/nope") as UserError;
  assert.match(none.message, /kotara setup/);
  const other = new UserError("protocol version mismatch");
  assert.equal((withSetupHint(other, "python3") as UserError).message, "protocol version mismatch");
});

test("the worker needs Python 3.10 or newer", () => {
  assert.deepEqual(["2.7.18", "3.8.10", "3.9.18", "3.10.0", "3.11", "3.13.1", "4.0"].map(tooOld), [true, true, true, false, false, false, false]);
});
