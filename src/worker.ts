// The controller's side of the bridge: spawns the Python worker (execa), talks to it
// over a ZeroMQ ROUTER socket with signed msgpack messages, and watches it.
//
// Liveness: the worker's exit fails every pending request at once with its last
// stderr lines; a heartbeat watchdog stops a worker that goes silent; start-up has
// its own deadline. Shutdown escalates: a shutdown message, SIGTERM, SIGKILL.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { decode, encode } from "@msgpack/msgpack";
import { execa, type ResultPromise } from "execa";
import * as zmq from "zeromq";
import { DEFAULTS } from "./defaults.js";
import { UserError } from "./errors.js";
import {
  FromWorker, PROTOCOL_VERSION, ToWorker,
  type ChunkMsg, type ErrorMsg, type FittedMsg, type FromWorker as FromWorkerMsg, type GeneratedMsg, type HelloMsg, type LoadedMsg, type ProgressMsg, type ResultMsg,
} from "./protocol.js";

export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const PYTHON_DIR = join(PACKAGE_ROOT, "python");

/** An error the worker reported for a request (a missing model, a bad dataset, …). */
export class WorkerRequestError extends UserError {
  constructor(readonly code: ErrorMsg["code"], message: string, readonly detail: string | null) {
    // A model, tokenizer or dataset the worker cannot use is a configuration problem (2);
    // a crash or a numerical fault is a failed run (1).
    super(message, code === "cancelled" ? 130 : code === "internal" || code === "numerical" ? 1 : 2);
    this.name = "WorkerRequestError";
  }
}

/** The worker process is gone, or stopped answering. */
export class WorkerDied extends UserError {
  constructor(message: string, readonly outputTail: string[]) {
    super(outputTail.length ? `${message}\n--- last lines of the worker's output ---\n${outputTail.join("\n")}` : message, 1);
    this.name = "WorkerDied";
  }
}

export interface WorkerOptions {
  python: string;
  env?: Record<string, string>;
  /** Deadline for the worker's hello (Python start-up and importing torch). */
  startTimeoutMs?: number;
  /** A worker silent for this long (no heartbeat, no progress) is reported and stopped. */
  heartbeatTimeoutMs?: number;
  /** Seconds between the worker's heartbeats. */
  heartbeatS?: number;
  onStatus?: (message: string) => void;
  /** Every line the worker prints (stderr; stdout lines come prefixed "[stdout] "). */
  onStderr?: (line: string) => void;
  /** A message from the worker that was dropped (bad signature, replay, off-schema), and why. */
  onDropped?: (reason: string) => void;
}

type Pending = {
  what: string;
  resolve: (m: FromWorkerMsg) => void;
  reject: (e: Error) => void;
  onProgress?: (m: ProgressMsg | ChunkMsg) => void;
};

type Outgoing = ToWorker extends infer T ? (T extends { seq: number } ? Omit<T, "seq"> : never) : never;

const OUTPUT_TAIL = 40;

export class Worker {
  readonly key = randomBytes(32);
  hello!: HelloMsg;
  private proc!: ResultPromise<{ stdin: "pipe"; stdout: "pipe"; stderr: "pipe"; buffer: false; reject: false }>;
  private router = new zmq.Router({ linger: 0, mandatory: true });
  private dir = mkdtempSync(join(tmpdir(), "kotara-")); // mkdtemp makes it 0700: private to the user
  private peer: Buffer | null = null;
  private sendSeq = 0;
  private lastRecvSeq = -1;
  private sendChain: Promise<unknown> = Promise.resolve();
  private pending: Pending | null = null;
  private helloWaiter: Pending | null = null;
  /** The worker's last lines of output, for the message when it dies. */
  private outputTail: string[] = [];
  private lastSeen = Date.now();
  private watchdog: NodeJS.Timeout | null = null;
  private exited: { code: number | undefined; signal: string | undefined } | null = null;
  private closing = false;
  private failure: Error | null = null;
  private exitHook = () => this.killNow();

  private constructor(private opts: WorkerOptions) {}

