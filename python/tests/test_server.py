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
