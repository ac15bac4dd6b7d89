#!/usr/bin/env python3
"""Train Kotara's demo models: small causal LMs, on the CPU, offline, deterministic.

    npm run train-demo                      # = .venv/bin/python scripts/train_demo.py
    .venv/bin/python scripts/train_demo.py --only twin-b --seed 7 --steps 100

The text comes from the running interpreter (scripts/demo_text.py): the language
reference's help topics (``pydoc_data``, domain "docs") and the standard library's
source (domain "code"). Held-out topics / files are never trained on.

What it writes (under --out, default models/demo/):

  tokenizer/        the family's tokenizer: one byte-level BPE (``tokenizers``),
                    trained on the training parts of BOTH domains; the four family
                    models use it, and a copy of its files sits in each of their
                    directories. An existing tokenizer/ is reused (so retraining one
                    model keeps the shared vocabulary) unless --retrain-tokenizer is
                    given.
  twin-a/, twin-b/  GPT-2 on docs, seeds 1 and 2         (twins)
  sibling/          Llama on docs, seed 3                 (another architecture)
  far/              GPT-2 on code, seed 4                 (another domain)
  cousin/           Llama on docs, seed 5, with a tokenizer of its OWN (another
                    tokenizer): a sentencepiece-style BPE (Metaspace '▁', dummy
                    prefix, byte fallback <0xNN>, BOS <s> / EOS </s>, 3072 tokens)
                    trained on the same text as the family's; it is trained afresh
                    (deterministically, in about a second) whenever cousin is, and
                    lives only in cousin/. Fused with the family in byte space
                    (SPEC §7; configs/cross-tokenizer.yaml).
  README.md         the model card: sizes, data, steps, seeds, held-out perplexities
                    (each model in its own tokenization) and bits per byte

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
    own_vocab_size: int = 3072     # the cousin's own sentencepiece-style tokenizer (256 of it: <0xNN>)


PRESETS = {
    # The committed models (~1.1M parameters, ~2.2 MB each in float16).
    "demo": Preset(vocab_size=2048, d_model=128, n_layer=4, n_head=4, context=256,
                   batch_size=8, steps=480, lr=3e-3, warmup=20, dropout=0.0,
                   tokenizer_code_chars=600_000, train_chars=None, eval_stride=128),
    # For tests: seconds, not minutes.
    "tiny": Preset(vocab_size=512, d_model=32, n_layer=1, n_head=2, context=64,
                   batch_size=8, steps=60, lr=5e-3, warmup=5, dropout=0.0,
                   tokenizer_code_chars=60_000, train_chars=150_000, eval_stride=32,
                   own_vocab_size=640),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str      # gpt2 | llama
    domain: str    # docs | code
    seed: int
    role: str
    tokenizer: str = "family"   # family: the shared byte-level BPE (tokenizer/) | own: see train_own_tokenizer


MODELS = [
    ModelSpec("twin-a", "gpt2", "docs", 1, "twin of twin-b: same architecture and data, another seed"),
    ModelSpec("twin-b", "gpt2", "docs", 2, "twin of twin-a: same architecture and data, another seed"),
    ModelSpec("sibling", "llama", "docs", 3, "sibling: another architecture (Llama), same data as the twins"),
    ModelSpec("far", "gpt2", "code", 4, "far: twin-a's architecture, trained on the other domain (code)"),
    ModelSpec("cousin", "llama", "docs", 5, "cousin: sibling's architecture and data, a tokenizer of its own "
              "(sentencepiece-style BPE, byte fallback): fused with the family in byte space", tokenizer="own"),
]
MODEL_NAMES = [m.name for m in MODELS]
SPECS = {m.name: m for m in MODELS}
FAMILY = [m.name for m in MODELS if m.tokenizer == "family"]

# How the committed models were made (the model card quotes it).
DEMO_COMMAND = """\
npm run train-demo          # all five models, one after the other, 1 torch thread each