  /** Spawn the worker, wait for its hello and check the protocol version. */
  static async start(opts: WorkerOptions): Promise<Worker> {
    const w = new Worker(opts);
    try {
      await w.spawn();
    } catch (e) {
      await w.close();
      throw e;
    }
    return w;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Bind the socket, start the process, wait for its hello, then watch its heartbeat. */
  private async spawn(): Promise<void> {
    const endpoint = process.platform === "win32" ? "tcp://127.0.0.1:*" : `ipc://${join(this.dir, "w.sock")}`;
    await this.router.bind(endpoint);
    this.launch(this.router.lastEndpoint ?? endpoint);
    void this.receiveLoop();
    this.hello = await this.waitHello();
    if (this.hello.protocol_version !== PROTOCOL_VERSION) {
      throw new UserError(
        `protocol version mismatch: the controller speaks ${PROTOCOL_VERSION}, the worker at ${this.opts.python} speaks ${this.hello.protocol_version} ` +
          `(worker ${this.hello.worker_version}); use the worker that ships with this version of kotara`,
      );
    }
    this.startWatchdog();
  }

  /** The worker process (execa), its key on stdin, its output lines, its exit. */
  private launch(bound: string): void {
    const env = {
      ...process.env,
      ...this.opts.env,
      PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(":"),
      PYTHONUNBUFFERED: "1",
      TOKENIZERS_PARALLELISM: process.env.TOKENIZERS_PARALLELISM ?? "false",
      // OpenMP threads that spin while waiting turn every small op into a scheduler time
      // slice when another process holds a core (measured: 12x slower on 2 shared cores).
      OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "PASSIVE",
    };
    const args = ["-m", "kotara_worker", "--endpoint", bound];
    if (this.opts.heartbeatS) args.push("--heartbeat", String(this.opts.heartbeatS));
    this.proc = execa(this.opts.python, args, {
      env, extendEnv: false, stdin: "pipe", stdout: "pipe", stderr: "pipe", buffer: false, reject: false,
      cleanup: true, cwd: PACKAGE_ROOT,
    });
    process.once("exit", this.exitHook);
    // The session key goes through stdin, never the command line; stdin stays open so the
    // worker sees EOF (and exits) if this process dies.
    this.proc.stdin.write(this.key.toString("hex") + "\n");
    this.proc.stdin.on("error", () => {}); // EPIPE when the worker died; reported via its exit
    // The worker writes its log to stderr; stdout should stay empty, but a library may
    // print there: those lines are kept too, marked.
    for (const [stream, prefix] of [[this.proc.stdout, "[stdout] "], [this.proc.stderr, ""]] as const) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) this.outputLine(prefix + line);
      });
      stream.on("end", () => partial && this.outputLine(prefix + partial));
    }
    void this.proc.then(
      (r) => {
        // No exit code and no signal: it never started (e.g. spawn python ENOENT).
        const how = r.signal ? `was killed by ${r.signal}` : r.exitCode !== undefined ? `exited with code ${r.exitCode}`
          : `could not be started: ${String((r.cause as Error | undefined)?.message ?? r.shortMessage)}`;
        this.onExit(r.exitCode, r.signal ?? undefined, how);
      },
      (e) => this.onExit(undefined, undefined, `could not be started: ${String(e)}`),
    );
  }

  private async waitHello(): Promise<HelloMsg> {
    const startTimeoutMs = this.opts.startTimeoutMs ?? Number(process.env.KOTARA_START_TIMEOUT_MS ?? DEFAULTS.start_timeout_ms);
    const hello = await new Promise<FromWorkerMsg>((resolve, reject) => {
      this.helloWaiter = { what: "waiting for the worker to start (Python is importing torch and transformers)", resolve, reject };
      const timer = setTimeout(() => {
        reject(new WorkerDied(`the worker did not say hello within ${startTimeoutMs / 1000}s of starting ${this.opts.python} (was it importing torch and transformers?)`, this.outputTail));
        this.killNow();
      }, startTimeoutMs);
      timer.unref();
      const done = () => clearTimeout(timer);
      this.helloWaiter.resolve = (m) => { done(); resolve(m); };
      this.helloWaiter.reject = (e) => { done(); reject(e); };
      if (this.failure) this.helloWaiter.reject(this.failure);
    });
    this.helloWaiter = null;
    return hello as HelloMsg;
  }

  private startWatchdog(): void {
    this.lastSeen = Date.now();
    const heartbeatTimeoutMs = this.opts.heartbeatTimeoutMs ?? Number(process.env.KOTARA_HEARTBEAT_TIMEOUT_MS ?? DEFAULTS.heartbeat_timeout_ms);
    this.watchdog = setInterval(() => {
      const silent = Date.now() - this.lastSeen;
      if (silent > heartbeatTimeoutMs && !this.exited) {
        this.fail(new WorkerDied(`the worker stopped answering: no heartbeat for ${(silent / 1000).toFixed(1)}s while ${this.pending?.what ?? "idle"}; stopping it`, this.outputTail));
        this.killNow();
      }
    }, Math.min(500, heartbeatTimeoutMs / 4));
    this.watchdog.unref();
  }

  private outputLine(line: string) {
    this.outputTail.push(line);
    if (this.outputTail.length > OUTPUT_TAIL) this.outputTail.shift();
    this.opts.onStderr?.(line);
  }

  private onExit(code: number | undefined, signal: string | undefined, how: string) {
    this.exited = { code, signal };
    process.removeListener("exit", this.exitHook);
    if (!this.closing) {
      const what = this.pending?.what ?? this.helloWaiter?.what ?? "idle";
      this.fail(new WorkerDied(`the worker died: it ${how} while ${what}`, this.outputTail));
    }
  }

  /** Fail every pending request, now and later. */
  private fail(e: Error) {
    this.failure ??= e;
    const waiters = [this.pending, this.helloWaiter];
    this.pending = null;
    for (const p of waiters) p?.reject(e);
  }

  private async receiveLoop() {
    try {
      for await (const frames of this.router) this.onFrames(frames as Buffer[]);
    } catch (e) {
      if (!this.closing) this.fail(new UserError(`the controller's socket failed: ${String(e)}`));
    }
  }

  private sign(body: Uint8Array): Buffer {
    return createHmac("sha256", this.key).update(body).digest();
  }

  private drop(reason: string) {
    this.opts.onDropped?.(reason);
  }

  private onFrames(frames: Buffer[]) {
    if (frames.length !== 3) return this.drop(`expected 3 frames, got ${frames.length}`);
    const [identity, body, mac] = frames;
    if (this.peer && !identity.equals(this.peer)) return this.drop("message from an unknown peer");
    const expected = this.sign(body);
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return this.drop("bad signature");
    let parsed;
    try {
      parsed = FromWorker.safeParse(decode(body));
    } catch (e) {
      return this.drop(`undecodable message: ${String(e)}`);
    }
    if (!parsed.success) return this.drop(`off-schema message: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
    const msg = parsed.data;
    if (msg.seq <= this.lastRecvSeq) return this.drop(`replayed message (seq ${msg.seq} after ${this.lastRecvSeq})`);
    this.lastRecvSeq = msg.seq;
    this.peer ??= Buffer.from(identity);
    this.lastSeen = Date.now();
    this.dispatch(msg);
  }

  private dispatch(msg: FromWorkerMsg) {
    switch (msg.type) {
      case "hello":
        this.helloWaiter?.resolve(msg);
        return;
      case "heartbeat":
      case "bye":
        return;
      case "status":
        this.opts.onStatus?.(msg.message);
        return;
      case "progress":
      case "chunk":
        this.pending?.onProgress?.(msg);
        return;
      case "loaded":
      case "result":
      case "generated":
      case "fitted": {
        const p = this.pending;
        this.pending = null;
        p?.resolve(msg);
        return;
      }
      case "error": {
        const p = this.pending;
        this.pending = null;
        const err = new WorkerRequestError(msg.code, msg.message, msg.detail);
        if (p) p.reject(err);
        else this.opts.onStatus?.(`worker error: ${msg.message}`);
        return;
      }
    }
  }

  /** One message as frames: validated, numbered, signed. */
  frame(message: Outgoing): Uint8Array[] {
    const body = encode(ToWorker.parse({ ...message, seq: this.sendSeq++ }));
    return [body, this.sign(body)];
  }

  async send(message: Outgoing): Promise<void> {
    await this.sendFrames(this.frame(message));
  }

  /** Raw frames to the worker (tests use it to forge and replay messages). */
  async sendFrames(frames: Uint8Array[]): Promise<void> {
    if (!this.peer) throw new UserError("the worker has not said hello yet");
    const peer = this.peer;
    const next = this.sendChain.then(() => this.router.send([peer, ...frames]));
    this.sendChain = next.catch(() => {});
    await next;
  }

  private request<T extends FromWorkerMsg>(message: Outgoing, what: string, onProgress?: (m: ProgressMsg | ChunkMsg) => void): Promise<T> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.pending) return Promise.reject(new Error(`the worker is busy ${this.pending.what}`));
    return new Promise<T>((resolve, reject) => {
      this.pending = { what, resolve: resolve as (m: FromWorkerMsg) => void, reject, onProgress };
      this.send(message).catch((e) => {
        this.pending = null;
        reject(this.failure ?? new UserError(`could not reach the worker: ${String(e)}`));
      });
    });
  }

  load(message: Omit<Extract<Outgoing, { type: "load" }>, "type">): Promise<LoadedMsg> {
    return this.request({ type: "load", ...message }, `loading ${message.models.map((m) => m.ref).join(", ")}`);
  }

  evaluate(message: Omit<Extract<Outgoing, { type: "evaluate" }>, "type">, onProgress?: (m: ProgressMsg) => void): Promise<ResultMsg> {
    return this.request({ type: "evaluate", ...message }, `evaluating ${message.dataset.path}`,
      onProgress && ((m) => m.type === "progress" && onProgress(m)));
  }

  /** Fused generation: each step's chunks to onChunk, then the final message. */
  generate(message: Omit<Extract<Outgoing, { type: "generate" }>, "type">, onChunk?: (m: ChunkMsg) => void): Promise<GeneratedMsg> {
    return this.request({ type: "generate", ...message }, `generating with ${message.setting.id}`,
      onChunk && ((m) => m.type === "chunk" && onChunk(m)));
  }

  /** Fitting on a text: progress as for evaluate, then the fitted message. */
  fit(message: Omit<Extract<Outgoing, { type: "fit" }>, "type">, onProgress?: (m: ProgressMsg) => void): Promise<FittedMsg> {
    return this.request({ type: "fit", ...message }, `fitting on ${message.dataset.path}`,
      onProgress && ((m) => m.type === "progress" && onProgress(m)));
  }

  async cancel(requestId: string): Promise<void> {
    if (!this.exited && this.peer) await this.send({ type: "cancel", request_id: requestId }).catch(() => {});
  }

  get alive(): boolean {
    return !this.exited;
  }

  private killNow() {
    if (!this.exited) this.proc?.kill("SIGKILL");
  }

  private async waitExit(ms: number): Promise<boolean> {
    if (this.exited || !this.proc) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
    const ok = await Promise.race([this.proc.then(() => true as const), timeout]);
    clearTimeout(timer);
    return ok;
  }

  /** Stop the worker: a shutdown message, then SIGTERM, then SIGKILL, each with a deadline. */
  async close({ graceMs = 3000 }: { graceMs?: number } = {}): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.watchdog) clearInterval(this.watchdog);
    this.fail(new UserError("the worker was closed"));
    if (this.proc && !this.exited) {
      if (this.peer) await Promise.race([this.send({ type: "shutdown" }).catch(() => {}), sleep(500)]);
      if (!(await this.waitExit(graceMs))) {
        this.proc.kill("SIGTERM");
        if (!(await this.waitExit(graceMs))) {
          this.proc.kill("SIGKILL");
          await this.waitExit(graceMs);
        }
      }
    }
    process.removeListener("exit", this.exitHook);
    this.router.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function sleep(ms: number) {
  return new Promise<void>((r) => setTimeout(r, ms).unref());
}
