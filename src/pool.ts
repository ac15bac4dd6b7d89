// A pool of workers (runtime.workers): each worker holds every model, and an evaluation
// is handed out one group of batch_size windows at a time (a "share": protocol v8) to
// whichever worker is free. The shares' sums come back in any order and are joined in
// window order (sums.ts addShare), so any number of workers gives one worker's sums bit
// for bit (the worker sums each group's weights on its own for this: evaluate.py Sums).
//
// Faults: a worker that dies or stops answering (its Worker rejects with WorkerDied) is
// dropped and its share goes back to the front of the queue for the others; the run
// fails only when every worker is lost (the caller then keeps a checkpoint of the
// windows joined so far, as with one worker). An error a worker reports for a request
// (a bad dataset, NaN logits) would come back from any worker: it ends the run at once.
import { UserError, Interrupted } from "./errors.js";
import type { ByteStats, DatasetSpec, LoadedMsg, Positions, PositionsRequest, ProgressMsg, ResultMsg, Setting, Sums } from "./protocol.js";
import { addShare } from "./sums.js";
import { WorkerDied, WorkerRequestError, type Worker } from "./worker.js";

/** One entry of runtime.workers: a local worker (spawned) or a remote one (kotara worker --listen). */
export type WorkerSpec =
  | { device?: string | null; threads?: number | null }
  | { connect: string; key_file: string };

export const isRemote = (s: WorkerSpec): s is { connect: string; key_file: string } => "connect" in s;

/** A worker of the pool and what it did in the current request. */
export interface Member {
  /** "1", "2", …: its place in runtime.workers. */
  index: number;
  /** How the progress line and errors name it: `cpu#1`, `cuda:0#2`, `tcp://gpu-box:5555#3`. */
  label: string;
  spec: WorkerSpec;
  worker: Worker;
  loaded: LoadedMsg;
  /** The current request: windows it scored, seconds it spent on its shares. */
  windows: number;
  seconds: number;
  /** Why it left the pool (null: it is in). */
  lost: string | null;
}

/** What the progress line and the metrics show of each worker (runtime.workers[]). */
export interface WorkerReport {
  label: string;
  device: string;
  threads: number | null;
  endpoint: string | null;
  windows: number;
  seconds: number;
  lost: string | null;
}

export type PoolProgress = ProgressMsg & { workers: WorkerReport[] };

export interface ShareRequest {
  request_id: string;
  dataset: DatasetSpec;
  settings: Setting[];
  batch_size: number;
  positions: PositionsRequest | null;
  /** Sums of the windows done before (a checkpoint), every window listed; null: none. */
  resume: Sums | null;
}

export interface PoolHooks {
  onProgress?: (p: PoolProgress) => void;
  onStatus?: (message: string) => void;
  signal?: AbortSignal;
  cancelGraceMs: number;
}

export function reportOf(m: Member): WorkerReport {
  return {
    label: m.label, device: m.loaded.models[0]?.device ?? "?", threads: isRemote(m.spec) ? null : m.spec.threads ?? null,
    endpoint: isRemote(m.spec) ? m.spec.connect : null, windows: m.windows, seconds: m.seconds, lost: m.lost,
  };
}

/** A share: windows first .. stop − 1, inside one group of batch_size windows. */
interface Share { first: number; stop: number }

/**
 * One evaluation over the pool: the result a single worker would send (sums listing every
 * window, from the resume on), assembled from the shares.
 */
