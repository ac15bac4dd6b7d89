// `kotara fit CONFIG --dev DEV.txt [--test TEST.txt]`: fit mix (EM) and the log-linear rule
// (Newton) on the dev text, in the worker (docs/fitting.md); then evaluate the models, the
// config's strategies, the fitted rules and a grid (the config's sweep, or the default
// PackLLM-style grid) on the test text; report dev and test side by side, compare the
// fitted rules with the grid's best point on test, and write a config with the fitted
// strategies that `kotara run` accepts.
import { catchInterrupts } from "./run.js";
import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { loadConfig } from "../config.js";
import { scanDataset } from "../dataset.js";
import { ConfigError, Interrupted } from "../errors.js";
import {
  FITTED_IDS, compareWithGrid, defaultGrid, defaultGridLabel, fittedConfigHeader, fittedConfigText, formatFitReport,
  idsByKey, resolveFitOptions, type FitReport,
} from "../fit.js";
import { displayRef } from "../format.js";
import type { EvaluationRequest } from "../metrics.js";
import { writeJsonAtomic, writeTextAtomic } from "../outputs.js";
import { planRequest, type RunPlan } from "../plan.js";
import { Progress } from "../progress.js";
import type { FitKind, Setting } from "../protocol.js";
import { Session, VERSION } from "../session.js";
import { checkStrategies, dedupeSettings, settingKey } from "../strategies.js";
import { expandValidSweep } from "../sweep.js";

export interface FitFlags {
  dev: string;
  test?: string;
  out?: string;
  metrics?: string;
  /** MiB the log-linear fit may keep. */
  memoryBudget?: number;
  /** Which rules (default: both). */
  fits?: FitKind[];
  quiet?: boolean;
  verbose?: boolean;
}

/** A text named by a flag: checked like dataset.path, its problems as `--flag: message` (exit 2). */
function flagText(flag: string, file: string): { path: string; stats: NonNullable<ReturnType<typeof scanDataset>["value"]> } {
  const abs = path.resolve(file);
  const scan = scanDataset(abs);
  if (!scan.value) throw new ConfigError(scan.lines.map((m) => `${flag}: ${m}`));
  return { path: abs, stats: scan.value };
}

/** Where the fitted config goes: --out, or `<config dir>/<config name>.fitted.yaml`. */
export function fittedConfigPath(configPath: string, out?: string): string {
  if (out) return path.resolve(out);
  const abs = path.resolve(configPath);
  return path.join(path.dirname(abs), `${path.basename(abs).replace(/\.ya?ml$/i, "")}.fitted.yaml`);
}

/** The metrics file: --metrics, or next to output.metrics as `<name>.fit.json`, or results/<config name>.fit.json. */
function fitMetricsPath(plan: RunPlan, configPath: string, flag?: string): string {
  if (flag) return path.resolve(flag);
  if (plan.output.metrics) return plan.output.metrics.replace(/\.json$/i, "") + ".fit.json";
  return path.resolve("results", `${path.basename(configPath).replace(/\.ya?ml$/i, "")}.fit.json`);
}

/** The config's explicit strategies, and the grid: its sweep, or defaultGrid (each in the request's ids). */
export function fitSettings(plan: RunPlan): { defaults: Setting[]; grid: Setting[]; gridIds: string[]; source: "sweep" | "default"; label: string; notes: string[] } {
  const notes: string[] = [];
  const fittedIds = new Set(Object.values(FITTED_IDS));
  const swept = plan.sweep ? expandValidSweep(plan.sweep) : null;
  // the plan lists its explicit strategies first (deduplicated), then the sweep's new settings
  const raw = (plan.raw as { strategies?: unknown }).strategies;
  const explicit = dedupeSettings(checkStrategies(raw, plan.models.length).value.map((e) => e.setting));
  const defaults = plan.settings.slice(0, explicit.length);
  const kept = defaults.filter((s) => {
    if (!fittedIds.has(s.id)) return true;
    notes.push(`the config's "${s.id}" is replaced by this fit's`);
    return false;
  });
  const grid = swept ?? defaultGrid(plan.models.length);
  const all = dedupeSettings([...kept, ...grid]);
  const ids = idsByKey(all);
  const gridIds = [...new Set(grid.map((s) => ids.get(settingKey(s))!))];
  const label = swept ? `${gridIds.length} settings` : defaultGridLabel(plan.models.length);
  return { defaults: kept, grid: all.filter((s) => !kept.includes(s)), gridIds, source: swept ? "sweep" : "default", label, notes };
}

