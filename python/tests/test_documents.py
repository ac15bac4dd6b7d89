"""Datasets of documents (kotara_worker.datasets) and documents mode (lm-eval's rolling
windows: windows.plan_document_windows, the server's evaluate_documents)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from conftest import spec
from kotara_worker import datasets as kd
from kotara_worker import server
from kotara_worker.windows import plan_document_windows
from test_server import FakeChannel, evaluate_message
from test_fusion import setting

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- lm-evaluation-harness's rolling windows, transcribed from its documented algorithm ----
# (lm_eval/utils.py get_rolling_token_windows and make_disjoint_window, as their docstrings
# and the loglikelihood_rolling of its HF backend describe them; written here on their own)

def reference_rolling(tokens: list[int], prefix: int, max_seq_len: int, context_len: int = 1):
    """(input tokens, predicted tokens) pairs: score the last len(pred) logits of the LM."""
    if not tokens:
        return []
    pairs = []
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    pairs.append(([prefix] + tokens[:first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        pairs.append((tokens[end - max_seq_len - 1:end - 1], tokens[end - n:end]))
        done += n
    return pairs


def reference_disjoint(pair):
    inp, pred = pair
    return inp[:len(inp) - (len(pred) - 1)], pred


def lm_eval_fed(context, continuation, max_length):
    """What the HF backend feeds for a (context, continuation) request, and what it scores."""
    whole = (context + continuation)[-(max_length + 1):]
    return whole[:-1], continuation


@pytest.mark.parametrize("L", [1, 2, 3, 5, 8])
def test_document_windows_are_lm_evals_rolling_windows(L):
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23]
    windows, prefixes = plan_document_windows(lengths, L)
    # a stream of distinct ids: [prefix] + the document's tokens, per document with tokens
    stream, docs, o = [], [], 0
    PREFIX = -1
    for n in lengths:
        toks = list(range(o * 100, o * 100 + n))
        docs.append(toks)
        if n:
            stream += [PREFIX] + toks
        o += 1
    expected = []
    for toks in docs:
        for pair in reference_rolling(toks, PREFIX, L):
            expected.append(lm_eval_fed(*reference_disjoint(pair), L))
    got = [(stream[w.start:w.end - 1], stream[w.first_scored:w.end]) for w in windows]
    assert got == expected
    assert all(w.end - 1 - w.start <= L for w in windows)          # at most L tokens fed
    assert [p >= 0 for p in prefixes] == [n > 0 for n in lengths]
    assert sum(w.n_scored for w in windows) == sum(lengths)         # every token once


# ---- documents from files ----

def test_jsonl_documents_skip_blank_lines_and_name_the_bad_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a b"}\n\n  \n{"text": " é\\n", "n": 1}\n', encoding="utf-8")
    assert kd.read_jsonl(str(f), "text") == ["a b", " é\n"]
    f.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(kd.DatasetError, match=r"d.jsonl:2: no field 'text' \(fields: body\)"):
        kd.read_jsonl(str(f), "text")
    f.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(kd.DatasetError, match="d.jsonl:1: field 'text' is not a string"):
        kd.read_jsonl(str(f), "text")
    f.write_text('[1]\nnot json\n', encoding="utf-8")
    with pytest.raises(kd.DatasetError, match="d.jsonl:1: expected a JSON object"):
        kd.read_jsonl(str(f), "text")


def test_lm_eval_words_is_its_re_split_count():
    for doc in ["", " ", "a", " a", "a b ", "  a\n\nb\tc  ", "x\x1cy", "a\u3000b"]:
        assert kd.lm_eval_words(doc) == len(re.split(r"\s+", doc))


DOCS = ["The first document.\n", " A second one, with a trailing space ", "déjà vu — third"]


def test_parquet_documents_export_to_a_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": DOCS, "id": [1, 2, 3]}), f)
    assert kd.load_documents({"path": str(f), "field": "text"}) == DOCS
    out = tmp_path / "cache" / "x.jsonl"
    assert kd.export({"path": str(f), "field": "text"}, str(out)) == {"path": str(out), "documents": 3}
    assert kd.read_jsonl(str(out), "text") == DOCS
    with pytest.raises(kd.DatasetError, match=r"no column 'body' \(columns: text, id\)"):
        kd.load_documents({"path": str(f), "field": "body"})


def test_hf_datasets_load_offline_from_save_to_disk_and_from_parquet_files(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds = datasets.Dataset.from_dict({"text": DOCS})
    ds.save_to_disk(str(tmp_path / "one"))
    assert kd.load_documents({"hf": str(tmp_path / "one"), "split": "test", "field": "text"}) == DOCS
    datasets.DatasetDict({"test": ds, "train": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert kd.load_documents({"hf": str(tmp_path / "dict"), "split": "train", "field": "text"}) == DOCS[:1]
    with pytest.raises(kd.DatasetError, match=r"no split 'validation' \(splits: test, train\)"):
        kd.load_documents({"hf": str(tmp_path / "dict"), "split": "validation", "field": "text"})
    # load_dataset itself (the path a Hub id takes), offline, on a local folder of data files
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "test.parquet"))
    assert kd.load_documents({"hf": str(tmp_path / "pq"), "split": "test", "field": "text"}) == DOCS
    with pytest.raises(kd.DatasetError, match="split train"):
        kd.load_documents({"hf": str(tmp_path / "pq"), "split": "train", "field": "text"})


def test_a_missing_package_is_named(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(kd.DatasetError, match=r"needs the Python package 'pyarrow'.*pip install pyarrow"):
        kd.read_parquet("x.parquet", "text")


# ---- the server in documents mode ----

@pytest.fixture(scope="module")
def gpt2_server(tiny):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["gpt2-b"])],
                "tokenizer": None, "max_length": 16, "bos_per_window": False, "space": "tokens",
                "bytes": {"beam": 4, "prune": 0.0}})
    assert s.channel.sent[-1]["type"] == "loaded", s.channel.sent[-1]
    return s


def reference_doc_nll(model, tok, doc: str, L: int) -> float:
    """Σ NLL of a document as lm-eval's HF backend computes it (transcription above), one
    window at a time through the model's own forward."""
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    total = 0.0
    for pair in reference_rolling(tok(doc)["input_ids"], prefix, L):
        fed, scored = lm_eval_fed(*reference_disjoint(pair), L)
        with torch.inference_mode():
            logits = model(torch.tensor([fed])).logits[0].float()
        logp = torch.log_softmax(logits[-len(scored):], -1)
        total -= float(logp[torch.arange(len(scored)), torch.tensor(scored)].double().sum())
    return total


