#!/usr/bin/env python3
"""Train Kotara's demo models: small causal LMs, on the CPU, offline, deterministic.

    npm run train-demo                      # = .venv/bin/python scripts/train_demo.py
    .venv/bin/python scripts/train_demo.py --only twin-b --seed 7 --steps 100

The text comes from the running interpreter (scripts/demo_text.py): the language
reference's help topics (``pydoc_data``, domain "docs") and the standard library's
source (domain "code"). Held-out topics / files are never trained on.

What it writes (under --out, default models/demo/):

  tokenizer/        one byte-level BPE tokenizer (``tokenizers``), trained on the
                    training parts of BOTH domains; every model uses it, and a copy
                    of its files sits in every model directory. An existing
                    tokenizer/ is reused (so retraining one model keeps the shared
                    vocabulary) unless --retrain-tokenizer is given.
  twin-a/, twin-b/  GPT-2 on docs, seeds 1 and 2         (twins)
  sibling/          Llama on docs, seed 3                 (another architecture)
  far/              GPT-2 on code, seed 4                 (another domain)
  README.md         the model card: sizes, data, steps, seeds, held-out perplexities

Each model is saved with ``save_pretrained`` (safetensors, float16 weights, tied
embeddings) plus ``training.json`` (what produced it). Same Python version, same
flags, same torch -> the same weights: seeds are fixed, batches are drawn from a
seeded generator, and torch runs on a fixed number of threads (--threads).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import demo_text  # noqa: E402  (scripts/demo_text.py)

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    context: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    dropout: float
    tokenizer_code_chars: int      # code characters the tokenizer is trained on
    train_chars: int | None        # cap on a model's training text (None: all)
    eval_stride: int


PRESETS = {
    # The committed models (~1.1M parameters, ~2.2 MB each in float16).
    "demo": Preset(vocab_size=2048, d_model=128, n_layer=4, n_head=4, context=256,
                   batch_size=8, steps=480, lr=3e-3, warmup=20, dropout=0.0,
                   tokenizer_code_chars=600_000, train_chars=None, eval_stride=128),
    # For tests: seconds, not minutes.
    "tiny": Preset(vocab_size=512, d_model=32, n_layer=1, n_head=2, context=64,
                   batch_size=8, steps=60, lr=5e-3, warmup=5, dropout=0.0,
                   tokenizer_code_chars=60_000, train_chars=150_000, eval_stride=32),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str      # gpt2 | llama
    domain: str    # docs | code
    seed: int
    role: str


MODELS = [
    ModelSpec("twin-a", "gpt2", "docs", 1, "twin of twin-b: same architecture and data, another seed"),
    ModelSpec("twin-b", "gpt2", "docs", 2, "twin of twin-a: same architecture and data, another seed"),
    ModelSpec("sibling", "llama", "docs", 3, "sibling: another architecture (Llama), same data as the twins"),
    ModelSpec("far", "gpt2", "code", 4, "far: twin-a's architecture, trained on the other domain (code)"),
]
MODEL_NAMES = [m.name for m in MODELS]

# How the committed models were made (the model card quotes it).
DEMO_COMMAND = """\
npm run train-demo          # all four models, one after the other, 1 torch thread each

# or the same models two at a time on 2 cores (each model is independent of the others):
.venv/bin/python scripts/train_demo.py --tokenizer-only     # add --retrain-tokenizer to start afresh
nice -n 10 .venv/bin/python scripts/train_demo.py --only twin-a --only twin-b --no-eval &
nice -n 10 .venv/bin/python scripts/train_demo.py --only sibling --only far --no-eval; wait
.venv/bin/python scripts/train_demo.py --eval-only          # held-out perplexities + this card"""


