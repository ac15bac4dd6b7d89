// The library behind the CLI: `import { openSession, temperatureGrid } from "kotara"`.
export { openSession, Session, resolvePython, VERSION } from "./session.js";
export type { SessionOptions, EvaluateOptions, Evaluation, DatasetInput, ModelInput, FitSessionOptions, FitEvaluation } from "./session.js";
export type { GenerateOptions, Generation, GenerationChunk, GenerationSummary, SamplingInput } from "./generation.js";
export { FITTED_IDS, compareWithGrid, defaultGrid, formatFitReport, resolveFitOptions, type Anchor, type FitInput, type FitReport } from "./fit.js";
export { loadConfig } from "./config.js";
export { parseConfig, type RunPlan } from "./plan.js";
export { resolveStrategies, dedupeSettings, settingId, KNOWN_STRATEGIES, STRATEGIES, type StrategyEntry } from "./strategies.js";
export { expandSweep, temperatureGrid } from "./sweep.js";
export { buildMetrics, type Metrics, type EvaluationRequest, type VsBestModel, type BootstrapReport } from "./metrics.js";
export type { BootstrapOptions } from "./bootstrap.js";
export { formatReport } from "./report.js";
export { writeRunOutputs, type RunOutputOptions } from "./outputs.js";
export { htmlReport, type HtmlReportOptions, type TokenView } from "./html-report.js";
export { tokenViewOf } from "./token-view.js";
export { PROTOCOL_VERSION, type Setting, type Sums, type ModelSpec, type FitKind, type FitOptions, type FitResult } from "./protocol.js";
export { UserError, ConfigError, Interrupted } from "./errors.js";
export { Worker, WorkerDied, WorkerRequestError, type ConnectOptions, type WorkerOptions } from "./worker.js";
export { readKeyFile, type KeyFile } from "./keys.js";
