"""The bytes of every token (SPEC §7): what a token LM writes, as bytes.

A tokenizer's vocabulary stores tokens in an alphabet of its own:

- byte-level BPE (GPT-2, Llama 3, Qwen, Pythia): every byte is one printable
  character of GPT-2's `bytes_to_unicode` table ('Ġ' is the space byte 0x20, ...);
  the bytes of a token are its characters mapped back through that table;
- sentencepiece-style (Llama 2, Mistral; `tokenizers` BPE/Unigram with a Metaspace
  pre-tokenizer or a Replace('▁') normalizer): '▁' is a space, `<0xNN>` is the byte
  NN when the model falls back to bytes, anything else is its UTF-8;
- added tokens: their content as UTF-8, unless special.

A token with no bytes (None: EOS, BOS, any special token, a padding row of the
output layer past the tokenizer's vocabulary) ends the text the model writes.

Nothing here decodes: `tokenizer.decode` post-processes (strips the dummy prefix,
cleans up spaces) and so cannot say what one token writes. Instead `canonical_ids`
checks the decode-free round trip: the concatenated bytes of tokenizer(text) must be
the text's UTF-8 (after the dummy prefix), which refuses what a table of bytes cannot
see: a lowercasing normalizer, an unknown token, a word-level vocabulary.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

SPACE_MARK = "▁"   # U+2581, sentencepiece's space


class ByteSpaceError(ValueError):
    """A tokenizer that cannot be used in byte space; str(e) is the reason."""


# ----------------------------------------------------------------------------- GPT-2's byte alphabet

@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves,
    the other 68 (control bytes, space, 0x7F-0xA0, 0xAD) are shifted to U+0100.."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(printable, chars)}


# ----------------------------------------------------------------------------- what kind of tokenizer

def _backend_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ByteSpaceError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; byte "
                             "space reads the token alphabet from tokenizer.json (load it with use_fast=True)")
    return json.loads(backend.to_str())


def _components(node: Any) -> list[dict[str, Any]]:
    """A pre-tokenizer / normalizer / decoder and everything in its Sequences, flattened."""
    if not isinstance(node, dict):
        return []
    inner = node.get("pretokenizers") or node.get("normalizers") or node.get("decoders")
    if node.get("type") == "Sequence" and isinstance(inner, list):
        return [c for n in inner for c in _components(n)]
    return [node]


def _kind(spec: dict[str, Any]) -> str:
    """'byte_level' | 'sentencepiece' | 'plain' (tokens are their own UTF-8)."""
    model_type = spec.get("model", {}).get("type")
    if model_type == "WordLevel":
        raise ByteSpaceError("the tokenizer has a word-level vocabulary: it cannot spell a word it does not "
                             "know (those become its unknown token), so it is no distribution over bytes")
    if model_type == "WordPiece":
        raise ByteSpaceError("the tokenizer is WordPiece: its text is not the concatenation of its tokens "
                             "(decoding drops '##' and inserts spaces between words)")
    parts = _components(spec.get("pre_tokenizer")) + _components(spec.get("decoder"))
    if any(p.get("type") == "ByteLevel" for p in parts):
        return "byte_level"
    replaces = [p for p in _components(spec.get("normalizer")) + parts if p.get("type") == "Replace"]
    if any(p.get("type") == "Metaspace" for p in parts) \
            or any(SPACE_MARK in json.dumps(p, ensure_ascii=False) for p in replaces):
        return "sentencepiece"
    return "plain"


def has_dummy_prefix(tokenizer: Any) -> bool:
    """True when the tokenizer writes ' ' before the text (sentencepiece's add_dummy_prefix):
    a Metaspace pre-tokenizer with prepend_scheme first/always (add_prefix_space in older
    files), or a Prepend('▁') normalizer (Llama 2's converted tokenizer.json). A ByteLevel
    pre-tokenizer with add_prefix_space does the same."""
    spec = _backend_json(tokenizer)
    for p in _components(spec.get("pre_tokenizer")):
        if p.get("type") == "Metaspace" and (p.get("prepend_scheme") in ("first", "always")
                                             or p.get("add_prefix_space") is True):
            return True
        if p.get("type") == "ByteLevel" and p.get("add_prefix_space") is True:
            return True
    return any(n.get("type") == "Prepend" and n.get("prepend") == SPACE_MARK
               for n in _components(spec.get("normalizer")))


# ----------------------------------------------------------------------------- the table

def _piece_bytes(piece: str, kind: str, byte_fallback: bool, alphabet: dict[str, int]) -> bytes | None:
    """The bytes of one vocabulary piece; None when it has characters outside the alphabet."""
    if kind == "byte_level":
        try:
            return bytes(alphabet[ch] for ch in piece)
        except KeyError:
            return None
    if kind == "sentencepiece" and byte_fallback and len(piece) == 6 and piece.startswith("<0x") \
            and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    text = piece.replace(SPACE_MARK, " ") if kind == "sentencepiece" else piece
    return text.encode("utf-8")


def token_bytes(tokenizer: Any, rows: int | None = None) -> list[bytes | None]:
    """bytes | None per token id, for ids 0 .. max(rows, tokenizer size) - 1.

    rows: the model's output rows; rows past the tokenizer's vocabulary (a padded
    embedding matrix) are None. Raises ByteSpaceError with the reason for a tokenizer
    whose tokens cannot be mapped to bytes."""
    spec = _backend_json(tokenizer)
    kind = _kind(spec)
    byte_fallback = bool(spec.get("model", {}).get("byte_fallback", False))
    alphabet = unicode_to_byte()
    vocab: dict[str, int] = tokenizer.get_vocab()            # base vocabulary and added tokens
    size = max(max(vocab.values()) + 1, len(tokenizer))
    if rows is not None and rows < size:
        raise ByteSpaceError(f"the output layer has {rows} rows but the tokenizer has {size} ids")
    table: list[bytes | None] = [None] * max(size, rows or 0)

    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    unmapped: list[str] = []
    for piece, i in vocab.items():
        if i in added:
            continue
        b = _piece_bytes(piece, kind, byte_fallback, alphabet)
        if b is None:
            unmapped.append(f"{i}:{piece!r}")
        # an empty token would write nothing: it is counted with the tokens that end the
        # text rather than allowing unboundedly many covers of every string
        table[i] = b or None
    if unmapped:
        raise ByteSpaceError(f"{len(unmapped)} tokens of this byte-level vocabulary have characters outside "
                             f"GPT-2's byte alphabet, so their bytes are unknown (first: {', '.join(unmapped[:5])})")
    for i, tok in added.items():
        if tok.special:
            continue                                          # None: special tokens end the text
        content = tok.content
        if kind == "sentencepiece" and tok.normalized:
            content = content.replace(SPACE_MARK, " ")        # matched against the '▁'-normalized text
        table[i] = content.encode("utf-8") or None
    return table


# ----------------------------------------------------------------------------- start token, round trip

def start_token(tokenizer: Any) -> int:
    """s_m: BOS, or EOS where the tokenizer has no BOS (SPEC §7)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ByteSpaceError("the tokenizer has neither a BOS nor an EOS token to start from")


def canonical_ids(tokenizer: Any, table: list[bytes | None], text: str,
                  dummy_prefix: bool | None = None) -> tuple[list[int], bytes]:
    """The canonical tokenization of text (tokenizer(text), no special tokens added) and the
    prefix the tokenizer writes before it (b' ' with a dummy prefix, else b'').

    Raises ByteSpaceError unless the concatenated bytes of those tokens are prefix + the
    text's UTF-8: the decode-free round trip (a lowercasing normalizer, an unknown token,
    a normalization that changes characters all fail it). dummy_prefix: has_dummy_prefix(
    tokenizer), for a caller that tokenizes many texts (it reads the tokenizer's JSON)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    want = text.encode("utf-8")
    pieces = [table[i] if i < len(table) else None for i in ids]
    missing = [(k, i) for k, (i, b) in enumerate(zip(ids, pieces)) if b is None]
    if missing:
        k, i = missing[0]
        what = ("the unknown token" if i == tokenizer.unk_token_id else
                "a special token (its text is in the text)" if i in tokenizer.all_special_ids else
                "a token with no bytes")
        raise ByteSpaceError(f"the tokenizer cannot reproduce the text: token {k} is {what} "
                             f"{tokenizer.convert_ids_to_tokens(i)!r} (id {i}), near byte "
                             f"{len(b''.join(pieces[:k]))} ({len(missing)} such tokens)")
    got = b"".join(pieces)                                    # every piece is bytes here
    if dummy_prefix is None:
        dummy_prefix = has_dummy_prefix(tokenizer)
    prefixes = (b"", b" ") if dummy_prefix else (b"",)
    for prefix in prefixes:
        if got == prefix + want:
            return ids, prefix
    want = prefixes[-1] + want                                # what it should spell, as it would
    first = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    near = slice(max(0, first - 8), first + 8)
    raise ByteSpaceError(f"the tokenizer cannot reproduce the text: its tokens spell {got[near]!r} where "
                         f"the text has {want[near]!r} (byte {first}; a normalizer that lowercases or "
                         "rewrites characters?)")
