"""Takes the worker's per-request peak memory apart: which piece grows with the text?

    .venv/bin/python bench/memory_probe.py                      # the bench models, 1536 tokens ×1, ×4, ×16
    .venv/bin/python bench/memory_probe.py --tokens 1536 --multiples 1 4 16 --rounds 3 --out results/memory-probe.json
    npm run bench -- --memory-probe                             # the same, as the bench's last step

In ONE process, like the worker, and with the worker's own code: kotara_worker.server.Server
behind an in-memory channel (no ZMQ; the same load and evaluate handlers, the same
reset_peak_memory / peak_memory_bytes around each request), on the bench's models
(bench/make_models.py, cached in .kotara/bench-models/) and WikiText-2 prefixes of
N, 4N and 16N tokens (N = the bench's 2× memory text, 1536 tokens):

1. tokenizing, piece by piece (after the models are loaded, as in the worker):
   reading the file, tokenizer(text) (the Rust encoding and the Python list of ints it
   returns), torch.tensor(list) (int64, 8 B a token), the windows list; each piece's
   transient peak above the resident size before it (VmHWM after malloc_trim and a
   clear_refs reset, the worker's own reset) and what it leaves resident; and, with
   tracemalloc in a separate pass, the Python objects' bytes;
2. whole evaluate requests, interleaved, ROUNDS times each, with plan_windows wrapped so
   that text length and the number of batches vary separately:
     N            all its windows (K)             the reference
     4N           all its windows (M)             the bench's 2× → 8× comparison
     16N          only the first K windows        more text, the same batches
     N            its K windows repeated to M     the same text, more batches
     4N; 16N, K   malloc_trim between tokenizing and the pass (what tokenizing freed goes back)
   (at L512/S256, batch 2: K = 5 and M = 23 windows of 512, batches 2+…+2+1 in each);
   and the resident high-water mark after every batch (progress messages).

Prints a summary on stderr and one JSON object on stdout (the bench reads it).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402

from kotara_worker import server as server_mod  # noqa: E402
from kotara_worker.fusion import STRATEGIES  # noqa: E402

MiB = 2 ** 20


def log(msg: str) -> None:
    print(f"[memory_probe] {msg}", file=sys.stderr, flush=True)


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def measured(fn):
    """fn() after the worker's per-request reset: (result, transient peak above the resident
    size before it, resident size it leaves, resident size it leaves after malloc_trim)."""
    server_mod.reset_peak_memory()                 # malloc_trim(0), then VmHWM := VmRSS
    before = proc_status()["VmRSS"]
    result = fn()
    after = proc_status()
    t0 = time.perf_counter()
    server_mod.release_memory()
    measured.trim_seconds = time.perf_counter() - t0
    trimmed = proc_status()["VmRSS"]
    return result, after["VmHWM"] - before, after["VmRSS"] - before, trimmed - before


class Channel:
    """In-memory stand-in for protocol.Channel: keeps what the server sends, receives nothing."""

    def __init__(self):
        self.sent: list[dict] = []
        self.hwm_by_batch: list[int] = []

    def send(self, message: dict) -> None:
        if message["type"] == "progress":
            self.hwm_by_batch.append(proc_status()["VmHWM"])
        else:
            self.sent.append(message)

    def recv(self, timeout_ms: int):
        return None


# ---------------------------------------------------------------------------- texts and the server

def cut_texts(models_dir: Path, source: str, sizes: list[int], work: Path) -> dict[int, dict]:
    """make_models.py `text` in a subprocess (its whole-source tokenizing stays out of this process)."""
    out = {}
    for n in sizes:
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "make_models.py"), "text", "--tokenizer",
                            str(models_dir / "tokenizer"), "--source", source, "--tokens", str(n),
                            "--out", str(work / f"probe-{n}.txt")], check=True, capture_output=True, text=True)
        out[n] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def open_server(models: list[str], max_length: int) -> tuple[server_mod.Server, Channel]:
    channel = Channel()
    srv = server_mod.Server(channel, log)
    srv.load({"type": "load", "tokenizer": None, "max_length": max_length, "bos_per_window": False,
              "models": [{"ref": m, "revision": None, "trust_remote_code": False, "dtype": "float32", "device": "cpu"}
                         for m in models]})
    return srv, channel


# ---------------------------------------------------------------------------- 1. tokenizing, piece by piece

def tokenize_pieces(srv: server_mod.Server, path: str, max_length: int, stride: int) -> dict:
    tok = srv.tokenizer
    text, t_read, r_read, _ = measured(lambda: open(path, encoding="utf-8", newline="").read())

    def call():
        return tok(text, return_attention_mask=False)["input_ids"]
    ids, t_tok, r_tok, k_tok = measured(call)
    ids_tensor, t_ten, r_ten, _ = measured(lambda: torch.tensor(ids, dtype=torch.long))
    n = len(ids)
    del ids
    whole, t_whole, r_whole, k_whole = measured(lambda: srv.tokenize(path))   # the worker's own tokenize()
    trim_seconds = measured.trim_seconds
    assert whole.numel() == n
    windows, _, _, _ = measured(lambda: server_mod.plan_windows(n, max_length, stride))
    return {
        "tokens": n, "text_bytes": len(text.encode()),
        "read": {"transient": t_read, "resident": r_read},
        "tokenizer_call": {"transient": t_tok, "resident": r_tok, "resident_after_trim": k_tok},
        "tensor": {"transient": t_ten, "resident": r_ten, "nbytes": ids_tensor.nbytes},
        "tokenize_whole": {"transient": t_whole, "resident": r_whole, "resident_after_trim": k_whole,
                           "trim_seconds": trim_seconds},
        "windows": len(windows),
    }


def traced(fn):
    """fn() under tracemalloc: (result, Python peak above before, Python bytes it leaves)."""
    gc.collect()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    result = fn()
    current, peak = tracemalloc.get_traced_memory()
    return result, peak - before, current - before


def tokenize_traced(srv: server_mod.Server, path: str, max_length: int, stride: int) -> dict:
    """The Python objects' bytes (tracemalloc sees PyMem/PyObject allocations: not the
    tokenizer's Rust heap, not torch's storage)."""
    tok = srv.tokenizer
    tracemalloc.start()
    try:
        text, p_read, c_read = traced(lambda: open(path, encoding="utf-8", newline="").read())
        ids, p_tok, c_tok = traced(lambda: tok(text, return_attention_mask=False)["input_ids"])
        n = len(ids)
        _, p_ten, c_ten = traced(lambda: torch.tensor(ids, dtype=torch.long))
        del ids
        windows, p_win, c_win = traced(lambda: server_mod.plan_windows(n, max_length, stride))
        _, p_whole, c_whole = traced(lambda: srv.tokenize(path))
    finally:
        tracemalloc.stop()
    return {
        "read": {"peak": p_read, "kept": c_read},
        "tokenizer_call": {"peak": p_tok, "kept_list": c_tok, "per_token": c_tok / n},
        "tensor": {"peak": p_ten, "kept": c_ten},
        "windows": {"peak": p_win, "kept": c_win, "count": len(windows)},
        "tokenize_whole": {"peak": p_whole, "kept": c_whole},
    }


# ---------------------------------------------------------------------------- 2. whole requests

def request(srv: server_mod.Server, channel: Channel, path: str, shape, settings: list[dict], o, trim: bool = False) -> dict:
    """One evaluate request through Server.evaluate, its windows reshaped by `shape`; with
    `trim`, malloc_trim runs between tokenizing and the pass (plan_windows is called right
    after tokenize() in Server.evaluate), handing back what tokenizing freed."""
    plan = server_mod.plan_windows
    channel.sent.clear()
    channel.hwm_by_batch = []

    def planned(*a, **k):
        if trim:
            server_mod.release_memory()
        return shape(plan(*a, **k))
    server_mod.plan_windows = planned
    try:
        t0 = time.perf_counter()
        srv.evaluate({"type": "evaluate", "request_id": f"probe-{time.monotonic_ns()}",
                      "dataset": {"path": path, "max_length": o.max_length, "stride": o.stride, "bos_per_window": False},
                      "settings": settings, "batch_size": o.batch_size, "progress_every": 1, "resume": None})
        wall = time.perf_counter() - t0
    finally:
        server_mod.plan_windows = plan
    result = next(m for m in channel.sent if m["type"] == "result")
    return {"peak": result["peak_memory_bytes"], "windows": result["windows"], "tokens": result["tokens"],
            "seconds": wall, "hwm_by_batch": list(channel.hwm_by_batch)}


def passes(srv, channel, texts: dict[int, dict], n: int, settings: list[dict], o) -> dict:
    small, big = texts[n], texts[4 * n]
    k = len(server_mod.plan_windows(small["tokens"], o.max_length, o.stride))
    m = len(server_mod.plan_windows(big["tokens"], o.max_length, o.stride))
    first_k = lambda ws: ws[:k]  # noqa: E731
    tiled_m = lambda ws: (ws * math.ceil(m / len(ws)))[:m]  # noqa: E731
    same = lambda ws: ws  # noqa: E731
    variants = [  # name, text, windows, malloc_trim after tokenizing
        ("1x", small["path"], same, False),
        ("4x", big["path"], same, False),
        ("4x_trim", big["path"], same, True),
        ("1x_tiled_m", small["path"], tiled_m, False),
    ]
    if 16 * n in texts:
        variants += [("16x_first_k", texts[16 * n]["path"], first_k, False),
                     ("16x_first_k_trim", texts[16 * n]["path"], first_k, True)]
    else:
        variants += [("4x_first_k", big["path"], first_k, False)]
    if o.variants:
        unknown = set(o.variants) - {v[0] for v in variants}
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))}; known: {', '.join(v[0] for v in variants)}")
        variants = [v for v in variants if v[0] in o.variants or v[0] == "1x"]
    log(f"pass: warm-up ({k} windows)")
    request(srv, channel, small["path"], lambda ws: ws, settings, o)
    runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in variants}
    for rnd in range(1, o.rounds + 1):
        for name, path, shape, trim in variants:
            r = request(srv, channel, path, shape, settings, o, trim)
            runs[name].append(r)
            log(f"pass round {rnd}/{o.rounds} {name}: {r['windows']} windows, peak {r['peak'] / MiB:.0f} MiB, {r['seconds']:.1f}s")
    return {"k": k, "m": m, "runs": runs}


# ---------------------------------------------------------------------------- summary

def summarize(pieces: dict, traces: dict, pass_result: dict | None, n: int) -> tuple[dict, list[dict]]:
    rows = []
    mults = sorted(pieces)
    lo, hi = pieces[mults[0]], pieces[mults[-1]]
    extra = hi["tokens"] - lo["tokens"]
    per = lambda key, field: (hi[key][field] - lo[key][field]) / extra  # noqa: E731
    sizes = " / ".join(str(pieces[x]["tokens"]) for x in mults)
    rows.append({"figure": f"tokenize() transient peak, {sizes} tok",
                 "value": " / ".join(f"{pieces[x]['tokenize_whole']['transient'] / MiB:.2f}" for x in mults) +
                 f" MiB ({per('tokenize_whole', 'transient'):.0f} B/token)"})
    rows.append({"figure": "  of it, tokenizer(text) call (Rust encoding + list)",
                 "value": " / ".join(f"{pieces[x]['tokenizer_call']['transient'] / MiB:.2f}" for x in mults) +
                 f" MiB ({per('tokenizer_call', 'transient'):.0f} B/token)"})
    rows.append({"figure": "  Python list of ids (tracemalloc), int64 tensor",
                 "value": f"{traces[mults[-1]]['tokenizer_call']['per_token']:.1f} B/token, "
                          f"{hi['tensor']['nbytes'] / hi['tokens']:.0f} B/token"})
    rows.append({"figure": "tokenize() leaves resident: freed but kept by malloc / after malloc_trim",
                 "value": " / ".join(f"{pieces[x]['tokenize_whole']['resident'] / MiB:.2f}" for x in mults) + " MiB; " +
                 " / ".join(f"{pieces[x]['tokenize_whole']['resident_after_trim'] / MiB:.2f}" for x in mults) + " MiB"})
    rows.append({"figure": "  malloc_trim(0) right after tokenize()",
                 "value": " / ".join(f"{pieces[x]['tokenize_whole']['trim_seconds'] * 1000:.2f}" for x in mults) + " ms"})
    figures = {"tokenize_transient_bytes_per_token": per("tokenize_whole", "transient"),
               "tokenizer_call_transient_bytes_per_token": per("tokenizer_call", "transient")}
    if pass_result:
        runs, k, m = pass_result["runs"], pass_result["k"], pass_result["m"]
        med = {name: statistics.median(r["peak"] for r in rs) for name, rs in runs.items()}
        spread = {name: [r["peak"] for r in rs] for name, rs in runs.items()}
        d = lambda name: med[name] - med["1x"]  # noqa: E731
        mibs = lambda name: " / ".join(f"{p / MiB:.0f}" for p in spread[name])  # noqa: E731
        tokens = {name: rs[0]["tokens"] for name, rs in runs.items()}
        rows.append({"figure": f"request peak, 1× text ({tokens['1x']} tok, {k} windows)", "value": f"{mibs('1x')} MiB"})
        for name, what in [("4x", f"4× text, all {m} windows (as the bench)"),
                           ("4x_trim", f"4× text, all {m} windows, trim after tokenizing"),
                           ("4x_first_k", f"4× text, first {k} windows (more text only)"),
                           ("16x_first_k", f"16× text, first {k} windows (more text only)"),
                           ("16x_first_k_trim", f"16× text, first {k} windows, trim after tokenizing"),
                           ("1x_tiled_m", f"1× text, {k} windows repeated to {m} (more batches only)")]:
            if name not in med:
                continue
            extra = tokens[name] - tokens["1x"]
            per_token = f", {d(name) / extra:.0f} B/token" if extra else ""
            rows.append({"figure": f"  vs 1×: {what}",
                         "value": f"{'+' if d(name) >= 0 else '−'}{abs(d(name)) / MiB:.1f} MiB ({mibs(name)}{per_token})"})
        figures.update({f"pass_peak_median_{name}": v for name, v in med.items()})
        figures.update({f"pass_peak_delta_vs_1x_{name}": d(name) for name in med if name != "1x"})
        figures["ids_bytes_4x_minus_1x"] = 8 * (pieces[4]["tokens"] - pieces[1]["tokens"])
    return figures, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs=2, default=None, help="two model dirs (default: the bench's small float32 pair)")
    p.add_argument("--models-dir", default=str(ROOT / ".kotara" / "bench-models"))
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "wikitext-2-raw-test.txt"))
    p.add_argument("--tokens", type=int, default=1536, help="N: the smallest text (the bench's 2× memory text)")
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settings", default=None, help="a JSON list of wire settings (default: every worker strategy at T = 1)")
    p.add_argument("--no-pass", action="store_true", help="only the tokenizing pieces (after the one warm-up request; under a minute)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="only these requests (1x always runs): 4x 4x_trim 1x_tiled_m 16x_first_k 16x_first_k_trim")
    p.add_argument("--work", default=None, help="where the texts are cut (default: a temp dir)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    o = p.parse_args()
    if 4 not in o.multiples or 1 not in o.multiples:
        p.error("--multiples must include 1 and 4")
    models_dir = Path(o.models_dir)
    models = o.models or [str(models_dir / f"small-float32-seed{s}") for s in (1, 2)]
    for m in models:
        if not (Path(m) / "config.json").exists():
            raise SystemExit(f"no model at {m}: build the bench models first (npm run bench -- --quick builds the tiny ones; "
                             f".venv/bin/python bench/make_models.py models --out {models_dir} --source {o.source} the small ones)")
    if o.settings:
        settings = json.loads(Path(o.settings).read_text())
    else:
        settings = [{"id": t, "type": t, "temperatures": [1.0, 1.0], "betas": None} for t in STRATEGIES]
    import shutil
    import tempfile
    work = Path(o.work or tempfile.mkdtemp(prefix="kotara-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(o, models, settings, work)
    finally:
        if not o.work:
            shutil.rmtree(work, ignore_errors=True)


def run(o, models: list[str], settings: list[dict], work: Path) -> None:
    sizes = [m * o.tokens for m in sorted(set(o.multiples))]
    texts = cut_texts(Path(models[0]).parent, o.source, sizes, work)
    log(f"texts: {', '.join(str(t['tokens']) for t in texts.values())} tokens; models {', '.join(Path(m).name for m in models)}")
    srv, channel = open_server(models, o.max_length)
    log(f"loaded; resident {proc_status()['VmRSS'] / MiB:.0f} MiB; torch threads {torch.get_num_threads()}")
    # a warm-up request first, as in the worker: tokenizing is then measured in the heap a pass leaves
    # (in a fresh process without one, glibc hands back part of what tokenizing frees by itself)
    request(srv, channel, texts[o.tokens]["path"], lambda ws: ws, settings, o)

    pieces, traces = {}, {}
    for _ in range(3):   # the transient figures: the median of three; the first round also warms the tokenizer's caches
        for mult, size in zip(sorted(set(o.multiples)), sizes):
            r = tokenize_pieces(srv, texts[size]["path"], o.max_length, o.stride)
            pieces.setdefault(mult, []).append(r)
    pieces = {mult: _median_dict(rs) for mult, rs in pieces.items()}
    for mult, size in zip(sorted(set(o.multiples)), sizes):
        traces[mult] = tokenize_traced(srv, texts[size]["path"], o.max_length, o.stride)
    for mult in sorted(pieces):
        x, t = pieces[mult], traces[mult]
        log(f"tokenize {x['tokens']:>6} tok ({x['text_bytes']} B): whole tokenize() transient {x['tokenize_whole']['transient'] / MiB:6.2f} MiB, "
            f"tokenizer call {x['tokenizer_call']['transient'] / MiB:6.2f} MiB, tensor {x['tensor']['nbytes'] / MiB:.3f} MiB, "
            f"left resident {x['tokenize_whole']['resident'] / MiB:.2f} MiB, after trim {x['tokenize_whole']['resident_after_trim'] / MiB:.2f} MiB; python list {t['tokenizer_call']['kept_list'] / MiB:.3f} MiB "
            f"({t['tokenizer_call']['per_token']:.1f} B/tok), windows list {t['windows']['kept']} B")

    pass_result = None if o.no_pass else passes(srv, channel, texts, o.tokens, settings, o)
    figures, rows = summarize(pieces, traces, pass_result, o.tokens)
    for r in rows:
        log(f"{r['figure']}: {r['value']}")
    out = {"tokens": o.tokens, "multiples": sorted(set(o.multiples)), "max_length": o.max_length, "stride": o.stride,
           "batch_size": o.batch_size, "settings": [s["id"] for s in settings], "torch_threads": torch.get_num_threads(),
           "texts": {str(k): {kk: v for kk, v in t.items() if kk != "path"} for k, t in texts.items()},
           "tokenize": {str(k): v for k, v in pieces.items()}, "tokenize_traced": {str(k): v for k, v in traces.items()},
           "passes": pass_result, "figures": figures, "table": rows}
    if o.out:
        Path(o.out).parent.mkdir(parents=True, exist_ok=True)
        Path(o.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def _median_dict(ds: list[dict]) -> dict:
    """Field-wise median of dicts of numbers (nested)."""
    first = ds[0]
    if isinstance(first, dict):
        return {k: _median_dict([d[k] for d in ds]) for k in first}
    return statistics.median(ds) if isinstance(first, (int, float)) else first


if __name__ == "__main__":
    main()