# or the same models two at a time on 2 cores (each model is independent of the others):
.venv/bin/python scripts/train_demo.py --tokenizer-only     # add --retrain-tokenizer to start afresh
nice -n 10 .venv/bin/python scripts/train_demo.py --only twin-a --only twin-b --no-eval &
nice -n 10 .venv/bin/python scripts/train_demo.py --only sibling --only far --no-eval; wait
.venv/bin/python scripts/train_demo.py --only cousin --no-eval   # its own tokenizer, trained with it
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


OWN_BOS, OWN_EOS = "<s>", "</s>"
SPACE_MARK = "\u2581"   # '▁', sentencepiece's space


def tokenizer_text(domains: dict[str, demo_text.Domain], preset: Preset) -> list[str]:
    """What the tokenizers are trained on (the family's and the cousin's alike): the
    training docs and the first tokenizer_code_chars of the training code."""
    docs = domains["docs"].train_text
    code = domains["code"].train_text[: preset.tokenizer_code_chars]
    if preset.train_chars is not None:
        docs = docs[: preset.train_chars]
    return [docs, code]


def train_own_tokenizer(domains: dict[str, demo_text.Domain], preset: Preset):
    """The cousin's tokenizer: a sentencepiece-style BPE (as Llama 2's, converted to
    tokenizers), trained by ``tokenizers`` on the same text as the family's.

    - pre-tokenizer Metaspace: ' ' -> '▁', split before every '▁', and a '▁' put
      before the text (prepend_scheme "first": sentencepiece's dummy prefix, so it
      writes ' ' + text; SPEC §7 scores that as Q(' ' x) / Q(' '));
    - no normalizer (no lowercasing, no NFKC), no unknown token: the BPE has
      byte_fallback and all 256 byte tokens <0x00>..<0xFF> (ids 2..257, after
      <s> = 0 and </s> = 1, as in Llama 2), so every byte string is spelled exactly;
    - BOS <s> before every text (a post-processor, like Llama 2's add_bos_token),
      EOS </s>; decoder Replace('▁', ' ') + ByteFallback + Fuse + Strip(1 left space).

    own_vocab_size tokens in all: 2 special + 256 bytes + the trained characters and
    merges. Deterministic (same text, same tokenizers -> the same vocabulary)."""
    import tempfile
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def metaspace():
        return pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="first", split=True)

    n_special, n_bytes = 2, 256
    base = Tokenizer(models.BPE(byte_fallback=True))
    base.pre_tokenizer = metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=preset.own_vocab_size - n_bytes, min_frequency=2, show_progress=False,
        special_tokens=[OWN_BOS, OWN_EOS])
    chunk = 20_000
    texts = tokenizer_text(domains, preset)
    base.train_from_iterator((t[i:i + chunk] for t in texts for i in range(0, len(t), chunk)),
                             trainer=trainer)
    trained = json.loads(base.to_str())["model"]
    vocab = {OWN_BOS: 0, OWN_EOS: 1}
    vocab.update({f"<0x{b:02X}>": n_special + b for b in range(n_bytes)})
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if piece in (OWN_BOS, OWN_EOS):
            continue
        if piece in vocab:
            raise SystemExit(f"the cousin's BPE learned a piece {piece!r} that is a byte token's name")
        vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False))
    tok.pre_tokenizer = metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(OWN_BOS, special=True, normalized=False),
                            AddedToken(OWN_EOS, special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{OWN_BOS} $A", pair=f"{OWN_BOS} $A {OWN_BOS} $B", special_tokens=[(OWN_BOS, 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=OWN_BOS, eos_token=OWN_EOS)
    with tempfile.TemporaryDirectory() as tmp:   # what training uses = what is saved
        save_tokenizer(hf, Path(tmp))
        hf = load_tokenizer(Path(tmp))
    if len(hf) != preset.own_vocab_size:
        raise SystemExit(f"the cousin's tokenizer has {len(hf)} tokens, not {preset.own_vocab_size}")
    return hf


def check_round_trip(tokenizer, texts: dict[str, str]) -> dict[str, dict[str, int]]:
    """SPEC §7's decode-free round trip (kotara_worker.token_bytes): the bytes of the
    tokens of each text must be its UTF-8 (after the dummy prefix). Raises if not."""
    sys.path.insert(0, str(ROOT / "python"))
    from kotara_worker.token_bytes import canonical_ids, token_bytes
    table = token_bytes(tokenizer)
    out = {}
    for name, text in texts.items():
        ids, prefix = canonical_ids(tokenizer, table, text)
        out[name] = {"bytes": len(text.encode("utf-8")), "tokens": len(ids), "prefix_bytes": len(prefix),
                     "byte_fallback_tokens": sum(1 for i in ids if (b := table[i]) is not None and len(b) == 1
                                                 and tokenizer.convert_ids_to_tokens(i).startswith("<0x"))}
    return out


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
    # the family's BOS is its EOS (<|endoftext|>); the cousin's is <s>
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    torch.manual_seed(spec.seed)
    if spec.arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=preset.context, n_embd=preset.d_model,
            n_layer=preset.n_layer, n_head=preset.n_head, resid_pdrop=preset.dropout,
            embd_pdrop=preset.dropout, attn_pdrop=preset.dropout, bos_token_id=bos,
            eos_token_id=eos, tie_word_embeddings=True)
        return GPT2LMHeadModel(cfg)
    if spec.arch == "llama":
        # SwiGLU width ~ 8/3 d, rounded to a multiple of 32: about GPT-2's size.
        inter = int(round(8 * preset.d_model / 3 / 32)) * 32 or 32
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=preset.d_model, intermediate_size=inter,
            num_hidden_layers=preset.n_layer, num_attention_heads=preset.n_head,
            num_key_value_heads=preset.n_head, max_position_embeddings=preset.context,
            attention_dropout=preset.dropout, bos_token_id=bos, eos_token_id=eos,
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
    nll, count = nll_sums(models, text_ids, pairs, max_length, stride)
    return {k: math.exp(v / count) for k, v in nll.items()}


