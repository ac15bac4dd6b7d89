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