def test_documents_mode_scores_each_document_with_lm_evals_windows(gpt2_server, tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    text = tiny["text"].read_text(encoding="utf-8")
    docs = [text[:300], text[300:340], text[340:1200] + " é", "x"]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    s = gpt2_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(f, [setting("average", 2)], field="text", mode="documents", max_length=16, stride=16))
    r = s.channel.sent[-1]
    assert r["type"] == "result", r
    tok = AutoTokenizer.from_pretrained(tiny["gpt2-a"])
    lengths = [len(tok(d)["input_ids"]) for d in docs]
    windows, _ = plan_document_windows(lengths, 16)
    assert r["windows"] == len(windows) and r["sums"]["scored_tokens"] == sum(lengths)
    assert sum(r["sums"]["window_bytes"]) == sum(len(d.encode()) for d in docs)
    for i, name in enumerate(["gpt2-a", "gpt2-b"]):
        model = AutoModelForCausalLM.from_pretrained(tiny[name]).float().eval()
        ref = sum(reference_doc_nll(model, tok, d, 16) for d in docs)
        assert r["sums"]["model_nll"][i] == pytest.approx(ref, rel=1e-5)
    # every setting over the same windows: the per-window lists line up
    assert len(r["sums"]["window_fusion_nll"][0]) == len(r["sums"]["window_model_nll"][0]) == len(windows)


def test_stream_mode_over_a_jsonl_scores_the_joined_text(gpt2_server, tiny, tmp_path):
    text = tiny["text"].read_text(encoding="utf-8")
    docs = [text[:500], text[500:900]]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    joined = tmp_path / "joined.txt"
    joined.write_text(" | ".join(docs), encoding="utf-8", newline="")
    s = gpt2_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(f, [setting("average", 2)], field="text", separator=" | ", max_length=16, stride=8))
    a = s.channel.sent[-1]
    s.channel.sent.clear()
    s.dispatch(evaluate_message(joined, [setting("average", 2)], max_length=16, stride=8))
    b = s.channel.sent[-1]
    assert a["type"] == b["type"] == "result"
    assert a["sums"] == b["sums"]


def test_documents_mode_refuses_bos_per_window(gpt2_server, tiny):
    s = gpt2_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], [setting("average", 2)], mode="documents", bos_per_window=True,
                                max_length=16, stride=16))
    e = s.channel.sent[-1]
    assert e["type"] == "error" and e["code"] == "bad_request" and "bos_per_window" in e["message"]


def test_a_plain_text_file_is_one_document(gpt2_server, tiny):
    s = gpt2_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], [setting("average", 2)], mode="documents", max_length=16, stride=16))
    r = s.channel.sent[-1]
    assert r["type"] == "result", r
    from transformers import AutoTokenizer
    n = len(AutoTokenizer.from_pretrained(tiny["gpt2-a"])(tiny["text"].read_text(encoding="utf-8"))["input_ids"])
    assert r["sums"]["scored_tokens"] == n and r["windows"] == math.ceil(n / 16)
