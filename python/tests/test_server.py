"""server.Server on a fake channel: an evaluate request checks its settings once, at the
boundary, before it tokenizes; the library's entry points check them once each."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import spec
from kotara_worker import evaluate as ev
from kotara_worker import fusion, server
from kotara_worker.windows import plan_windows
from test_evaluate import fakes, fake_stream, run
from test_fusion import all_settings, setting

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeChannel:
    """What Server uses of protocol.Channel: send, and recv returning None (nothing arrived)."""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, message: dict) -> None:
        self.sent.append(message)

    def recv(self, timeout_ms: int) -> dict | None:
        return None


@pytest.fixture
def check_calls(monkeypatch) -> list[int]:
    """Counts check_settings calls, under every name the worker's modules import it by."""
    calls: list[int] = []
    original = fusion.check_settings

    def counted(settings, n_models):
        calls.append(len(settings))
        return original(settings, n_models)

    for module in (fusion, ev, server):
        if hasattr(module, "check_settings"):
            monkeypatch.setattr(module, "check_settings", counted)
    return calls


def evaluate_message(path, settings, **dataset) -> dict:
    return {"type": "evaluate", "request_id": "r1", "batch_size": 2, "progress_every": 10**6, "resume": None,
            "dataset": {"path": str(path), "max_length": 64, "stride": 32, "bos_per_window": False, **dataset},
            "settings": settings}


@pytest.fixture(scope="module")
def loaded_server(tiny):
    s = server.Server(FakeChannel(), log=lambda _m: None)
    s.dispatch({"type": "load", "request_id": "load", "models": [spec(tiny["gpt2-a"]), spec(tiny["llama"])],
                "tokenizer": None, "max_length": 64, "bos_per_window": False})
    assert s.channel.sent[-1]["type"] == "loaded", s.channel.sent[-1]
    return s


def test_hello_names_this_process():
    channel = FakeChannel()
    server.Server(channel, log=lambda _m: None)
    assert channel.sent[0]["type"] == "hello" and channel.sent[0]["pid"] == os.getpid()


def test_an_evaluate_request_checks_its_settings_once(loaded_server, tiny, check_calls):
    s = loaded_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], all_settings(2)))
    result = s.channel.sent[-1]
    assert result["type"] == "result", result
    batches = len(ev.plan_batches(plan_windows(result["tokens"], 64, 32), 2))
    assert batches > 10                                   # many chunks were scored...
    assert check_calls == [len(all_settings(2))]          # ...after one check, for the request


def test_bad_settings_are_refused_before_tokenizing(loaded_server, tmp_path, check_calls):
    s = loaded_server
    s.channel.sent.clear()
    bad = [setting("entropy", 2, [1.0, 0.0], id_="frozen")]
    s.dispatch(evaluate_message(tmp_path / "no-such-text.txt", bad))
    error = s.channel.sent[-1]
    # the missing dataset would be "not_found": the settings were checked first
    assert error["type"] == "error" and error["code"] == "bad_request", error
    assert "setting frozen: temperatures must be > 0" in error["message"]
    assert not any(m["type"] == "status" and "tokenizing" in m["message"] for m in s.channel.sent)
    assert check_calls == [1]


def test_the_library_entry_points_check_once_per_call(check_calls):
    ids = fake_stream(1200, 50, 6)
    windows = plan_windows(ids.numel(), 64, 32)
    run(fakes(), ids, windows, all_settings(2), batch_size=3, vocab=50, cfg=ev.EvalConfig(position_chunk=40))
    assert check_calls == [len(all_settings(2))]          # evaluate(): once, not per chunk
    check_calls.clear()
    logits = [torch.randn(6, 50), torch.randn(6, 50)]
    fusion.score_positions(logits, torch.arange(6), 50, all_settings(2), fusion.FusionConfig(block_elems=100))
    fusion.score_each_position(logits, torch.arange(6), 50, all_settings(2))
    assert check_calls == [len(all_settings(2))] * 2


# ----------------------------------------------------------------------------- per-window sums on the wire

from test_evaluate import assert_windows_add_up  # noqa: E402


def append_progress(resume: dict | None, progress: list[dict]) -> dict:
    """What the controller makes of a request's progress messages (src/session.ts): each
    message's windows appended to those before it (its window_first must be where they
    end), with the message's totals. Returns the last sums, every window listed."""
    acc = dict(resume) if resume else None
    for p in progress:
        s = p["sums"]
        done = len(acc["window_targets"]) if acc else 0
        assert s["window_first"] == done, (s["window_first"], done)
        assert len(s["window_targets"]) == s["windows_done"] - done
        prev = acc or {"window_targets": [], "window_bytes": [], "window_model_nll": [[] for _ in s["model_nll"]],
                       "window_fusion_nll": [[] for _ in s["fusion_nll"]]}
        acc = {**s, "window_first": 0,
               "window_targets": prev["window_targets"] + s["window_targets"],
               "window_bytes": prev["window_bytes"] + s["window_bytes"],
               "window_model_nll": [a + b for a, b in zip(prev["window_model_nll"], s["window_model_nll"])],
               "window_fusion_nll": [a + b for a, b in zip(prev["window_fusion_nll"], s["window_fusion_nll"])]}
    return acc


def sent(s, kind: str) -> list[dict]:
    return [m for m in s.channel.sent if m["type"] == kind]


def test_progress_carries_each_window_once_and_the_result_every_window(loaded_server, tiny):
    s = loaded_server
    s.channel.sent.clear()
    s.dispatch({**evaluate_message(tiny["text"], all_settings(2)), "progress_every": 1})
    result = s.channel.sent[-1]
    assert result["type"] == "result", result
    windows = plan_windows(result["tokens"], 64, 32)
    progress = sent(s, "progress")
    assert [p["sums"]["window_first"] for p in progress] == [0] + [p["sums"]["windows_done"] for p in progress[:-1]]
    assert append_progress(None, progress) == result["sums"]          # the same floats, each window once
    assert_windows_add_up(result["sums"], windows)


