"""token_bytes: the bytes of every token, for each kind of tokenizer byte space meets,
and the refusals (SPEC §7) with their reasons."""
from __future__ import annotations

import pytest

import byte_reference as R
from kotara_worker.token_bytes import (ByteSpaceError, canonical_ids, has_dummy_prefix, start_token,
                                       token_bytes, unicode_to_byte)

# ASCII, a two-byte and a four-byte character, a newline, a double space
TEXT = "The cat sees é 🙂.\nA  dog"


def test_gpt2_alphabet_is_a_bijection_onto_bytes():
    table = unicode_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["A"] == 0x41


def test_byte_level_bpe():
    tok = R.byte_level_bpe()
    table = token_bytes(tok)
    assert len(table) == len(tok)
    assert table[tok.bos_token_id] is None                               # the special token ends the text
    assert sorted(b[0] for b in table if b is not None and len(b) == 1) == list(range(256))
    assert table[tok.convert_tokens_to_ids("Ġthe")] == b" the"
    assert not has_dummy_prefix(tok)
    ids, prefix = canonical_ids(tok, table, TEXT)
    assert prefix == b"" and b"".join(table[i] for i in ids) == TEXT.encode()


@pytest.mark.parametrize("make", [R.sentencepiece_bpe, R.llama2_style_bpe], ids=["metaspace", "normalizer"])
def test_sentencepiece_style_with_byte_fallback(make):
    tok = make()
    table = token_bytes(tok)
    assert table[:3] == [None, None, None]                               # <unk> <s> </s>
    assert table[3:3 + 256] == [bytes([b]) for b in range(256)]          # <0x00>..<0xFF>
    assert table[tok.convert_tokens_to_ids("▁the")] == b" the"
    assert has_dummy_prefix(tok)
    ids, prefix = canonical_ids(tok, table, TEXT)
    assert prefix == b" "                                                 # it writes ' ' + text
    assert b"".join(table[i] for i in ids) == b" " + TEXT.encode()
    assert "<0xC3>" in tok.convert_ids_to_tokens(ids)                    # é went through byte fallback


def test_dummy_prefix_before_a_leading_space():
    # Metaspace prepends '▁' only when the text does not start with one: the tokens then
    # spell the text itself. The Prepend normalizer always prepends.
    tok = R.sentencepiece_bpe()
    assert canonical_ids(tok, token_bytes(tok), " the cat")[1] == b""
    tok = R.llama2_style_bpe()
    assert canonical_ids(tok, token_bytes(tok), " the cat")[1] == b" "


def test_added_tokens_and_padded_output_layer():
    tok = R.byte_level_bpe()
    tok.add_tokens(["<foo>"])                                            # an ordinary added token
    tok.add_special_tokens({"additional_special_tokens": ["<bar>"]})
    table = token_bytes(tok, rows=len(tok) + 13)                         # 13 padding rows
    assert len(table) == len(tok) + 13
    assert table[tok.convert_tokens_to_ids("<foo>")] == b"<foo>"
    assert table[tok.convert_tokens_to_ids("<bar>")] is None
    assert table[len(tok):] == [None] * 13
    ids, _ = canonical_ids(tok, table, "a<foo>b")
    assert tok.convert_tokens_to_ids("<foo>") in ids
    with pytest.raises(ByteSpaceError, match="special token"):
        canonical_ids(tok, table, "a<bar>b")
    with pytest.raises(ByteSpaceError, match="rows"):
        token_bytes(tok, rows=len(tok) - 1)


def test_start_token():
    assert start_token(R.sentencepiece_bpe()) == 1                       # BOS <s>
    tok = R.byte_level_bpe()
    tok.bos_token = None
    assert start_token(tok) == tok.eos_token_id                          # EOS where there is no BOS


def test_word_level_is_refused():
    with pytest.raises(ByteSpaceError, match="word-level"):
        token_bytes(R.word_level())


def test_lowercasing_normalizer_is_refused_on_capitals():
    tok = R.lowercasing_byte_level()
    table = token_bytes(tok)
    with pytest.raises(ByteSpaceError, match="cannot reproduce.*b'the cat") as e:
        canonical_ids(tok, table, TEXT)
    assert "b'The cat" in str(e.value)
    canonical_ids(tok, table, "the cat")                                  # lowercase text is reproduced


def test_unknown_token_is_refused():
    tok = R.bpe_without_fallback()
    table = token_bytes(tok)
    with pytest.raises(ByteSpaceError, match="unknown token '<unk>'"):
        canonical_ids(tok, table, TEXT)


def test_slow_tokenizer_is_refused():
    class Slow:
        pass
    with pytest.raises(ByteSpaceError, match="not a fast"):
        token_bytes(Slow())
