// `kotara run CONFIG`: one evaluation of a config (its strategies and its sweep).
import { basename, extname, resolve } from "node:path";
import { CheckpointKeeper } from "../checkpoint.js";
import { loadConfig } from "../config.js";
import { Interrupted, UserError } from "../errors.js";
import type { Evaluation } from "../session.js";
import { writeRunOutputs } from "../outputs.js";
import { planRequest, type RunPlan } from "../plan.js";
import { exportDataset } from "../dataset-export.js";
import { Progress } from "../progress.js";
import { formatReport } from "../report.js";
import type { HtmlReportOptions } from "../html-report.js";
import type { EvaluationRequest } from "../metrics.js";
import { tokenViewOf } from "../token-view.js";
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
  if (plan.source) {
    progress.status(`exporting ${"hf" in plan.source ? `${plan.source.hf}${plan.source.name ? ` (${plan.source.name})` : ""}, split ${plan.source.split}` : plan.source.path} to ${plan.dataset.path}`);
    exportDataset(plan.source, plan.dataset.path, plan.runtime.python);
  }
  const request = planRequest(plan);
  if (opts.resume && !opts.metricsPath) throw new UserError("--resume needs a metrics path (the checkpoint lives next to it)", 2);
  const { keeper, resume } = opts.metricsPath
    ? await CheckpointKeeper.open(`${opts.metricsPath}.checkpoint.json`, { ...plan, ...request, batch_size: request.batchSize }, plan.runtime.checkpoint_every, !!opts.resume)
    : { keeper: null, resume: null };
  if (resume) progress.status(`resuming from ${keeper!.path}: ${resume.sums.windows_done}/${resume.windows_total} windows done`);

  const interrupt = catchInterrupts();
  let session: Session | null = null;
  try {
    session = await openSession(plan, progress, opts.verbose);
    if (interrupt.signal.aborted) throw new Interrupted();
    if (session.space === "bytes") {
      progress.unit = "bytes";
      progress.status(`byte space: ${session.loaded.space_reason} (windows of ${plan.dataset.max_length} bytes, beam ${plan.bytes.beam})`);
    }
    const evaluation = await session.run(request, {
      resume: resume?.sums ?? null,
      signal: interrupt.signal,
      onProgress: (p) => {
        progress.update(p, resume?.sums.windows_done ?? 0);
        keeper?.progress(p.sums, p.windows_total);
      },
    });
    progress.stop();
    await keeper?.flush();
    await report(evaluation, plan, request, opts, progress);
    await keeper?.remove();
  } catch (e) {
    progress.stop();
    const said = await keeper?.saveOnStop(interrupt.signal.aborted);
    if (said) process.stderr.write(`kotara: ${said}\n`);
    throw interrupt.signal.aborted ? new Interrupted() : e;
  } finally {
    interrupt.dispose();
    await session?.close();
  }
}

async function openSession(plan: RunPlan, progress: Progress, verbose?: boolean): Promise<Session> {
  progress.status(`loading ${plan.models.map((m) => m.ref).join(", ")}`);
  return Session.open({
    models: plan.models, tokenizer: plan.tokenizer, python: plan.runtime.python, maxLength: plan.dataset.max_length,
    space: plan.space, bytes: plan.bytes, workers: plan.runtime.workers,
    bosPerWindow: plan.dataset.bos_per_window, onStatus: (m) => progress.status(m),
    onStderr: verbose ? (l) => process.stderr.write(`[worker] ${l}\n`) : undefined,
    onDropped: verbose ? (why) => process.stderr.write(`[controller] dropped a message from the worker: ${why}\n`) : undefined,
  });
}

/** The files (the HTML report with its token view), then the report on stdout, then (on stderr) what was written. */
async function report(evaluation: Evaluation, plan: RunPlan, request: EvaluationRequest, opts: RunOptions & { metricsPath: string | null },
  progress: Progress): Promise<void> {
  const html = plan.report.html ? htmlOptions(evaluation, request) : null;
  const written = opts.metricsPath ? await writeRunOutputs(opts.metricsPath, evaluation.metrics, { html }) : [];
  process.stdout.write(formatReport(evaluation.metrics, { metricsPath: opts.metricsPath ?? undefined }) + "\n");
  for (const f of written) progress.status(`wrote ${f}`);
}

/** The HTML report's options: the token view from the result, or why there is none. */
function htmlOptions(evaluation: Evaluation, request: EvaluationRequest): HtmlReportOptions {
  if (!request.positions) return { view: null, viewNote: "No token view: report.token_view_bytes is 0." };
  return tokenViewOf(request.dataset.path, request.positions, evaluation.result);
}

/**
 * Ctrl-C (and SIGTERM, SIGHUP): the first one aborts the signal (the command cancels its
 * request and keeps what was finished; exit 130), saying `said` when given; a second one
 * leaves at once (the exit hook kills the worker). Shared by run, eval, fit and generate.
 */
export function catchInterrupts(
  said: string | null = "interrupted; stopping the worker and saving a checkpoint (Ctrl-C again to quit at once)",
): { signal: AbortSignal; dispose: () => void } {
  const abort = new AbortController();
  const onSignal = () => {
    if (abort.signal.aborted) process.exit(130);
    if (said) process.stderr.write(`\nkotara: ${said}\n`);
    abort.abort();
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, onSignal);
  return { signal: abort.signal, dispose: () => signals.forEach((s) => process.removeListener(s, onSignal)) };
}