def log(msg: str) -> None:
    print(f"[train-demo] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tokenizer

def train_tokenizer(out_dir: Path, domains: dict[str, demo_text.Domain], preset: Preset):
    """Byte-level BPE on the training parts of both domains; saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = domains["docs"].train_text
    code = domains["code"].train_text[: preset.tokenizer_code_chars]
    if preset.train_chars is not None:
        docs = docs[: preset.train_chars]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=preset.vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunk = 20_000

    def pieces():
        for text in (docs, code):
            for i in range(0, len(text), chunk):
                yield text[i:i + chunk]

    tok.train_from_iterator(pieces(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS,
                                 unk_token=EOS)
    save_tokenizer(hf, out_dir)
    return hf


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """save_pretrained, with a tokenizer_config.json that transformers 4.x reads too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def token_stream(tokenizer, items: list[tuple[str, str]], max_chars: int | None = None):
    """Training tokens: each item tokenized on its own, EOS after each, concatenated."""
    import torch
    ids: list[int] = []
    total = 0
    for _, text in items:
        if max_chars is not None and total >= max_chars:
            break
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        total += len(text)
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- models

def build_model(spec: ModelSpec, preset: Preset, tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)
    if spec.arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=preset.context, n_embd=preset.d_model,
            n_layer=preset.n_layer, n_head=preset.n_head, resid_pdrop=preset.dropout,
            embd_pdrop=preset.dropout, attn_pdrop=preset.dropout, bos_token_id=eos,
            eos_token_id=eos, tie_word_embeddings=True)
        return GPT2LMHeadModel(cfg)
    if spec.arch == "llama":
        # SwiGLU width ~ 8/3 d, rounded to a multiple of 32: about GPT-2's size.
        inter = int(round(8 * preset.d_model / 3 / 32)) * 32 or 32
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=preset.d_model, intermediate_size=inter,
            num_hidden_layers=preset.n_layer, num_attention_heads=preset.n_head,
            num_key_value_heads=preset.n_head, max_position_embeddings=preset.context,
            attention_dropout=preset.dropout, bos_token_id=eos, eos_token_id=eos,
            tie_word_embeddings=True)
        return LlamaForCausalLM(cfg)
    raise ValueError(f"unknown architecture {spec.arch!r}")


