"""byte_lm.ByteLM against the brute-force reference (every cover enumerated), and the
properties SPEC §7 promises: NLL_bytes ≤ NLL of the canonical tokenization, rows that
sum to 1 over 257 outcomes, the dummy prefix, a beam that never empties.

Numerics, once for the whole file. The models are float64 (byte_reference.tiny_gpt2),
so a full forward (the reference, plain=True) and a KV-cached step (ByteLM) give the
same logits to ~1e-13 and a comparison measures only the byte algorithm. After the
logits both sides are float64: the reference sums p over masks of the vocabulary
(relative error ~ V·2^-53 ≈ 5e-14 for V ≤ 400); ByteLM takes a node's mass as a
difference of two cumulative sums, whose ABSOLUTE error is ≤ V·2^-53 ≈ 5e-14 (the sums
are ≤ 1). Summed over hypotheses whose weights add to ≤ 1 and normalized, a probability
p is off by ≤ ~1e-16·p·(positions) + ~1e-13: hence rtol=1e-6 (the brief's bound, far
above that) with atol=1e-12 for the masses the cumsum leaves at ~1e-13 absolute. The
measured worst relative error is ~1e-11.
"""
from __future__ import annotations

import math

import pytest
import torch

import byte_reference as R
from kotara_worker.byte_lm import ByteLM, ByteTrie
from kotara_worker.token_bytes import canonical_ids, start_token, token_bytes

RTOL, ATOL = 1e-6, 1e-12
pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: threads only add sync cost

