"""The naive reference the benchmark compares Kotara with: the straightforward loop,
written plainly and independently of python/kotara_worker (it imports none of it).

    python bench/naive.py --models A B --text FILE --max-length L --stride S --settings SETTINGS.json --out OUT.json

- the text is read as UTF-8 and tokenized as one stream: tokenizer(text)
- windows: the Hugging Face "perplexity of fixed-length models" loop (SPEC §2)
- each base model in its own pass: for each window, model(ids) with full logits,
  float32 log_softmax, NLL of the scored targets
- then one pass per setting: for each window, run BOTH models on the window with
  full logits (batch 1), fuse in float32 with the SPEC §3 formula written plainly,
  accumulate the NLL of the scored targets

Every pass is timed on its own; OUT.json has the sums and the times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def log(msg: str) -> None:
    print(f"[naive] {msg}", file=sys.stderr, flush=True)


def hf_windows(n: int, max_length: int, stride: int):
    """(begin, end, trg_len) as in the Hugging Face guide; trg_len counts the window's
    last tokens that are targets (position 0 of a window is never a target)."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = min(end - prev_end, end - begin - 1)
        if trg_len > 0:
            out.append((begin, end, trg_len))
        prev_end = end
        if end == n:
            break
    return out


def fuse(zs: list[torch.Tensor], setting: dict, vocab: int):
    """SPEC §3, written plainly. zs: per model [L, V_m] float32. Returns fused logits [L, vocab]
    and the weights α [L, N]."""
    n = len(zs)
    temps = setting["temperatures"]
    ys = [z[:, :vocab] / t for z, t in zip(zs, temps)]                 # tempered logits
    L = ys[0].shape[0]
    kind = setting["type"]
    if kind == "average":
        w = torch.full((L, n), 1.0 / n)
        f = sum(w[:, m:m + 1] * ys[m] for m in range(n))
    elif kind == "poe":
        betas = setting["betas"] or [1.0 / n] * n
        w = torch.tensor(betas, dtype=torch.float32).expand(L, n)
        f = sum(betas[m] * torch.log_softmax(ys[m], -1) for m in range(n))
    elif kind in ("entropy", "gap"):
        raw = []
        for y in ys:
            p = torch.softmax(y, -1)
            if kind == "entropy":
                h = -(p * torch.log_softmax(y, -1)).sum(-1)                # H(p_m)
                raw.append(1.0 / (h + 1e-9))
            else:
                top = torch.topk(p, 2, dim=-1).values
                raw.append(top[:, 0] - top[:, 1])                         # p(top-1) − p(top-2)
        raw = torch.stack(raw, 1)                                        # [L, N]
        total = raw.sum(1, keepdim=True)
        w = torch.where(total > 0, raw / total, torch.full_like(raw, 1.0 / n))
        f = sum(w[:, m:m + 1] * ys[m] for m in range(n))
    elif kind == "mix":
        ws = torch.tensor(setting["weights"], dtype=torch.float32)
        w = (ws / ws.sum()).expand(L, n)
        # f = log Σ w_m p_m: already normalized, so log_softmax(f) = f
        f = torch.logsumexp(torch.stack([torch.log(w[:, m:m + 1]) + torch.log_softmax(ys[m], -1) for m in range(n)]), 0)
    else:
        raise ValueError(f"unknown strategy {kind}")
    return f, w


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--max-length", type=int, required=True)
    p.add_argument("--stride", type=int, required=True)
    p.add_argument("--settings", required=True, help="JSON list of settings (id, type, temperatures, betas)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(a.models[0])
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in a.models]
    load_seconds = time.perf_counter() - t0
    vocab = len(tokenizer)
    with open(a.settings) as f:
        settings = json.load(f)

    t0 = time.perf_counter()
    with open(a.text, encoding="utf-8", newline="") as f:
        text = f.read()
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    tokenize_seconds = time.perf_counter() - t0
    windows = hf_windows(ids.numel(), a.max_length, a.stride)
    scored = sum(t for _, _, t in windows)
    log(f"{ids.numel()} tokens, {len(windows)} windows, {scored} scored; "
        f"{len(models)} base passes + {len(settings)} setting passes")

    def logits_of(model, begin, end):
        return model(ids[begin:end].unsqueeze(0)).logits[0].float()       # [L, V] full window

    base = []
    for i, model in enumerate(models):
        t = time.perf_counter()
        nll = 0.0
        for begin, end, trg in windows:
            z = logits_of(model, begin, end)
            logp = torch.log_softmax(z[:-1], -1)                            # predicts tokens begin+1 .. end-1
            nll += float(-logp.gather(1, ids[begin + 1:end, None])[-trg:].sum())
        base.append({"model": a.models[i], "nll_sum": nll, "seconds": time.perf_counter() - t})
        log(f"base {i}: {base[-1]['seconds']:.2f}s")

    fusions = []
    for k, s in enumerate(settings):
        t = time.perf_counter()
        nll, wsum = 0.0, [0.0] * len(models)
        for begin, end, trg in windows:
            zs = [logits_of(model, begin, end) for model in models]
            f, w = fuse(zs, s, vocab)
            logp = torch.log_softmax(f[:-1], -1)
            nll += float(-logp.gather(1, ids[begin + 1:end, None])[-trg:].sum())
            for m, x in enumerate(w[:-1][-trg:].double().sum(0).tolist()):
                wsum[m] += x
        fusions.append({"id": s["id"], "type": s["type"], "temperatures": s["temperatures"], "betas": s["betas"],
                        "weights": s.get("weights"), "nll_sum": nll, "weights_sum": wsum, "seconds": time.perf_counter() - t})
        if k % 10 == 0 or k == len(settings) - 1:
            log(f"setting {k + 1}/{len(settings)} {s['id']}: {fusions[-1]['seconds']:.2f}s")

    out = {"tokens": ids.numel(), "windows": len(windows), "scored_tokens": scored, "vocab": vocab,
           "max_length": a.max_length, "stride": a.stride, "load_seconds": load_seconds,
           "tokenize_seconds": tokenize_seconds, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "base": base, "fusions": fusions}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
