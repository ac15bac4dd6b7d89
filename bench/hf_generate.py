"""The reference side of the bench's generation figure: each model's own Hugging Face
`model.generate` (greedy, KV cache), timed, written plainly and independently of
python/kotara_worker (it imports none of it).

    python bench/hf_generate.py --models A B --prompts PROMPTS.json --new N --batches 1 8 [--rounds R]
    python bench/hf_generate.py --models A B --prompts PROMPTS.json --new N --batches 1 8 --serve

- PROMPTS.json: a JSON list of strings; batch b decodes the first b of them
- each prompt is tokenized without special tokens and starts from the BOS token (EOS
  where there is none), as Kotara's generation does (generate.py: every row starts from
  the start token), so both sides decode the same ids
- batches of several prompts are left-padded (pad = EOS, an attention mask hides it)
- model.generate(..., do_sample=False, use_cache=True, max_new_tokens=N, min_new_tokens=N):
  min_new_tokens masks EOS, so every row makes exactly N new tokens
- per call: the wall time of generate(), and the time at which each token was chosen
  (a StoppingCriteria that never stops records it: generate calls it right after each
  token is picked), so time to first token = the first of those, and the decode steps
  after it = (wall − first) / (N − 1); the same in the process's CPU time
  (time.process_time: all threads), which a machine shared with other jobs disturbs less
- a warm-up call per (model, batch) first, not timed; then R timed rounds, in the order
  model A b=1, model B b=1, A b=8, B b=8, ... per round

Prints one JSON object on stdout. With --serve (what `npm run bench` uses, so that its
rounds can alternate Kotara's runs and these without reloading the models): after the
warm-up it prints {"ready": ...}, then for each line "B" read on stdin runs every model
once at batch B and prints {"batch": B, "runs": [one per model]}; it exits at EOF.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def log(msg: str) -> None:
    print(f"[hf_generate] {msg}", file=sys.stderr, flush=True)


class StepClock:
    """A StoppingCriteria that never stops: it records when each token was chosen (wall
    clock, and the process's CPU time: every thread's, so a busy machine's waits do not
    count)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def batch_ids(tokenizer, prompts: list[str], start_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[start_id, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = 1
    return ids, mask


@torch.inference_mode()
def timed_generate(model, ids: torch.Tensor, mask: torch.Tensor, n: int, pad_id: int) -> dict:
    from transformers import StoppingCriteriaList
    clock = StepClock()
    c0, t0 = time.process_time(), time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, use_cache=True, max_new_tokens=n,
                         min_new_tokens=n, pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([clock]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    new = out[:, ids.shape[1]:]
    first = clock.times[0] - t0 if clock.times else wall
    first_cpu = clock.cpu[0] - c0 if clock.cpu else cpu
    return {"seconds": wall, "first_token_seconds": first,
            "step_seconds": (wall - first) / (n - 1) if n > 1 else 0.0,
            "cpu_seconds": cpu, "first_token_cpu_seconds": first_cpu,
            "step_cpu_seconds": (cpu - first_cpu) / (n - 1) if n > 1 else 0.0,
            "new_tokens": [int(x) for x in (new != pad_id).sum(1)] if new.shape[1] else [0] * ids.shape[0],
            "steps": int(new.shape[1]), "tokens_b0": new[0].tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--new", type=int, required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--serve", action="store_true", help="answer batch sizes read from stdin (see above)")
    a = p.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    logging.disable_progress_bar()
    prompts = json.load(open(a.prompts, encoding="utf-8"))
    if max(a.batches) > len(prompts):
        raise SystemExit(f"--batches up to {max(a.batches)} needs that many prompts, got {len(prompts)}")
    tokenizer = AutoTokenizer.from_pretrained(a.models[0])
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start_id
    t = time.perf_counter()
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in a.models]
    log(f"loaded {len(models)} models in {time.perf_counter() - t:.1f}s; torch threads {torch.get_num_threads()}")
    inputs = {b: batch_ids(tokenizer, prompts[:b], start_id, pad_id) for b in a.batches}
    for b in a.batches:                                     # warm-up, not timed
        for model in models:
            timed_generate(model, *inputs[b], min(a.new, 4), pad_id)
    info = {"models": a.models, "new": a.new, "batches": a.batches,
            "prompt_tokens": {str(b): [int(x) for x in inputs[b][1].sum(1)] for b in a.batches},
            "threads": torch.get_num_threads()}
    if a.serve:
        print(json.dumps({"ready": True, **info}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            b = int(line)
            res = [timed_generate(model, *inputs[b], a.new, pad_id) for model in models]
            for m, x in enumerate(res):
                log(f"model {m} batch {b}: {x['seconds']:.2f}s, first token {x['first_token_seconds'] * 1000:.0f} ms, "
                    f"{x['step_seconds'] * 1000:.1f} ms/step")
            print(json.dumps({"batch": b, "runs": res}), flush=True)
        return
    runs: dict[str, list[list[dict]]] = {str(b): [[] for _ in models] for b in a.batches}
    for r in range(a.rounds):
        for b in a.batches:
            for m, model in enumerate(models):
                res = timed_generate(model, *inputs[b], a.new, pad_id)
                runs[str(b)][m].append(res)
                log(f"round {r + 1}/{a.rounds} model {m} batch {b}: {res['seconds']:.2f}s, first token "
                    f"{res['first_token_seconds'] * 1000:.0f} ms, {res['step_seconds'] * 1000:.1f} ms/step")
    print(json.dumps({**info, "rounds": a.rounds, "runs": runs}))


if __name__ == "__main__":
    main()