export async function runShares(members: Member[], req: ShareRequest, hooks: PoolHooks): Promise<ResultMsg> {
  const B = req.batch_size;
  const started = performance.now();
  for (const m of members) Object.assign(m, { windows: 0, seconds: 0 });
  let live = members.filter((m) => !m.lost);
  if (live.length === 0) throw new UserError("every worker of the pool was lost before this request", 1);

  // shares from the resume point on: to the end of its group, then whole groups
  const start = req.resume?.windows_done ?? 0;
  let nextFirst = start;
  let total: number | null = null;          // windows in the text: known from the first result
  const requeued: Share[] = [];
  const take = (): Share | null => {
    const again = requeued.shift();
    if (again) return again;
    if (total !== null && nextFirst >= total) return null;
    const share = { first: nextFirst, stop: (Math.floor(nextFirst / B) + 1) * B };
    nextFirst = share.stop;
    return share;
  };

  let joined: Sums | null = req.resume;     // every window so far, in order
  const waiting = new Map<number, ResultMsg>(); // finished shares past the joined prefix, by first window
  let prefix = start;                        // the joined windows end here
  let last: ResultMsg | null = null;
  let byteStats: ByteStats[] | null = null;
  let peak = 0;
  let tokenizeSeconds = 0;
  const positions: Positions[] = [];
  let positionsNull = false;
  const inFlight = new Map<Member, Share>();

  return await new Promise<ResultMsg>((resolve, reject) => {
    let settled = false;
    const finish = (e: Error | null) => {
      if (settled) return;
      settled = true;
      hooks.signal?.removeEventListener("abort", onAbort);
      if (e) {
        for (const m of inFlight.keys()) void m.worker.cancel(req.request_id);
        reject(e);
        return;
      }
      const sums = joined!;
      resolve({
        ...last!, request_id: req.request_id, sums, byte_stats: byteStats, seconds: (performance.now() - started) / 1000,
        tokenize_seconds: tokenizeSeconds, peak_memory_bytes: peak, device: last!.device,
        ...(req.positions ? { positions: positionsNull ? null : joinPositions(positions) } : {}),
      });
    };
    const onAbort = () => {
      for (const m of inFlight.keys()) void m.worker.cancel(req.request_id);
      setTimeout(() => finish(new Interrupted(`the workers did not stop within ${hooks.cancelGraceMs / 1000}s of the interrupt`)), hooks.cancelGraceMs).unref();
    };
    if (hooks.signal?.aborted) return finish(new Interrupted());
    hooks.signal?.addEventListener("abort", onAbort, { once: true });

    const join = (r: ResultMsg) => {
      waiting.set(r.sums.window_first, r);
      let advanced = false;
      for (let next = waiting.get(prefix); next; next = waiting.get(prefix)) {
        waiting.delete(prefix);
        joined = addShare(joined, next.sums);
        if (next.byte_stats) byteStats = byteStats ? byteStats.map((s, i) => addStats(s, next.byte_stats![i])) : next.byte_stats;
        if (next.positions !== undefined) {
          if (next.positions === null) positionsNull = true;
          else positions.push(next.positions);
        }
        prefix = next.sums.windows_done;
        advanced = true;
      }
      if (advanced && hooks.onProgress && total !== null) {
        hooks.onProgress({
          seq: r.seq, type: "progress", request_id: req.request_id, windows_total: total, tokens_total: r.tokens,
          seconds: (performance.now() - started) / 1000, sums: joined!, workers: members.map(reportOf),
        });
      }
    };

    const pump = () => {
      if (settled) return;
      if (hooks.signal?.aborted) return;
      for (const m of live) {
        if (inFlight.has(m)) continue;
        const share = take();
        if (!share) break;
        inFlight.set(m, share);
        void send(m, share);
      }
      if (inFlight.size === 0) {
        if (live.length === 0) return finish(allLost(members));
        if (total !== null && prefix >= total) {
          if (!joined) joined = emptyJoined(last!, req);
          finish(null);
        }
      }
    };

    const send = async (m: Member, share: Share) => {
      const t0 = performance.now();
      try {
        const r = await m.worker.evaluate({
          request_id: req.request_id, dataset: req.dataset, settings: req.settings, batch_size: B,
          progress_every: 1, resume: null, share, ...(req.positions ? { positions: req.positions } : {}),
        });
        inFlight.delete(m);
        if (settled) return;
        if (total !== null && r.windows !== total) {
          return finish(new UserError(`worker ${m.label} cut the text into ${r.windows} windows where another cut ${total}: do all workers read the same file and run the same kotara?`, 1));
        }
        total = r.windows;
        last = r;
        peak = Math.max(peak, r.peak_memory_bytes);
        tokenizeSeconds = Math.max(tokenizeSeconds, r.tokenize_seconds);
        m.seconds += (performance.now() - t0) / 1000;
        if (r.sums.window_first < total) {
          m.windows += r.sums.windows_done - r.sums.window_first;
          join(r);
        }
        if (start > total) return finish(new UserError(`the checkpoint holds ${start} windows, but the text has ${total}`, 2));
      } catch (e) {
        inFlight.delete(m);
        if (settled) return;
        if (e instanceof WorkerRequestError) return finish(e);
        // a lost worker (it died, hung, or its connection went): its share goes to the others
        m.lost = (e instanceof Error ? e.message : String(e)).split("\n")[0];
        live = live.filter((x) => x !== m);
        if (share.first < (total ?? Infinity)) requeued.unshift(share);
        hooks.onStatus?.(`worker ${m.label} was lost (${m.lost}); ${live.length ? `windows ${share.first}..${share.stop - 1} go to the ${live.length} others` : "no worker is left"}`);
        void m.worker.close();
      }
      pump();
    };

    pump();
  });
}

function allLost(members: Member[]): WorkerDied {
  return new WorkerDied(`every worker of the pool was lost:\n${members.map((m) => `  ${m.label}: ${m.lost}`).join("\n")}`, []);
}

/** A text with no window past the resume point: the resume's sums as they are. */
function emptyJoined(last: ResultMsg, req: ShareRequest): Sums {
  return req.resume ?? { ...last.sums, window_first: 0, windows_done: 0 };
}

function addStats(a: ByteStats, b: ByteStats): ByteStats {
  return {
    pruned: a.pruned + b.pruned, pruned_positions: a.pruned_positions + b.pruned_positions,
    max_pruned_share: Math.max(a.max_pruned_share, b.max_pruned_share), max_hypotheses: Math.max(a.max_hypotheses, b.max_hypotheses),
  };
}

/** The token view's positions of the shares that scored some of it, in window (so stream) order. */
function joinPositions(parts: Positions[]): Positions | null {
  if (parts.length === 0) return null;
  const [head] = parts;
  const cat = <T>(pick: (p: Positions) => T[]) => parts.flatMap(pick);
  return {
    settings: head.settings, bytes: head.bytes, start: cat((p) => p.start), end: cat((p) => p.end),
    model_nll: head.model_nll.map((_, m) => cat((p) => p.model_nll[m])),
    fusion_nll: head.fusion_nll.map((_, k) => cat((p) => p.fusion_nll[k])),
    weights: head.weights.map((row, k) => row.map((_, m) => cat((p) => p.weights[k][m]))),
  };
}
