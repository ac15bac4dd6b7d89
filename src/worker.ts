// The controller's side of the bridge: spawns the Python worker (execa), talks to it
// over a ZeroMQ ROUTER socket with signed msgpack messages, and watches it. Or, with
// Worker.connect, talks to a worker that listens on another machine (`kotara worker
// --listen`, python/kotara_worker/listen.py) over TCP with CURVE: a DEALER socket, the
// same messages, the same handling (signatures, seq, requests, the watchdog).
//
// Liveness: the worker's exit fails every pending request at once with its last
// stderr lines; a heartbeat watchdog stops a worker that goes silent; start-up has
// its own deadline. Shutdown escalates: a shutdown message, SIGTERM, SIGKILL. A remote
// worker is never killed: a lost connection or its bye fails what is pending, and
// closing it sends a shutdown (its listener then waits for the next controller).
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
import { readKeyFile, type KeyFile } from "./keys.js";
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

/** Worker.connect: a worker listening on `endpoint` (tcp://HOST:PORT) that holds the same key file. */
export type ConnectOptions = Omit<WorkerOptions, "python" | "env" | "heartbeatS"> & {
  endpoint: string;
  /** The key file from `kotara keygen` (src/keys.ts), the same on both machines. */
  keyFile: string;
  /** A problem with the key file that does not stop the connection (it is readable by others). */
  onWarning?: (message: string) => void;
};

/**
 * How frames reach the worker: [identity, body, mac] both ways. The identity names the
 * worker's connection on the controller's ROUTER (a local worker); a remote worker's
 * DEALER has one peer, and its identity is empty.
 */
interface Transport extends AsyncIterable<Buffer[]> {
  send(frames: Uint8Array[]): Promise<void>;
  close(): void;
}

const NO_IDENTITY = Buffer.alloc(0);

/** A remote worker's endpoint: tcp://HOST:PORT (HOST a name, an IPv4 address, [IPv6] or *). */
export const REMOTE_ENDPOINT = /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/\s[\]]+):\d{1,5}$/;

/** A DEALER connected to a listening worker, as a Transport. */
class DealerTransport implements Transport {
  constructor(readonly dealer: zmq.Dealer) {}
  send(frames: Uint8Array[]) {
    return this.dealer.send(frames.slice(1));
  }
  async *[Symbol.asyncIterator]() {
    for await (const frames of this.dealer) yield [NO_IDENTITY, ...frames];
  }
  close() {
    this.dealer.close();
  }
}

