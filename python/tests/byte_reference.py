"""Test-only: tiny tokenizers of every kind byte space must handle, tiny random models
for them, and a brute-force reference of SPEC §7's byte LM.

The reference enumerates EVERY cover of a short byte string and sums p(τ | s) with
one full forward per token sequence (no KV cache, no trie, no beam): slow, but each
line is the definition. byte_lm.ByteLM must agree with it.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache

import torch

from tiny_models import BOS, make_text, make_tokenizer

# ----------------------------------------------------------------------------- tiny tokenizers

CORPUS = make_text(200, seed=7)


def byte_level_bpe(vocab_size: int = 300):
    """GPT-2-style byte-level BPE: 256 byte tokens, BOS (= EOS) and vocab_size - 257 merges."""
    return make_tokenizer(CORPUS, vocab_size)


def _sentencepiece_spec(n_pieces: int) -> dict:
    """A Llama-2-layout BPE as tokenizer.json: <unk> <s> </s>, then <0x00>..<0xFF> (byte
    fallback), then pieces trained on CORPUS with a Metaspace pre-tokenizer. Trained
    on ASCII text only, so any other character falls back to its UTF-8 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                 prepend_scheme="first")])
    trainer = trainers.BpeTrainer(vocab_size=n_pieces + 3, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    spec = json.loads(tok.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    pieces = [p for p, _ in trained if p not in ("<unk>", "<s>", "</s>")]
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    spec["model"]["vocab"] = {p: i for i, p in enumerate(vocab)}
    return spec


def _fast(spec: dict, **special):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **special)


def sentencepiece_bpe(n_pieces: int = 60):
    """Sentencepiece-style BPE with byte fallback and a dummy prefix (Metaspace, prepend first)."""
    return _fast(_sentencepiece_spec(n_pieces), bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llama2_style_bpe(n_pieces: int = 60):
    """The same vocabulary as Llama 2's converted tokenizer.json writes it: no pre-tokenizer,
    the dummy prefix and the spaces in the normalizer (Prepend('▁'), Replace(' ', '▁'))."""
    spec = _sentencepiece_spec(n_pieces)
    spec["pre_tokenizer"] = None
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return _fast(spec, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def word_level():
    """A word-level vocabulary (must be refused)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS.splitlines(), trainers.WordLevelTrainer(special_tokens=["[UNK]", BOS],
                                                                           show_progress=False))
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, unk_token="[UNK]")


def lowercasing_byte_level(vocab_size: int = 300):
    """A byte-level BPE behind a Lowercase normalizer (must be refused on text with capitals)."""
    from tokenizers import normalizers
    tok = byte_level_bpe(vocab_size)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    return tok


def bpe_without_fallback(n_pieces: int = 60):
    """Sentencepiece-style BPE WITHOUT byte fallback: an unseen character becomes <unk>."""
    spec = _sentencepiece_spec(n_pieces)
    spec["model"]["byte_fallback"] = False
    return _fast(spec, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# ----------------------------------------------------------------------------- tiny models

def tiny_gpt2(rows: int, start_id: int, seed: int = 0, init: float = 0.3):
    """A random 2-layer GPT-2 in float64 (so that a full forward and a KV-cached step give
    the same logits to ~1e-15 and a comparison measures only the byte algorithm).
    init 0.3 (not 0.02) makes the next-token distributions far from uniform."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=rows, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=init,
                     bos_token_id=start_id, eos_token_id=start_id)
    return GPT2LMHeadModel(cfg).double().eval()


# ----------------------------------------------------------------------------- the brute-force reference

class TokenProbs:
    """p(· | s, τ) for any token sequence τ, by a full forward of [s] + τ (memoized)."""

    def __init__(self, model, start_id: int):
        self.model, self.start_id = model, start_id
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.inference_mode()
    def next(self, tau: tuple[int, ...]) -> torch.Tensor:
        if tau not in self.memo:
            ids = torch.tensor([[self.start_id, *tau]])                          # [1, L]
            logits = self.model(input_ids=ids, use_cache=False).logits[0, -1]     # [V]
            self.memo[tau] = torch.softmax(logits.double(), -1)
        return self.memo[tau]

    def seq(self, tau: tuple[int, ...]) -> float:
        """p(τ | s) = Π_k p(τ_k | s, τ_<k)."""
        return math.prod(float(self.next(tau[:k])[t]) for k, t in enumerate(tau))


def tokenizations(x: bytes, table: list[bytes | None]) -> dict[int, list[tuple[int, ...]]]:
    """{j: every token sequence that spells x[:j] exactly}, j = 0..len(x)."""
    out: dict[int, list[tuple[int, ...]]] = {0: [()]}
    for j in range(1, len(x) + 1):
        out[j] = [tau + (t,) for i in range(j) for t, b in enumerate(table)
                  if b is not None and len(b) == j - i and x[i:j] == b for tau in out[i]]
    return out


@lru_cache(maxsize=None)
def _mask(table: tuple, r: bytes) -> torch.Tensor:
    """[V, 256]: 1 at (t, c) when β(t) starts with r + c (t covers r c as a last token)."""
    m = torch.zeros(len(table), 256, dtype=torch.float64)
    for t, b in enumerate(table):
        if b is not None and len(b) > len(r) and b.startswith(r):
            m[t, b[len(r)]] = 1.0
    return m


def q_of(y: bytes, probs: TokenProbs, table: list[bytes | None], tok: dict | None = None) -> float:
    """Q(y) = Σ over covers τ of y of p(τ | s), by the definition: every τ that spells a
    proper prefix y[:j], times every last token t whose bytes start with y[j:]."""
    if not y:
        return 1.0
    tok = tok or tokenizations(y, table)
    total = 0.0
    for j in range(len(y)):
        covers = torch.tensor([b is not None and b.startswith(y[j:]) for b in table], dtype=torch.float64)
        total += sum(probs.seq(tau) * float(probs.next(tau) @ covers) for tau in tok[j])
    return total


def reference_rows(model, table: list[bytes | None], start_id: int, x: bytes, context_len: int
                   ) -> tuple[torch.Tensor, int]:
    """log p(· | x[:i]) over 257 outcomes for i = context_len..len(x)-1 from the definition:
    p(c | y) = Q(y c) / Q(y) with Q(y c) for all 256 c as one sum over the covers of y c.

    p(end | y) = 1 - Σ_c p(c | y) by SPEC §7; that subtraction has an absolute error of
    ~1e-16, hence a large RELATIVE error when p(end) is small, so the row holds the same
    quantity summed directly (the texts that are exactly y: Σ_{τ spells y} p(τ) p(None | τ),
    over Q(y)), and the two are asserted equal to 1e-12 absolute.

    Also returns the most hypotheses (token sequences spelling a proper prefix of x[:i+1])
    at any position: a beam at least that wide holds every cover."""
    probs = TokenProbs(model, start_id)
    key = tuple(table)
    none = torch.tensor([b is None for b in table], dtype=torch.float64)         # [V]
    tok = tokenizations(x, table)
    rows, widest = [], 0
    for i in range(context_len, len(x)):
        y = x[:i]
        q_y = q_of(y, probs, table, tok)
        # covers of y c: τ spells y[:j] for some j ≤ |y| (a proper prefix of y c), last token
        # starts with y[j:] + c
        q_yc = torch.zeros(256, dtype=torch.float64)                              # [256]
        for j in range(i + 1):
            for tau in tok[j]:
                q_yc += probs.seq(tau) * (probs.next(tau) @ _mask(key, y[j:]))
        end = sum(probs.seq(tau) * float(probs.next(tau) @ none) for tau in tok[i]) / q_y
        end_by_spec = 1.0 - float(q_yc.sum()) / q_y
        assert abs(end - end_by_spec) < 1e-12, (i, end, end_by_spec)
        rows.append(torch.log(torch.cat([q_yc / q_y, torch.tensor([end], dtype=torch.float64)])))
        widest = max(widest, sum(len(tok[j]) for j in range(i + 1)))
    return torch.stack(rows), widest                                             # [n, 257]


def canonical_rows(model, table: list[bytes | None], start_id: int, x: bytes, context_len: int,
                   canonical: list[int]) -> torch.Tensor:
    """What a beam holding only the canonical hypothesis gives (ByteLM with beam=1): at
    x[:i] the canonical (τ, j) (τ = canonical[:k] spells x[:j], j < i ≤ end of token k)
    contributes p(τ) M_τ(x[j:i] c) within its token, and p(τ t) M_τt(c), p(τ t) p(None | τ t)
    after each token t that spells x[j:i] exactly; normalized over the 257."""
    probs = TokenProbs(model, start_id)
    key = tuple(table)
    none = torch.tensor([b is None for b in table], dtype=torch.float64)
    ends = [0]
    for t in canonical:
        ends.append(ends[-1] + len(table[t]))
    rows = []
    for i in range(context_len, len(x)):
        k = max(k for k in range(len(canonical) + 1) if ends[k] < i) if i > 0 else 0
        tau, r = tuple(canonical[:k]), x[ends[k]:i]
        q = torch.zeros(257, dtype=torch.float64)
        q[:256] += probs.seq(tau) * (probs.next(tau) @ _mask(key, r))
        if not r:
            q[256] += probs.seq(tau) * float(probs.next(tau) @ none)
        for t, b in enumerate(table):
            if b is not None and b == r:
                q[:256] += probs.seq(tau + (t,)) * (probs.next(tau + (t,)) @ _mask(key, b""))
                q[256] += probs.seq(tau + (t,)) * float(probs.next(tau + (t,)) @ none)
        rows.append(torch.log(q / q.sum()))
    return torch.stack(rows)