def independent_window_bytes(tok, ids: list[int], windows) -> list[int]:
    """The bytes of each window's new tokens from the tokenizer's vocabulary (token_bytes.py,
    no offset mapping): from the previous window's end to its own (the last: to the end)."""
    from kotara_worker.token_bytes import token_bytes
    table = token_bytes(tok)
    cuts = [0] + [w.end for w in windows[:-1]] + [len(ids)]
    return [sum(len(table[t] or b"") for t in ids[a:b]) for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("L,S,bos", [(64, 32, False), (64, 64, False), (48, 48, True)])
def test_window_bytes_are_the_bytes_of_each_windows_new_tokens(loaded_server, tiny, L, S, bos):
    s = loaded_server
    text = tiny["text"].read_text(encoding="utf-8")
    assert text.isascii()                     # so the vocabulary's bytes and the offsets cut alike
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], all_settings(2)[:1], max_length=L, stride=S, bos_per_window=bos))
    result = s.channel.sent[-1]
    assert result["type"] == "result", result
    ids = s.tokenizer(text)["input_ids"]
    windows = plan_windows(len(ids), L, S, bos=bos)
    got = result["sums"]["window_bytes"]
    assert sum(got) == len(text.encode())     # they partition the text: Σ = the bytes bits/byte divides by
    assert got == independent_window_bytes(s.tokenizer, ids, windows)


def test_window_bytes_of_a_text_with_multibyte_characters_add_up_to_its_bytes(loaded_server, tiny, tmp_path):
    s = loaded_server
    text = tiny["text"].read_text(encoding="utf-8")[:3000].replace("e", "é").replace("a", "€").replace(".", " 🙂.")
    path = tmp_path / "unicode.txt"
    path.write_text(text, encoding="utf-8")
    s.channel.sent.clear()
    s.dispatch(evaluate_message(path, all_settings(2)[:1], max_length=64, stride=32))
    result = s.channel.sent[-1]
    assert result["type"] == "result", result
    ids = s.tokenizer(text)["input_ids"]
    windows = plan_windows(len(ids), 64, 32)
    got = result["sums"]["window_bytes"]
    assert sum(got) == len(text.encode()) and len(got) == len(windows)
    # a character split over two tokens goes whole to one side of a cut: at most 3 bytes move
    want = independent_window_bytes(s.tokenizer, ids, windows)
    assert all(abs(a - b) <= 6 for a, b in zip(got, want)) and sum(want) == sum(got)


class NoOffsets:
    """A tokenizer without an offset mapping (as a Python tokenizer is), otherwise the same."""

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kw):
        if kw.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return self._tok(*args, **kw)

    def __len__(self):
        return len(self._tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_a_tokenizer_without_offsets_counts_window_bytes_by_decoding(loaded_server, tiny, monkeypatch):
    s = loaded_server
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], all_settings(2)[:1]))
    with_offsets = s.channel.sent[-1]["sums"]
    monkeypatch.setattr(s, "tokenizer", NoOffsets(s.tokenizer))
    s.channel.sent.clear()
    s.dispatch(evaluate_message(tiny["text"], all_settings(2)[:1]))
    decoded = s.channel.sent[-1]["sums"]
    # a byte-level BPE decodes an ASCII text back exactly: the same counts, the same sums
    assert decoded == with_offsets


class CancelAfter(FakeChannel):
    """Answers the pass's should_stop() with a cancel of r1 at its k-th look."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.looks = 0
        self.cancelled = False

    def recv(self, timeout_ms: int) -> dict | None:
        self.looks += 1
        if self.looks >= self.k and not self.cancelled:
            self.cancelled = True
            return {"type": "cancel", "request_id": "r1", "seq": 99}
        return None


def test_a_run_resumed_from_its_progress_messages_is_bit_identical(loaded_server, tiny):
    s = loaded_server
    message = {**evaluate_message(tiny["text"], all_settings(2)), "progress_every": 3}
    s.channel.sent.clear()
    s.dispatch(message)
    whole = s.channel.sent[-1]
    assert whole["type"] == "result"

    channel = s.channel
    try:
        s.channel = CancelAfter(k=8)                           # a cancel while batch 8 would start
        s.dispatch(message)
        assert s.channel.sent[-1]["code"] == "cancelled", s.channel.sent[-1]
        checkpoint = append_progress(None, sent(s, "progress"))   # what the controller saved
        assert 0 < checkpoint["windows_done"] < whole["windows"]
        s.channel = FakeChannel()
        s.dispatch({**message, "resume": checkpoint})
        resumed = s.channel.sent[-1]
        progress = sent(s, "progress")
        assert progress[0]["sums"]["window_first"] == checkpoint["windows_done"]   # only the new windows
        last = append_progress(checkpoint, progress)          # (the last batches may come with the result only)
        assert last["window_fusion_nll"] == [r[:last["windows_done"]] for r in resumed["sums"]["window_fusion_nll"]]
    finally:
        s.channel = channel
    assert resumed["type"] == "result" and resumed["sums"] == whole["sums"]    # every float, bit for bit

    bad = {**checkpoint, "model_nll": [checkpoint["model_nll"][0] + 1.0, checkpoint["model_nll"][1]]}
    s.channel.sent.clear()
    s.dispatch({**message, "resume": bad})
    error = s.channel.sent[-1]
    assert error["type"] == "error" and error["code"] == "bad_request" and "do not add up" in error["message"]