def nll_sums(models: dict[str, object], text_ids, pairs: list[tuple[str, str]],
             max_length: int, stride: int) -> tuple[dict[str, float], int]:
    """Total NLL (nats) of each model alone and of each pair's logit average over the
    scored tokens, and their number (every token but the first: it has no context)."""
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
    return nll, count


def evaluate_dir(out: Path, preset: Preset, domains: dict[str, demo_text.Domain]):
    """Held-out evaluation of every model in OUT, each in its own tokenization.

    results[dom][name] = {"ppl", "nll" (total nats), "tokens" (scored), "text_tokens"
    (the text's, without BOS), "bpb"}, for each
    model and each family pair's logit average (docs only); "bpb" is bits per byte,
    total NLL / (ln 2 x the held-out text's UTF-8 bytes), as Kotara's metrics file has
    it (SPEC §6), and the one number that compares models whose tokenizers differ."""
    import torch
    from transformers import AutoModelForCausalLM
    present = [n for n in MODEL_NAMES if (out / n / "config.json").exists()]
    if not present:
        return {}, []
    # the family in one pass over the family's tokens, each own-tokenizer model on its own
    groups: list[tuple[object, list[str], list[tuple[str, str]]]] = []
    family = [n for n in present if SPECS[n].tokenizer == "family"]
    if family:
        tok = load_tokenizer(out / "tokenizer")
        pairs = [p for p in (("twin-a", "sibling"), ("twin-a", "twin-b"), ("twin-b", "sibling"))
                 if p[0] in family and p[1] in family]
        groups.append((tok, family, pairs))
    for n in present:
        if SPECS[n].tokenizer != "family":
            groups.append((load_tokenizer(out / n), [n], []))
    results = {dom: {} for dom in ("docs", "code")}
    for tok, names, pairs in groups:
        models = {n: AutoModelForCausalLM.from_pretrained(str(out / n), dtype=torch.float32).eval()
                  for n in names}
        for dom in ("docs", "code"):
            text = domains[dom].heldout_text
            ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
            nll, count = nll_sums(models, ids, pairs if dom == "docs" else [],
                                  preset.context, preset.eval_stride)
            n_bytes = len(text.encode("utf-8"))
            text_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
            for k, v in nll.items():
                results[dom][k] = {"ppl": math.exp(v / count), "nll": v, "tokens": count,
                                   "text_tokens": text_tokens, "bpb": v / (math.log(2) * n_bytes)}
    return results, present


