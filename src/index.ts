// The library behind the CLI: `import { openSession, temperatureGrid } from "kotara"`.
export { openSession, Session, resolvePython, VERSION } from "./session.js";
export type { SessionOptions, EvaluateOptions, Evaluation, DatasetInput, ModelInput } from "./session.js";
export { loadConfig, parseConfig, type RunPlan } from "./config.js";
export { resolveStrategies, settingId, KNOWN_STRATEGIES, type StrategyEntry } from "./strategies.js";
export { expandSweep, dedupeSettings, temperatureGrid } from "./sweep.js";
export { formatReport, buildMetrics, writeRunOutputs, type Metrics } from "./report.js";
export { PROTOCOL_VERSION, type Setting, type Sums, type ModelSpec } from "./protocol.js";
export { UserError, ConfigError, Interrupted } from "./errors.js";
export { WorkerDied, WorkerRequestError } from "./worker.js";