export async function fitCommand(configPath: string, flags: FitFlags): Promise<void> {
  const plan = await loadConfig(configPath);
  const dev = flagText("--dev", flags.dev);
  const test = flags.test ? flagText("--test", flags.test) : { path: plan.dataset.path, stats: plan.text! };
  const outPath = fittedConfigPath(configPath, flags.out);
  if (existsSync(outPath) && statSync(outPath).isDirectory()) throw new ConfigError([`--out: is a directory, expected a file name like demo.fitted.yaml: ${outPath}`]);
  const metricsPath = fitMetricsPath(plan, configPath, flags.metrics);
  if (existsSync(metricsPath) && statSync(metricsPath).isDirectory()) throw new ConfigError([`--metrics: is a directory, expected a file name like results/demo.fit.json: ${metricsPath}`]);
  const options = resolveFitOptions({
    fits: flags.fits, memoryBudgetBytes: flags.memoryBudget === undefined ? undefined : Math.floor(flags.memoryBudget * 2 ** 20),
  });
  const { defaults, grid, gridIds, source, label, notes } = fitSettings(plan);
  const progress = new Progress(!flags.quiet);
  for (const note of [...plan.notes, ...notes]) progress.status(`note: ${note}`);

  const base = planRequest(plan);
  const settings = [...defaults, ...grid];
  const devRequest: EvaluationRequest = { ...base, dataset: { ...plan.dataset, path: dev.path }, text: dev.stats, settings, sweep: null };
  const abort = catchInterrupts("interrupted; stopping the worker (Ctrl-C again to quit at once)");
  let session: Session | null = null;
  try {
    progress.status(`loading ${plan.models.map((m) => m.ref).join(", ")}`);
    session = await Session.open({
      models: plan.models, tokenizer: plan.tokenizer, python: plan.runtime.python, maxLength: plan.dataset.max_length,
      space: plan.space, bytes: plan.bytes, bosPerWindow: plan.dataset.bos_per_window, onStatus: (m) => progress.status(m),
      onStderr: flags.verbose ? (l) => process.stderr.write(`[worker] ${l}\n`) : undefined,
    });
    if (abort.signal.aborted) throw new Interrupted();
    progress.unit = session.space === "bytes" ? "bytes" : "tok";
    progress.status(`fitting on ${displayRef(dev.path)} (${settings.length} settings evaluated next to the fits)`);
    const fit = await session.runFit(devRequest, options, { signal: abort.signal, onProgress: (p) => progress.update(p) });
    progress.stop();
    const testProgress = new Progress(!flags.quiet);
    testProgress.unit = progress.unit;
    testProgress.status(`evaluating on ${displayRef(test.path)}`);
    const testRequest: EvaluationRequest = {
      ...base, dataset: { ...plan.dataset, path: test.path }, text: test.stats, settings: [...settings, ...fit.settings], sweep: null,
    };
    const evaluation = await session.run(testRequest, { signal: abort.signal, onProgress: (p) => testProgress.update(p) });
    testProgress.stop();
    const anchor = compareWithGrid(fit.metrics, evaluation.metrics, evaluation.result, gridIds, { source, label }, fit.fits, plan.report.bootstrap);
    const r = fit.result;
    const partial: Omit<FitReport, "fitted_config"> = {
      kotara_version: VERSION, space: session.space, config: path.resolve(configPath), strategies: defaults.map((s) => s.id), fits: fit.fits,
      fit: { positions: r.positions, kept_bytes: r.kept_bytes, seconds: r.seconds, fit_seconds: r.fit_seconds, peak_memory_bytes: r.peak_memory_bytes },
      anchor, dev: fit.metrics, test: evaluation.metrics,
    };
    const command = ["kotara fit", displayRef(path.resolve(configPath)), "--dev", displayRef(dev.path), ...(flags.test ? ["--test", displayRef(test.path)] : [])].join(" ");
    await writeTextAtomic(outPath, fittedConfigText(plan, fit.fits, outPath, test.path, fittedConfigHeader(partial, command)));
    const report: FitReport = { ...partial, fitted_config: outPath };
    await writeJsonAtomic(metricsPath, report);
    process.stdout.write(formatFitReport(report, options.mix_temperatures) + "\n");
    progress.status(`wrote ${outPath}`);
    progress.status(`wrote ${metricsPath}`);
  } catch (e) {
    progress.stop();
    throw abort.signal.aborted ? new Interrupted() : e;
  } finally {
    abort.dispose();
    await session?.close();
  }
}
