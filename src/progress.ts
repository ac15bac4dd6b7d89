// Progress on stderr while the worker runs: windows done/total, tokens/s (bytes/s in
// byte space), ETA, and with a pool each worker's windows/s (a lost one marked).
// A live bar on a terminal; a line every ~10% otherwise; nothing with --quiet.
import cliProgress from "cli-progress";
import type { WorkerReport } from "./pool.js";
import type { ProgressMsg } from "./protocol.js";

export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private lastTenth = -1;
  /** What the rate counts: tokens, or bytes in byte space. */
  unit: "tok" | "bytes" = "tok";

  constructor(private enabled: boolean, private tty = Boolean(process.stderr.isTTY)) {}

  status(message: string) {
    if (!this.enabled) return;
    if (this.bar) return; // the bar owns the line while it runs
    process.stderr.write(`${message}\n`);
  }

  update(p: ProgressMsg & { workers?: WorkerReport[] }, resumedFrom = 0) {
    if (!this.enabled) return;
    const pool = p.workers && p.workers.length > 1 ? ` | ${workerRates(p.workers)}` : "";
    const done = p.sums.windows_done;
    const tokensPerSecond = p.seconds > 0 ? Math.round(p.sums.scored_tokens / p.seconds) : 0;
    const rate = p.seconds > 0 ? (done - resumedFrom) / p.seconds : 0;
    const eta = rate > 0 ? (p.windows_total - done) / rate : Infinity;
    if (this.tty) {
      if (!this.bar) {
        this.bar = new cliProgress.SingleBar({
          format: `{bar} {value}/{total} windows | {tps} ${this.unit}/s | ETA {eta_text}{pool}`,
          stream: process.stderr, hideCursor: true, clearOnComplete: true, etaBuffer: 20,
        }, cliProgress.Presets.shades_classic);
        this.bar.start(p.windows_total, done, { tps: tokensPerSecond, eta_text: formatSeconds(eta), pool });
      }
      this.bar.update(done, { tps: tokensPerSecond, eta_text: formatSeconds(eta), pool });
    } else {
      const tenth = Math.floor((10 * done) / Math.max(1, p.windows_total));
      if (tenth !== this.lastTenth) {
        this.lastTenth = tenth;
        process.stderr.write(`windows ${done}/${p.windows_total} | ${tokensPerSecond} ${this.unit}/s | ETA ${formatSeconds(eta)}${pool}\n`);
      }
    }
  }

  stop() {
    this.bar?.stop();
    this.bar = null;
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** Each worker of a pool: its label and windows per second of its own work, or that it was lost. */
export function workerRates(workers: readonly WorkerReport[]): string {
  return workers.map((w) => (w.lost ? `${w.label} lost` : `${w.label} ${w.seconds > 0 ? (w.windows / w.seconds).toFixed(1) : "0.0"} w/s`)).join(", ");
}
