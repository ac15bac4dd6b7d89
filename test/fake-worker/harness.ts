// A bare controller for testing the fake worker itself at the protocol level: a ROUTER
// socket, the key on stdin, every frame the fake sends checked (mac, FromWorker, seq).
// Independent of src/worker.ts on purpose: the fake is checked against the protocol,
// not against the controller that it stands in for.
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { decode, encode } from "@msgpack/msgpack";
import * as zmq from "zeromq";
import { FromWorker } from "../../src/protocol.js";

/** The fake worker's executable: a drop-in for the controller's Python. */
export const FAKE_PYTHON = join(dirname(fileURLToPath(import.meta.url)), "python");

export class RawWorker {
  readonly key = randomBytes(32);
  readonly messages: FromWorker[] = [];
  /** Anything wrong with what the fake sent (a bad mac, off-schema, a seq out of order). */
  readonly problems: string[] = [];
  readonly stderr: string[] = [];
  exit!: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private proc!: ChildProcess;
  private router = new zmq.Router({ linger: 0 });
  private dir = mkdtempSync(join(tmpdir(), "kotara-fake-"));
  private peer: Buffer | null = null;
  private seq = 0;
  private waiters: (() => void)[] = [];

  static async start(env: Record<string, string> = {}, heartbeatS = 1): Promise<RawWorker> {
    const w = new RawWorker();
    const endpoint = `ipc://${join(w.dir, "w.sock")}`;
    await w.router.bind(endpoint);
    w.proc = spawn(FAKE_PYTHON, ["-m", "kotara_worker", "--endpoint", endpoint, "--heartbeat", String(heartbeatS)], {
      env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"],
    });
    w.exit = new Promise((resolve) => w.proc.on("exit", (code, signal) => resolve({ code, signal })));
    w.proc.stdin!.write(w.key.toString("hex") + "\n");
    w.proc.stdin!.on("error", () => {});
    let partial = "";
    w.proc.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      w.stderr.push(...lines);
      w.wake();
    });
    void w.receive();
    await w.next("hello");
    return w;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  private wake() {
    for (const f of this.waiters.splice(0)) f();
  }

  private async receive() {
    try {
      for await (const [identity, body, mac, ...rest] of this.router) {
        this.peer ??= Buffer.from(identity);
        if (rest.length || !mac) this.problems.push(`expected [identity, body, mac], got ${3 + rest.length} frames`);
        else if (!createHmac("sha256", this.key).update(body).digest().equals(mac)) this.problems.push("bad mac");
        const parsed = FromWorker.safeParse(decode(body));
        if (!parsed.success) {
          this.problems.push(`off-schema: ${JSON.stringify(parsed.error.issues)}`);
          continue;
        }
        const m = parsed.data;
        if (m.seq !== this.messages.length) this.problems.push(`seq ${m.seq} where ${this.messages.length} was due`);
        this.messages.push(m);
        this.wake();
      }
    } catch {
      // the router was closed
    }
  }

  /** Resolves when `cond` holds (checked on every message and stderr line), or fails after ms. */
  async until<T>(cond: () => T | undefined | false, ms = 10_000, what = "a condition"): Promise<T> {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = cond();
      if (v) return v;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; got ${this.messages.map((m) => m.type).join(", ")}; stderr:\n${this.stderr.join("\n")}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private cursor = 0;

  /** The next message (after those already taken) of this type, skipping heartbeats, status
   *  lines and progress (read those from `messages`); any other message on the way is an error. */
  async next<T extends FromWorker["type"]>(type: T, ms = 10_000): Promise<Extract<FromWorker, { type: T }>> {
    return this.until(() => {
      while (this.cursor < this.messages.length) {
        const m = this.messages[this.cursor++];
        if (m.type === type) return m as Extract<FromWorker, { type: T }>;
        if (!["heartbeat", "status", "progress", "chunk"].includes(m.type)) throw new Error(`expected ${type}, got ${JSON.stringify(m)}`);
      }
      return undefined;
    }, ms, `a ${type} message`);
  }

  /** The progress messages received so far for a request. */
  progress(requestId: string) {
    return this.messages.filter((m): m is Extract<FromWorker, { type: "progress" }> => m.type === "progress" && m.request_id === requestId);
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** A message to the fake: the next seq (unless given), msgpack, signed. */
  async send(message: Record<string, unknown>): Promise<void> {
    const body = encode({ seq: this.seq++, ...message });
    await this.sendFrames([body, createHmac("sha256", this.key).update(body).digest()]);
  }

  /** Signs raw body bytes (e.g. a golden message). */
  async sendSigned(body: Uint8Array): Promise<void> {
    await this.sendFrames([body, createHmac("sha256", this.key).update(body).digest()]);
  }

  async sendFrames(frames: Uint8Array[]): Promise<void> {
    await this.router.send([this.peer!, ...frames]);
  }

  async close(): Promise<void> {
    if (this.running) this.proc.kill("SIGKILL");
    await this.exit;
    this.router.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