/** The environment of a worker process: Kotara's python/ on PYTHONPATH and the settings it runs best with. */
export function workerEnv(extra?: Record<string, string>): Record<string, string | undefined> {
  return {
    ...process.env,
    ...extra,
    PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(":"),
    PYTHONUNBUFFERED: "1",
    TOKENIZERS_PARALLELISM: process.env.TOKENIZERS_PARALLELISM ?? "false",
    // OpenMP threads that spin while waiting turn every small op into a scheduler time
    // slice when another process holds a core (measured: 12x slower on 2 shared cores).
    OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? "PASSIVE",
  };
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
  hello!: HelloMsg;
  private proc?: ResultPromise<{ stdin: "pipe"; stdout: "pipe"; stderr: "pipe"; buffer: false; reject: false }>;
  private transport!: Transport;
  private dir: string | null = null;
  /** A remote worker's endpoint (Worker.connect); null for a local one. */
  private remote: string | null = null;
  private handshakeError: string | null = null;
  private byeWaiter: (() => void) | null = null;
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

  private constructor(private opts: WorkerOptions | ConnectOptions, readonly key: Buffer) {}

  /** Spawn the worker, wait for its hello and check the protocol version. */
  static async start(opts: WorkerOptions): Promise<Worker> {
    const w = new Worker(opts, randomBytes(32));
    try {
      await w.spawn();
    } catch (e) {
      await w.close();
      throw e;
    }
    return w;
  }

  /**
   * Connect to a worker listening on another machine (`kotara worker --listen`), wait for
   * its hello and check the protocol version. The key file's errors are UserErrors (exit 2).
   */
  static async connect(opts: ConnectOptions): Promise<Worker> {
    if (!REMOTE_ENDPOINT.test(opts.endpoint)) {
      throw new UserError(`a remote worker's endpoint is tcp://HOST:PORT, got "${opts.endpoint}"`, 2);
    }
    const { keys, warning } = readKeyFile(opts.keyFile);
    if (warning) opts.onWarning?.(warning);
    const w = new Worker(opts, Buffer.from(keys.hmac, "hex"));
    w.remote = opts.endpoint;
    try {
      await w.connectTo(keys);
    } catch (e) {
      await w.close();
      throw e;
    }
    return w;
  }

  /** A local worker's process id; undefined for a remote one. */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Who the worker is, in messages: its Python, or where it listens. */
  private get where(): string {
    return this.remote ? `the worker at ${this.remote}` : `the worker at ${(this.opts as WorkerOptions).python}`;
  }

  /** Bind the socket, start the process, wait for its hello, then watch its heartbeat. */
  private async spawn(): Promise<void> {
    this.dir = mkdtempSync(join(tmpdir(), "kotara-")); // mkdtemp makes it 0700: private to the user
    const router = new zmq.Router({ linger: 0, mandatory: true });
    this.transport = router;
    const endpoint = process.platform === "win32" ? "tcp://127.0.0.1:*" : `ipc://${join(this.dir, "w.sock")}`;
    await router.bind(endpoint);
    this.launch(router.lastEndpoint ?? endpoint);
    await this.greet();
  }

  /** A DEALER with the key file's CURVE keys; probeRouter, so that connecting tells the listener who we are. */
  private async connectTo(keys: KeyFile): Promise<void> {
    const dealer = new zmq.Dealer({
      linger: 0, probeRouter: true,
      curveServerKey: keys.server_public, curvePublicKey: keys.client_public, curveSecretKey: keys.client_secret,
    });
    this.transport = new DealerTransport(dealer);
    for (const kind of ["handshake:error:auth", "handshake:error:protocol", "handshake:error:other"] as const) {
      dealer.events.on(kind, (e) => (this.handshakeError = `${kind}: ${e.error.message}`));
    }
    // A definite no (ZAP refused our client key): say so now. A wrong server key gives no
    // such answer (the listener cannot even read our handshake): the start deadline tells.
    dealer.events.on("handshake:error:auth", () => {
      if (!this.hello) this.fail(new WorkerDied(`${this.where} refused this controller's key (CURVE authentication failed): do both sides hold the same key file?`, []));
    });
    // The listener's session is this connection: once it closes, the session is over there
    // (a reconnect would be a new peer), so what is pending fails now, not at the watchdog.
    dealer.events.on("disconnect", () => {
      if (this.hello && !this.closing) this.lost(`lost the connection to ${this.where} while ${this.pending?.what ?? "idle"}`);
    });
    dealer.connect(this.remote!);
    await this.greet();
  }

  /** The hello, the protocol version, then the heartbeat watchdog. */
  private async greet(): Promise<void> {
    void this.receiveLoop();
    this.hello = await this.waitHello();
    if (this.hello.protocol_version !== PROTOCOL_VERSION) {
      throw new UserError(
        `protocol version mismatch: the controller speaks ${PROTOCOL_VERSION}, ${this.where} speaks ${this.hello.protocol_version} ` +
          `(worker ${this.hello.worker_version}); use the worker that ships with this version of kotara`,
      );
    }
    this.startWatchdog();
  }

  /** The remote worker is gone for this controller: fail what is pending, stop listening to it. */
  private lost(message: string) {
    this.fail(new WorkerDied(message, []));
    this.transport.close();
  }

  /** The worker process (execa), its key on stdin, its output lines, its exit. */
  private launch(bound: string): void {
    const opts = this.opts as WorkerOptions;
    const args = ["-m", "kotara_worker", "--endpoint", bound];
    if (opts.heartbeatS) args.push("--heartbeat", String(opts.heartbeatS));
    const proc = execa(opts.python, args, {
      env: workerEnv(opts.env), extendEnv: false, stdin: "pipe", stdout: "pipe", stderr: "pipe", buffer: false, reject: false,
      cleanup: true, cwd: PACKAGE_ROOT,
    });
    this.proc = proc;
    process.once("exit", this.exitHook);
    // The session key goes through stdin, never the command line; stdin stays open so the
    // worker sees EOF (and exits) if this process dies.
    proc.stdin.write(this.key.toString("hex") + "\n");
    proc.stdin.on("error", () => {}); // EPIPE when the worker died; reported via its exit
    // The worker writes its log to stderr; stdout should stay empty, but a library may
    // print there: those lines are kept too, marked.
    for (const [stream, prefix] of [[proc.stdout, "[stdout] "], [proc.stderr, ""]] as const) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop() ?? "";
        for (const line of lines) this.outputLine(prefix + line);
      });
      stream.on("end", () => partial && this.outputLine(prefix + partial));
    }
    void proc.then(
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
    // a remote worker is already running (torch imported): it answers a connect at once
    const startTimeoutMs = this.opts.startTimeoutMs ?? (this.remote
      ? Number(process.env.KOTARA_CONNECT_TIMEOUT_MS ?? DEFAULTS.connect_timeout_ms)
      : Number(process.env.KOTARA_START_TIMEOUT_MS ?? DEFAULTS.start_timeout_ms));
    const hello = await new Promise<FromWorkerMsg>((resolve, reject) => {
      this.helloWaiter = {
        what: this.remote ? `waiting for the worker at ${this.remote} to answer` : "waiting for the worker to start (Python is importing torch and transformers)",
        resolve, reject,
      };
      const timer = setTimeout(() => {
        reject(this.remote
          ? new WorkerDied(`no answer from ${this.remote} within ${startTimeoutMs / 1000}s: is \`kotara worker --listen\` running there, ` +
              `and do both sides hold the same key file?${this.handshakeError ? ` (the CURVE handshake failed: ${this.handshakeError})` : ""}`, [])
          : new WorkerDied(`the worker did not say hello within ${startTimeoutMs / 1000}s of starting ${(this.opts as WorkerOptions).python} (was it importing torch and transformers?)`, this.outputTail));
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
      if (silent > heartbeatTimeoutMs && this.alive) {
        const what = `no heartbeat for ${(silent / 1000).toFixed(1)}s while ${this.pending?.what ?? "idle"}`;
        if (this.remote) return this.lost(`${this.where} stopped answering: ${what}; giving up on it`);
        this.fail(new WorkerDied(`the worker stopped answering: ${what}; stopping it`, this.outputTail));
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
      for await (const frames of this.transport) this.onFrames(frames as Buffer[]);
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
        return;
      case "bye":
        // A local worker says bye only when told to shut down; a remote one also when it is
        // stopped on its machine (Ctrl-C there), which ends this session.
        this.byeWaiter?.();
        if (this.remote && !this.closing) this.lost(`${this.where} ended the session (it was stopped there) while ${this.pending?.what ?? "idle"}`);
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
    const next = this.sendChain.then(() => this.transport.send([peer, ...frames]));
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
    if (this.alive && this.peer) await this.send({ type: "cancel", request_id: requestId }).catch(() => {});
  }

  /** A local worker's process runs; a remote worker's session is open (not failed, not closed). */
  get alive(): boolean {
    return this.remote ? !this.failure : !this.exited;
  }

  /** A local worker: SIGKILL. A remote one is never killed: this controller lets go of it. */
  private killNow() {
    if (this.remote) this.transport?.close();
    else if (!this.exited) this.proc?.kill("SIGKILL");
  }

  private async waitExit(ms: number): Promise<boolean> {
    if (this.exited || !this.proc) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
    const ok = await Promise.race([this.proc.then(() => true as const), timeout]);
    clearTimeout(timer);
    return ok;
  }

  /**
   * Stop the worker: a shutdown message, then SIGTERM, then SIGKILL, each with a deadline.
   * A remote worker: a shutdown message (its listener ends the session and frees the
   * models), a moment for its bye, then the socket closes; nothing is killed.
   */
  async close({ graceMs = 3000 }: { graceMs?: number } = {}): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.watchdog) clearInterval(this.watchdog);
    const wasAlive = this.alive;
    this.fail(new UserError("the worker was closed"));
    if (this.remote) {
      if (wasAlive && this.peer) {
        const bye = new Promise<void>((r) => (this.byeWaiter = r));
        await Promise.race([this.send({ type: "shutdown" }).then(() => bye).catch(() => {}), sleep(Math.min(graceMs, 2000))]);
      }
      this.transport?.close();
      return;
    }
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
    this.transport?.close();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

function sleep(ms: number) {
  return new Promise<void>((r) => setTimeout(r, ms).unref());
}