# --------------------------------------------------------------------------- model card

def _fill(paragraph: str) -> str:
    import textwrap
    return textwrap.fill(paragraph, width=86, break_long_words=False, break_on_hyphens=False)


def write_card(out: Path, preset_name: str, preset: Preset, results, present,
               domains: dict[str, demo_text.Domain], command: str) -> None:
    infos = {n: json.loads((out / n / "training.json").read_text())
             if (out / n / "training.json").exists() else {} for n in present}
    rows = []
    for n in present:
        info = infos[n]
        tok = (f"family BPE {info.get('vocab_size', '?')}" if SPECS[n].tokenizer == "family"
               else f"own SP-BPE {info.get('vocab_size', '?')}")
        rows.append(
            f"| `{n}` | {info.get('arch', '?')} | {tok} | {info.get('domain', '?')} | {info.get('seed', '?')} "
            f"| {info.get('parameters', 0) / 1e6:.2f} M | {weight_bytes(out / n) / 1e6:.2f} MB "
            f"| {info.get('steps', '?')} | {info.get('train_seconds', 0):.0f} s "
            f"| {results['docs'][n]['ppl']:.2f} | {results['docs'][n]['bpb']:.3f} "
            f"| {results['code'][n]['ppl']:.2f} | {results['code'][n]['bpb']:.3f} |")
    fusions = [f"| {k.replace('+', ' + ')} | {v['ppl']:.2f} | {v['bpb']:.3f} |"
               for k, v in results["docs"].items() if "+" in k]
    d, c = domains["docs"], domains["code"]
    d_bytes, c_bytes = len(d.heldout_text.encode()), len(c.heldout_text.encode())
    parts = [out / n for n in present] + ([out / "tokenizer"] if (out / "tokenizer").is_dir() else [])
    total_mb = sum(dir_bytes(p) for p in parts) / 1e6
    family = [n for n in present if SPECS[n].tokenizer == "family"]
    own = [n for n in present if SPECS[n].tokenizer != "family"]
    info0 = next((infos[n] for n in present if infos[n]), {})
    fam0 = next((infos[n] for n in family if infos[n]), {})

    def bytes_per_token(names: list[str]) -> str:
        n = names[0]
        return f"{d_bytes / results['docs'][n]['text_tokens']:.2f}"

    sections = []
    if family:
        sections.append(
            f"The family ({', '.join(f'`{n}`' for n in family)}) shares one byte-level BPE tokenizer "
            f"(`tokenizer/`, {fam0.get('vocab_size', preset.vocab_size)} tokens, trained by the same script on "
            "the training parts of both domains; a copy sits in each of their directories).")
    for n in own:
        info = infos[n]
        trip = info.get("round_trip", {})
        trip_txt = "; ".join(f"{k}: {v['bytes']} bytes = {v['tokens']} tokens "
                             f"({v['byte_fallback_tokens']} of them byte-fallback tokens)"
                             for k, v in trip.items())
        sections.append(
            f"`{n}` has a tokenizer of its own (in `{n}/`): a sentencepiece-style BPE of "
            f"{info.get('vocab_size', '?')} tokens, as Llama 2's looks once converted to `tokenizers`: "
            "Metaspace pre-tokenizer (`▁` for a space, split before each `▁`, prepend_scheme `first`: "
            "a dummy prefix, so it writes `' ' + text`), byte fallback with all 256 byte tokens "
            "`<0x00>`..`<0xFF>` (ids 2-257 after `<s>` = 0 and `</s>` = 1), BOS `<s>` before every "
            "text, EOS `</s>`, no normalizer (no lowercasing, no NFKC) and no unknown token. It is "
            "trained by the same script on the same text as the family's tokenizer. Its tokens spell "
            "the held-out texts exactly, byte for byte (SPEC §7's decode-free round trip, "
            "`kotara_worker.token_bytes.canonical_ids`: the bytes of its tokens are `' ' + text`): "
            f"{trip_txt}.")
    sections[-1] += f" Directory total (model directories and `tokenizer/`): {total_mb:.1f} MB."
    tok_text = "\n\n".join(_fill(t) for t in sections)
    cousin_text = ""
    if own:
        import textwrap
        cousin_text = "\n" + textwrap.fill(
            f"- **cousin** {', '.join(f'`{n}`' for n in own)}: Llama like `sibling`, same data, another "
            "tokenizer. It shares no vocabulary with the family, so Kotara fuses it with them only in "
            "byte space (SPEC §7; `configs/cross-tokenizer.yaml` fuses it with `sibling`).",
            width=86, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    bpt = ""
    if family and own:
        bpt = (f" A perplexity counts a model's own tokens ({bytes_per_token(family)} bytes per token "
               f"of the held-out docs for the family's tokenizer, {bytes_per_token(own)} for the "
               f"cousin's), so the cousin's is not comparable with the family's; bits per byte are.")
    card = f"""# Kotara's demo models

Small causal LMs that Kotara trained itself, on the CPU, offline, so that a fresh
clone can show what fusion is for without any model hub (`npm run demo`). They are
toys: about a million parameters each, trained for a few minutes on a few hundred
kilobytes of text. Do not use them for anything but demos and tests.

| model | architecture | tokenizer | trained on | seed | parameters | weights (fp16) | steps | training time (wall) | held-out docs PPL | held-out docs bits/byte | held-out code PPL | held-out code bits/byte |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{_fill(f"PPL: each model's perplexity in its own tokenization; bits/byte: its total NLL over "
        f"the held-out text / (ln 2 x the text's UTF-8 bytes: {d_bytes} for the docs, {c_bytes} for "
        f"the code), as Kotara's metrics have it (SPEC §6).{bpt} Measured by "
        f"`scripts/train_demo.py` itself: plain Hugging Face forward, float32, windows of "
        f"{preset.context} tokens, stride {preset.eval_stride}, every token scored once but the text's "
        "first (the family's tokenizer adds no BOS; the cousin's first token is scored after its `<s>`). "
        "Kotara's byte space (SPEC §7) sums over every tokenization of the text, not only the "
        "canonical one: computed exactly, with the same context, it gives each model at most these "
        "bits per byte.")}

{tok_text}

- **twins** `twin-a`, `twin-b`: GPT-2, same data, different seeds.
- **sibling** `sibling`: Llama (RoPE, RMSNorm, SwiGLU), same data as the twins.
- **far** `far`: GPT-2 trained on the other domain (Python source code).{cousin_text}

Fusing the twins or twin + sibling by a plain average of logits (T = 1), on the
held-out docs (token space; measured as above):

| fusion | held-out docs PPL | held-out docs bits/byte |
| --- | --- | --- |
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
held-out text to `data/demo/` (gitignored, never committed), and a short cut of the
held-out docs (`docs-heldout-2k.txt`, their first whole lines up to {demo_text.DOCS_HELDOUT_SHORT_BYTES} bytes) for the slower
byte-space demo. The numbers above were measured with Python {platform.python_version()}, torch {info0.get('torch', '?')},
transformers {info0.get('transformers', '?')}; another Python version ships
slightly different text, so its perplexities differ slightly.

## Training

Preset `{preset_name}`: d_model {preset.d_model}, {preset.n_layer} layers, {preset.n_head} heads, context
{preset.context}, batch {preset.batch_size} x {preset.context} tokens, AdamW (lr {preset.lr:g}, betas 0.9/0.95,
weight decay 0.1), {preset.warmup} warm-up steps then cosine to 10%, dropout {preset.dropout:g}, gradient clipping
1.0, torch threads: {info0.get("threads", "?")}. Every model, the cousin included, is trained this way on its
domain's training text in its own tokens (each text followed by its EOS; the cousin's
also preceded by its BOS). Weights stored in float16 (Kotara scores them in float32 on the CPU), embeddings tied. Each model
directory has a `training.json` with what produced it.

Reproduce (same Python, torch and flags give the same weights; about
{max(1, round(sum(infos[n].get('train_seconds', 0) for n in present) / 60))} minutes of training in all here, on a 2-core machine shared with other work,
so the wall times above vary with its load):

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
    family_selected = [m for m in selected if m.tokenizer == "family"]
    tokenizer = None   # the family's
    if (tok_dir.exists() and not args.retrain_tokenizer) or args.eval_only:
        log(f"reusing the tokenizer in {tok_dir}")
        tokenizer = load_tokenizer(tok_dir)
    elif family_selected or args.tokenizer_only or args.retrain_tokenizer:
        if tok_dir.exists() and len(family_selected) < len(FAMILY):
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
        extra = {}
        if spec.tokenizer == "own":
            t = time.monotonic()
            model_tok = train_own_tokenizer(domains, preset)
            trip = check_round_trip(model_tok, {f"{d}-heldout": domains[d].heldout_text for d in ("docs", "code")})
            log(f"{spec.name}: own tokenizer, {len(model_tok)} tokens ({time.monotonic() - t:.1f}s); "
                "byte round trip of the held-out texts: " +
                ", ".join(f"{k} {v['bytes']} bytes = {v['tokens']} tokens" for k, v in trip.items()))
            extra = {"vocab_size": len(model_tok), "round_trip": trip}
            key = (spec.name, spec.domain)
        else:
            model_tok = tokenizer
            key = ("family", spec.domain)
        if key not in streams:
            streams[key] = token_stream(model_tok, domains[spec.domain].train, preset.train_chars)
            log(f"{spec.domain}: {streams[key].numel()} training tokens ({key[0]}'s tokenizer)")
        model, done, secs = train_model(spec, preset, model_tok, streams[key],
                                        steps, args.budget_seconds)
        save_model(model, model_tok, out / spec.name)
        info = {**asdict(spec), "preset": args.preset, **asdict(preset), "steps": done,
                "steps_planned": steps, "train_seconds": round(secs, 1),
                "training_tokens": streams[key].numel(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "threads": args.threads, "python": platform.python_version(),
                "torch": torch.__version__, "transformers": transformers.__version__, **extra}
        (out / spec.name / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        log(f"{spec.name}: saved to {out / spec.name} ({weight_bytes(out / spec.name) / 1e6:.2f} MB "
            f"weights, {done} steps, {secs:.0f}s)")

    if args.no_eval:
        return 0
    results, present = evaluate_dir(out, preset, domains)
    for dom, res in results.items():
        log(f"held-out {dom}: " + ", ".join(f"{k} PPL {v['ppl']:.2f} ({v['tokens']} tokens) "
                                            f"{v['bpb']:.4f} bits/byte" for k, v in res.items()))
    if results:
        if args.preset == "demo" and args.steps is None and args.lr is None and args.dropout is None:
            command = DEMO_COMMAND
        else:
            command = "python " + " ".join(["scripts/train_demo.py", *(argv if argv is not None else sys.argv[1:])])
        write_card(out, args.preset, preset, results, present, domains, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