# (tokenizer, padding rows, text): 10-16 bytes where covers are few enough to enumerate.
# The sentencepiece vocabularies spell every ASCII letter twice ('a' and <0x61>), so a
# text of n letters has ≥ 2^n tokenizations: theirs are shorter.
CASES = {
    "byte-level": (R.byte_level_bpe, 0, "The cat sees."),
    "padded": (R.byte_level_bpe, 13, "the cat sees é"),
    "sentencepiece": (R.sentencepiece_bpe, 0, "a cat é"),
    "llama2-normalizer": (R.llama2_style_bpe, 0, "the é"),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(name, model, table, start id, canonical ids, data bytes, tokenizer)."""
    make, pad, text = CASES[request.param]
    tok = make()
    table = token_bytes(tok, len(tok) + pad)
    s = start_token(tok)
    model = R.tiny_gpt2(len(table), s, seed=len(request.param))
    ids, prefix = canonical_ids(tok, table, text)
    return request.param, model, table, s, ids, prefix + text.encode(), tok


@pytest.fixture(scope="module")
def reference(case):
    _, model, table, s, _, x, _ = case
    return R.reference_rows(model, table, s, x, 0)                       # ([n, 257], widest)


def _nll(rows: torch.Tensor, scored: bytes) -> float:
    return -float(rows[torch.arange(len(scored)), torch.tensor(list(scored))].sum())


def test_trie_ranges_are_the_tokens_under_each_node():
    table = [b"ab", None, b"a", b"abc", b"b", b"a", b"\xff", b"\xff\xff", b"ac"]
    trie = ByteTrie(table)
    for r in (b"", b"a", b"ab", b"b", b"\xff", b"ac", b"abc"):
        lo, hi, exact = trie.node(r)
        under = sorted(trie.order[lo:hi].tolist())
        assert under == sorted(i for i, b in enumerate(table) if b is not None and b.startswith(r))
        assert sorted(trie.exact_ids(r)) == [i for i, b in enumerate(table) if b == r]
        assert trie.order[lo:lo + exact].tolist() == trie.exact_ids(r)       # the exact ones come first
    assert trie.node(b"c") is None and trie.node(b"abd") is None
    nxt, _, _ = trie.children(b"a")
    assert nxt.tolist() == [ord("b"), ord("c")]
    assert trie.none_ids.tolist() == [1]


def test_agrees_with_brute_force(case, reference):
    name, model, table, s, ids, x, _ = case
    ref, widest = reference
    got, stats = ByteLM(model, table, s, beam=widest + 1, prune=0.0).score(x, 0, ids)
    assert stats.pruned == 0 and stats.max_hypotheses <= widest
    # per byte position, all 257 outcomes (tolerances: module docstring)
    assert torch.allclose(got.exp(), ref.exp(), rtol=RTOL, atol=ATOL), name
    # the text's NLL is -log Q(x), Q by its definition (every cover of x, summed): the
    # per-byte log-probs telescope; relative error ~ n·1e-13
    q = R.q_of(x, R.TokenProbs(model, s), table)
    assert _nll(got, x) == pytest.approx(-math.log(q), rel=1e-9)


def test_context_is_prefilled_not_scored(case, reference):
    _, model, table, s, ids, x, _ = case
    ref, widest = reference
    got, _ = ByteLM(model, table, s, beam=widest + 1).score(x, 4, ids)
    assert got.shape == (len(x) - 4, 257)
    assert torch.allclose(got.exp(), ref[4:].exp(), rtol=RTOL, atol=ATOL)


def test_beam_of_one_is_the_canonical_hypothesis(case):
    """K = 1 keeps only the canonical hypothesis, but its next-byte distribution still
    counts every token under its trie node and every one-token extension: it is NOT the
    canonical tokenization's NLL. It telescopes to a bound: each p(x_i) ≥ w_{i+1} / w_i
    for w the canonical hypothesis' weight, so NLL_K=1 ≤ -log w_n ≤ NLL_canonical."""
    _, model, table, s, ids, x, _ = case
    got, stats = ByteLM(model, table, s, beam=1).score(x, 0, ids)
    assert stats.max_hypotheses <= 1 or stats.pruned > 0                 # one kept, the rest dropped
    want = R.canonical_rows(model, table, s, x, 0, ids)
    assert torch.allclose(got.exp(), want.exp(), rtol=RTOL, atol=ATOL)
    probs = R.TokenProbs(model, s)
    nll_canonical = -math.log(probs.seq(tuple(ids)))
    assert _nll(got, x) <= nll_canonical + 1e-9


def test_byte_nll_never_exceeds_the_canonical_tokenization(case, reference):
    _, model, table, s, ids, x, _ = case
    ref, _ = reference
    nll_canonical = -math.log(R.TokenProbs(model, s).seq(tuple(ids)))
    assert _nll(ref, x) <= nll_canonical + 1e-9
    for beam, prune in [(2, 0.0), (3, 0.2), (8, 0.05)]:
        rows, _ = ByteLM(model, table, s, beam=beam, prune=prune).score(x, 0, ids)
        assert _nll(rows, x) <= nll_canonical + 1e-9, (beam, prune)


@pytest.mark.parametrize("beam,prune", [(1, 0.0), (2, 0.0), (2, 0.5), (64, 0.1), (10**6, 0.0)])
def test_rows_sum_to_one_and_every_byte_is_finite(case, beam, prune):
    _, model, table, s, ids, x, _ = case
    rows, stats = ByteLM(model, table, s, beam=beam, prune=prune).score(x, 0, ids)
    # a logsumexp of 257 float64 terms: error ~ 257·2^-53
    assert torch.allclose(torch.logsumexp(rows, 1), torch.zeros(len(x), dtype=torch.float64), atol=1e-12)
    assert math.isfinite(_nll(rows, x))                                   # the canonical hypothesis is never dropped
    assert 0.0 <= stats.max_pruned_share < 1.0


def test_pruning_is_reported():
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = R.tiny_gpt2(len(table), s)
    text = "The cat sees."
    ids, _ = canonical_ids(tok, table, text)
    _, exact = ByteLM(model, table, s, beam=10**6).score(text.encode(), 0, ids)
    assert exact.pruned == 0 and exact.max_pruned_share == 0.0 and exact.max_hypotheses > 2
    _, narrow = ByteLM(model, table, s, beam=2).score(text.encode(), 0, ids)
    assert narrow.pruned > 0 and narrow.pruned_positions > 0 and 0.0 < narrow.max_pruned_share < 1.0
    _, thresh = ByteLM(model, table, s, beam=10**6, prune=0.5).score(text.encode(), 0, ids)
    assert thresh.pruned > 0 and thresh.skipped_extensions > 0
    assert thresh.forwards < exact.forwards                              # skipped extensions run no model step


def test_dummy_prefix_scores_q_of_space_text_over_q_of_space():
    """A tokenizer that writes ' ' + x: score_text gives log Q(' ' x) - log Q(' ')."""
    tok = R.sentencepiece_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = R.tiny_gpt2(len(table), s, seed=3)
    text = "a cat"
    rows, _ = ByteLM(model, table, s, beam=10**6).score_text(tok, text)
    assert rows.shape == (len(text), 257)
    probs = R.TokenProbs(model, s)
    want = -math.log(R.q_of(b" " + text.encode(), probs, table)) + math.log(R.q_of(b" ", probs, table))
    assert _nll(rows, text.encode()) == pytest.approx(want, rel=1e-9)


def _llama(rows: int, s: int, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.3, bos_token_id=s, eos_token_id=s)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_forward_and_kv_steps_equal_plain_forwards(arch):
    """The speed path (canonical prefixes from one forward; the other extensions of a byte
    as one batched step on their KV caches, left-padded and masked) against one unbatched
    step each and against a full forward for every prefix: the same float64 logits to
    ~1e-13, so the same rows (rtol 1e-9; measured ~1e-12)."""
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = R.tiny_gpt2(len(table), s) if arch == "gpt2" else _llama(len(table), s, torch.float64)
    text = "The old sailor paints the quiet house."
    ids, _ = canonical_ids(tok, table, text)
    fast, fs = ByteLM(model, table, s, beam=6).score(text.encode(), 3, ids)
    single, ss = ByteLM(model, table, s, beam=6, batch=1).score(text.encode(), 3, ids)
    plain, ps = ByteLM(model, table, s, beam=6, plain=True).score(text.encode(), 3, ids)
    # the same beams; the pruned share is a float from logits that agree to ~1e-13
    same = {"forwards": 0, "max_pruned_share": 0}
    assert fs.pruned > 0 and fs.as_dict() | same == ss.as_dict() | same == ps.as_dict() | same
    assert fs.max_pruned_share == pytest.approx(ps.max_pruned_share, rel=1e-9)
    assert ss.max_pruned_share == pytest.approx(ps.max_pruned_share, rel=1e-9)
    assert fs.forwards < ss.forwards < ps.forwards
    assert torch.allclose(fast.exp(), plain.exp(), rtol=1e-9, atol=1e-15)
    assert torch.allclose(single.exp(), plain.exp(), rtol=1e-9, atol=1e-15)


def test_float32_model():
    """In the model's float32 the KV-cached step and the full forward sum in different
    orders: logits differ by ~1e-6 relative, log-probs by ~1e-5 at most (measured
    1.6e-5 on the least likely bytes); the text's NLL (~150 nats) agrees to ~1e-6."""
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = _llama(len(table), s, torch.float32)
    text = "The old sailor paints the quiet house."
    ids, _ = canonical_ids(tok, table, text)
    fast, _ = ByteLM(model, table, s, beam=6).score(text.encode(), 0, ids)
    plain, _ = ByteLM(model, table, s, beam=6, plain=True).score(text.encode(), 0, ids)
    assert fast.dtype == torch.float64 and torch.isfinite(fast).any(1).all()
    assert _nll(fast, text.encode()) == pytest.approx(_nll(plain, text.encode()), rel=1e-6)
    assert torch.allclose(fast.exp(), plain.exp(), rtol=1e-4, atol=1e-7)


def test_loaded_model_and_from_tokenizer():
    class Loaded:                                                         # models.LoadedModel's shape: .model
        def __init__(self, model):
            self.model = model
    tok = R.byte_level_bpe()
    model = R.tiny_gpt2(len(tok) + 13, start_token(tok))
    lm = ByteLM.from_tokenizer(Loaded(model), tok, beam=4)
    assert lm.model is model and len(lm.table) == len(tok) + 13 and lm.table[-13:] == [None] * 13
    rows, _ = lm.score_text(tok, "The cat.", 2)
    assert rows.shape == (6, 257)


def test_errors():
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = R.tiny_gpt2(len(table), s)                                    # 64 positions
    with pytest.raises(ValueError, match="beam"):
        ByteLM(model, table, s, beam=0)
    with pytest.raises(ValueError, match="prune"):
        ByteLM(model, table, s, prune=1.0)
    lm = ByteLM(model, table, s)
    ids, _ = canonical_ids(tok, table, "The cat.")
    with pytest.raises(ValueError, match="do not spell"):
        lm.score(b"The dog.", 0, ids)
    with pytest.raises(ValueError, match="context_len"):
        lm.score(b"The cat.", 8, ids)
    long = "é" * 80                                                       # 160 byte tokens
    with pytest.raises(ValueError, match="64 positions"):
        lm.score_text(tok, long)


def test_windows_scored_together_equal_each_alone():
    """score_many advances several windows byte by byte together (their extensions share
    forwards, the canonical hypothesis' sure extensions are stepped ahead): each window's
    rows and beam are those of score() alone (float64: rtol 1e-9)."""
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    model = R.tiny_gpt2(len(table), s)
    texts = ["The old sailor paints", "a red boat near the sea.", "My neighbour finds three apples."]
    items = []
    for k, text in enumerate(texts):
        ids, _ = canonical_ids(tok, table, text)
        items.append((text.encode(), k, ids))                               # context 0, 1, 2 bytes
    for beam, prune in ((1, 0.0), (6, 0.0), (6, 0.05)):
        lm = ByteLM(model, table, s, beam=beam, prune=prune)
        together = lm.score_many(items)
        for (data, ctx, ids), (rows, stats) in zip(items, together):
            alone, alone_stats = ByteLM(model, table, s, beam=beam, prune=prune, batch=1).score(data, ctx, ids)
            assert rows.shape == (len(data) - ctx, 257)
            assert torch.allclose(rows.exp(), alone.exp(), rtol=1e-9, atol=1e-15)
            assert stats.pruned == alone_stats.pruned and stats.max_hypotheses == alone_stats.max_hypotheses
        if beam == 1:     # the canonical hypothesis' extensions, all stepped ahead: a few forwards a window
            assert all(st.forwards <= 3 for _, st in together), [st.forwards for _, st in together]


def test_should_stop_interrupts_between_bytes():
    from kotara_worker.byte_lm import Interrupted
    tok = R.byte_level_bpe()
    table, s = token_bytes(tok), start_token(tok)
    lm = ByteLM(R.tiny_gpt2(len(table), s), table, s, beam=2)
    ids, _ = canonical_ids(tok, table, "The cat sees.")
    asked = []
    with pytest.raises(Interrupted):
        lm.score_many([(b"The cat sees.", 0, ids)], should_stop=lambda: asked.append(1) or len(asked) >= 4)
    assert len(asked) == 4
