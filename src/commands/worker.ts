// `kotara worker --listen tcp://HOST:PORT --key-file F [--python P]`: a worker that a
// controller on another machine connects to (Worker.connect). It runs
// `python -m kotara_worker --listen …` (python/kotara_worker/listen.py) with this
// terminal's stdio until Ctrl-C, and exits with its code. Model and dataset paths that
// controllers send are read on this machine, relative to the directory it started in.
import { constants } from "node:os";
import { resolve } from "node:path";
import { execa } from "execa";
import { Exited, UserError } from "../errors.js";
import { readKeyFile } from "../keys.js";
import { resolvePython } from "../python-env.js";
import { REMOTE_ENDPOINT, workerEnv } from "../worker.js";

export interface WorkerCommandOptions {
  listen: string;
  keyFile?: string;
  python?: string;
  heartbeat?: number;
}

export async function workerCommand(opts: WorkerCommandOptions): Promise<void> {
  if (!REMOTE_ENDPOINT.test(opts.listen)) {
    throw new UserError(`--listen takes tcp://HOST:PORT (e.g. tcp://0.0.0.0:5555), got "${opts.listen}"`, 2);
  }
  if (!opts.keyFile) {
    throw new UserError("--listen needs --key-file FILE (made by `kotara keygen FILE`): a listening worker always requires the key, " +
      "on any address, loopback included", 2);
  }
  // The file's errors before Python starts (seconds, with torch); its warning comes from the worker.
  readKeyFile(opts.keyFile);
  const python = opts.python ? (opts.python.includes("/") ? resolve(opts.python) : opts.python) : resolvePython();
  const args = ["-m", "kotara_worker", "--listen", opts.listen, "--key-file", opts.keyFile];
  if (opts.heartbeat) args.push("--heartbeat", String(opts.heartbeat));
  const child = execa(python, args, { stdio: "inherit", env: workerEnv(), extendEnv: false, reject: false });
  // A terminal's Ctrl-C reaches the worker too; a signal sent to this process alone is passed
  // on. The worker stops once (it ignores the second copy) and exits 0.
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, forward);
  try {
    const r = await child;
    if (r.exitCode === undefined && !r.signal) throw new UserError(`could not start ${python}: ${r.shortMessage}`, 1);
    const code = r.exitCode ?? 128 + (constants.signals[r.signal as NodeJS.Signals] ?? 0);
    if (code !== 0) throw new Exited(code);
  } finally {
    for (const s of signals) process.removeListener(s, forward);
  }
}
