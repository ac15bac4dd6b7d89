"""Builds the benchmark's models and texts (cached; `npm run bench` calls it).

    python bench/make_models.py models --out DIR [--source TEXT] [--shape small] [--dtype float32] [--seeds 1 2]
    python bench/make_models.py text --tokenizer MODEL_DIR --source TEXT --tokens N --out FILE

`models` writes DIR/tokenizer/ (a word-level tokenizer with exactly 50257 entries,
built from the most frequent words of TEXT + filler tokens + [UNK]) and one
GPT-2-shaped model per seed, DIR/<shape>-<dtype>-seed<S>/, random weights
(torch.manual_seed(S)), saved with save_pretrained (safetensors) next to a copy of
the tokenizer, so Kotara's real loading path (AutoTokenizer / AutoModelForCausalLM)
loads them. Without --source, a seeded synthetic text (DIR/synthetic.txt) is
written and used. Nothing is rebuilt when DIR/<name>/bench.json says it is current.

`text` writes the first N tokens of TEXT (cut right after token N, so tokenizing
the prefix gives exactly those N tokens) to FILE.

Both print one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

VOCAB = 50257
UNK = "[UNK]"
EOS = "<|endoftext|>"
SHAPES = {  # GPT2Config shapes of the released GPT-2 sizes
    "tiny": dict(n_layer=2, n_embd=64, n_head=2),          # smoke tests of the harness only
    "small": dict(n_layer=12, n_embd=768, n_head=12),      # 124M
    "medium": dict(n_layer=24, n_embd=1024, n_head=16),    # 355M
    "large": dict(n_layer=36, n_embd=1280, n_head=20),     # 774M
}
FORMAT = 1   # bump when what is written changes


def log(msg: str) -> None:
    print(f"[make_models] {msg}", file=sys.stderr, flush=True)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def synthetic_text(n_words: int = 300_000, lexicon: int = 30_000, seed: int = 0) -> str:
    """Seeded Zipf-distributed made-up words in lines of 8..30 words."""
    rng = random.Random(seed)
    syll = ["ka", "to", "ra", "mi", "ne", "lo", "su", "vi", "de", "po", "an", "el", "or", "us", "ti", "ba"]
    words, seen = [], set()
    while len(words) < lexicon:
        w = "".join(rng.choice(syll) for _ in range(rng.randint(1, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    weights = [1.0 / (r + 1) for r in range(lexicon)]
    out, line = [], []
    for w in rng.choices(words, weights=weights, k=n_words):
        line.append(w)
        if len(line) >= rng.randint(8, 30):
            out.append(" ".join(line) + " .")
            line = []
    out.append(" ".join(line))
    return "\n".join(out) + "\n"


def build_tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    pre = pre_tokenizers.Whitespace()
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        counts.update(piece for piece, _ in pre.pre_tokenize_str(line))
    n_words = VOCAB - 2                                   # [UNK] first, <|endoftext|> last (GPT-2's id 50256)
    words = [w for w, _ in counts.most_common() if w not in (UNK, EOS)][:n_words]
    fillers = [f"[FILL{i}]" for i in range(n_words - len(words))]
    vocab = {UNK: 0}
    for w in words + fillers:
        vocab[w] = len(vocab)
    vocab[EOS] = len(vocab)
    assert len(vocab) == VOCAB and vocab[EOS] == VOCAB - 1, len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")        # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, bos_token=EOS, eos_token=EOS,
                                   model_max_length=1024)
    return fast, {"words_from_text": len(words), "fillers": len(fillers), "distinct_words_in_text": len(counts)}


def current(marker: Path, want: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == want
    except (OSError, ValueError):
        return False


def cmd_models(a: argparse.Namespace) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.source:
        source, source_name = read_text(a.source), os.path.abspath(a.source)
    else:
        syn = out / "synthetic.txt"
        if not syn.exists():
            syn.write_text(synthetic_text(), encoding="utf-8")
        source, source_name = read_text(str(syn)), str(syn)
    source_hash = hashlib.sha256(source.encode()).hexdigest()[:16]

    tok_dir = out / "tokenizer"
    tok_want = {"format": FORMAT, "vocab": VOCAB, "source_sha256_16": source_hash}
    if not current(tok_dir / "bench.json", tok_want):
        t = time.perf_counter()
        if tok_dir.exists():
            shutil.rmtree(tok_dir)
        tokenizer, info = build_tokenizer(source)
        tokenizer.save_pretrained(tok_dir)
        (tok_dir / "bench.json").write_text(json.dumps(tok_want))
        log(f"tokenizer: {VOCAB} entries ({info}) in {time.perf_counter() - t:.1f}s -> {tok_dir}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    assert len(tokenizer) == VOCAB, len(tokenizer)

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    dirs, params = [], []
    for seed in a.seeds:
        d = out / f"{a.shape}-{a.dtype}-seed{seed}"
        want = {"format": FORMAT, "shape": a.shape, "dtype": a.dtype, "seed": seed, "tokenizer": tok_want}
        if not current(d / "bench.json", want):
            t = time.perf_counter()
            if d.exists():
                shutil.rmtree(d)
            config = GPT2Config(vocab_size=VOCAB, n_positions=1024, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                                **SHAPES[a.shape])
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config).eval().to(dtype)
            model.save_pretrained(d, safe_serialization=True)
            tokenizer.save_pretrained(d)
            (d / "bench.json").write_text(json.dumps(want))
            log(f"model {d.name}: {sum(p.numel() for p in model.parameters()):,} parameters "
                f"in {time.perf_counter() - t:.1f}s")
            del model
        dirs.append(str(d))
        cfg = json.loads((d / "config.json").read_text())
        params.append(_gpt2_params(cfg))
    return {"models": dirs, "tokenizer": str(tok_dir), "source": source_name, "vocab": VOCAB,
            "shape": a.shape, "config": SHAPES[a.shape], "parameters": params}


def _gpt2_params(cfg: dict) -> int:
    """GPT2LMHeadModel parameter count (tied head counted once), from its config."""
    v, p, d, layers = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return v * d + p * d + layers * per_layer + 2 * d


def cmd_text(a: argparse.Namespace) -> dict:
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast.from_pretrained(a.tokenizer)
    text = read_text(a.source)
    enc = tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    n = min(a.tokens, len(offsets))
    # Whitespace pre-tokenizes into maximal runs of \w or of [^\w\s]: cutting right
    # after token n-1 leaves a prefix that tokenizes to exactly those n tokens
    cut = offsets[n - 1][1]
    prefix = text[:cut]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", encoding="utf-8", newline="") as f:
        f.write(prefix)
    ids = tokenizer(prefix)["input_ids"]
    unk = sum(1 for i in ids if i == tokenizer.unk_token_id)
    return {"path": os.path.abspath(a.out), "tokens": len(ids), "bytes": len(prefix.encode()),
            "words": len(prefix.split()), "unk_tokens": unk, "source": os.path.abspath(a.source)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models")
    m.add_argument("--out", required=True)
    m.add_argument("--source", default=None, help="text the tokenizer's vocabulary is built from")
    m.add_argument("--shape", default="small", choices=sorted(SHAPES))
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    m.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    t = sub.add_parser("text")
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--source", required=True)
    t.add_argument("--tokens", type=int, required=True)
    t.add_argument("--out", required=True)
    a = p.parse_args()
    result = cmd_models(a) if a.cmd == "models" else cmd_text(a)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
