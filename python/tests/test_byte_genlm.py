"""byte_lm.ByteLM against genlm-bytes (Vieira et al.'s own implementation), where
both are exact: a beam wider than the number of hypotheses, no pruning.

genlm-bytes is a dev extra (it pulls genlm-backend, numba, bitsandbytes, ...): not in
requirements.txt, so this skips wherever it is not installed, CI included. How to
install it without touching the project's torch: docs/byte-space.md.

Where the two conventions differ, the comparison avoids the difference:
- genlm-bytes spells special tokens as their text (b"<|endoftext|>", b"<unk>") unless
  they are named in eos_byte_strings, which turns them into its EOS outcome (index 257
  of its 258: bytes, EOT, EOS). Naming every special token makes its EOS our "end"
  (index 256: the tokens with no bytes) and its byte '<' ours.
- genlm-bytes has no dummy prefix: it is given the bytes our tokenizer writes
  (' ' + text for the sentencepiece one) and scores from its BOS, as score() does.

Tolerance: genlm-bytes takes log_softmax in float32 and sums node masses with a float32
sparse matmul (ByteLM: float64 after the logits), so each of its next-byte probabilities
is off by ~1e-7 (measured ≤ 1.4e-7); over n ≤ 25 bytes the text's NLL moves by
≲ n·1e-7 nats, under 1e-6 relative for NLLs over ~3 nats. Measured: 4e-8.
"""
from __future__ import annotations

import asyncio
import warnings

import pytest
import torch

pytest.importorskip("genlm.bytes")

import byte_reference as R  # noqa: E402
from kotara_worker.byte_lm import ByteLM  # noqa: E402
from kotara_worker.token_bytes import canonical_ids, start_token, token_bytes  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


async def _genlm_rows(model, tok, data: bytes) -> tuple[torch.Tensor, float]:
    """genlm-bytes' next-byte log-probs [n, 258] before each byte of data, and its log Z
    (log Q(data)) after prefilling all of it."""
    from genlm.backend.llm import AsyncTransformer
    from genlm.bytes import BeamParams, ByteBeamState
    llm = AsyncTransformer(model, tok)
    specials = [t.encode() for t in tok.all_special_tokens]
    params = BeamParams(K=10**6, prune_threshold=0.0, heal=False, eos_byte_strings=specials)
    beam = await ByteBeamState.initial(llm, params)
    rows, state = [], beam
    for b in data:
        rows.append(torch.tensor((await state.logp_next()).ps, dtype=torch.float64))
        state = await (state.prune() << b)
    log_z = float((await beam.prefill(data)).logZ)
    return torch.stack(rows), log_z


@pytest.mark.parametrize("make,text", [(R.byte_level_bpe, "The cat sees the old dog."),
                                       (R.sentencepiece_bpe, "a cat é")],
                         ids=["byte-level", "sentencepiece"])
def test_exact_beams_agree_with_genlm_bytes(make, text):
    tok = make()
    table, s = token_bytes(tok), start_token(tok)                        # unpadded: genlm's vocabulary size
    model = R.tiny_gpt2(len(table), s).float()                           # the dtype Kotara runs on CPU
    ids, prefix = canonical_ids(tok, table, text)
    data = prefix + text.encode()
    mine, stats = ByteLM(model, table, s, beam=10**6).score(data, 0, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                 # genlm-backend's past_key_values, asyncio
        theirs, log_z = asyncio.run(_genlm_rows(model, tok, data))
    assert stats.pruned == 0
    at = torch.arange(len(data)), torch.tensor(list(data))
    nll_mine, nll_theirs = -float(mine[at].sum()), -float(theirs[at].sum())
    assert nll_mine == pytest.approx(nll_theirs, rel=1e-6)
    assert nll_mine == pytest.approx(-log_z, rel=1e-6)                   # their Q(data): the same telescoped sum
    # every outcome: bytes, and our end = their EOS (their EOT column is empty after the beam sums)
    assert torch.allclose(mine[:, :256].exp(), theirs[:, :256].exp(), atol=1e-6)
    assert torch.allclose(mine[:, 256].exp(), theirs[:, 257].exp(), atol=1e-6)
    assert float(theirs[:, 256].exp().max()) == 0.0
