"""models.load_models through the real loading path, on the tiny checkpoints."""
from __future__ import annotations

import pytest
import torch

from conftest import spec
from kotara_worker.models import load_models
from kotara_worker.protocol import RequestError

pytestmark = pytest.mark.usefixtures("one_thread")


def load(refs, tokenizer=None, max_length=64, bos=False, **kw):
    messages: list[str] = []
    tok, models = load_models([spec(r, **kw) for r in refs], tokenizer, max_length, bos, messages.append)
    return tok, models, messages


def load_error(*args, **kw) -> RequestError:
    with pytest.raises(RequestError) as e:
        load(*args, **kw)
    return e.value


def test_loads_and_describes(tiny):
    tok, models, messages = load([tiny["gpt2-a"], tiny["llama"], tiny["gpt2-padded"], tiny["gemma2-softcap"]])
    assert len(tok) == 400 and tok.bos_token_id is not None
    assert [m.vocab_size for m in models] == [400, 400, 413, 400]
    assert [m.head_path for m in models] == ["scored", "scored", "scored", "full"]
    for m in models:
        d = m.describe()
        assert set(d) == {"ref", "device", "dtype", "parameters", "vocab_size", "max_positions", "head_path",
                          "tokenizer"}
        assert d["tokenizer"] == str(tiny["gpt2-a"])                    # the shared one, in token space
        assert d["device"] == "cpu" and d["dtype"] == "float32" and d["max_positions"] == 128
        assert d["parameters"] == sum(p.numel() for p in m.model.parameters()) > 0
        assert not m.model.training
    assert any("gpt2-a" in s for s in messages)


def test_scored_head_reproduces_the_model_logits(tiny):
    _, models, _ = load([tiny["gpt2-a"], tiny["llama"]])
    ids = torch.arange(40).remainder(400).view(2, 20)
    for m in models:
        h = m.hidden(ids)                                                   # [2, 20, H]
        z = m.head(h.reshape(-1, h.shape[-1])).view(2, 20, -1)              # [2, 20, V]
        assert torch.allclose(z, m.full_logits(ids), atol=1e-5, rtol=1e-5)


def test_dtypes(tiny):
    _, models, _ = load([tiny["gpt2-a"], tiny["gpt2-b"]], dtype="bfloat16")
    assert all(m.dtype == torch.bfloat16 and next(m.model.parameters()).dtype == torch.bfloat16 for m in models)
    assert all(m.describe()["dtype"] == "bfloat16" for m in models)


def test_mismatched_tokenizers_are_refused(tiny):
    e = load_error([tiny["gpt2-a"], tiny["gpt2-othertok"]])
    assert e.code == "tokenizer_mismatch"
    assert "gpt2-othertok" in e.message and "gpt2-a" in e.message and "first difference" in e.message
    # the same files under another name are fine: vocabularies are compared, not names
    _, models, _ = load([tiny["gpt2-a"], tiny["gpt2-b"]], tokenizer=str(tiny["llama"]))
    assert len(models) == 2


def test_too_few_output_rows_are_refused(tiny, tmp_path):
    from tiny_models import gpt2
    gpt2(390, 0, seed=1).save_pretrained(tmp_path / "short")               # no tokenizer of its own
    e = load_error([tiny["gpt2-a"], tmp_path / "short"])
    assert e.code == "tokenizer_mismatch" and "390" in e.message and "400" in e.message


def test_remote_code_is_never_implied(tiny):
    e = load_error([tiny["gpt2-a"], tiny["remote-code"]])
    assert e.code == "remote_code" and "trust_remote_code: true" in e.message
    assert "remote-code" in e.message


def test_not_found_names_where_it_looked(tiny, tmp_path, monkeypatch):
    e = load_error([tiny["gpt2-a"], tmp_path / "nothing-here"])
    assert e.code == "not_found" and str(tmp_path / "nothing-here") in e.message

    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    e = load_error(["kotara-tests/no-such-model", tiny["gpt2-a"]])
    assert e.code == "not_found"
    assert "kotara-tests/no-such-model" in e.message and str(tmp_path / "hub-cache") in e.message
    assert "offline" in e.message


def test_a_model_without_a_tokenizer_needs_one_named(tiny, tmp_path):
    from tiny_models import gpt2
    gpt2(400, 0, seed=2).save_pretrained(tmp_path / "bare")
    e = load_error([tmp_path / "bare", tiny["gpt2-a"]])
    assert e.code == "not_found" and "tokenizer" in e.message
    tok, models, _ = load([tmp_path / "bare", tiny["gpt2-a"]], tokenizer=str(tiny["gpt2-a"]))
    assert models[0].vocab_size == len(tok)


def test_context_is_checked_with_the_bos(tiny):
    load([tiny["gpt2-a"], tiny["llama"]], max_length=128)
    e = load_error([tiny["gpt2-a"], tiny["llama"]], max_length=128, bos=True)
    assert e.code == "context" and "128" in e.message and "129" in e.message
    assert load_error([tiny["gpt2-a"]], max_length=500).code == "context"
