// A fake of the Python worker for the controller's tests: the same process interface
// (`<python> -m kotara_worker --endpoint E [--heartbeat S]`, the session key on the
// first stdin line), the same wire protocol (src/protocol.ts: a DEALER socket, msgpack
// bodies, HMAC-SHA256 macs, seq numbers; what it receives is checked with ToWorker and
// what it sends with FromWorker), and the same behaviour as python/kotara_worker/
// (server.py, protocol.py, __main__.py) — but no torch: load answers with canned model
// metadata and evaluate with the closed-form sums of ./canned.ts, in milliseconds.
//
// Point the controller at ./python (KOTARA_PYTHON, runtime.python, or openSession's
// `python:`). What it does:
//   load      a local model dir must exist (else not_found); vocab_size, context
//             (max_position_embeddings | n_positions) and bos_token_id come from its
//             config.json when there is one; a Hub id is a canned model (vocab 50257,
//             1024 positions, BOS 50256). Checks context and output rows as the worker
//             does; there is no tokenizer comparison. parameters: 1,000,000 × (i + 1);
//             device "auto" → cpu, dtype "auto" → float32.
//   evaluate  the worker's checks (no models, context, BOS, settings, dataset not found
//             / not UTF-8, too short), windows over the file's bytes, batches as the
//             worker plans them, progress every progress_every windows, cancel and
//             shutdown honoured between batches, resume sums continued; the token
//             view's per-position numbers when asked (canned.ts positionsOf).
//             peak_memory_bytes is a canned 64 MiB.
//   generate  canned text: prompt i writes the letters from "a" + i on, one per step
//             (token id 97 + letter), log-probability −(1 + step mod 3)/4, equal
//             weights; stop strings cut it; a chunk per step (KOTARA_FAKE_DELAY_MS
//             sleeps per step), cancel and shutdown honoured between steps.
//   fit       the evaluate pass over the dev text (its checks, progress, cancel, faults), then the
//             fitted settings of ./canned.ts fittedSettings in closed form, their sums those
//             evaluate gives them; a log-linear fit whose kept logits (models × scored positions
//             × vocab_size × 4 bytes) are over options.memory_budget_bytes: bad_request first.
//   cancel    idle: ignored. shutdown: bye, exit 0.
//   drops     bad frames, bad signatures, undecodable, off-schema and replayed messages,
//             with the worker's stderr lines ("kotara-worker: dropped a message: …").
//
// Fault injection (read only here; "N windows" counts windows this request evaluated):
//   KOTARA_FAKE_FAIL=load|evaluate[:code]  answer with an error (code default internal);
//   KOTARA_FAKE_FAIL_AFTER=N                  …for evaluate, at the first batch after N windows (0)
//   KOTARA_FAKE_FAIL_MESSAGE=text             …with this message
//   KOTARA_FAKE_DELAY_MS=ms                   sleep per batch (a slow model)
//   KOTARA_FAKE_DIE_AFTER=N                   exit abruptly at the first batch after N windows,
//   KOTARA_FAKE_DIE_SIGNAL=SIGKILL              …by this signal, or KOTARA_FAKE_DIE_EXIT=code (3)
//   KOTARA_FAKE_HANG_AFTER=N                  go silent (no heartbeats, nothing) after N windows
//   KOTARA_FAKE_PROTOCOL_VERSION=v            say hello with this protocol version
//   KOTARA_FAKE_RECORD=file                   append every accepted message as a JSON line
import { createHmac, timingSafeEqual } from "node:crypto";
import { appendFileSync, existsSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { decode, encode } from "@msgpack/msgpack";
import * as zmq from "zeromq";
import { FromWorker, PROTOCOL_VERSION, ToWorker, type ErrorMsg, type Setting, type Sums } from "../../src/protocol.js";
import { LIST_PARAMS, LIST_PARAM_NAMES } from "../../src/strategies.js";
import { addWindow, firstBadUtf8, fittedSettings, keptLogitsBytes, planBatches, planWindows, positionsOf, rates, sumsSince, windowBytes, zeroSums } from "./canned.js";

const FAKE_WORKER_VERSION = "0.1.0-fake";
const PEAK_MEMORY_BYTES = 64 * 1024 * 1024;
const HUB_MODEL = { vocab_size: 50257, max_positions: 1024, bos_token_id: 50256 };

type ToWorkerMsg = ToWorker;
type Outgoing = FromWorker extends infer T ? (T extends { seq: number } ? Omit<T, "seq"> : never) : never;
type Code = ErrorMsg["code"];

function log(line: string): void {
  try {
    process.stderr.write(line + "\n");
  } catch {
    // stderr is a pipe to the controller, which may be gone
  }
}

const intEnv = (name: string): number | null => {
  const v = process.env[name];
  if (v === undefined || v === "") return null;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return n;
};

const faults = (() => {
  const [stage, code] = (process.env.KOTARA_FAKE_FAIL ?? "").split(":");
  return {
    fail: stage ? { stage, code: (code || "internal") as Code, message: process.env.KOTARA_FAKE_FAIL_MESSAGE } : null,
    failAfter: intEnv("KOTARA_FAKE_FAIL_AFTER") ?? 0,
    delayMs: intEnv("KOTARA_FAKE_DELAY_MS") ?? 0,
    dieAfter: intEnv("KOTARA_FAKE_DIE_AFTER"),
    dieSignal: (process.env.KOTARA_FAKE_DIE_SIGNAL || null) as NodeJS.Signals | null,
    dieExit: intEnv("KOTARA_FAKE_DIE_EXIT") ?? 3,
    hangAfter: intEnv("KOTARA_FAKE_HANG_AFTER"),
    protocolVersion: intEnv("KOTARA_FAKE_PROTOCOL_VERSION") ?? PROTOCOL_VERSION,
    record: process.env.KOTARA_FAKE_RECORD || null,
  };
})();

class RequestError extends Error {
  constructor(readonly code: Code, message: string, readonly detail: string | null = null) {
    super(message);
  }
}

// ---------------------------------------------------------------------------- the channel (protocol.py Channel)
class Channel {
  private sendSeq = 0;
  private lastRecvSeq = -1;
  private chain: Promise<unknown> = Promise.resolve();
  /** KOTARA_FAKE_HANG_AFTER: nothing goes out any more. */
  silent = false;

  constructor(private socket: zmq.Dealer, private key: Buffer) {}

  private sign(body: Uint8Array): Buffer {
    return createHmac("sha256", this.key).update(body).digest();
  }

  /** Numbered, checked against FromWorker (an off-schema message here is a bug of the fake), signed, queued. */
  /** Resolves once everything sent so far is handed to the socket. */
  flush(): Promise<unknown> {
    return this.chain;
  }

  send(message: Outgoing): Promise<unknown> {
    if (this.silent) return this.chain;
    const full = FromWorker.parse({ ...message, seq: this.sendSeq++ });
    const body = encode(full);
    const frames = [body, this.sign(body)];
    // one send at a time on a zeromq socket; the chain also keeps the seq order
    this.chain = this.chain.then(() => this.socket.send(frames)).catch((e) => log(`kotara-worker: send failed: ${String(e)}`));
    return this.chain;
  }

  /** protocol.py decode + Channel.recv's replay check: the message, or null (dropped, logged). */
  accept(frames: Buffer[]): ToWorkerMsg | null {
    const drop = (why: string) => {
      log(`kotara-worker: dropped a message: ${why}`);
      return null;
    };
    if (frames.length !== 2) return drop(`expected 2 frames (body, mac), got ${frames.length}`);
    const [body, mac] = frames;
    const expected = this.sign(body);
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return drop("bad signature");
    let raw: unknown;
    try {
      raw = decode(body);
    } catch (e) {
      return drop(`undecodable body: ${String(e)}`);
    }
    const parsed = ToWorker.safeParse(raw);
    if (!parsed.success) {
      return drop("off-schema message: " + parsed.error.issues.slice(0, 5).map((i) => `${i.path.join(".") || "(message)"}: ${i.message}`).join("; "));
    }
    const message = parsed.data;
    if (message.seq <= this.lastRecvSeq) {
      log(`kotara-worker: dropped a replayed message (seq ${message.seq} after ${this.lastRecvSeq})`);
      return null;
    }
    this.lastRecvSeq = message.seq;
    return message;
  }
}

// ---------------------------------------------------------------------------- load (models.py, canned)
interface FakeModel {
  ref: string;
  device: string;
  dtype: string;
  parameters: number;
  vocab_size: number;
  max_positions: number | null;
}

/** models.py _is_local. */
function isLocal(ref: string): boolean {
  return isDir(ref) || path.isAbsolute(ref) || ref.startsWith(".") || ref.startsWith("~") || ref.split("/").length - 1 > 1;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** config.json of a local dir ({} for a Hub id); null when a local dir is missing. */
function readModelConfig(ref: string): Record<string, unknown> | null {
  if (!isLocal(ref)) return {};
  if (!isDir(ref)) return null;
  const file = path.join(ref, "config.json");
  if (!existsSync(file)) return {};
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch {
    return {};
  }
}

const positiveInt = (v: unknown): number | null => (typeof v === "number" && Number.isInteger(v) && v > 0 ? v : null);

function notFound(what: string, ref: string): RequestError {
  return new RequestError("not_found", `${what} ${ref} not found: looked for the local directory ${path.resolve(ref)}`);
}

// ---------------------------------------------------------------------------- the server (server.py Server)
class Server {
  private models: FakeModel[] = [];
  private tokenizer: { ref: string; vocab_size: number; bos_token_id: number | null } | null = null;
  /** The evaluation in progress: what should_stop() would read. */
  private running: { requestId: string; cancelled: boolean } | null = null;
  private stopping = false;

  constructor(private channel: Channel, private exit: (code: number) => Promise<void>) {}

  hello(): void {
    void this.channel.send({
      type: "hello", protocol_version: faults.protocolVersion, worker_version: FAKE_WORKER_VERSION, pid: process.pid,
      python: "fake", torch: "fake", transformers: "fake", cuda_devices: 0,
    });
  }

  onMessage(message: ToWorkerMsg): void {
    if (faults.record) appendFileSync(faults.record, JSON.stringify(message) + "\n");
    if (this.running) {
      // evaluate.py's should_stop(): a cancel of this request or a shutdown stops it at the
      // next batch; anything else that arrives meanwhile is read and ignored.
      if (message.type === "cancel" && message.request_id === this.running.requestId) this.running.cancelled = true;
      else if (message.type === "shutdown") {
        this.running.cancelled = true;
        this.stopping = true;
      }
      return;
    }
    void this.dispatch(message);
  }

  private async dispatch(message: ToWorkerMsg): Promise<void> {
    if (message.type === "shutdown") {
      await this.channel.send({ type: "bye" });
      this.stopping = true;
      await this.exit(0);
      return;
    }
    if (message.type === "cancel") return; // nothing is running
    const requestId = message.type === "evaluate" || message.type === "generate" || message.type === "fit" ? message.request_id : null;
    try {
      if (message.type === "load") this.load(message);
      else if (message.type === "generate") await this.generate(message);
      else if (message.type === "fit") await this.fit(message);
      else await this.evaluate(message);
    } catch (e) {
      if (e instanceof RequestError) this.error(requestId, e.code, e.message, e.detail);
      else this.error(requestId, "internal", `${(e as Error).name}: ${(e as Error).message}`, (e as Error).stack ?? null);
    }
    if (this.stopping) await this.exit(0);
  }

  private error(requestId: string | null, code: Code, message: string, detail: string | null = null): void {
    void this.channel.send({ type: "error", request_id: requestId, code, message, detail });
  }

  private status(message: string): void {
    void this.channel.send({ type: "status", message });
  }

  private injected(stage: string): void {
    const f = faults.fail;
    if (f && f.stage === stage) {
      throw new RequestError(f.code, f.message ?? `fake ${stage} failure (KOTARA_FAKE_FAIL=${process.env.KOTARA_FAKE_FAIL})`,
        f.code === "internal" ? "Traceback (most recent call last):\n  (the fake worker's injected failure)" : null);
    }
  }

  private async generate(message: Extract<ToWorkerMsg, { type: "generate" }>): Promise<void> {
    if (this.models.length === 0) throw new RequestError("bad_request", "no models are loaded");
    const n = this.models.length;
    const rows = message.prompts.map((_, i) => ({ i, tokens: [] as number[], logprobs: [] as number[], text: "", sent: 0, finish: null as null | "length" | "stop" }));
    const running = { requestId: message.request_id, cancelled: false };
    this.running = running;
    const started = performance.now();
    try {
      for (let step = 0; step < message.max_new && rows.some((r) => !r.finish); step++) {
        await (faults.delayMs > 0 ? sleep(faults.delayMs) : new Promise((r) => setImmediate(r)));
        if (running.cancelled) throw new RequestError("cancelled", "cancelled by the controller");
        const chunks = rows.filter((r) => !r.finish).map((r) => {
          const token = 97 + ((r.i + step) % 26);
          const logprob = -(1 + (step % 3)) / 4;
          r.tokens.push(token);
          r.logprobs.push(logprob);
          r.text += String.fromCharCode(token);
          const hit = Math.min(...message.stop.map((x) => r.text.indexOf(x)).filter((k) => k >= 0));
          if (Number.isFinite(hit)) [r.text, r.finish] = [r.text.slice(0, hit), "stop"];
          else if (r.tokens.length >= message.max_new) r.finish = "length";
          // hold back a trailing prefix of a stop string, as the worker does
          const held = r.finish ? 0 : Math.max(0, ...message.stop.map((x) => {
            for (let k = Math.min(x.length - 1, r.text.length); k > 0; k--) if (r.text.endsWith(x.slice(0, k))) return k;
            return 0;
          }));
          const text = r.text.slice(r.sent, r.text.length - held);
          r.sent = Math.max(r.sent, r.text.length - held);
          return { prompt: r.i, token, text, logprob, weights: Array(n).fill(1 / n), done: r.finish !== null };
        });
        await this.channel.send({ type: "chunk", request_id: message.request_id, step, chunks });
      }
    } finally {
      this.running = null;
    }
    const seconds = (performance.now() - started) / 1000;
    await this.channel.send({
      type: "generated", request_id: message.request_id, space: "tokens", steps: Math.max(...rows.map((r) => r.tokens.length)),
      seconds, first_token_seconds: seconds / Math.max(1, message.max_new),
      outputs: rows.map((r) => ({
        prompt: r.i, text: r.text, tokens: r.tokens, logprobs: r.logprobs, weights_mean: Array(n).fill(1 / n),
        finish: r.finish ?? "length", prompt_tokens: 1, truncated: 0,
      })),
    });
  }

  private load(message: Extract<ToWorkerMsg, { type: "load" }>): void {
    const start = performance.now();
    this.models = [];
    this.tokenizer = null;
    // the fake fuses in token space only; byte space is the real worker's (python/tests)
    if (message.space === "bytes") throw new RequestError("bad_request", "the fake worker has no byte space");
    const tokRef = message.tokenizer ?? message.models[0].ref;
    this.status(`loading tokenizer ${tokRef}`);
    const tokConfig = readModelConfig(tokRef);
    if (tokConfig === null) throw notFound("tokenizer", tokRef);
    this.injected("load");
    const models: FakeModel[] = [];
    let firstConfig: Record<string, unknown> | null = null;
    message.models.forEach((spec, i) => {
      this.status(`loading model ${i + 1}/${message.models.length}: ${spec.ref}`);
      const config = readModelConfig(spec.ref);
      if (config === null) throw notFound("model", spec.ref);
      firstConfig ??= config;
      const hub = !isLocal(spec.ref);
      const maxPositions = positiveInt(config.max_position_embeddings) ?? positiveInt(config.n_positions) ?? (hub ? HUB_MODEL.max_positions : null);
      const need = message.max_length === null ? null : message.max_length + (message.bos_per_window ? 1 : 0);
      if (need !== null && maxPositions !== null && need > maxPositions) {
        throw new RequestError("context", `model ${spec.ref} has a context of ${maxPositions} positions; ` +
          `max_length ${message.max_length}${message.bos_per_window ? " + 1 BOS" : ""} needs ${need}`);
      }
      models.push({
        ref: spec.ref, device: spec.device === "auto" ? "cpu" : spec.device, dtype: spec.dtype === "auto" ? "float32" : spec.dtype,
        parameters: 1_000_000 * (i + 1), vocab_size: positiveInt(config.vocab_size) ?? HUB_MODEL.vocab_size, max_positions: maxPositions,
      });
    });
    const fromTok = positiveInt(tokConfig.vocab_size) !== null ? tokConfig : firstConfig ?? {};
    const vocab = positiveInt(fromTok.vocab_size) ?? HUB_MODEL.vocab_size;
    const bos = "bos_token_id" in fromTok ? (Number.isInteger(fromTok.bos_token_id) ? (fromTok.bos_token_id as number) : null)
      : isLocal(tokRef) ? null : HUB_MODEL.bos_token_id;
    for (const m of models) {
      if (m.vocab_size < vocab) {
        throw new RequestError("tokenizer_mismatch", `model ${m.ref} has ${m.vocab_size} output rows but the tokenizer ${tokRef} has ${vocab} tokens`);
      }
      this.status(`loaded ${m.ref}: ${m.parameters.toLocaleString("en-US")} parameters, ${m.device}, ${m.dtype}, head path scored`);
    }
    this.models = models;
    this.tokenizer = { ref: tokRef, vocab_size: vocab, bos_token_id: bos };
    void this.channel.send({
      type: "loaded",
      models: models.map((m) => ({ ...m, head_path: "scored" as const, tokenizer: tokRef })),
      tokenizer: this.tokenizer,
      space: "tokens",
      space_reason: message.space === "tokens" ? "asked for" : "every vocabulary agrees",
      seconds: (performance.now() - start) / 1000,
    });
  }

  private async evaluate(message: Extract<ToWorkerMsg, { type: "evaluate" }>): Promise<void> {
    const { sums, nTokens, windows, started, tokenizeSeconds, asked, bytes, r } = await this.pass(message, message.resume);
    const firstModel = this.models[0];
    void this.channel.send({
      type: "result", request_id: message.request_id, space: "tokens", tokens: nTokens, windows: windows.length, sums, byte_stats: null,
      seconds: (performance.now() - started) / 1000, tokenize_seconds: tokenizeSeconds, peak_memory_bytes: PEAK_MEMORY_BYTES,
      device: firstModel.device, dtype: firstModel.dtype, ...(asked ? { positions: positionsOf(bytes, windows, asked, r) } : {}),
    });
    if (this.stopping) await this.channel.send({ type: "bye" });
  }

  /**
   * fit (fit.py, in closed form): the pass over the dev text with the request's settings, as
   * evaluate runs it; the memory budget checked first (kept = models × scored positions ×
   * vocabulary × 4 bytes, as the worker counts it, when loglinear is asked for); then the
   * fitted settings, in options.fits order (see canned.ts fittedSettings), their sums those
   * evaluate gives them (so that `kotara run` of a fitted config reproduces the dev numbers).
   */
  private async fit(message: Extract<ToWorkerMsg, { type: "fit" }>): Promise<void> {
    const { options } = message;
    if (this.models.length && this.tokenizer && options.fits.includes("loglinear")) {
      let size = 0;
      try {
        size = statSync(message.dataset.path).size;
      } catch {
        // the pass says not_found
      }
      if (size >= 2) {
        const d = message.dataset;
        const positions = planWindows(size, d.max_length, d.stride, d.bos_per_window).reduce((a, w) => a + w.end - w.firstScored, 0);
        const need = keptLogitsBytes(this.models.length, positions, this.tokenizer.vocab_size);
        if (need > options.memory_budget_bytes) {
          throw new RequestError("bad_request", `the log-linear fit keeps every model's logits at every dev position: ${positions} positions × ` +
            `${this.models.length} models × ${this.tokenizer.vocab_size} logits × 4 bytes = ${need} bytes, over the memory budget of ${options.memory_budget_bytes} bytes`);
        }
      }
    }
    const { sums, nTokens, windows, started, tokenizeSeconds } = await this.pass(message, null);
    const fitted = fittedSettings(this.models.length, options);
    const r = rates(this.models.length, fitted.map((f) => f.setting));
    fitted.forEach((f, k) => {
      const perWindow = windows.map((w) => (w.end - w.firstScored) * r.fusion[k]);
      sums.fusion_nll.push(perWindow.reduce((a, x) => a + x, 0));
      sums.window_fusion_nll.push(perWindow);
      sums.fusion_weights.push(r.weights[k].map((x) => x * sums.scored_tokens));
    });
    const firstModel = this.models[0];
    const positions = sums.scored_tokens;
    void this.channel.send({
      type: "fitted", request_id: message.request_id, space: "tokens", tokens: nTokens, windows: windows.length, sums, byte_stats: null,
      fits: fitted, positions,
      kept_bytes: (options.fits.includes("loglinear") ? keptLogitsBytes(this.models.length, positions, this.tokenizer!.vocab_size) : 0)
        + this.models.length * (new Set([...options.mix_temperatures, 1]).size) * positions * 8 + positions * 16,
      seconds: (performance.now() - started) / 1000, fit_seconds: 0, tokenize_seconds: tokenizeSeconds,
      peak_memory_bytes: PEAK_MEMORY_BYTES, device: firstModel.device, dtype: firstModel.dtype,
    });
    if (this.stopping) await this.channel.send({ type: "bye" });
  }

  /** The evaluation pass of evaluate and fit: checks, windows, batches, progress, cancel, faults. */
  private async pass(message: Extract<ToWorkerMsg, { type: "evaluate" | "fit" }>, resume: Sums | null) {
    if (!this.models.length || !this.tokenizer) throw new RequestError("bad_request", "no models are loaded (send load first)");
    const requestId = message.request_id;
    const { max_length: maxLength, stride, bos_per_window: bos, path: file } = message.dataset;
    for (const m of this.models) {
      const need = maxLength + (bos ? 1 : 0);
      if (m.max_positions !== null && need > m.max_positions) {
        throw new RequestError("context", `max_length ${maxLength}${bos ? " + BOS" : ""} is over the context of ${m.ref} (${m.max_positions} positions)`);
      }
    }
    if (bos && this.tokenizer.bos_token_id === null) {
      throw new RequestError("bad_request", "dataset.bos_per_window is true but the tokenizer has no BOS token");
    }
    checkSettings(message.settings, this.models.length);
    const asked = message.type === "evaluate" ? (message.positions ?? null) : null;
    if (asked) {
      const bad = asked.settings.find((k) => k >= message.settings.length);
      if (bad !== undefined) throw new RequestError("bad_request", `positions.settings: index ${bad} is not one of the request's ${message.settings.length} settings`);
      if (new Set(asked.settings).size !== asked.settings.length) throw new RequestError("bad_request", `positions.settings: a setting is asked for twice: [${asked.settings.join(", ")}]`);
    }

    const tokenizeStarted = performance.now();
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new RequestError("not_found", `dataset not found: ${file}`);
      throw e;
    }
    const bad = firstBadUtf8(bytes);
    if (bad >= 0) throw new RequestError("bad_request", `dataset ${file} is not UTF-8 (first bad byte at offset ${bad})`);
    this.status(`tokenizing ${file}`);
    const nTokens = bytes.length; // the fake's tokens are the text's bytes
    const tokenizeSeconds = (performance.now() - tokenizeStarted) / 1000;
    let windows;
    try {
      windows = planWindows(nTokens, maxLength, stride, bos);
    } catch (e) {
      throw new RequestError("bad_request", (e as Error).message);
    }
    const nModels = this.models.length;
    const nSettings = message.settings.length;
    const sums: Sums = resume ? structuredClone(resume) : zeroSums(nModels, nSettings);
    const done = sums.windows_done;
    const lists = [sums.window_targets, sums.window_bytes, ...sums.window_model_nll, ...sums.window_fusion_nll];
    if (sums.model_nll.length !== nModels || sums.fusion_nll.length !== nSettings || sums.fusion_weights.length !== nSettings
        || sums.fusion_weights.some((r) => r.length !== nModels) || !(done >= 0 && done <= windows.length)
        || sums.window_model_nll.length !== nModels || sums.window_fusion_nll.length !== nSettings
        || sums.window_first !== 0 || lists.some((l) => l.length !== done)) {
      throw new RequestError("bad_request", `resume sums do not match ${nModels} models, ${nSettings} settings, ${windows.length} windows`);
    }
    const addsUp = (total: number, values: number[]) => values.reduce((a, x) => a + x, 0) === total;
    if (![...sums.model_nll.map((t, m) => addsUp(t, sums.window_model_nll[m])), ...sums.fusion_nll.map((t, k) => addsUp(t, sums.window_fusion_nll[k])),
      addsUp(sums.scored_tokens, sums.window_targets)].every(Boolean)) {
      throw new RequestError("bad_request", `resume sums do not add up: a total is not the sum of its ${done} windows`);
    }
    const r = rates(nModels, message.settings);
    const started = performance.now();
    let sent = done; // progress messages carry the windows since the previous one (server.py progress_sender)
    const progress = () => {
      void this.channel.send({
        type: "progress", request_id: requestId, windows_total: windows.length, tokens_total: nTokens,
        seconds: (performance.now() - started) / 1000, sums: sumsSince(sums, sent),
      });
      sent = sums.windows_done;
    };
    const running = { requestId, cancelled: false };
    this.running = running;
    try {
      let reported = sums.windows_done;
      let evaluated = 0; // windows this request evaluated (the fault counters)
      for (const [first, stop] of planBatches(windows, message.batch_size)) {
        if (stop <= sums.windows_done) continue; // done before the checkpoint
        const start = Math.max(first, sums.windows_done);
        // read what arrived (heartbeats and messages run while we wait), then should_stop()
        await (faults.delayMs > 0 ? sleep(faults.delayMs) : new Promise((r) => setImmediate(r)));
        if (running.cancelled) {
          progress(); // what was finished reaches the controller before the error
          throw new RequestError("cancelled", "cancelled by the controller");
        }
        await this.faultsAt(evaluated);
        for (let i = start; i < stop; i++) addWindow(sums, windows[i], r, windowBytes(windows, i, nTokens));
        evaluated += stop - start;
        sums.windows_done = stop;
        if (sums.windows_done - reported >= message.progress_every) {
          reported = sums.windows_done;
          progress();
        }
      }
    } finally {
      this.running = null;
    }
    return { sums, nTokens, windows, started, tokenizeSeconds, asked, bytes, r };
  }

  /** The injected faults that fire at a batch boundary, `evaluated` windows into the request. */
  private async faultsAt(evaluated: number): Promise<void> {
    if (faults.dieAfter !== null && evaluated >= faults.dieAfter) {
      log(`kotara-worker: the fake worker dies after ${evaluated} windows (KOTARA_FAKE_DIE_AFTER=${faults.dieAfter})`);
      if (faults.dieSignal) process.kill(process.pid, faults.dieSignal);
      process.exit(faults.dieExit);
    }
    if (faults.hangAfter !== null && evaluated >= faults.hangAfter) {
      log(`kotara-worker: the fake worker goes silent after ${evaluated} windows (KOTARA_FAKE_HANG_AFTER=${faults.hangAfter})`);
      this.channel.silent = true;
      await new Promise(() => {}); // forever (the controller's watchdog kills it)
    }
    if (faults.fail?.stage === "evaluate" && evaluated >= faults.failAfter) this.injected("evaluate");
  }
}

/** fusion.py check_settings, with its messages. */
function checkSettings(settings: Setting[], nModels: number): void {
  for (const s of settings) {
    const name = s.id ?? s.type;
    if (s.temperatures.length !== nModels) throw new RequestError("bad_request", `setting ${name}: needs one temperature per model (${nModels})`);
    if (!s.temperatures.every((t) => t > 0)) {
      throw new RequestError("bad_request", `setting ${name}: temperatures must be > 0, got [${s.temperatures.join(", ")}]`);
    }
    for (const p of LIST_PARAM_NAMES) {
      const xs = s[p];
      if (xs !== null && xs.length !== nModels) throw new RequestError("bad_request", `setting ${name}: needs one ${LIST_PARAMS[p].noun} per model (${nModels})`);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------------------- the process (__main__.py)
/** The first line of stdin; afterwards stdin is watched for EOF (the controller is gone). */
function readKeyLine(): Promise<string> {
  return new Promise((resolve) => {
    let buffered = "";
    let done = false;
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk: string) => {
      if (done) return;
      buffered += chunk;
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        done = true;
        resolve(buffered.slice(0, nl).trim());
      }
    });
    process.stdin.on("end", () => {
      if (!done) {
        done = true;
        resolve(buffered.trim());
        return;
      }
      log("kotara-worker: controller closed stdin; exiting");
      process.exit(0);
    });
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { m: { type: "string", short: "m" }, endpoint: { type: "string" }, heartbeat: { type: "string" } },
    strict: true,
  });
  if (values.m !== "kotara_worker" || !values.endpoint) {
    log("usage: python -m kotara_worker --endpoint ENDPOINT [--heartbeat S]  (this is Kotara's fake worker)");
    return 2;
  }
  const heartbeatS = Number(values.heartbeat ?? process.env.KOTARA_HEARTBEAT_S ?? "1.0");

  // Ctrl-C in a terminal reaches the whole process group; the controller decides what it means.
  process.on("SIGINT", () => {});
  const parentPid = process.ppid;
  const keyHex = await readKeyLine();
  const key = /^([0-9a-fA-F]{2})*$/.test(keyHex) ? Buffer.from(keyHex, "hex") : Buffer.alloc(0);
  if (key.length < 16) {
    log("kotara-worker: no session key on stdin (the worker is started by the kotara controller)");
    return 2;
  }
  setInterval(() => {
    if (process.ppid !== parentPid) {
      log("kotara-worker: controller process is gone; exiting");
      process.exit(0);
    }
  }, 500).unref();

  const socket = new zmq.Dealer({ linger: 100 });
  socket.connect(values.endpoint);
  const channel = new Channel(socket, key);
  const exit = async (code: number) => {
    await channel.flush();
    socket.close(); // linger 100 ms: what was sent (a bye) still goes out
    process.exit(code);
  };
  const server = new Server(channel, exit);
  server.hello();
  setInterval(() => void channel.send({ type: "heartbeat" }), heartbeatS * 1000).unref();
  for await (const frames of socket) {
    const message = channel.accept(frames as Buffer[]);
    if (message) server.onMessage(message);
  }
  return 0;
}

process.exitCode = await main();
if (process.exitCode !== 0) process.exit(process.exitCode);
