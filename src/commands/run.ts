// `kotara run CONFIG`: one evaluation of a config (its strategies and its sweep).
import { basename, extname, resolve } from "node:path";
import { loadConfig, type RunPlan } from "../config.js";
import { fingerprint, loadCheckpoint, removeCheckpoint, saveCheckpoint, type Fingerprint } from "../checkpoint.js";
import { Interrupted, UserError } from "../errors.js";
import { Progress } from "../progress.js";
import type { ProgressMsg, Sums } from "../protocol.js";
import { formatReport, writeRunOutputs } from "../report.js";
import { Session } from "../session.js";

export interface RunOptions {
  metrics?: string;
  quiet?: boolean;
  resume?: boolean;
  verbose?: boolean;
}

export async function runCommand(configPath: string, opts: RunOptions): Promise<void> {
  const plan = await loadConfig(configPath);
  const metricsPath = opts.metrics ? resolve(opts.metrics) : plan.output.metrics ?? resolve("results", `${basename(configPath, extname(configPath))}.json`);
  await execute(plan, { ...opts, metricsPath });
}

/** Shared by `run` and `eval`: start the worker, evaluate with progress and checkpoints, report. */
export async function execute(plan: RunPlan, opts: RunOptions & { metricsPath: string | null }): Promise<void> {
  const progress = new Progress(!opts.quiet);
  for (const note of plan.notes) progress.status(`note: ${note}`);
  const checkpointPath = opts.metricsPath ? `${opts.metricsPath}.checkpoint.json` : null;
  const key = {
    models: plan.models, tokenizer: plan.tokenizer, dataset: plan.dataset, settings: plan.settings, batch_size: plan.runtime.batch_size,
  };
  let fp: Fingerprint | null = null;
  let resume: Sums | null = null;
  if (checkpointPath) fp = await fingerprint(key);
  if (opts.resume) {
    if (!checkpointPath || !fp) throw new UserError("--resume needs a metrics path (the checkpoint lives next to it)", 2);
    const c = await loadCheckpoint(checkpointPath, fp);
    resume = c.sums;
    progress.status(`resuming from ${checkpointPath}: ${c.sums.windows_done}/${c.windows_total} windows done`);
  }

  // Ctrl-C: cancel the request, keep what was finished (a checkpoint), exit 130.
  const abort = new AbortController();
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) process.exit(130); // a second Ctrl-C: leave now (the exit hook kills the worker)
    interrupted = true;
    process.stderr.write("\nkotara: interrupted; stopping the worker and saving a checkpoint (Ctrl-C again to quit at once)\n");
    abort.abort();
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  process.on("SIGHUP", onSigint);

  let session: Session | null = null;
  let last: ProgressMsg | null = null;
  let lastSaved = resume?.windows_done ?? 0;
  let saving: Promise<void> = Promise.resolve();
  const save = (sums: Sums, total: number) => {
    if (!checkpointPath || !fp) return;
    const f = fp;
    saving = saving.then(() => saveCheckpoint(checkpointPath, f, total, sums)).catch((e) => {
      process.stderr.write(`kotara: could not write the checkpoint ${checkpointPath}: ${(e as Error).message}\n`);
    });
  };
  try {
    progress.status(`loading ${plan.models.map((m) => m.ref).join(", ")}`);
    session = await Session.open({
      models: plan.models, tokenizer: plan.tokenizer, python: plan.runtime.python, maxLength: plan.dataset.max_length,
      bosPerWindow: plan.dataset.bos_per_window, onStatus: (m) => progress.status(m),
      onStderr: opts.verbose ? (l) => process.stderr.write(`[worker] ${l}\n`) : undefined,
    });
    if (interrupted) throw new Interrupted();
    const every = plan.runtime.checkpoint_every;
    const evaluation = await session.evaluate({
      dataset: plan.dataset, strategies: plan.settings, batchSize: plan.runtime.batch_size, resume, config: plan.raw,
      signal: abort.signal,
      onProgress: (p) => {
        last = p;
        progress.update(p, resume?.windows_done ?? 0);
        if (every > 0 && p.sums.windows_done - lastSaved >= every && p.sums.windows_done < p.windows_total) {
          lastSaved = p.sums.windows_done;
          save(p.sums, p.windows_total);
        }
      },
    });
    progress.stop();
    await saving;
    const written = opts.metricsPath ? await writeRunOutputs(opts.metricsPath, evaluation.metrics) : [];
    if (checkpointPath) await removeCheckpoint(checkpointPath);
    process.stdout.write(formatReport(evaluation.metrics, { metricsPath: opts.metricsPath ?? undefined }) + "\n");
    if (!opts.quiet) for (const f of written) process.stderr.write(`wrote ${f}\n`);
  } catch (e) {
    progress.stop();
    const p = last as ProgressMsg | null;
    if (interrupted) {
      if (p && checkpointPath && p.sums.windows_done > (resume?.windows_done ?? -1)) {
        save(p.sums, p.windows_total);
        await saving;
        process.stderr.write(`kotara: saved ${p.sums.windows_done}/${p.windows_total} windows to ${checkpointPath}; ` +
          `continue with: kotara run <config> --resume\n`);
      }
      throw new Interrupted();
    }
    if (p && checkpointPath && p.sums.windows_done > lastSaved) {
      save(p.sums, p.windows_total);
      await saving;
      process.stderr.write(`kotara: the run failed after ${p.sums.windows_done}/${p.windows_total} windows; ` +
        `they are saved in ${checkpointPath} (continue with --resume once the cause is fixed)\n`);
    }
    throw e;
  } finally {
    process.removeListener("SIGINT", onSigint);
    process.removeListener("SIGTERM", onSigint);
    process.removeListener("SIGHUP", onSigint);
    await session?.close();
  }
}
