"""Generation's fast paths (generate.py) keep its numbers and its text:

- the prefill computes the logits of each row's last position only (logits_to_keep=1
  where the model's forward takes it), the per-row values come out of one gather, and
  greedy picks on the logits' device: the reported fused log-probs still equal
  evaluation's teacher-forced ones (fusion.score_each_position on a full forward of
  prompt + output, no cache) within 1e-4, and greedy's tokens are their argmax;
- the text is decoded incrementally (a window of a few tokens per step, not every token
  again): what streams, chunk by chunk, and the output's text equal one decode of all
  the output's tokens (cut at a stop string), for the tokenizer kinds Kotara meets
  (byte-level BPE, word level with a WordPiece decoder, Metaspace / SentencePiece-style),
  random ids included (partial UTF-8 characters, special tokens in the middle).
"""
from __future__ import annotations

import random

import pytest
import torch

from conftest import spec
from kotara_worker import generate as gen
from kotara_worker.fusion import score_each_position
from kotara_worker.models import load_models

SETTINGS = [
    {"id": "entropy", "type": "entropy", "temperatures": [1.0, 1.0], "betas": None, "weights": None},
    {"id": "average T", "type": "average", "temperatures": [0.8, 1.3], "betas": None, "weights": None},
    {"id": "mix", "type": "mix", "temperatures": [1.0, 1.0], "betas": None, "weights": [0.7, 0.3]},
    {"id": "gap", "type": "gap", "temperatures": [1.0, 1.15], "betas": None, "weights": None},
]
PROMPTS = ["", "The cat", "A small dog sees the river every day. The old sailor"]


def _run(models, tok, setting, prompts, max_new, stop=(), sampling=None):
    start = tok.bos_token_id
    req = gen.Request(list(prompts), setting, max_new, sampling or gen.Sampling(), list(stop), True)
    steps: list[list[dict]] = []
    out = gen.generate(models, tok, len(tok), req, start, lambda s, c: steps.append(c), lambda: False)
    return out, steps


def _teacher_forced(models, tok, setting, prompt: str, tokens: list[int]) -> torch.Tensor:
    """-NLL per generated token, from evaluation's code path on a full forward (no cache)."""
    ids = [tok.bos_token_id, *(tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])]
    seq = torch.tensor([ids + tokens[:-1]])                                      # [1, L]
    first = len(ids) - 1                                                          # predicts tokens[0]
    logits = [m.full_logits(seq)[0, first:] for m in models]                      # [n, V_m]
    scores = score_each_position(logits, torch.tensor(tokens), len(tok), [setting])
    return -scores.fusion_nll[0]


def _load(tiny, names):
    from transformers.utils import logging
    logging.set_verbosity_error()
    return load_models([spec(tiny[n]) for n in names], None, None, True, lambda m: None)


@pytest.fixture(scope="module")
def pair(tiny):
    return _load(tiny, ["gpt2-a", "llama"])


@pytest.fixture(scope="module")
def odd_pair(tiny):
    """More output rows than the vocabulary; logits soft-capped after the head."""
    return _load(tiny, ["gpt2-padded", "gemma2-softcap"])


@pytest.mark.parametrize("setting", SETTINGS, ids=[s["id"] for s in SETTINGS])
def test_logprobs_equal_teacher_forced_evaluation(pair, setting, one_thread):
    tok, models = pair
    out, _ = _run(models, tok, setting, PROMPTS, 10)
    for o, prompt in zip(out["outputs"], PROMPTS):
        ref = _teacher_forced(models, tok, setting, prompt, o["tokens"])
        got = torch.tensor(o["logprobs"], dtype=torch.float64)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (setting["id"], prompt, (got - ref).abs().max())


def test_logprobs_equal_teacher_forced_evaluation_padded_and_softcapped(odd_pair, one_thread):
    tok, models = odd_pair
    for setting in SETTINGS[:2]:
        out, _ = _run(models, tok, setting, PROMPTS, 8)
        for o, prompt in zip(out["outputs"], PROMPTS):
            ref = _teacher_forced(models, tok, setting, prompt, o["tokens"])
            got = torch.tensor(o["logprobs"], dtype=torch.float64)
            assert torch.allclose(got, ref, atol=1e-4, rtol=0), (setting["id"], prompt, (got - ref).abs().max())


def test_greedy_picks_the_fused_argmax(pair, one_thread):
    tok, models = pair
    from kotara_worker.fusion import fused_log_probs
    setting = SETTINGS[0]
    out, _ = _run(models, tok, setting, PROMPTS[1:2], 8)
    o = out["outputs"][0]
    ids = [tok.bos_token_id, *tok(PROMPTS[1], add_special_tokens=False)["input_ids"]]
    seq = torch.tensor([ids + o["tokens"][:-1]])
    logits = [m.full_logits(seq)[0, len(ids) - 1:] for m in models]
    logp, _ = fused_log_probs(logits, len(tok), setting)
    best = logp.max(-1).values
    chosen = logp.gather(1, torch.tensor(o["tokens"])[:, None]).squeeze(1)
    assert (best - chosen).max() <= 1e-5, (best - chosen)                       # argmax (up to a near-tie)


def test_batched_rows_equal_rows_alone(pair, one_thread):
    tok, models = pair
    setting = SETTINGS[0]
    together, _ = _run(models, tok, setting, PROMPTS, 8)
    for i, prompt in enumerate(PROMPTS):
        alone, _ = _run(models, tok, setting, [prompt], 8)
        a, b = alone["outputs"][0], together["outputs"][i]
        assert a["tokens"] == b["tokens"] and a["text"] == b["text"]
        assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4