def lr_at(step: int, preset: Preset, total: int) -> float:
    if step < preset.warmup:
        return preset.lr * (step + 1) / preset.warmup
    frac = (step - preset.warmup) / max(1, total - preset.warmup)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_model(spec: ModelSpec, preset: Preset, tokenizer, data, steps: int,
                budget_seconds: float | None):
    import torch

    model = build_model(spec, preset, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=preset.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(10_000 + spec.seed)
    ctx = preset.context
    n = data.numel()
    if n <= ctx + 1:
        raise SystemExit(f"not enough training text for {spec.name}: {n} tokens")
    t0 = time.monotonic()
    done = 0
    for step in range(steps):
        if budget_seconds is not None and time.monotonic() - t0 >= budget_seconds:
            log(f"{spec.name}: budget of {budget_seconds:g}s reached after {step} steps")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, preset, steps)
        starts = torch.randint(0, n - ctx, (preset.batch_size,), generator=gen)
        batch = torch.stack([data[s:s + ctx] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        if step % 20 == 0 or step == steps - 1:
            log(f"{spec.name}: step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({time.monotonic() - t0:.0f}s)")
    model.eval()
    return model, done, time.monotonic() - t0


def save_model(model, tokenizer, out_dir: Path) -> None:
    import torch
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model = model.to(torch.float16)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    gen_cfg = out_dir / "generation_config.json"
    if gen_cfg.exists():  # not needed to score text; keeps the directory small and plain
        gen_cfg.unlink()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weight_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


# --------------------------------------------------------------------------- evaluation

def window_logprobs(models, ids, max_length: int, stride: int):
    """Sliding-window NLL (Hugging Face 'perplexity of fixed-length models', as in
    SPEC §2): yields, per window, each model's float32 log-softmax over its scored
    positions and the targets."""
    import torch
    n = ids.numel()
    prev_end = 0
    start = 0
    while True:
        end = min(start + max_length, n)
        inp = ids[start:end].unsqueeze(0)
        with torch.no_grad():
            lps = []
            for m in models:
                logits = m(input_ids=inp).logits[0].float()
                lps.append(torch.log_softmax(logits[:-1], dim=-1))
        targets = inp[0, 1:]
        first = max(0, prev_end - start - 1)   # rows whose target no earlier window scored
        yield [lp[first:] for lp in lps], targets[first:]
        prev_end = end
        if end == n:
            break
        start += stride


def perplexities(models: dict[str, object], text_ids, pairs: list[tuple[str, str]],
                 max_length: int, stride: int) -> dict[str, float]:
    """PPL of each model alone and of the plain logit average of each pair (T = 1)."""
    import torch
    names = list(models)
    nll = {k: 0.0 for k in names}
    for a, b in pairs:
        nll[f"{a}+{b}"] = 0.0
    count = 0
    for lps, tg in window_logprobs([models[k] for k in names], text_ids, max_length, stride):
        count += tg.numel()
        by = dict(zip(names, lps))
        for k in names:
            nll[k] -= by[k].gather(1, tg[:, None]).sum().item()
        for a, b in pairs:
            fused = torch.log_softmax((by[a] + by[b]) / 2, dim=-1)  # = average of logits
            nll[f"{a}+{b}"] -= fused.gather(1, tg[:, None]).sum().item()
    return {k: math.exp(v / count) for k, v in nll.items()}


def evaluate_dir(out: Path, preset: Preset, domains: dict[str, demo_text.Domain]):
    import torch
    from transformers import AutoModelForCausalLM
    present = [n for n in MODEL_NAMES if (out / n / "config.json").exists()]
    if not present:
        return {}, []
    tok = load_tokenizer(out / "tokenizer")
    models = {n: AutoModelForCausalLM.from_pretrained(str(out / n), dtype=torch.float32).eval()
              for n in present}
    pairs = [p for p in (("twin-a", "sibling"), ("twin-a", "twin-b"), ("twin-b", "sibling"))
             if p[0] in models and p[1] in models]
    results = {}
    for dom in ("docs", "code"):
        ids = torch.tensor(tok(domains[dom].heldout_text)["input_ids"], dtype=torch.long)
        results[dom] = perplexities(models, ids, pairs if dom == "docs" else [],
                                    preset.context, preset.eval_stride)
        results[dom]["_tokens"] = ids.numel()
    return results, present


# --------------------------------------------------------------------------- model card

def write_card(out: Path, preset_name: str, preset: Preset, results, present,
               domains: dict[str, demo_text.Domain], command: str) -> None:
    rows = []
    for n in present:
        info = json.loads((out / n / "training.json").read_text()) if (out / n / "training.json").exists() else {}
        rows.append(
            f"| `{n}` | {info.get('arch', '?')} | {info.get('domain', '?')} | {info.get('seed', '?')} "
            f"| {info.get('parameters', 0) / 1e6:.2f} M | {weight_bytes(out / n) / 1e6:.2f} MB "
            f"| {info.get('steps', '?')} | {info.get('train_seconds', 0):.0f} s "
            f"| {results['docs'][n]:.2f} | {results['code'][n]:.2f} |")
    fusions = [f"| {k.replace('+', ' + ')} | {v:.2f} |" for k, v in results["docs"].items()
               if "+" in k]
    d, c = domains["docs"], domains["code"]
    total_mb = sum(dir_bytes(out / n) for n in present) / 1e6
    info0 = {}
    for n in present:
        p = out / n / "training.json"
        if p.exists():
            info0 = json.loads(p.read_text())
            break
    card = f"""# Kotara's demo models

Small causal LMs that Kotara trained itself, on the CPU, offline, so that a fresh
clone can show what fusion is for without any model hub (`npm run demo`). They are
toys: about a million parameters each, trained for a few minutes on a few hundred
kilobytes of text. Do not use them for anything but demos and tests.

| model | architecture | trained on | seed | parameters | weights (fp16) | steps | training time (wall) | held-out docs PPL | held-out code PPL |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

All of them share one byte-level BPE tokenizer (`tokenizer/`, {info0.get('vocab_size', preset.vocab_size)} tokens, trained by
the same script on the training parts of both domains; a copy sits in every model
directory). Directory total: {total_mb:.1f} MB.

- **twins** `twin-a`, `twin-b`: GPT-2, same data, different seeds.
- **sibling** `sibling`: Llama (RoPE, RMSNorm, SwiGLU), same data as the twins.
- **far** `far`: GPT-2 trained on the other domain (Python source code).

Fusing the twins or twin + sibling by a plain average of logits (T = 1), on the
held-out docs (measured by `scripts/train_demo.py` itself, plain Hugging Face
forward, float32, windows of {preset.context} tokens, stride {preset.eval_stride}):

| fusion | held-out docs PPL |
| --- | --- |
{chr(10).join(fusions)}

`npm run demo` (= `./bin/kotara run configs/demo.yaml`) fuses `twin-a` and `sibling`
with all four strategies (average, poe, entropy, gap) on the same held-out docs.

## Data (nothing from elsewhere: the text ships with the Python interpreter)

`scripts/demo_text.py` extracts both domains from the interpreter that runs it:

- **docs**: the language reference's help topics, `pydoc_data.topics` ({len(d.train)} training
  topics, {len(d.train_text.encode()) / 1e3:.0f} KB; {len(d.heldout)} held-out topics, {len(d.heldout_text.encode()) / 1e3:.0f} KB:
  {', '.join(k for k, _ in d.heldout)}).
- **code**: the standard library's `.py` files ({len(c.train)} training files, {len(c.train_text.encode()) / 1e6:.1f} MB;
  {len(c.heldout)} held-out files, {len(c.heldout_text.encode()) / 1e3:.0f} KB: {', '.join(k for k, _ in c.heldout)}).

Held-out topics / files are chosen by a stable hash of their key and are never
trained on; training paragraphs of docs that also occur in a held-out topic are
removed too (the topics overlap). `python scripts/demo_text.py` writes the
held-out text to `data/demo/` (gitignored, never committed). The numbers above
were measured with Python {platform.python_version()}, torch {info0.get('torch', '?')},
transformers {info0.get('transformers', '?')}; another Python version ships
slightly different text, so its perplexities differ slightly.

## Training

Preset `{preset_name}`: d_model {preset.d_model}, {preset.n_layer} layers, {preset.n_head} heads, context
{preset.context}, batch {preset.batch_size} x {preset.context} tokens, AdamW (lr {preset.lr:g}, betas 0.9/0.95,
weight decay 0.1), {preset.warmup} warm-up steps then cosine to 10%, dropout {preset.dropout:g}, gradient clipping
1.0, torch threads: {info0.get("threads", "?")}. Weights stored in float16 (Kotara scores them in float32 on the CPU), embeddings tied. Each model
directory has a `training.json` with what produced it.

Reproduce (same Python, torch and flags give the same weights; about
{max(1, round(sum(json.loads((out / n / 'training.json').read_text()).get('train_seconds', 0) for n in present if (out / n / 'training.json').exists()) / 60))} minutes of training in all here, on a shared 2-core machine):

```
{command}
```
"""
    (out / "README.md").write_text(card, encoding="utf-8")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "demo",
                    help="output directory (default: models/demo)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                    help="model/training sizes: demo (the committed models) or tiny (tests)")
    ap.add_argument("--only", action="append", choices=MODEL_NAMES, metavar="NAME",
                    help=f"train only this model (repeatable; one of {', '.join(MODEL_NAMES)})")
    ap.add_argument("--steps", type=int, help="optimizer steps per model (default: the preset's)")
    ap.add_argument("--budget-seconds", type=float,
                    help="also stop a model's training after this many seconds "
                         "(the step count then depends on the machine: not reproducible)")
    ap.add_argument("--dropout", type=float, help="override the preset's dropout")
    ap.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    ap.add_argument("--seed", type=int, help="override the seed of every model trained")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (fixed for reproducibility; default 1: the models are "
                         "independent, so run two --only processes side by side to use 2 cores)")
    ap.add_argument("--retrain-tokenizer", action="store_true",
                    help="train the tokenizer again even when OUT/tokenizer exists")
    ap.add_argument("--no-eval", action="store_true",
                    help="skip the held-out evaluation and the model card")
    ap.add_argument("--tokenizer-only", action="store_true",
                    help="only make sure OUT/tokenizer exists (train it if needed), then stop")
    ap.add_argument("--eval-only", action="store_true",
                    help="train nothing: evaluate the models in OUT and write the model card")
    args = ap.parse_args(argv)

    import torch
    import transformers
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    preset = PRESETS[args.preset]
    if args.dropout is not None:
        preset = replace(preset, dropout=args.dropout)
    if args.lr is not None:
        preset = replace(preset, lr=args.lr)
    steps = args.steps if args.steps is not None else preset.steps
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    selected = [m for m in MODELS if not args.only or m.name in args.only]
    if args.seed is not None:
        selected = [replace(m, seed=args.seed) for m in selected]

    log(f"reading the corpora from Python {platform.python_version()} ({demo_text.stdlib_dir()})")
    domains = {"docs": demo_text.docs_domain(), "code": demo_text.code_domain()}

    tok_dir = out / "tokenizer"
    if args.eval_only and not tok_dir.is_dir():
        raise SystemExit(f"--eval-only: no tokenizer in {tok_dir} (nothing trained there yet?)")
    if (tok_dir.exists() and not args.retrain_tokenizer) or args.eval_only:
        log(f"reusing the tokenizer in {tok_dir}")
        tokenizer = load_tokenizer(tok_dir)
    else:
        if tok_dir.exists() and len(selected) < len(MODELS):
            log("warning: a new tokenizer with only some models retrained: "
                "the others no longer share its vocabulary")
        t = time.monotonic()
        train_tokenizer(tok_dir, domains, preset)
        tokenizer = load_tokenizer(tok_dir)
        log(f"tokenizer: {len(tokenizer)} tokens ({time.monotonic() - t:.1f}s)")

    if args.tokenizer_only:
        return 0
    streams = {}
    for spec in ([] if args.eval_only else selected):
        if spec.domain not in streams:
            streams[spec.domain] = token_stream(tokenizer, domains[spec.domain].train,
                                                preset.train_chars)
            log(f"{spec.domain}: {streams[spec.domain].numel()} training tokens")
        model, done, secs = train_model(spec, preset, tokenizer, streams[spec.domain],
                                        steps, args.budget_seconds)
        save_model(model, tokenizer, out / spec.name)
        info = {**asdict(spec), "preset": args.preset, **asdict(preset), "steps": done,
                "steps_planned": steps, "train_seconds": round(secs, 1),
                "training_tokens": streams[spec.domain].numel(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "threads": args.threads, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": transformers.__version__}
        (out / spec.name / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        log(f"{spec.name}: saved to {out / spec.name} ({weight_bytes(out / spec.name) / 1e6:.2f} MB "
            f"weights, {done} steps, {secs:.0f}s)")

    if args.no_eval:
        return 0
    results, present = evaluate_dir(out, preset, domains)
    for dom, res in results.items():
        log(f"held-out {dom} ({res['_tokens']} tokens): " +
            ", ".join(f"{k} {v:.2f}" for k, v in res.items() if not k.startswith("_")))
    if results:
        if args.preset == "demo" and args.steps is None and args.lr is None and args.dropout is None:
            command = DEMO_COMMAND
        else:
            command = "python " + " ".join(["scripts/train_demo.py", *(argv if argv is not None else sys.argv[1:])])
        write_card(out, args.preset, preset, results, present, domains, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