def test_prefill_keeps_only_the_last_position_and_agrees(pair, one_thread):
    tok, models = pair
    m = models[0]
    rows = [gen.Row(i, [tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]], 0)
            for i, p in enumerate(PROMPTS)]
    ids, mask = gen._left_pad(rows, tok.bos_token_id)
    d = gen._Decoder(m.model, m.device)
    assert d.keep_last, "the tiny GPT-2's forward takes logits_to_keep"
    last = d.prefill(ids, mask)                                                  # [B, V]
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        full = m.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert last.shape == full.shape
    assert torch.allclose(last, full, atol=1e-5, rtol=0)


def test_stream_and_text_equal_one_decode(pair, one_thread):
    tok, models = pair
    setting = SETTINGS[0]
    out, steps = _run(models, tok, setting, PROMPTS, 16)
    streamed = {i: "" for i in range(len(PROMPTS))}
    for chunks in steps:
        for c in chunks:
            streamed[c["prompt"]] += c["text"]
    for o in out["outputs"]:
        toks = o["tokens"][:-1] if o["finish"] == "end" else o["tokens"]
        assert o["text"] == tok.decode(toks, skip_special_tokens=False)
        assert streamed[o["prompt"]] == o["text"]


def test_stop_string_cuts_where_one_decode_would(pair, one_thread):
    tok, models = pair
    setting = SETTINGS[0]
    free, _ = _run(models, tok, setting, PROMPTS[1:2], 16)
    text = free["outputs"][0]["text"]
    assert len(text) > 6, text
    stop = text[len(text) // 2: len(text) // 2 + 3]                               # a piece of what it writes
    cut, steps = _run(models, tok, setting, PROMPTS[1:2], 16, stop=[stop])
    o = cut["outputs"][0]
    assert o["finish"] == "stop" and o["text"] == text[:text.find(stop)]
    assert "".join(c["text"] for chunks in steps for c in chunks) == o["text"]


# ----------------------------------------------------------------------------- the incremental decoder alone

def _word_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["[UNK]", "the", "cat", ".", ",", "'", "s", "n't", "do", "##ing", "play", "(", ")", "<|endoftext|>"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")                                # the bench's tokenizer kind
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>")


def _metaspace():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    pieces = ["<unk>", "▁the", "▁cat", "s", "▁", "▁sat", ".", "é", "▁é", "<s>", "</s>"]
    tok = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _tokenizers(tiny):
    from transformers import AutoTokenizer
    out = {"byte-level BPE": AutoTokenizer.from_pretrained(tiny["gpt2-a"]),
           "byte-level BPE, other": AutoTokenizer.from_pretrained(tiny["gpt2-othertok"]),
           "word level": _word_level(), "metaspace": _metaspace()}
    return out


TOKENIZERS = ["byte-level BPE", "byte-level BPE, other", "word level", "metaspace"]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_incremental_decoding_equals_one_decode(tiny, name):
    tok = _tokenizers(tiny)[name]
    tok.clean_up_tokenization_spaces = False        # transformers 5's default, and every tokenizer's here
    rng = random.Random(name)
    V = len(tok)
    for _ in range(60):
        ids = [rng.randrange(V) for _ in range(rng.randint(1, 40))]
        text = gen._TextTail(tok)
        pieces = [text.push(t) for t in ids]
        pieces.append(text.flush())
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False), (name, ids)


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("cleanup", [False, True])
def test_a_rows_text_is_one_decode_of_its_tokens(tiny, name, cleanup):
    """_advance over random tokens: the output text is one decode of the tokens (without
    the end token), cut before the first stop string; without the Python-side clean-up
    of spaces (which changes text already written: "a ." becomes "a." when the "." comes)
    the chunks add up to exactly that text."""
    tok = _tokenizers(tiny)[name]
    tok.clean_up_tokenization_spaces = cleanup
    rng = random.Random(f"{name}{cleanup}")
    V, eos = len(tok), tok.eos_token_id
    for trial in range(40):
        ids = [rng.randrange(V) for _ in range(rng.randint(1, 30))]
        full = tok.decode(ids, skip_special_tokens=False)
        stop = [full[len(full) // 2:len(full) // 2 + 2]] if trial % 3 == 0 and len(full) > 4 else []
        r = gen.Request(["x"], {}, len(ids), gen.Sampling(), stop, True)
        row = gen.Row(0, [0], 0, tail=gen._TextTail(tok))
        chunks = []
        for t in ids:
            chunks.append(gen._advance(row, t, -1.0, [1.0], tok, eos, r))
            if row.finish is not None:
                break
        used = row.tokens[:-1] if row.finish == "end" else row.tokens
        want = tok.decode(used, skip_special_tokens=False) if used else ""
        hits = [h for h in (want.find(x) for x in stop) if h >= 0]
        want = want[:min(hits)] if hits else want
        assert row.text == want, (name, ids)
        assert chunks[-1]["done"] and not any(c["done"] for c in chunks[:-1])
        if not cleanup:
            assert "".join(c["text"] for c in chunks) == want, (name, ids)


def test_incremental_decoding_holds_a_partial_character(tiny):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny["gpt2-a"])
    ids = tok.convert_tokens_to_ids(["Ã", "©"])                                  # 'é' = C3 A9, one byte token each
    assert tok.decode(ids) == "é" and tok.unk_token_id not in ids
    text = gen._TextTail(tok)
    assert text.push(ids[0]) == ""                                               # half a character: held
    assert text.push(ids[1]) == "é"
    assert text.push(ids[0]) == "" and text.flush() == "\ufffd"                   # the end flushes what is held
